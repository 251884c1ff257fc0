//! The response cache through the real binary: an origin on loopback whose answers each test
//! scripts per request, and waypost in front of it with `[route.cache]`.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{eventually, send, Config, Proxy, PATIENCE};
use tokio::net::TcpListener;

/// What the origin answers to one request.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
    /// Wait for a permit from this before answering (after `delay`): a reply the test holds.
    hold: Option<Arc<tokio::sync::Semaphore>>,
}

impl Reply {
    fn ok(headers: &[(&'static str, &str)], body: &str) -> Reply {
        Reply {
            status: 200,
            headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            hold: None,
        }
    }

    fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    fn delay(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }

    /// Answer only once `gate` gives a permit (the test adds them to release held replies).
    fn hold(mut self, gate: &Arc<tokio::sync::Semaphore>) -> Reply {
        self.hold = Some(gate.clone());
        self
    }
}

type Script = Arc<dyn Fn(&http::request::Parts, u64) -> Reply + Send + Sync>;

/// An origin server: every request is counted per path and answered by the script (which is
/// given the request and how many times its path was asked before).
struct Origin {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    /// Requests per path being answered right now (held or delayed), counted at the origin.
    in_flight: Arc<Mutex<HashMap<String, u64>>>,
    /// The method and headers of every request, in arrival order.
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Seen {
    path: String,
    method: http::Method,
    headers: HeaderMap,
}

impl Origin {
    async fn start(script: impl Fn(&http::request::Parts, u64) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap(), Arc::new(script)).await
    }

    async fn start_on(addr: SocketAddr, script: Script) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let in_flight: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (h, f, s) = (hits.clone(), in_flight.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, f, s, script) = (h.clone(), f.clone(), s.clone(), script.clone());
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (h, f, s, script) = (h.clone(), f.clone(), s.clone(), script.clone());
                        async move {
                            let (parts, _) = req.into_parts();
                            let pq = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                            let n = {
                                let mut m = h.lock().unwrap();
                                let e = m.entry(pq.clone()).or_insert(0);
                                *e += 1;
                                *e - 1
                            };
                            s.lock().unwrap().push(Seen {
                                path: pq.clone(),
                                method: parts.method.clone(),
                                headers: parts.headers.clone(),
                            });
                            let reply = script(&parts, n);
                            *f.lock().unwrap().entry(pq.clone()).or_insert(0) += 1;
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            if let Some(gate) = &reply.hold {
                                gate.acquire().await.unwrap().forget();
                            }
                            *f.lock().unwrap().get_mut(&pq).unwrap() -= 1;
                            let mut r = Response::new(Full::new(Bytes::from(reply.body)));
                            *r.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                r.headers_mut().append(k, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            hits,
            in_flight,
            seen,
            task,
        }
    }

    fn hits(&self, pq: &str) -> u64 {
        self.hits.lock().unwrap().get(pq).copied().unwrap_or(0)
    }

    /// Requests for `pq` the origin is answering right now.
    fn in_flight(&self, pq: &str) -> u64 {
        self.in_flight.lock().unwrap().get(pq).copied().unwrap_or(0)
    }

    /// The headers of the last request for `pq`.
    fn last_request(&self, pq: &str) -> HeaderMap {
        self.last(pq, |s| s.headers.clone())
    }

    /// The method of the last request for `pq`.
    fn last_method(&self, pq: &str) -> http::Method {
        self.last(pq, |s| s.method.clone())
    }

    fn last<T>(&self, pq: &str, f: impl Fn(&Seen) -> T) -> T {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .rev()
            .find(|s| s.path == pq)
            .map(f)
            .expect("the origin saw that path")
    }

    fn stop(self) {
        self.task.abort();
    }
}

fn config(origin: SocketAddr, cache: &str, route_cache: &str) -> String {
    Config::new()
        .log("access = \"stdout\"")
        .table(&format!("[cache]\n{cache}"))
        .listener("http", "127.0.0.1:0", "")
        .pool("web", &[origin], "response_timeout = \"5s\"")
        .route(
            "site",
            &format!("path_prefix = \"/\"\npool = \"web\"\n\n[route.cache]\n{route_cache}"),
        )
        .build()
}

async fn req(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Response<Bytes> {
    let mut b = Request::get(path).header("host", "cache.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(p.addr(), b.body(Full::new(Bytes::new())).unwrap()).await
}

fn header<'a>(r: &'a Response<Bytes>, name: &str) -> &'a str {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn cache_status(r: &Response<Bytes>) -> &str {
    header(r, "cache-status")
}

/// The ttl= of a Cache-Status.
fn ttl(r: &Response<Bytes>) -> i64 {
    let s = cache_status(r);
    s.split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("ttl="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {s:?}"))
}

/// Seconds from now until `unix` (a literal date's time stamp).
fn secs_until(unix: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    unix - now
}

/// Wait until the entry for `path` (as these request headers select it) is no longer fresh:
/// `only-if-cached` gets 504 for a stale entry and never goes upstream (RFC 9111 §5.2.1.7).
async fn wait_stale(p: &Proxy, path: &str, headers: &[(&str, &str)]) {
    let mut h = headers.to_vec();
    h.push(("cache-control", "only-if-cached"));
    assert!(
        eventually(PATIENCE, || async { req(p, path, &h).await.status() == 504 }).await,
        "{path} never went stale"
    );
}

/// Wait until the entry for `path` has been stale for a whole second, so that Cache-Status
/// shows a negative ttl (it counts whole seconds). Looks with `only-if-cached, max-stale`,
/// which serves the stale entry without going upstream (counted as a stale answer).
async fn wait_stale_by_a_second(p: &Proxy, path: &str) {
    let h = [("cache-control", "only-if-cached, max-stale=3600")];
    assert!(
        eventually(PATIENCE, || async {
            let r = req(p, path, &h).await;
            r.status() == 200 && ttl(&r) < 0
        })
        .await,
        "{path} never went stale"
    );
}

#[tokio::test]
async fn what_is_stored_and_for_how_long() {
    // (response headers, status, stored?, expected ttl range when stored)
    struct Row {
        name: &'static str,
        status: u16,
        headers: Vec<(&'static str, String)>,
        request: Vec<(&'static str, &'static str)>,
        stored: bool,
        ttl: (i64, i64),
    }
    let row = |name, status, headers: &[(&'static str, String)], stored, ttl| Row {
        name,
        status,
        headers: headers.to_vec(),
        request: vec![],
        stored,
        ttl,
    };
    let s = |v: &str| v.to_string();
    let rows = vec![
        row("max-age", 200, &[("cache-control", s("max-age=60"))], true, (58, 60)),
        row(
            "s-maxage wins over max-age",
            200,
            &[("cache-control", s("max-age=600, s-maxage=30"))],
            true,
            (28, 30),
        ),
        // A literal date (the origin's server adds Date: now): 2040-01-01T00:00:00Z.
        row(
            "expires against date",
            200,
            &[("expires", s("Sun, 01 Jan 2040 00:00:00 GMT"))],
            true,
            (secs_until(2_208_988_800) - 30, secs_until(2_208_988_800)),
        ),
        row(
            "age from upstream counts",
            200,
            &[("cache-control", s("max-age=60")), ("age", s("50"))],
            true,
            (8, 10),
        ),
        row("default_ttl for cacheable status", 200, &[], true, (8, 10)),
        row("default_ttl for 404", 404, &[], true, (8, 10)),
        row("no default_ttl for 302", 302, &[("location", s("/x"))], false, (0, 0)),
        row("no default_ttl for 500", 500, &[], false, (0, 0)),
        row(
            "no-store",
            200,
            &[("cache-control", s("max-age=60, no-store"))],
            false,
            (0, 0),
        ),
        row(
            "private",
            200,
            &[("cache-control", s("private, max-age=60"))],
            false,
            (0, 0),
        ),
        row(
            "vary star",
            200,
            &[("cache-control", s("max-age=60")), ("vary", s("*"))],
            false,
            (0, 0),
        ),
        row(
            "immutable",
            200,
            &[("cache-control", s("public, max-age=3600, immutable"))],
            true,
            (3598, 3600),
        ),
        Row {
            request: vec![("authorization", "Bearer x")],
            ..row(
                "authorization without public",
                200,
                &[("cache-control", s("max-age=60"))],
                false,
                (0, 0),
            )
        },
        Row {
            request: vec![("authorization", "Bearer x")],
            ..row(
                "authorization with public",
                200,
                &[("cache-control", s("public, max-age=60"))],
                true,
                (58, 60),
            )
        },
        Row {
            request: vec![("cache-control", "no-store")],
            ..row(
                "request no-store",
                200,
                &[("cache-control", s("max-age=60"))],
                false,
                (0, 0),
            )
        },
    ];
    type Answer = (u16, Vec<(&'static str, String)>);
    let table: Arc<Vec<Answer>> = Arc::new(rows.iter().map(|r| (r.status, r.headers.clone())).collect());
    let t = table.clone();
    let origin = Origin::start(move |parts, _| {
        let i: usize = parts.uri.path().trim_start_matches("/row/").parse().unwrap();
        let (status, headers) = &t[i];
        Reply {
            status: *status,
            headers: headers.clone(),
            body: format!("row {i}").into_bytes(),
            delay: Duration::ZERO,
            hold: None,
        }
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", "default_ttl = \"10s\""));
    for (i, r) in rows.iter().enumerate() {
        let path = format!("/row/{i}");
        let first = req(&p, &path, &r.request).await;
        assert_eq!(first.status().as_u16(), r.status, "{}", r.name);
        let second = req(&p, &path, &r.request).await;
        assert_eq!(second.body(), first.body(), "{}", r.name);
        if r.stored {
            assert!(
                cache_status(&first).contains("stored"),
                "{}: {}",
                r.name,
                cache_status(&first)
            );
            assert_eq!(
                origin.hits(&path),
                1,
                "{}: the second request was served from cache",
                r.name
            );
            assert!(
                cache_status(&second).starts_with("waypost; hit"),
                "{}: {}",
                r.name,
                cache_status(&second)
            );
            let t = ttl(&second);
            assert!(t >= r.ttl.0 && t <= r.ttl.1, "{}: ttl {t} not in {:?}", r.name, r.ttl);
            assert!(!header(&second, "age").is_empty(), "{}: Age on a hit", r.name);
        } else {
            assert_eq!(origin.hits(&path), 2, "{}: not stored, both went to the origin", r.name);
            assert!(
                !cache_status(&second).contains("hit"),
                "{}: {}",
                r.name,
                cache_status(&second)
            );
        }
    }
    origin.stop();
}

#[tokio::test]
async fn request_directives_decide_what_is_served() {
    let origin = Origin::start(|parts, n| {
        let cc = match parts.uri.path() {
            "/short" => "max-age=1",
            _ => "max-age=100",
        };
        Reply::ok(&[("cache-control", cc)], &format!("version {n}"))
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    // only-if-cached on a miss: 504, nothing sent upstream.
    let r = req(&p, "/a", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status(), 504);
    assert_eq!(origin.hits("/a"), 0);
    assert_eq!(req(&p, "/a", &[]).await.body(), "version 0");
    // only-if-cached on a hit: served.
    let r = req(&p, "/a", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "version 0");
    // no-cache: must go to the origin (no validator here, so a full fetch that replaces it).
    let r = req(&p, "/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(r.body(), "version 1");
    assert_eq!(origin.hits("/a"), 2);
    assert_eq!(req(&p, "/a", &[]).await.body(), "version 1", "the refetch was stored");
    // min-fresh beyond what is left: forwarded.
    let r = req(&p, "/a", &[("cache-control", "min-fresh=1000")]).await;
    assert_eq!(r.body(), "version 2");
    // max-age=0 from the client on an entry that has some age: forwarded.
    assert!(
        eventually(PATIENCE, || async {
            let r = req(&p, "/a", &[("cache-control", "only-if-cached")]).await;
            header(&r, "age").parse::<u64>().unwrap_or(0) >= 1
        })
        .await,
        "the entry never aged"
    );
    let r = req(&p, "/a", &[("cache-control", "max-age=0")]).await;
    assert_eq!(r.body(), "version 3");
    // max-stale accepts a stale entry.
    assert_eq!(req(&p, "/short", &[]).await.body(), "version 0");
    wait_stale_by_a_second(&p, "/short").await;
    let r = req(&p, "/short", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(r.body(), "version 0", "stale but accepted");
    assert!(ttl(&r) < 0, "served stale: {}", cache_status(&r));
    assert_eq!(origin.hits("/short"), 1);
    // Without it, the stale entry is refetched.
    assert_eq!(req(&p, "/short", &[]).await.body(), "version 1");
    origin.stop();
}

#[tokio::test]
async fn revalidation_both_ways() {
    // The origin: ETag "v1" until told otherwise; answers If-None-Match with 304.
    let origin = Origin::start(|parts, n| {
        let inm = parts
            .headers
            .get("if-none-match")
            .map(|v| v.to_str().unwrap().to_string());
        let lm = "Sat, 01 Jan 2000 00:00:00 GMT";
        if inm.as_deref() == Some("\"v1\"") {
            return Reply::ok(
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=1"),
                    ("x-refreshed", &n.to_string()),
                ],
                "",
            )
            .status(304);
        }
        Reply::ok(
            &[
                ("etag", "\"v1\""),
                ("last-modified", lm),
                ("cache-control", "max-age=1"),
                ("x-refreshed", "no"),
            ],
            "the body",
        )
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    let first = req(&p, "/doc", &[]).await;
    assert_eq!(first.body(), "the body");
    // A client's conditional request is answered 304 from the cache.
    let r = req(&p, "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status(), 304);
    assert!(r.body().is_empty());
    assert_eq!(header(&r, "etag"), "\"v1\"");
    assert!(cache_status(&r).starts_with("waypost; hit"));
    let r = req(&p, "/doc", &[("if-modified-since", "Sun, 02 Jan 2000 00:00:00 GMT")]).await;
    assert_eq!(r.status(), 304);
    let r = req(&p, "/doc", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "the body");
    assert_eq!(origin.hits("/doc"), 1);
    // Stale: revalidated upstream with the stored validators; the 304 refreshes the stored
    // headers and the client gets the full stored body.
    wait_stale(&p, "/doc", &[]).await;
    let r = req(&p, "/doc", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "the body");
    assert_eq!(origin.hits("/doc"), 2);
    let sent = origin.last_request("/doc");
    assert_eq!(sent.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(sent.get("if-modified-since").unwrap(), "Sat, 01 Jan 2000 00:00:00 GMT");
    assert_eq!(header(&r, "x-refreshed"), "1", "headers from the 304 were merged");
    assert!(
        cache_status(&r).contains("fwd=stale") && cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    // Fresh again after the refresh.
    let r = req(&p, "/doc", &[]).await;
    assert!(cache_status(&r).starts_with("waypost; hit"), "{}", cache_status(&r));
    assert_eq!(header(&r, "x-refreshed"), "1");
    assert_eq!(origin.hits("/doc"), 2);
    // A stale entry revalidated for a conditional client: 304 straight to it.
    wait_stale(&p, "/doc", &[]).await;
    let r = req(&p, "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(origin.hits("/doc"), 3);
    assert_eq!(
        p.metric("waypost_cache_requests_total{route=\"site\",result=\"revalidated\"}")
            .await,
        Some(2.0)
    );
    origin.stop();
}

#[tokio::test]
async fn vary_keeps_one_variant_per_request_header_combination() {
    let origin = Origin::start(|parts, n| {
        let enc = parts
            .headers
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = format!("enc={enc} n={n}");
        match parts.uri.path() {
            "/star" => Reply::ok(&[("cache-control", "max-age=60"), ("vary", "*")], &body),
            _ => Reply::ok(&[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")], &body),
        }
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    let gz = req(&p, "/v", &[("accept-encoding", "gzip")]).await;
    let br = req(&p, "/v", &[("accept-encoding", "br")]).await;
    let none = req(&p, "/v", &[]).await;
    assert_eq!(gz.body(), "enc=gzip n=0");
    assert_eq!(br.body(), "enc=br n=1");
    assert_eq!(none.body(), "enc= n=2");
    assert_eq!(origin.hits("/v"), 3, "three variants fetched");
    // Each variant is now a hit, and normalisation makes equivalent headers share one.
    assert_eq!(
        req(&p, "/v", &[("accept-encoding", "gzip")]).await.body(),
        "enc=gzip n=0"
    );
    assert_eq!(
        req(&p, "/v", &[("accept-encoding", "GZIP ;q=1.0")]).await.body(),
        "enc=gzip n=0"
    );
    assert_eq!(req(&p, "/v", &[("accept-encoding", "br")]).await.body(), "enc=br n=1");
    assert_eq!(req(&p, "/v", &[]).await.body(), "enc= n=2");
    assert_eq!(origin.hits("/v"), 3);
    let vary_miss = req(&p, "/v", &[("accept-encoding", "zstd")]).await;
    assert_eq!(vary_miss.body(), "enc=zstd n=3");
    // Vary: * is never served from cache.
    req(&p, "/star", &[]).await;
    let r = req(&p, "/star", &[]).await;
    assert_eq!(r.body(), "enc= n=1");
    assert_eq!(origin.hits("/star"), 2);
    origin.stop();
}

#[tokio::test]
async fn concurrent_cold_requests_make_one_origin_request() {
    // The waiters behind the first /nostore request are held at the origin until the test
    // releases them.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start(move |parts, n| match parts.uri.path() {
        "/slow" => {
            Reply::ok(&[("cache-control", "max-age=60")], &format!("made {n}")).delay(Duration::from_millis(400))
        }
        _ if n == 0 => {
            Reply::ok(&[("cache-control", "no-store")], &format!("private {n}")).delay(Duration::from_millis(400))
        }
        _ => Reply::ok(&[("cache-control", "no-store")], &format!("private {n}")).hold(&g),
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    let addr = p.addr();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        tasks.push(tokio::spawn(async move {
            let r = send(
                addr,
                Request::get("/slow")
                    .header("host", "cache.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
            (r.status(), r.body().clone(), cache_status(&r).to_string())
        }));
    }
    let mut collapsed = 0;
    for t in tasks {
        let (status, body, cs) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "made 0");
        if cs.contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(
        origin.hits("/slow"),
        1,
        "100 concurrent cold requests, one origin request"
    );
    assert!(collapsed >= 90, "most waited for the first: {collapsed}");

    // An uncacheable URL: the waiters go upstream together as soon as the first response says
    // so, not one after another: the other 19 are all at the origin at once (where they are
    // held until the test lets them go).
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            send(
                addr,
                Request::get("/nostore")
                    .header("host", "cache.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .status()
        }));
    }
    let together = eventually(PATIENCE, || async { origin.in_flight("/nostore") == 19 }).await;
    assert!(
        together,
        "uncacheable requests were serialised: at most {} at the origin at once",
        origin.in_flight("/nostore")
    );
    gate.add_permits(19);
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(origin.hits("/nostore"), 20);
    // And from then on they skip the wait entirely (a pass marker).
    gate.add_permits(1);
    let r = req(&p, "/nostore", &[]).await;
    assert!(cache_status(&r).contains("fwd=miss"), "{}", cache_status(&r));
    origin.stop();
}

#[tokio::test]
async fn a_new_version_evicts_the_old_one() {
    let origin = Origin::start(|parts, _| {
        // The origin says max-age=60; versioned URLs are kept for versioned_ttl regardless.
        Reply::ok(
            &[("cache-control", "max-age=60")],
            &format!("asset {}", parts.uri.query().unwrap_or("")),
        )
    })
    .await;
    let p = Proxy::start(&config(
        origin.addr,
        "",
        "version_param = \"v\"\nversioned_ttl = \"30d\"",
    ));
    let r = req(&p, "/app.js?v=1", &[]).await;
    assert_eq!(r.body(), "asset v=1");
    let r = req(&p, "/app.js?v=1", &[]).await;
    assert!(cache_status(&r).starts_with("waypost; hit"));
    assert!(ttl(&r) > 29 * 86400, "stored for versioned_ttl: {}", cache_status(&r));
    // Another file's versions are independent.
    req(&p, "/lib.js?v=1", &[]).await;
    assert_eq!(p.metric("waypost_cache_entries").await, Some(2.0));
    // v=2 of app.js evicts v=1.
    assert_eq!(req(&p, "/app.js?v=2", &[]).await.body(), "asset v=2");
    assert_eq!(
        p.metric("waypost_cache_entries").await,
        Some(2.0),
        "app.js v2 + lib.js v1"
    );
    let r = req(&p, "/app.js?v=1", &[]).await;
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "v=1 was evicted: {}",
        cache_status(&r)
    );
    assert_eq!(origin.hits("/app.js?v=1"), 2);
    assert!(cache_status(&req(&p, "/lib.js?v=1", &[]).await).starts_with("waypost; hit"));
    origin.stop();
}

async fn purge(p: &Proxy, body: &str) -> (u16, serde_json::Value) {
    let r = send(
        p.admin,
        Request::post("/cache/purge")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap(),
    )
    .await;
    let v = serde_json::from_slice(r.body()).unwrap_or(serde_json::Value::Null);
    (r.status().as_u16(), v)
}

#[tokio::test]
async fn purge_by_url_prefix_tag_and_all() {
    let origin = Origin::start(|parts, n| {
        let path = parts.uri.path();
        let tag = if path.starts_with("/assets/") {
            "assets site"
        } else {
            "site"
        };
        Reply::ok(
            &[
                ("cache-control", "max-age=600"),
                ("surrogate-key", tag),
                ("cache-tag", "all-pages"),
            ],
            &format!("{path} {n}"),
        )
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    let paths = ["/assets/a.css", "/assets/b.css", "/index.html", "/about.html", "/x?q=1"];
    for path in paths {
        req(&p, path, &[]).await;
    }
    assert_eq!(p.metric("waypost_cache_entries").await, Some(5.0));
    // By URL (the host is the request's Host).
    assert_eq!(
        purge(&p, r#"{"url": "http://cache.test/x?q=1"}"#).await,
        (200, serde_json::json!({"purged": 1}))
    );
    assert_eq!(req(&p, "/x?q=1", &[]).await.body(), "/x 1");
    // By prefix.
    assert_eq!(purge(&p, r#"{"prefix": "/assets/"}"#).await.1["purged"], 2);
    assert_eq!(req(&p, "/assets/a.css", &[]).await.body(), "/assets/a.css 1");
    assert!(cache_status(&req(&p, "/index.html", &[]).await).starts_with("waypost; hit"));
    // By tag, from Surrogate-Key and from Cache-Tag.
    req(&p, "/assets/b.css", &[]).await;
    assert_eq!(purge(&p, r#"{"tag": "assets"}"#).await.1["purged"], 2);
    assert_eq!(purge(&p, r#"{"tag": "assets"}"#).await.1["purged"], 0);
    assert_eq!(purge(&p, r#"{"tag": "all-pages"}"#).await.1["purged"], 3);
    assert_eq!(p.metric("waypost_cache_entries").await, Some(0.0));
    // All.
    for path in paths {
        req(&p, path, &[]).await;
    }
    assert_eq!(purge(&p, r#"{"all": true}"#).await.1["purged"], 5);
    assert_eq!(p.metric("waypost_cache_purged_total").await, Some(13.0));
    // Bad requests say why.
    for bad in [
        "not json",
        "{}",
        r#"{"url": 3}"#,
        r#"{"all": false}"#,
        r#"{"colour": "red"}"#,
        r#"{"url":"/a","tag":"b"}"#,
    ] {
        let (code, v) = purge(&p, bad).await;
        assert_eq!(code, 400, "{bad}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }
    origin.stop();
}

#[tokio::test]
async fn stale_while_revalidate_refreshes_once_in_the_background() {
    // The refresh is held at the origin until the test lets it go.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start(move |_, n| {
        // The refreshed response stays fresh, so that a slow machine cannot see it go stale
        // (and refresh again) before the test reads it.
        let cc = if n == 0 {
            "max-age=1, stale-while-revalidate=60"
        } else {
            "max-age=600, stale-while-revalidate=60"
        };
        let r = Reply::ok(&[("cache-control", cc)], &format!("gen {n}"));
        if n == 0 {
            r
        } else {
            r.hold(&g)
        }
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    assert_eq!(req(&p, "/page", &[]).await.body(), "gen 0");
    wait_stale_by_a_second(&p, "/page").await;
    // Stale now: 20 concurrent requests are all answered from the stale entry while the one
    // refresh they cause is still held at the origin.
    let addr = p.addr();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(async move {
            let r = tokio::time::timeout(
                PATIENCE,
                send(
                    addr,
                    Request::get("/page")
                        .header("host", "cache.test")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                ),
            )
            .await
            .expect("a stale answer waited for the (held) refresh");
            (r.body().clone(), cache_status(&r).to_string())
        }));
    }
    for t in tasks {
        let (body, cs) = t.await.unwrap();
        assert_eq!(body, "gen 0");
        assert!(cs.starts_with("waypost; hit; ttl=-"), "{cs}");
    }
    assert!(eventually(PATIENCE, || async { origin.in_flight("/page") == 1 }).await);
    assert_eq!(origin.hits("/page"), 2, "one refresh for 20 stale answers");
    gate.add_permits(100);
    let fresh = eventually(PATIENCE, || async { req(&p, "/page", &[]).await.body() == "gen 1" }).await;
    assert!(fresh, "the refreshed response replaced the stale one");
    assert_eq!(origin.hits("/page"), 2, "refreshed exactly once");
    origin.stop();
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_is_down() {
    let origin = Origin::start(|parts, _| match parts.uri.path() {
        "/route-default" => Reply::ok(&[("cache-control", "max-age=1")], "kept by the route default"),
        "/fails" => Reply::ok(&[("cache-control", "max-age=1, stale-if-error=60")], "kept"),
        _ => Reply::ok(&[("cache-control", "max-age=1")], "not kept"),
    })
    .await;
    let addr = origin.addr;
    let p = Proxy::start(&config(addr, "", "stale_if_error = \"0s\""));
    let q = Proxy::start(&config(addr, "", "stale_if_error = \"30s\""));
    req(&p, "/fails", &[]).await;
    req(&p, "/other", &[]).await;
    req(&q, "/route-default", &[]).await;
    origin.stop();
    for path in ["/fails", "/other"] {
        wait_stale(&p, path, &[]).await;
    }
    wait_stale(&q, "/route-default", &[]).await;
    // The origin is gone: the response's stale-if-error keeps serving.
    let r = req(&p, "/fails", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "kept");
    assert!(cache_status(&r).contains("fwd=stale"), "{}", cache_status(&r));
    assert!(cache_status(&r).contains("stale-if-error"), "{}", cache_status(&r));
    // Without stale-if-error: the error.
    let r = req(&p, "/other", &[]).await;
    assert_eq!(r.status(), 502);
    // The route's default when the response gives none.
    let r = req(&q, "/route-default", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "kept by the route default");
    // An origin that answers 503 counts as failing too.
    let origin = Origin::start_on(
        addr,
        Arc::new(|_: &http::request::Parts, _| Reply::ok(&[], "down for maintenance").status(503)),
    )
    .await;
    let r = req(&p, "/fails", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "kept");
    assert!(cache_status(&r).contains("fwd-status=503"), "{}", cache_status(&r));
    assert!(
        p.metric("waypost_cache_requests_total{route=\"site\",result=\"stale\"}")
            .await
            >= Some(2.0)
    );
    origin.stop();
}

#[tokio::test]
async fn unsafe_requests_invalidate_their_target_and_location() {
    let origin = Origin::start(|parts, n| {
        if parts.method == http::Method::POST {
            return Reply::ok(
                &[
                    ("location", "/items/7"),
                    ("content-location", "http://elsewhere.test/other"),
                ],
                "made",
            )
            .status(201);
        }
        Reply::ok(
            &[("cache-control", "max-age=600")],
            &format!("{} {n}", parts.uri.path()),
        )
    })
    .await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    for path in ["/items", "/items/7", "/other"] {
        req(&p, path, &[]).await;
    }
    let r = send(
        p.addr(),
        Request::post("/items")
            .header("host", "cache.test")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), 201);
    // The origin counts the POST too: the GET after it is its third request for /items.
    assert_eq!(
        req(&p, "/items", &[]).await.body(),
        "/items 2",
        "the target was invalidated"
    );
    assert_eq!(
        req(&p, "/items/7", &[]).await.body(),
        "/items/7 1",
        "Location was invalidated"
    );
    assert_eq!(
        req(&p, "/other", &[]).await.body(),
        "/other 0",
        "another origin's URL is not touched"
    );
    origin.stop();
}

#[tokio::test]
async fn head_and_ranges_are_answered_from_a_stored_get() {
    let origin =
        Origin::start(|_, _| Reply::ok(&[("cache-control", "max-age=600"), ("etag", "\"e\"")], "0123456789")).await;
    let p = Proxy::start(&config(origin.addr, "", ""));
    req(&p, "/f", &[]).await;
    let head = send(
        p.addr(),
        Request::head("/f")
            .header("host", "cache.test")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), "10");
    assert!(head.body().is_empty());
    assert!(cache_status(&head).starts_with("waypost; hit"));
    let r = req(&p, "/f", &[("range", "bytes=2-5")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.body(), "2345");
    assert_eq!(header(&r, "content-range"), "bytes 2-5/10");
    let r = req(&p, "/f", &[("range", "bytes=-3")]).await;
    assert_eq!(r.body(), "789");
    let r = req(&p, "/f", &[("range", "bytes=20-")]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */10");
    let r = req(&p, "/f", &[("range", "bytes=0-1,4-5")]).await;
    assert_eq!(r.status(), 200, "several ranges: the whole response");
    assert_eq!(origin.hits("/f"), 1);
    // A range on a miss goes through and is not stored.
    let r = req(&p, "/g", &[("range", "bytes=0-1")]).await;
    assert_eq!(r.status(), 200, "this origin ignores ranges");
    req(&p, "/g", &[]).await;
    assert_eq!(origin.hits("/g"), 2);
    // HEAD on a miss goes upstream as HEAD.
    let head = send(
        p.addr(),
        Request::head("/h")
            .header("host", "cache.test")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(head.status(), 200);
    assert!(head.body().is_empty());
    assert_eq!(origin.hits("/h"), 1);
    assert_eq!(origin.last_method("/h"), http::Method::HEAD, "sent upstream as HEAD");
    assert_eq!(
        origin.last_method("/f"),
        http::Method::GET,
        "the stored GET was fetched as GET"
    );
    origin.stop();
}

#[tokio::test]
async fn set_cookie_is_never_served_from_cache_and_large_objects_stream_through() {
    let origin = Origin::start(|parts, n| match parts.uri.path() {
        "/big" => Reply {
            status: 200,
            headers: vec![("cache-control", "max-age=60".into())],
            body: vec![b'x'; 3 << 20],
            delay: Duration::ZERO,
            hold: None,
        },
        _ => Reply::ok(
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", &format!("session=user{n}")),
            ],
            "page",
        ),
    })
    .await;
    let p = Proxy::start(&config(
        origin.addr,
        "max_size = \"8MiB\"\nmax_object_size = \"1MiB\"",
        "",
    ));
    let first = req(&p, "/page", &[]).await;
    assert_eq!(
        header(&first, "set-cookie"),
        "session=user0",
        "the fetching client gets its cookie"
    );
    let second = req(&p, "/page", &[]).await;
    assert!(cache_status(&second).starts_with("waypost; hit"));
    assert!(
        second.headers().get("set-cookie").is_none(),
        "another client never gets it"
    );
    let big = req(&p, "/big", &[]).await;
    assert_eq!(big.body().len(), 3 << 20);
    assert!(cache_status(&big).contains("too-large"), "{}", cache_status(&big));
    req(&p, "/big", &[]).await;
    assert_eq!(origin.hits("/big"), 2);
    origin.stop();
}

/// Memory a process may gain over its baseline without holding any more responses: allocator
/// arenas and fragmentation.
const RSS_SLACK_KIB: u64 = 8 << 10;

#[tokio::test]
async fn memory_stays_bounded_under_a_flood_of_distinct_urls() {
    let origin = Origin::start(|_, _| Reply {
        status: 200,
        headers: vec![("cache-control", "max-age=600".into())],
        body: vec![b'y'; 64 << 10],
        delay: Duration::ZERO,
        hold: None,
    })
    .await;
    let p = Proxy::start(&config(
        origin.addr,
        "max_size = \"2MiB\"\nmax_object_size = \"1MiB\"",
        "",
    ));
    let addr = p.addr();
    // 4 clients at once, each asking for `per` distinct URLs under `prefix`.
    let flood = |prefix: &'static str, per: usize| async move {
        let mut tasks = Vec::new();
        for w in 0..4 {
            tasks.push(tokio::spawn(async move {
                for i in 0..per {
                    let r = send(
                        addr,
                        Request::get(format!("/{prefix}/{w}/{i}"))
                            .header("host", "cache.test")
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                    .await;
                    assert_eq!(r.body().len(), 64 << 10);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    };
    // The baseline: the same traffic already filled the cache (and the buffers and allocator
    // arenas four clients use) once.
    flood("warm", 50).await;
    let baseline = p.rss_kib();
    // 1000 responses of 64 KiB go through: 62.5 MiB, against a 2 MiB cache.
    flood("flood", 250).await;
    let bytes = p.metric("waypost_cache_bytes").await.unwrap();
    let entries = p.metric("waypost_cache_entries").await.unwrap();
    assert!(bytes <= (2 << 20) as f64, "cache holds {bytes} bytes");
    assert!(entries > 0.0 && entries < 40.0, "{entries} entries");
    let grown = p.rss_kib().saturating_sub(baseline);
    eprintln!("rss baseline {baseline} KiB, grown by {grown} KiB");
    // What the store may hold (2 MiB) plus room for allocator noise: far below the 62.5 MiB a
    // cache that kept every response would add.
    assert!(
        grown < RSS_SLACK_KIB + (2 << 10),
        "RSS grew by {grown} KiB over the baseline"
    );
    origin.stop();
}

#[tokio::test]
async fn cache_config_is_checked() {
    // In-process, through what `waypost check` runs: the problems, each as it prints them.
    let problems = |toml: &str| -> Vec<String> {
        match waypost::config::parse(toml, None) {
            Ok(_) => Vec::new(),
            Err(ps) => ps.iter().map(|p| p.to_string()).collect(),
        }
    };
    let cases = [
        ("[cache]\nmax_size = \"lots\"", "cache.max_size", "invalid size"),
        ("[cache]\nmax_size = \"512KiB\"", "cache.max_size", "at least 1MiB"),
        (
            "[cache]\nmax_size = \"2MiB\"\nmax_object_size = \"4MiB\"",
            "cache.max_object_size",
            "not be larger than max_size",
        ),
        ("[cache]\nsize = 1", "cache.size", "unknown key"),
    ];
    for (cache, key, msg) in cases {
        let found = problems(&config(
            "127.0.0.1:9".parse().unwrap(),
            cache.trim_start_matches("[cache]\n"),
            "",
        ));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with(&format!("{key}: ")) && p.contains(msg)),
            "{cache}: {found:?}"
        );
    }
    let route_cases = [
        ("default_ttl = \"soon\"", "route[0].cache.default_ttl"),
        ("version_param = \"v w\"", "route[0].cache.version_param"),
        ("versioned_ttl = \"0s\"", "route[0].cache.versioned_ttl"),
        ("stale_while_revalidate = 5", "route[0].cache.stale_while_revalidate"),
        ("colour = \"red\"", "route[0].cache.colour"),
    ];
    for (rc, key) in route_cases {
        let found = problems(&config("127.0.0.1:9".parse().unwrap(), "", rc));
        assert!(
            found.iter().any(|p| p.starts_with(&format!("{key}: "))),
            "{rc}: {found:?}"
        );
    }
}

#[tokio::test]
async fn route_defaults_for_stale_serving_and_http2_clients() {
    let origin = Origin::start(|_, n| Reply::ok(&[("cache-control", "max-age=1")], &format!("gen {n}"))).await;
    let p = Proxy::start(&config(origin.addr, "", "stale_while_revalidate = \"30s\""));
    let h2 = |path: &'static str| {
        support::send_h2(
            p.addr(),
            Request::get(format!("http://cache.test{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    assert_eq!(h2("/d").await.body(), "gen 0");
    let hit = h2("/d").await;
    assert!(cache_status(&hit).starts_with("waypost; hit"), "{}", cache_status(&hit));
    // An HTTP/1.1 client shares the entry (same host and path).
    assert!(cache_status(&req(&p, "/d", &[]).await).starts_with("waypost; hit"));
    wait_stale_by_a_second(&p, "/d").await;
    // The response has no stale-while-revalidate: the route's default serves it stale and
    // refreshes it in the background.
    let stale = h2("/d").await;
    assert_eq!(stale.body(), "gen 0");
    assert!(ttl(&stale) < 0, "{}", cache_status(&stale));
    assert!(eventually(PATIENCE, || async { req(&p, "/d", &[]).await.body() == "gen 1" }).await);
    assert_eq!(origin.hits("/d"), 2);
    origin.stop();
}
