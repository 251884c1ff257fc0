//! The shortest end-to-end check: the real binary proxies a request to a real backend.
mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_a_get_to_the_backend() {
    let b = TestBackend::start("b1").await.unwrap();
    let p = Proxy::start(&simple_config(&[b.addr], ""));
    let r = get(p.addr(), "/hello?x=1").await;
    assert_eq!(r.status(), 200);
    let v = echo(&r);
    assert_eq!(v["backend"], "b1");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["query"], "x=1");
    assert_eq!(r.headers()["via"], "1.1 waypost");
    assert_eq!(b.hits(), 1);
}
