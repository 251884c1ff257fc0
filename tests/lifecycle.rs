//! Hot reload that drops nothing, the systemd protocol (sd_notify, socket activation), restarts
//! and binary upgrades that refuse no connection, and the unit files themselves.
mod support;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// CLOCK_MONOTONIC in microseconds, read here (the clock sd_notify's MONOTONIC_USEC uses).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Two pools ("a" and "b" backends) and a catch-all route to one of them; `extra` adds a route.
fn two_pool_config(a: SocketAddr, b: SocketAddr, target: &str, extra: &str, listener: &str) -> String {
    Config::new()
        .log("access = \"off\"")
        .listener("http", listener, "")
        .pool("a", &[a], "")
        .pool("b", &[b], "")
        .route("main", &format!("path_prefix = \"/\"\npool = \"{target}\""))
        .route_extra(extra)
        .build()
}

async fn post_reload(p: &Proxy) -> serde_json::Value {
    let r = send(p.admin, Request::post("/reload").body(Full::new(Bytes::new())).unwrap()).await;
    serde_json::from_slice(r.body()).expect("reload answers JSON")
}

/// A keep-alive HTTP/1.1 client connection.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl KeepAlive {
    async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAlive {
            sender,
            host: addr.to_string(),
        }
    }

    async fn get(&mut self, path: &str) -> Result<(u16, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_keep_alive_load_lose_nothing_and_traffic_follows() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"));

    // Steady keep-alive load on two connections while the config changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut loaders = Vec::new();
    for _ in 0..2 {
        let (stop, failures, done, addr) = (stop.clone(), failures.clone(), done.clone(), p.addr());
        loaders.push(tokio::spawn(async move {
            let mut c = KeepAlive::open(addr).await;
            while !stop.load(Ordering::Relaxed) {
                match c.get("/load").await {
                    Ok((200, _)) => {}
                    Ok((s, body)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{s} {}", String::from_utf8_lossy(&body))),
                    Err(e) => {
                        // The connection is gone: every later request on it would fail at
                        // once, so one failure says it all.
                        failures.lock().unwrap().push(e);
                        break;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let mut probe = KeepAlive::open(p.addr()).await;
    // Each change is also seen by the file watcher, which may reload it before the POST does
    // (then the POST reloads the same file again): a generation per reload, at least one per
    // change.
    let mut generation = 1;
    for k in 1..=50u64 {
        let target = if k % 2 == 0 { "a" } else { "b" };
        let extra = if k % 3 == 0 {
            format!("[[route]]\nname = \"extra{k}\"\npath = \"/extra\"\npool = \"{target}\"\n")
        } else {
            String::new()
        };
        std::fs::write(
            &p.config_path,
            two_pool_config(a.addr, b.addr, target, &extra, "127.0.0.1:0"),
        )
        .unwrap();
        let out = post_reload(&p).await;
        assert_eq!(out["ok"], true, "reload {k}: {out}");
        let g = out["generation"].as_u64().expect("generation");
        assert!(g > generation, "reload {k} made no new generation: {out}");
        generation = g;
        // The very next request on an old keep-alive connection follows the new route.
        let (status, body) = probe
            .get("/after-reload")
            .await
            .expect("probe connection survived the reload");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["backend"], target, "after reload {k}");
    }
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    let n = done.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(n >= 50, "too little load to mean anything: {n}");
    assert_eq!(p.metric("waypost_config_generation").await, Some(generation as f64));
    assert_eq!(
        p.metric("waypost_config_reloads_total{result=\"success\"}").await,
        Some((generation - 1) as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_and_a_slow_download_survive_reloads_that_change_their_route() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"));

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", p.addr()))
        .await
        .unwrap();
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("before".into()));

    const SIZE: u64 = 64 << 20;
    let stream = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/bytes/{SIZE}"))
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    // Read a little, slowly, then reload several times, then read the rest.
    while got < 1 << 20 {
        got += body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for k in 0..5 {
        let target = if k % 2 == 0 { "b" } else { "a" };
        std::fs::write(
            &p.config_path,
            two_pool_config(a.addr, b.addr, target, "", "127.0.0.1:0"),
        )
        .unwrap();
        assert_eq!(post_reload(&p).await["ok"], true);
    }
    ws.send(Message::Text("after".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("after".into()));
    while let Some(frame) = body.frame().await {
        got += frame
            .expect("the download broke")
            .into_data()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
    }
    assert_eq!(got, SIZE, "the download was cut short");
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_keeps_the_old_routing_and_every_trigger_reports_it() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"));
    let failures = || async {
        p.metric("waypost_config_reloads_total{result=\"failure\"}")
            .await
            .unwrap_or(0.0)
    };
    let bad = two_pool_config(a.addr, b.addr, "nonexistent", "", "127.0.0.1:0");

    // 1. The file watcher notices the change and refuses it.
    std::fs::write(&p.config_path, &bad).unwrap();
    assert!(
        eventually(PATIENCE, || async { failures().await >= 1.0 }).await,
        "the watcher never tried the bad file"
    );
    assert!(
        !p.log_lines_with("route[0].pool: unknown pool \"nonexistent\"")
            .is_empty(),
        "{}",
        p.stderr()
    );
    assert_eq!(echo(&get(p.addr(), "/").await)["backend"], "a");
    let before = failures().await;

    // 2. POST /reload answers with the problem and its key path.
    let out = post_reload(&p).await;
    assert_eq!(out["ok"], false);
    assert_eq!(out["generation"], 1);
    assert!(
        out["errors"][0]
            .as_str()
            .unwrap()
            .contains("route[0].pool: unknown pool"),
        "{out}"
    );
    assert_eq!(failures().await, before + 1.0);

    // 3. SIGHUP: counted and logged; the old routing keeps serving.
    p.signal(libc::SIGHUP);
    assert!(eventually(PATIENCE, || async { failures().await >= before + 2.0 }).await);
    assert_eq!(echo(&get(p.addr(), "/").await)["backend"], "a");
    let (_, status) = p.admin_get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["last_reload"]["ok"], false);

    // A good file replaced by rename, as editors and config management do: picked up.
    let renamed_at = unix_now();
    let tmp = p.config_path.with_extension("tmp");
    std::fs::write(&tmp, two_pool_config(a.addr, b.addr, "b", "", "127.0.0.1:0")).unwrap();
    std::fs::rename(&tmp, &p.config_path).unwrap();
    assert!(
        eventually(PATIENCE, || async { echo(&get(p.addr(), "/").await)["backend"] == "b" }).await,
        "the watcher never applied the replaced file"
    );
    assert_eq!(p.metric("waypost_config_generation").await, Some(2.0));
    let applied_at = p
        .metric("waypost_config_last_reload_success_timestamp_seconds")
        .await
        .unwrap();
    let now = unix_now();
    assert!(
        applied_at >= renamed_at.floor() && applied_at <= now,
        "the last success was at {applied_at}: not between the rename ({renamed_at}) and now ({now})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_removed_and_moved_by_reload() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(&two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"));
    let first = p.addr();
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second: SocketAddr = spare.local_addr().unwrap();
    drop(spare);
    let with_second = format!(
        "{}\n[[listener]]\nname = \"second\"\nbind = \"{second}\"\n",
        two_pool_config(a.addr, b.addr, "a", "", &first.to_string())
    );
    std::fs::write(&p.config_path, &with_second).unwrap();
    assert_eq!(post_reload(&p).await["ok"], true);
    assert_eq!(echo(&get(second, "/").await)["backend"], "a");
    // A keep-alive connection on the listener about to be removed finishes its request.
    let mut held = KeepAlive::open(second).await;
    assert_eq!(held.get("/").await.unwrap().0, 200);
    std::fs::write(
        &p.config_path,
        two_pool_config(a.addr, b.addr, "a", "", &first.to_string()),
    )
    .unwrap();
    assert_eq!(post_reload(&p).await["ok"], true);
    assert!(
        eventually(PATIENCE, || async {
            tokio::net::TcpStream::connect(second).await.is_err()
        })
        .await,
        "the removed listener still accepts"
    );
    assert_eq!(echo(&get(first, "/").await)["backend"], "a");
    // Renaming a listener keeps its socket: the address never stops answering.
    let renamed =
        two_pool_config(a.addr, b.addr, "a", "", &first.to_string()).replace("name = \"http\"", "name = \"web\"");
    std::fs::write(&p.config_path, renamed).unwrap();
    assert_eq!(post_reload(&p).await["ok"], true);
    assert_eq!(echo(&get(first, "/").await)["backend"], "a");
    // A reload that cannot bind a new address changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let clash = format!(
        "{}\n[[listener]]\nname = \"clash\"\nbind = \"{}\"\n",
        two_pool_config(a.addr, b.addr, "b", "", &first.to_string()).replace("name = \"http\"", "name = \"web\""),
        taken.local_addr().unwrap()
    );
    std::fs::write(&p.config_path, clash).unwrap();
    let out = post_reload(&p).await;
    assert_eq!(out["ok"], false, "{out}");
    assert_eq!(
        echo(&get(first, "/").await)["backend"],
        "a",
        "a refused reload must not half-apply"
    );
}

/// Receive sd_notify datagrams on a socket of our own, as systemd would.
struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        // The kernel stamps each datagram as it is sent: intervals between messages measured
        // on these do not depend on when this test gets to read them.
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our own socket with a c_int option value.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMP,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_TIMESTAMP");
        NotifySocket { sock, _dir: dir, path }
    }

    /// The next message that is not a WATCHDOG ping, within the deadline.
    fn next(&self, skip_watchdog: bool) -> Option<String> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some((msg, _)) = self.recv_stamped() {
                if skip_watchdog && msg == "WATCHDOG=1" {
                    continue;
                }
                return Some(msg);
            }
        }
        None
    }

    /// One message (within the socket's read timeout) and when the kernel says it was sent.
    fn recv_stamped(&self) -> Option<(String, Duration)> {
        let mut buf = [0u8; 4096];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: recvmsg into the buffers described by msg.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return None;
        }
        let mut stamp = None;
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_TIMESTAMP {
                    let tv = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timeval);
                    stamp = Some(Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        Some((text, stamp.expect("a kernel time stamp on the datagram")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_messages_arrive_in_order() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let n = NotifySocket::new();
    let path = n.path.to_str().unwrap().to_string();
    let mut p = Proxy::start_with_env(
        &two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"),
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "200000")],
    );
    let ready = n.next(true).expect("READY");
    assert!(ready.starts_with("READY=1\nSTATUS=serving generation 1"), "{ready:?}");
    // The watchdog is fed again and again, at half of WATCHDOG_USEC (100 ms) and never
    // faster: six pings span at least five periods (less a little: the first ping's own
    // sending may have lagged its timer), by the kernel's send time stamps.
    let mut pings = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while pings.len() < 6 && Instant::now() < deadline {
        if let Some((msg, at)) = n.recv_stamped() {
            assert_eq!(msg, "WATCHDOG=1", "only pings while nothing happens");
            pings.push(at);
        }
    }
    assert_eq!(pings.len(), 6, "the watchdog is fed repeatedly");
    let span = pings[5] - pings[0];
    assert!(
        span >= Duration::from_millis(450),
        "six pings within {span:?}: fed faster than every 100 ms"
    );

    let hup_at = monotonic_usec();
    p.signal(libc::SIGHUP);
    let reloading = n.next(true).expect("RELOADING");
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC");
    let got_at = monotonic_usec();
    assert!(
        usec >= hup_at && usec <= got_at,
        "MONOTONIC_USEC={usec} is not the monotonic clock between the SIGHUP ({hup_at}) and its receipt ({got_at})"
    );
    let again = n.next(true).expect("READY after reload");
    assert!(again.starts_with("READY=1\nSTATUS=serving generation 2"), "{again:?}");

    std::fs::write(&p.config_path, "not toml [").unwrap();
    // The watcher or our POST: either way RELOADING then READY with the failure in STATUS.
    let _ = post_reload(&p).await;
    let mut saw_failure = false;
    for _ in 0..6 {
        match n.next(true) {
            Some(m) if m.starts_with("READY=1\nSTATUS=reload failed, generation 2 keeps serving") => {
                saw_failure = true;
                break;
            }
            Some(m) => assert!(m.starts_with("RELOADING=1") || m.starts_with("READY=1"), "{m:?}"),
            None => break,
        }
    }
    assert!(saw_failure, "a failed reload must be reported in STATUS");

    p.signal(libc::SIGTERM);
    let mut stopping = None;
    while let Some(m) = n.next(true) {
        if m.starts_with("STOPPING=1") {
            stopping = Some(m);
            break;
        }
    }
    assert!(stopping.is_some(), "STOPPING=1 never came");
    assert_eq!(p.wait_exit(PATIENCE), Some(0));
}

/// Run waypost through `sh` so that LISTEN_PID can be its own pid (`exec` keeps the pid), with
/// `socket` as fd 3, exactly as systemd's socket activation hands it over.
fn activated(config: &str, socket: &std::net::TcpListener, name: &str) -> Proxy {
    let fd = socket.as_raw_fd();
    let name = name.to_string();
    Proxy::start_command(config, move |path| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\"")
            .arg(BIN)
            .arg(path)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", name);
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    })
}

/// GETs on new connections until stopped; returns (ok, failures).
fn new_connection_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match try_send(addr, Request::get("/").body(Full::new(Bytes::new())).unwrap()).await {
                Ok(r) if r.status() == 200 => ok += 1,
                Ok(r) => failed.push(r.status().to_string()),
                Err(e) => failed.push(e),
            }
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_passed_socket_and_a_restart_with_the_socket_held_loses_nothing() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    // The config names another port: the socket is matched by its name, as systemd names it.
    let config = two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:1");
    let mut first = activated(&config, &socket, "http");
    assert_eq!(first.addr(), addr, "the listener must be the inherited socket");
    assert_eq!(echo(&get(addr, "/").await)["backend"], "a");

    let stop = Arc::new(AtomicBool::new(false));
    let load = new_connection_load(addr, stop.clone());
    let served = a.hits();
    assert!(
        eventually(PATIENCE, || async { a.hits() >= served + 10 }).await,
        "the load is flowing"
    );
    // Restart: the old process drains and exits; connections wait in the held socket's backlog
    // until the new one accepts.
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(PATIENCE), Some(0));
    let second = activated(&config, &socket, "http");
    assert_eq!(second.addr(), addr);
    // The load goes on through the new process (the old one is gone).
    let served = a.hits();
    assert!(
        eventually(PATIENCE, || async { a.hits() >= served + 20 }).await,
        "the new process never served the load"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "too little load: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_on_sigusr2_refuses_no_connection() {
    let a = TestBackend::start("a").await.unwrap();
    let b = TestBackend::start("b").await.unwrap();
    let mut old = Proxy::start(&two_pool_config(a.addr, b.addr, "a", "", "127.0.0.1:0"));
    let addr = old.addr();
    let admin = old.admin;
    let stop = Arc::new(AtomicBool::new(false));
    let load = new_connection_load(addr, stop.clone());
    let served = a.hits();
    assert!(
        eventually(PATIENCE, || async { a.hits() >= served + 10 }).await,
        "the load is flowing"
    );

    old.signal(libc::SIGUSR2);
    assert_eq!(
        old.wait_exit(PATIENCE),
        Some(0),
        "the old process should drain and exit 0\n{}",
        old.stderr()
    );
    // The new process logs to the same pipes; find its pid to stop it at the end.
    let line = old.log_lines_with("binary upgrade: started the new process");
    let pid: i32 = line
        .first()
        .and_then(|l| l.split("pid=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no new pid logged:\n{}", old.stderr()));
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the process this test caused to start.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _kill = Kill(pid);
    // The load goes on through the new process (the old one has exited).
    let served = a.hits();
    assert!(
        eventually(PATIENCE, || async { a.hits() >= served + 20 }).await,
        "the new process never served the load"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the upgrade: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The new process serves the same addresses, the admin API included.
    assert_eq!(echo(&get(addr, "/").await)["backend"], "a");
    let r = get(admin, "/status").await;
    let s: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(s["generation"], 1);
}

#[test]
fn the_systemd_units_verify_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    // verify checks that ExecStart= binaries exist: point them at the one just built.
    let service = std::fs::read_to_string(root.join("waypost.service"))
        .unwrap()
        .replace("/usr/bin/waypost", BIN);
    std::fs::write(dir.path().join("waypost.service"), service).unwrap();
    std::fs::copy(root.join("waypost.socket"), dir.path().join("waypost.socket")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "waypost.service", "waypost.socket"])
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze is installed by .ci/test.sh (Debian package systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}
