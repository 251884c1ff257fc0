//! The access log through the real binary: one JSON line per request with its fields, flags for
//! retries and failures, the NCSA combined format, `access = "off"` and a file target.
mod support;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use serde_json::Value;
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One pool "web" of weighted backends, `[log]` as given.
fn config(log: &str, backends: &[(SocketAddr, u32)], pool_extra: &str) -> String {
    weighted_config(backends, "", log, pool_extra)
}

async fn request(addr: SocketAddr, req: Request<Full<Bytes>>) -> Response<Bytes> {
    let what = format!("{} {}", req.method(), req.uri());
    within(&what, send(addr, req)).await
}

fn get_req(path: &str) -> http::request::Builder {
    Request::get(path)
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// JSON access log lines on stdout so far; panics on a stdout line that is not JSON.
fn json_lines(p: &Proxy) -> Vec<Value> {
    p.stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

async fn wait_stdout_lines(p: &Proxy, n: usize) -> Vec<String> {
    let ok = eventually(PATIENCE, || async { p.stdout_lines().len() >= n }).await;
    assert!(
        ok,
        "expected {n} access log lines on stdout, got {:?}",
        p.stdout_lines()
    );
    p.stdout_lines()
}

async fn wait_json_lines(p: &Proxy, n: usize) -> Vec<Value> {
    wait_stdout_lines(p, n).await;
    json_lines(p)
}

/// The one line for `path`; panics if there is not exactly one.
fn line_for<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(found.len(), 1, "lines for {path}: {lines:#?}");
    found[0]
}

fn flags(v: &Value) -> Vec<String> {
    v["flags"]
        .as_array()
        .unwrap_or_else(|| panic!("flags is not an array: {v}"))
        .iter()
        .map(|f| f.as_str().expect("flag string").to_string())
        .collect()
}

/// `2024-05-01T12:34:56.789Z` (or with any number of fraction digits).
fn assert_rfc3339_utc(t: &str) {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    assert!(
        b.len() >= 20
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && t.ends_with('Z'),
        "time is not RFC 3339 UTC: {t:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// JSON lines
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_every_field() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&config("access = \"stdout\"", &[(b.addr, 1)], ""));

    let first_started = std::time::Instant::now();
    let r = request(
        p.addr(),
        get_req("/first/page?x=1")
            .header("host", "site.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let first_took = first_started.elapsed().as_secs_f64();
    let first_len = r.body().len() as u64;
    let second_started = std::time::Instant::now();
    let r2 = request(
        p.addr(),
        Request::post("/second")
            .header("host", "site.example")
            .header("x-test-delay", "200ms")
            .body(Full::new(Bytes::from(vec![b'z'; 3000])))
            .unwrap(),
    )
    .await;
    assert_eq!(r2.status(), 200);
    let second_took = second_started.elapsed().as_secs_f64();
    let r3 = request(
        p.addr(),
        get_req("/bytes/12345")
            .header("host", "site.example")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r3.body().len(), 12345);

    let lines = wait_json_lines(&p, 3).await;
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");

    let l = line_for(&lines, "/first/page");
    for field in [
        "time", "client", "method", "host", "path", "status", "bytes", "duration", "route", "pool", "backend", "flags",
    ] {
        assert!(l.get(field).is_some(), "field {field} missing: {l}");
    }
    assert_rfc3339_utc(l["time"].as_str().expect("time string"));
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["host"], "site.example");
    assert_eq!(l["path"], "/first/page");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], first_len, "bytes = the response body sent");
    // In seconds, and within what the client saw the request take.
    assert!(
        l["duration"].as_f64().is_some_and(|d| d >= 0.0 && d <= first_took),
        "the client saw {first_took}s: {l}"
    );
    assert_eq!(l["route"], "all");
    assert_eq!(l["pool"], "web");
    assert_eq!(l["backend"], b.addr.to_string());
    assert!(flags(l).is_empty(), "a plain success has no flags: {l}");

    let l = line_for(&lines, "/second");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], r2.body().len() as u64);
    assert!(
        l["duration"].as_f64().unwrap() >= 0.2 && l["duration"].as_f64().unwrap() <= second_took,
        "the backend took 200ms and the client saw {second_took}s; the log says {}",
        l["duration"]
    );

    let l = line_for(&lines, "/bytes/12345");
    assert_eq!(l["bytes"], 12345);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_h2_requests_get_a_line_each() {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&config("access = \"stdout\"", &[(b.addr, 1)], ""));

    // Three requests on one HTTP/1.1 connection.
    let stream = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        // hyper's client contract: wait until the connection can take the next request.
        sender.ready().await.unwrap();
        let r = within(
            "keep-alive request",
            sender.send_request(
                get_req(&format!("/ka/{i}"))
                    .header("host", "ka.example")
                    .body(empty())
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
        r.into_body().collect().await.unwrap();
    }
    // One h2c request: the host comes from :authority.
    let r = within(
        "h2c request",
        send_h2(
            p.addr(),
            get_req("http://h2.example/over-h2?y=2").body(empty()).unwrap(),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);

    let lines = wait_json_lines(&p, 4).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    for i in 0..3 {
        let l = line_for(&lines, &format!("/ka/{i}"));
        assert_eq!(l["host"], "ka.example", "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }
    let l = line_for(&lines, "/over-h2");
    assert_eq!(l["host"], "h2.example", "{l}");
    assert_eq!(l["method"], "GET", "{l}");
    assert_eq!(l["status"], 200, "{l}");
    assert_eq!(l["bytes"], r.body().len() as u64, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_flagged_retried() {
    let dead = dead_addr();
    let live = TestBackend::start("live").await.unwrap();
    // The dead backend takes most first picks.
    let p = Proxy::start(&config(
        "access = \"stdout\"",
        &[(dead, 4), (live.addr, 1)],
        "retries = 1",
    ));
    const N: usize = 5;
    for i in 0..N {
        let r = request(p.addr(), get_req(&format!("/r/{i}")).body(empty()).unwrap()).await;
        assert_eq!(r.status(), 200);
    }
    let lines = wait_json_lines(&p, N).await;
    assert_eq!(lines.len(), N, "{lines:#?}");
    let retried: Vec<&Value> = lines
        .iter()
        .filter(|l| flags(l).iter().any(|f| f == "retried"))
        .collect();
    assert!(!retried.is_empty(), "no line flagged retried: {lines:#?}");
    for l in &retried {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["backend"], live.addr.to_string(), "the backend that answered: {l}");
        assert_eq!(flags(l), vec!["retried"], "a successful retry has no error word: {l}");
    }
    let total = p.metric_sum("waypost_retries_total", &[("pool", "web")]).await;
    assert_eq!(total, retried.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_their_error_word() {
    let dead = dead_addr();
    let hang = TestBackend::start("hang").await.unwrap();
    hang.set_mode(Mode::Hang);
    let reset = TestBackend::start("reset").await.unwrap();
    reset.set_mode(Mode::Reset);
    let cfg = Config::new()
        .log("access = \"stdout\"")
        .listener("http", "127.0.0.1:0", "")
        .pool("refused", &[dead], "")
        .pool("hanging", &[hang.addr], "response_timeout = \"300ms\"")
        .pool("resetting", &[reset.addr], "")
        .route("r-refused", "path_prefix = \"/refused\"\npool = \"refused\"")
        .route("r-hang", "path_prefix = \"/hang\"\npool = \"hanging\"")
        .route("r-reset", "path_prefix = \"/reset\"\npool = \"resetting\"")
        .build();
    let p = Proxy::start(&cfg);
    let cases = [
        (
            "/refused",
            502,
            "upstream_connect_error",
            Some(("r-refused", "refused")),
        ),
        ("/hang", 504, "upstream_timeout", Some(("r-hang", "hanging"))),
        ("/reset", 502, "upstream_broken", Some(("r-reset", "resetting"))),
        ("/nowhere", 404, "no_route", None),
    ];
    let mut sizes = Vec::new();
    for (path, status, _, _) in &cases {
        let r = request(p.addr(), get_req(path).body(empty()).unwrap()).await;
        assert_eq!(r.status().as_u16(), *status, "{path}");
        sizes.push(r.body().len() as u64);
    }
    let lines = wait_json_lines(&p, cases.len()).await;
    assert_eq!(lines.len(), cases.len(), "{lines:#?}");
    for ((path, status, word, names), size) in cases.iter().zip(sizes) {
        let l = line_for(&lines, path);
        assert_eq!(l["status"], *status, "{l}");
        assert!(
            flags(l).iter().any(|f| f == word),
            "{path}: flags should include {word:?}: {l}"
        );
        assert!(
            !flags(l).iter().any(|f| f == "retried"),
            "{path}: nothing to retry on: {l}"
        );
        assert_eq!(l["bytes"], size, "{path}: bytes of the error body: {l}");
        match names {
            Some((route, pool)) => {
                assert_eq!(l["route"], *route, "{l}");
                assert_eq!(l["pool"], *pool, "{l}");
            }
            None => {
                assert!(l["route"].is_null(), "{l}");
                assert!(l["pool"].is_null(), "{l}");
                assert!(l["backend"].is_null(), "{l}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formats and targets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_format_gives_ncsa_lines() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&config(
        "access = \"stdout\"\nformat = \"combined\"",
        &[(b.addr, 1)],
        "",
    ));
    let r = request(
        p.addr(),
        get_req("/index.html?q=1")
            .header("user-agent", "waypost-test/1.0")
            .header("referer", "http://ref.example/from")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let len = r.body().len();
    let r = request(p.addr(), get_req("/plain").body(empty()).unwrap()).await;
    let len2 = r.body().len();

    let lines = wait_stdout_lines(&p, 2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let line = lines
        .iter()
        .find(|l| l.contains("/index.html"))
        .expect("a line for /index.html");
    // 127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] "GET /index.html?q=1 HTTP/1.1" 200 123 "ref" "ua"
    let (head, rest) = line.split_once(" [").expect("[ before the time");
    assert_eq!(head, "127.0.0.1 - -", "{line}");
    let (time, rest) = rest.split_once("] ").expect("] after the time");
    assert_clf_time(time);
    assert_eq!(
        rest,
        format!("\"GET /index.html?q=1 HTTP/1.1\" 200 {len} \"http://ref.example/from\" \"waypost-test/1.0\""),
        "{line}"
    );
    let line = lines.iter().find(|l| l.contains("/plain")).unwrap();
    assert!(
        line.ends_with(&format!("\"GET /plain HTTP/1.1\" 200 {len2} \"-\" \"-\"")),
        "missing referer and agent are \"-\": {line}"
    );
}

/// `14/Nov/2023:22:13:20 +0000`
fn assert_clf_time(t: &str) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ok = t.len() == 26
        && t[0..2].bytes().all(|c| c.is_ascii_digit())
        && &t[2..3] == "/"
        && MONTHS.contains(&&t[3..6])
        && &t[6..7] == "/"
        && t[7..11].bytes().all(|c| c.is_ascii_digit())
        && &t[11..12] == ":"
        && t[12..14].bytes().all(|c| c.is_ascii_digit())
        && &t[14..15] == ":"
        && t[15..17].bytes().all(|c| c.is_ascii_digit())
        && &t[17..18] == ":"
        && t[18..20].bytes().all(|c| c.is_ascii_digit())
        && &t[20..] == " +0000";
    assert!(ok, "not a CLF time: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_off_writes_nothing() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&config("access = \"off\"", &[(b.addr, 1)], ""));
    for i in 0..5 {
        let r = request(p.addr(), get_req(&format!("/quiet/{i}")).body(empty()).unwrap()).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(b.hits(), 5);

    // Nothing can be waited for when nothing is written: switch logging on, send a marker, and
    // once the marker's line is out, it must be the only line there is.
    std::fs::write(&p.config_path, config("access = \"stdout\"", &[(b.addr, 1)], "")).unwrap();
    let r = request(p.admin, Request::post("/reload").body(empty()).unwrap()).await;
    assert_eq!(r.status(), 200, "{:?}", r.body());
    let r = request(p.addr(), get_req("/marker").body(empty()).unwrap()).await;
    assert_eq!(r.status(), 200);
    let lines = wait_json_lines(&p, 1).await;
    assert_eq!(lines.len(), 1, "access = \"off\" wrote lines: {lines:#?}");
    assert_eq!(lines[0]["path"], "/marker");
}

fn file_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_to_a_file_path_writes_there() {
    let b = TestBackend::start("b1").await.unwrap();
    let logs = tempfile::tempdir().unwrap();
    let file = logs.path().join("access.log");
    let p = Proxy::start(&config(&format!("access = \"{}\"", file.display()), &[(b.addr, 1)], ""));
    for path in ["/one", "/two", "/three"] {
        let r = request(p.addr(), get_req(path).body(empty()).unwrap()).await;
        assert_eq!(r.status(), 200);
    }
    let ok = eventually(PATIENCE, || async { file_lines(&file).len() >= 3 }).await;
    assert!(ok, "the file holds {:?}", file_lines(&file));
    let lines: Vec<Value> = file_lines(&file)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for path in ["/one", "/two", "/three"] {
        let l = line_for(&lines, path);
        assert_eq!(l["status"], 200);
        assert_eq!(l["backend"], b.addr.to_string());
    }
    assert!(
        p.stdout_lines().is_empty(),
        "a file target writes nothing to stdout: {:?}",
        p.stdout_lines()
    );
}
