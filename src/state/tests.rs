//! What a reload carries over in `State::build`: the backends it keeps (same address, reached
//! the same way) keep their counters, health and idle connections, whatever their new weight;
//! the ones it removes are dropped. Configs go through the real parser; requests go to real
//! loopback backends.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;

use super::State;
use crate::body::ProxyBody;
use crate::health;
use crate::testbackend::TestBackend;
use crate::upstream::{self, Attempts, Backend, Lease, PickHint, Pool};

/// A config with one pool `web` of these backends (address, weight).
fn config(backends: &[(SocketAddr, u32)]) -> crate::config::Config {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
        .collect();
    let text = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n\
         [[pool]]\nname = \"web\"\nbackends = [{}]\n\n\
         [[route]]\nname = \"r\"\npath_prefix = \"/\"\npool = \"web\"\n",
        list.join(", ")
    );
    match crate::config::parse(&text, None) {
        Ok(c) => c,
        Err(p) => panic!("test config does not parse: {p:?}\n{text}"),
    }
}

fn build(backends: &[(SocketAddr, u32)], previous: Option<&State>, generation: u64) -> State {
    match State::build(config(backends), previous, generation, &Default::default()) {
        Ok(s) => s,
        Err(p) => panic!("state does not build: {p:?}"),
    }
}

fn member(pool: &Pool, addr: SocketAddr) -> &Arc<Backend> {
    pool.members
        .iter()
        .find(|m| m.addr == addr)
        .unwrap_or_else(|| panic!("{addr} is not in pool {}", pool.name))
}

/// One GET to the member at `addr`, answered; the lease is the caller's.
async fn request(pool: &Pool, addr: SocketAddr) -> (http::Response<hyper::body::Incoming>, Lease) {
    let req = http::Request::builder()
        .uri("/")
        .header(http::header::HOST, "test")
        .body(ProxyBody::Empty)
        .expect("request");
    let hint = PickHint {
        member: pool.members.iter().position(|m| m.addr == addr),
        only_member: true,
        ..PickHint::default()
    };
    let mut notes = Attempts::default();
    upstream::forward(pool, req, None, hint, &mut notes)
        .await
        .expect("the backend answers")
}

/// A request read to its end: its connection goes idle.
async fn finished(pool: &Pool, addr: SocketAddr) {
    let (resp, lease) = request(pool, addr).await;
    resp.into_body().collect().await.expect("body");
    lease.release();
}

#[tokio::test]
async fn a_kept_backend_keeps_its_requests_in_flight_health_and_idle_connections() {
    let (a, b) = (
        TestBackend::start("a").await.expect("a"),
        TestBackend::start("b").await.expect("b"),
    );
    let first = build(&[(a.addr, 1), (b.addr, 1)], None, 1);
    let pool = &first.pools[0];
    // On a: one response still streaming, one connection idle. b: taken down by its probe.
    let (_streaming, in_flight) = request(pool, a.addr).await;
    finished(pool, a.addr).await;
    let now = health::now_ms();
    member(pool, b.addr).health.record_probe(false, 0, 1, 1, now);
    assert_eq!(member(pool, a.addr).in_flight(), 1);
    assert_eq!(member(pool, a.addr).idle_connections(), 1);

    let second = build(&[(a.addr, 1), (b.addr, 1)], Some(&first), 2);
    let pool2 = &second.pools[0];
    let kept = member(pool2, a.addr);
    assert!(Arc::ptr_eq(kept, member(pool, a.addr)), "the same backend, not a copy");
    assert_eq!(kept.in_flight(), 1, "the old generation's request still counts");
    assert_eq!(kept.idle_connections(), 1, "its idle connection carried over");
    assert!(!member(pool2, b.addr).health.available(now), "b is still down");
    assert!(
        Arc::ptr_eq(&pool.budget, &pool2.budget),
        "the retry budget carried over"
    );

    drop(first);
    drop(in_flight);
    assert_eq!(
        kept.in_flight(),
        0,
        "the request finished after the reload is counted off"
    );
}

#[tokio::test]
async fn a_removed_backend_is_dropped_with_its_connections() {
    let (a, b) = (
        TestBackend::start("a").await.expect("a"),
        TestBackend::start("b").await.expect("b"),
    );
    let first = build(&[(a.addr, 1), (b.addr, 1)], None, 1);
    finished(&first.pools[0], b.addr).await;
    let removed = Arc::downgrade(member(&first.pools[0], b.addr));
    let second = build(&[(a.addr, 1)], Some(&first), 2);
    assert_eq!(second.pools[0].members.len(), 1);
    assert_eq!(second.pools[0].members[0].addr, a.addr);
    drop(first);
    assert!(
        removed.upgrade().is_none(),
        "nothing holds the removed backend any more"
    );

    // Listed again later, it starts afresh.
    let third = build(&[(a.addr, 1), (b.addr, 1)], Some(&second), 3);
    assert_eq!(member(&third.pools[0], b.addr).idle_connections(), 0);
}

#[tokio::test]
async fn a_reweighted_backend_keeps_its_state_and_takes_its_new_share() {
    let (a, b) = (
        TestBackend::start("a").await.expect("a"),
        TestBackend::start("b").await.expect("b"),
    );
    let first = build(&[(a.addr, 1), (b.addr, 1)], None, 1);
    finished(&first.pools[0], a.addr).await;
    let before = member(&first.pools[0], a.addr).clone();
    let second = build(&[(a.addr, 3), (b.addr, 1)], Some(&first), 2);
    let pool = &second.pools[0];
    let i = pool.members.iter().position(|m| m.addr == a.addr).expect("a is kept");
    assert!(Arc::ptr_eq(&pool.members[i], &before));
    assert_eq!(pool.weights[i], 3);
    assert_eq!(before.idle_connections(), 1);
    // Round robin over weights 3:1.
    let mut to_a = 0;
    for _ in 0..40 {
        if pool.balancer.pick(|_| true, |_| 0) == Some(i) {
            to_a += 1;
        }
    }
    assert_eq!(to_a, 30);
}
