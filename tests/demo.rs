//! `waypost demo`: the real binary starts its test backends and the proxy on config/demo.toml
//! (fixed ports 127.0.0.1:8080, admin 9901, backends 9001-9004), says what to curl, answers,
//! and stops on Ctrl-C.
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// The demo process; killed when dropped, so a failing test leaves no process holding the
/// demo's fixed ports.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(BIN)
            .arg("demo")
            .env("RUST_LOG", "waypost=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn waypost demo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Demo { child, stdout, stderr }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

const PROXY: &str = "127.0.0.1:8080";
const ADMIN: &str = "127.0.0.1:9901";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_says_what_to_curl_answers_and_stops_on_ctrl_c() {
    // The demo's ports are fixed: say so plainly if something else holds one.
    for port in [8080, 9901, 9001, 9002, 9003, 9004] {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!("127.0.0.1:{port} is in use ({e}); `waypost demo` needs 8080, 9901 and 9001-9004");
        }
    }
    let mut demo = Demo::start();
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let admin: SocketAddr = ADMIN.parse().unwrap();

    // It comes up and answers on the proxy port.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(status) = demo.exited() {
            panic!(
                "waypost demo exited with {status} (are ports 8080, 9901, 9001-9004 free?)\n{}",
                demo.output()
            );
        }
        let req = http::Request::get("/hello")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        if let Ok(r) = try_send(proxy, req).await {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "waypost demo did not answer on {PROXY} in time\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(first.status(), 200, "{}", demo.output());
    let v = echo(&first);
    assert!(
        v["backend"].as_str().is_some_and(|b| b.starts_with("demo-backend-")),
        "a demo backend should answer: {v}"
    );
    assert_eq!(v["path"], "/hello");

    // It told the user what to curl: the proxy and the metrics.
    let out = demo.stdout();
    assert!(
        out.lines()
            .any(|l| l.contains("curl") && l.contains(&format!("http://{PROXY}/"))),
        "the demo should print a curl line for the proxy:\n{}",
        demo.output()
    );
    assert!(
        out.lines()
            .any(|l| l.contains("curl") && l.contains(&format!("http://{ADMIN}/metrics"))),
        "the demo should print where the metrics are:\n{}",
        demo.output()
    );

    // The API route strips its prefix and goes to the api pool's backends.
    let r = get(proxy, "/api/users").await;
    assert_eq!(r.status(), 200);
    let v = echo(&r);
    assert_eq!(v["path"], "/users", "{v}");
    assert!(
        matches!(v["backend"].as_str(), Some("demo-backend-3" | "demo-backend-4")),
        "the api pool is the backends on 9003 and 9004: {v}"
    );

    // The admin API serves Prometheus metrics that count the traffic.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let req = http::Request::get("/metrics")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        match try_send(admin, req).await {
            Ok(r) => break r,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the admin API on {ADMIN} does not answer: {e}\n{}",
                demo.output()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r.status(), 200);
    let text = String::from_utf8_lossy(r.body());
    assert!(
        text.lines().any(|l| {
            l.starts_with("waypost_requests_total{") && l.contains("route=\"web\"") && {
                l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
            }
        }),
        "waypost_requests_total for route web should count the GET:\n{text}"
    );

    // Ctrl-C stops it, cleanly.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(demo.child.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = demo.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "waypost demo did not stop on SIGINT\n{}",
            demo.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{}", demo.output());
}
