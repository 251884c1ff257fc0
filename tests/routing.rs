//! Routing through the real listener: the most specific route wins (exact host over the longest
//! wildcard over any host; inside a host group the exact path over the longest prefix), methods
//! narrow a route, and no match is a 404 with a one-line text body that reaches no backend.
mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use support::*;

/// One backend per pool, named after its pool, so the answer says which route was taken.
struct Site {
    proxy: Proxy,
    backends: Vec<TestBackend>,
}

const POOLS: &[&str] = &[
    "api-host", "wild", "wild-eu", "only", "root", "static", "img", "logo", "read", "write",
];

async fn site() -> Site {
    let mut backends = Vec::new();
    let mut cfg = Config::new()
        .log("access = \"off\"")
        .listener("http", "127.0.0.1:0", "");
    for name in POOLS {
        let b = TestBackend::start(name).await.unwrap();
        cfg = cfg.pool(name, &[b.addr], "");
        backends.push(b);
    }
    // Less specific routes come first: the order of the file must not matter.
    let routes = r#"
[[route]]
name = "root"
path_prefix = "/"
pool = "root"

[[route]]
name = "static"
path_prefix = "/static/"
pool = "static"

[[route]]
name = "img"
path_prefix = "/static/img/"
pool = "img"

[[route]]
name = "logo"
path = "/static/img/logo.png"
pool = "logo"

[[route]]
name = "api-read"
path_prefix = "/api/"
methods = ["GET", "HEAD"]
pool = "read"

[[route]]
name = "api-write"
path_prefix = "/api/"
methods = ["POST", "PUT"]
pool = "write"

[[route]]
name = "wild"
host = "*.example.com"
pool = "wild"

[[route]]
name = "wild-eu"
host = "*.eu.example.com"
pool = "wild-eu"

[[route]]
name = "api-host"
host = ["api.example.com", "api2.example.com"]
pool = "api-host"

[[route]]
name = "only"
host = "only.example.com"
path_prefix = "/a/"
methods = ["GET"]
pool = "only"
"#;
    // The routes go in as written (more top-level TOML), in their order.
    let config = cfg.table(routes).build();
    Site {
        proxy: Proxy::start(&config),
        backends,
    }
}

impl Site {
    async fn which(&self, method: &str, host: &str, path: &str) -> String {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(self.proxy.addr(), req).await;
        assert_eq!(r.status(), 200, "{method} {host}{path}");
        // x-backend rather than the JSON body: HEAD answers have no body.
        r.headers()["x-backend"].to_str().unwrap().to_string()
    }

    fn hits(&self) -> u64 {
        self.backends.iter().map(|b| b.hits()).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_most_specific_path_wins_in_a_host_group() {
    let s = site().await;
    let cases = [
        ("/", "root"),
        ("/index.html", "root"),
        ("/static", "root"),
        ("/static/", "static"),
        ("/static/app.css", "static"),
        ("/static/img/", "img"),
        ("/static/img/cat.png", "img"),
        ("/static/img/logo.png", "logo"),
        ("/static/img/logo.png.bak", "img"),
        ("/static/img/logo.png/x", "img"),
    ];
    for (path, pool) in cases {
        assert_eq!(s.which("GET", "site.test", path).await, pool, "GET {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_the_longest_wildcard_which_beats_any_host() {
    let s = site().await;
    let cases = [
        ("api.example.com", "api-host"),
        ("api2.example.com", "api-host"),
        // Case and port do not matter.
        ("API.Example.COM:8080", "api-host"),
        ("www.example.com", "wild"),
        ("deep.www.example.com", "wild"),
        ("shop.eu.example.com", "wild-eu"),
        ("x.api.example.com", "wild"),
        // A wildcard needs a label in front: the bare domain is "any host", whose group has
        // a /static/ route.
        ("example.com", "static"),
        ("other.test", "static"),
        ("127.0.0.1", "static"),
    ];
    for (host, pool) in cases {
        assert_eq!(s.which("GET", host, "/static/x").await, pool, "Host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_narrow_a_route() {
    let s = site().await;
    assert_eq!(s.which("GET", "site.test", "/api/users").await, "read");
    assert_eq!(s.which("HEAD", "site.test", "/api/users").await, "read");
    assert_eq!(s.which("POST", "site.test", "/api/users").await, "write");
    assert_eq!(s.which("PUT", "site.test", "/api/users/1").await, "write");
    // No /api/ route takes DELETE: the next most specific route of the host group does.
    assert_eq!(s.which("DELETE", "site.test", "/api/users/1").await, "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_match_is_a_404_with_one_line_and_reaches_no_backend() {
    let s = site().await;
    assert_eq!(s.which("GET", "only.example.com", "/a/page").await, "only");
    let before = s.hits();
    // only.example.com has its own host group: no fall-through to the wildcard or any-host
    // routes, whether the path or the method does not match.
    for (method, path) in [("GET", "/b"), ("GET", "/"), ("POST", "/a/page")] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "only.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(s.proxy.addr(), req).await;
        assert_eq!(r.status(), 404, "{method} {path}");
        let body = std::str::from_utf8(r.body()).unwrap();
        assert!(
            body.ends_with('\n') && body.lines().count() == 1 && body.len() > 1,
            "not a one-line body: {body:?}"
        );
        assert!(body.starts_with("404"), "{body:?}");
        assert!(
            r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"),
            "{:?}",
            r.headers()
        );
    }
    assert_eq!(s.hits(), before, "a 404 reached a backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catch_all_an_unmatched_path_is_404() {
    let b = TestBackend::start("b").await.unwrap();
    let p = Proxy::start(
        &Config::new()
            .log("access = \"off\"")
            .listener("http", "127.0.0.1:0", "")
            .pool("web", &[b.addr], "")
            .route("docs", "path_prefix = \"/docs/\"\npool = \"web\"")
            .build(),
    );
    assert_eq!(get(p.addr(), "/docs/x").await.status(), 200);
    for path in ["/", "/docs", "/other/docs/"] {
        let r = get(p.addr(), path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.body().iter().filter(|&&c| c == b'\n').count(), 1);
    }
    // The 404 is an answer, not a broken connection: h2c clients get it too.
    let r = send_h2(
        p.addr(),
        Request::get(format!("http://{}/nope", p.addr()))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(b.hits(), 1);
}
