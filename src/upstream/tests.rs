//! In-process tests of the pick (panic mode, slow start, replica lag, connection slots and the
//! queue, members already tried) and of the retry rules and budget of `forward`, on pools built
//! from config text by the real parser, with real loopback backends where a request is sent.

use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use super::backend::Lease;
use super::pool::Tried;
use super::*;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::health;
use crate::testbackend::{Mode, TestBackend};

/// A config with one pool, `[[pool]]` keys as given; its listener is never bound.
fn config(pool_keys: &str) -> crate::config::Config {
    let text = format!(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n\
         [[pool]]\nname = \"p\"\n{pool_keys}\n\n\
         [[route]]\nname = \"r\"\npath_prefix = \"/\"\npool = \"p\"\n"
    );
    match crate::config::parse(&text, None) {
        Ok(c) => c,
        Err(p) => panic!("test config does not parse: {p:?}\n{text}"),
    }
}

/// A pool as its first generation builds it.
fn pool(pool_keys: &str) -> Pool {
    Pool::new(&config(pool_keys).pools[0], None, &Default::default())
}

/// A pool's next generation from `pool_keys`, carrying over what `previous` had.
fn reload(pool_keys: &str, previous: &Pool) -> Pool {
    Pool::new(&config(pool_keys).pools[0], Some(previous), &Default::default())
}

/// `backends = [...]` with these loopback ports (weight 1).
fn backends(ports: &[u16]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ address = \"127.0.0.1:{p}\" }}"))
        .collect();
    format!("backends = [{}]", list.join(", "))
}

fn take_down(pool: &Pool, i: usize, now: u64) {
    // fall = 1: one failed probe takes it down.
    pool.members[i].health.record_probe(false, 0, 1, 1, now);
    assert!(!pool.members[i].health.available(now));
}

/// The members that `n` picks (nothing tried) went to.
fn picked(pool: &Pool, now: u64, hint: PickHint, n: usize) -> Vec<usize> {
    let counts = spread(pool, now, hint, n);
    (0..counts.len()).filter(|&i| counts[i] > 0).collect()
}

/// How many of `n` picks (nothing tried) went to each member.
fn spread(pool: &Pool, now: u64, hint: PickHint, n: usize) -> Vec<usize> {
    let mut counts = vec![0; pool.members.len()];
    for _ in 0..n {
        if let Some(i) = pool.pick(&Tried::new(), now, hint) {
            counts[i] += 1;
        }
    }
    counts
}

#[test]
fn below_the_panic_threshold_every_member_takes_requests() {
    let p = pool(&format!("panic_threshold = 50\n{}", backends(&[1, 2, 3, 4])));
    let now = health::now_ms();
    take_down(&p, 0, now);
    take_down(&p, 1, now);
    // Half of them healthy: not below 50%, so only the healthy ones.
    assert_eq!(picked(&p, now, PickHint::default(), 40), vec![2, 3]);
    take_down(&p, 2, now);
    // One in four: panic, and the down ones take their turn too (round robin over all).
    assert_eq!(spread(&p, now, PickHint::default(), 40), vec![10, 10, 10, 10]);
    for i in 0..4 {
        take_down(&p, i, now);
    }
    assert!(p.can_serve(now), "with none healthy, panic mode still serves");
}

#[test]
fn without_a_panic_threshold_down_members_never_take_requests() {
    let p = pool(&backends(&[1, 2, 3, 4]));
    let now = health::now_ms();
    for i in 0..3 {
        take_down(&p, i, now);
    }
    assert_eq!(picked(&p, now, PickHint::default(), 40), vec![3]);
    take_down(&p, 3, now);
    assert_eq!(p.pick(&Tried::new(), now, PickHint::default()), None);
    assert!(!p.can_serve(now));
}

#[test]
fn a_backend_that_came_back_has_its_share_ramped_over_slow_start() {
    let p = pool(&format!("slow_start = \"10s\"\n{}", backends(&[1, 2])));
    // An hour into the process: members[0], up since the pool was built, has its full share.
    let down_at = health::now_ms() + 3_600_000;
    take_down(&p, 1, down_at);
    let back_at = down_at + 1_000;
    // rise = 1: one good probe brings it back, and its ramp starts there.
    p.members[1].health.record_probe(true, 200, 1, 1, back_at);
    assert!(p.members[1].health.available(back_at));
    let share = |at: u64| spread(&p, at, PickHint::default(), 4_000)[1];
    let (fresh, half, done) = (share(back_at), share(back_at + 5_000), share(back_at + 10_000));
    // Round robin offers it every other request; it takes 5%, then 50%, then all of them.
    assert!(fresh < 400, "just back: {fresh} of 4000");
    assert!((600..1_400).contains(&half), "half way: {half} of 4000");
    assert_eq!(done, 2_000, "after the window it has its full share");
}

#[test]
fn a_backend_added_by_a_reload_ramps_but_a_new_pool_does_not() {
    let keys = |ports: &[u16]| format!("slow_start = \"10s\"\n{}", backends(ports));
    let window = std::time::Duration::from_secs(10);
    let first = pool(&keys(&[1]));
    // The backends of a new pool count as up since the process started (all together).
    assert_eq!(first.members[0].health.ramp(10_000, window), 1.0);
    let before = health::now_ms();
    let second = reload(&keys(&[1, 2]), &first);
    let after = health::now_ms();
    let (old, new) = (&second.members[0].health, &second.members[1].health);
    assert_eq!(old.ramp(10_000, window), 1.0, "a kept backend does not ramp again");
    assert_eq!(new.ramp(before, window), 0.05, "the added one starts at the floor");
    assert!(new.ramp(10_000, window) < 1.0, "it came up after the process did");
    assert_eq!(
        new.ramp(after + 10_000, window),
        1.0,
        "and has its share after the window"
    );
}

#[test]
fn a_read_with_a_lag_bound_skips_lagging_and_unknown_replicas() {
    let p = pool(&backends(&[1, 2, 3]));
    let now = health::now_ms();
    p.members[0].health.set_lag(Some(0.5));
    p.members[1].health.set_lag(Some(5.0));
    // members[2] never reported a lag.
    let read = PickHint {
        max_lag: Some(Duration::from_secs(1)),
        ..PickHint::default()
    };
    assert_eq!(spread(&p, now, read, 30), vec![30, 0, 0]);
    assert!(p.can_read(now, Duration::from_secs(1)));
    assert_eq!(
        spread(&p, now, PickHint::default(), 30),
        vec![10, 10, 10],
        "no bound: all"
    );
    p.members[0].health.set_lag(Some(2.0));
    assert_eq!(p.pick(&Tried::new(), now, read), None);
    assert!(!p.can_read(now, Duration::from_secs(1)));
}

#[test]
fn a_member_already_tried_is_not_picked_again() {
    let p = pool(&backends(&[1, 2, 3]));
    let now = health::now_ms();
    let mut tried = Tried::new();
    tried.push(0);
    for _ in 0..30 {
        assert_ne!(p.pick(&tried, now, PickHint::default()), Some(0));
    }
    tried.push(2);
    for _ in 0..30 {
        assert_eq!(p.pick(&tried, now, PickHint::default()), Some(1));
    }
    tried.push(1);
    assert_eq!(p.pick(&tried, now, PickHint::default()), None);

    // A sticky member is first choice until tried; then the others, unless it is the only one.
    let sticky = PickHint {
        member: Some(2),
        ..PickHint::default()
    };
    assert_eq!(p.pick(&Tried::new(), now, sticky), Some(2));
    let mut tried = Tried::new();
    tried.push(2);
    assert!(matches!(p.pick(&tried, now, sticky), Some(0 | 1)));
    let only = PickHint {
        only_member: true,
        ..sticky
    };
    assert_eq!(p.pick(&Tried::new(), now, only), Some(2));
    assert_eq!(p.pick(&tried, now, only), None);
}

#[test]
fn a_member_at_its_connection_limit_is_passed_over_while_another_has_room() {
    let p = pool(&format!("max_connections_per_backend = 1\n{}", backends(&[1, 2])));
    let now = health::now_ms();
    let held = Lease::new(p.members[0].clone(), None);
    assert_eq!(spread(&p, now, PickHint::default(), 20), vec![0, 20]);
    let both = Lease::new(p.members[1].clone(), None);
    // Both full: still a healthy member, where the request will queue for a slot.
    assert_eq!(spread(&p, now, PickHint::default(), 20).iter().sum::<usize>(), 20);
    drop((held, both));
    assert_eq!(spread(&p, now, PickHint::default(), 20), vec![10, 10]);
}

/// Poll `f` once: whether it finished.
async fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *f).poll(cx).is_ready())).await
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once_and_a_freed_slot_goes_to_the_waiter() {
    let p = pool(&format!(
        "max_connections_per_backend = 1\nqueue_size = 1\nqueue_timeout = \"5s\"\n{}",
        backends(&[1])
    ));
    let start = crate::clock::now();
    let slot = p.acquire_slot(0).await.expect("a free slot");
    assert!(slot.is_some());
    let mut waiter = Box::pin(p.acquire_slot(0));
    assert!(!poll_once(&mut waiter).await, "no slot free: it waits");
    assert_eq!(p.members[0].queued.load(std::sync::atomic::Ordering::Relaxed), 1);
    let overflow = p.acquire_slot(0).await;
    assert!(matches!(overflow, Err(ProxyError::QueueTimeout)), "{overflow:?}");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused without waiting (paused clock)"
    );
    drop(slot);
    let got = waiter.await.expect("the freed slot");
    assert!(got.is_some());
    assert_eq!(p.members[0].queued.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_gives_up_after_queue_timeout() {
    let p = pool(&format!(
        "max_connections_per_backend = 1\nqueue_timeout = \"2s\"\n{}",
        backends(&[1])
    ));
    let slot = p.acquire_slot(0).await.expect("a free slot");
    let start = crate::clock::now();
    let waited = p.acquire_slot(0).await;
    assert!(matches!(waited, Err(ProxyError::QueueTimeout)), "{waited:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(p.members[0].queued.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Freed within the timeout: the waiter gets it when it is freed (the virtual clock is exact).
    let start = crate::clock::now();
    let (got, ()) = tokio::join!(p.acquire_slot(0), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(slot);
    });
    assert!(got.expect("freed slot").is_some());
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn slots_carry_over_a_reload_that_keeps_the_limit() {
    let keys = |max: u32| {
        format!(
            "max_connections_per_backend = {max}\nqueue_size = 0\n{}",
            backends(&[1])
        )
    };
    let first = pool(&keys(1));
    let _held = first.acquire_slot(0).await.expect("a free slot");
    let same = reload(&keys(1), &first);
    assert!(
        matches!(same.acquire_slot(0).await, Err(ProxyError::QueueTimeout)),
        "the slot held in the old generation still counts"
    );
    let raised = reload(&keys(2), &same);
    assert!(raised.acquire_slot(0).await.expect("new limit, new slots").is_some());
}

/// An address nothing listens on.
fn refused() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn pool_of(addrs: &[SocketAddr], keys: &str) -> Pool {
    let list: Vec<String> = addrs.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
    pool(&format!("{keys}\nbackends = [{}]", list.join(", ")))
}

fn get() -> Request<ProxyBody> {
    Request::builder()
        .uri("/")
        .header(http::header::HOST, "test")
        .body(ProxyBody::Empty)
        .expect("request")
}

/// Send `req` with member `first` tried first.
async fn send_to(
    p: &Pool,
    first: usize,
    req: Request<ProxyBody>,
) -> (
    Result<(http::Response<hyper::body::Incoming>, Lease), ProxyError>,
    Attempts,
) {
    let replay = Replay::capture(&req, p);
    let mut notes = Attempts::default();
    let hint = PickHint {
        member: Some(first),
        ..PickHint::default()
    };
    let result = forward(p, req, replay, hint, &mut notes).await;
    (result, notes)
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_backend() {
    let good = TestBackend::start("good").await.expect("backend");
    let p = pool_of(&[refused(), good.addr], "retries = 1");
    let (result, notes) = send_to(&p, 0, get()).await;
    let (resp, lease) = result.expect("the second backend answers");
    assert_eq!(resp.status(), 200);
    assert_eq!((notes.count, notes.retried), (2, true));
    assert_eq!(good.hits(), 1);
    assert_eq!(lease.backend().addr, good.addr);
    assert_eq!(
        p.members[0].health.live_failures(),
        1,
        "the failure counts against the first"
    );
}

#[tokio::test]
async fn no_retry_when_the_pool_has_none() {
    let good = TestBackend::start("good").await.expect("backend");
    let p = pool_of(&[refused(), good.addr], "retries = 0");
    let (result, notes) = send_to(&p, 0, get()).await;
    assert!(
        matches!(result, Err(ProxyError::UpstreamConnect(_))),
        "{:?}",
        result.err()
    );
    assert_eq!((notes.count, notes.retried), (1, false));
    assert_eq!(good.hits(), 0);
}

#[tokio::test]
async fn no_retry_when_the_retry_budget_is_spent() {
    let good = TestBackend::start("good").await.expect("backend");
    let p = pool_of(&[refused(), good.addr], "retries = 1");
    // Three retries in flight use up the floor; with one request in the window, 20% of it
    // leaves no room for a fourth.
    let sec = health::now_ms() / 1000;
    let floor: Vec<_> = (0..3).map(|_| p.budget.try_retry(sec).expect("floor")).collect();
    let (result, notes) = send_to(&p, 0, get()).await;
    assert!(
        matches!(result, Err(ProxyError::UpstreamConnect(_))),
        "{:?}",
        result.err()
    );
    assert_eq!((notes.count, notes.retried), (1, false));
    assert_eq!(good.hits(), 0);
    drop(floor);
    let (result, notes) = send_to(&p, 0, get()).await;
    assert!(result.is_ok(), "budget back: retried");
    assert_eq!((notes.count, notes.retried), (2, true));
}

#[tokio::test]
async fn a_request_broken_after_sending_is_replayed_only_when_idempotent_and_bodiless() {
    let reset = TestBackend::start("reset").await.expect("backend");
    reset.set_mode(Mode::Reset);
    let good = TestBackend::start("good").await.expect("backend");
    let p = pool_of(&[reset.addr, good.addr], "retries = 1");
    let (result, notes) = send_to(&p, 0, get()).await;
    assert!(result.is_ok(), "a GET is replayed: {:?}", result.err());
    assert_eq!((notes.count, notes.retried), (2, true));
    assert_eq!(good.hits(), 1);

    let post = Request::builder()
        .method(http::Method::POST)
        .uri("/")
        .header(http::header::HOST, "test")
        .body(ProxyBody::Full(Some(bytes::Bytes::from_static(b"once"))))
        .expect("request");
    let (result, notes) = send_to(&p, 0, post).await;
    assert!(
        matches!(result, Err(ProxyError::UpstreamBroken(_))),
        "{:?}",
        result.err()
    );
    assert_eq!((notes.count, notes.retried), (1, false));
    assert_eq!(good.hits(), 1, "a POST is never sent twice");
}

#[tokio::test]
async fn a_finished_exchange_leaves_its_connection_idle_for_the_next_request() {
    let good = TestBackend::start("good").await.expect("backend");
    let p = pool_of(&[good.addr], "");
    for round in 0..3 {
        let (result, _) = send_to(&p, 0, get()).await;
        let (resp, lease) = result.expect("answer");
        resp.into_body().collect().await.expect("body");
        lease.release();
        assert_eq!(p.members[0].idle_connections(), 1, "round {round}: one idle connection");
    }
    // A response not read to its end does not give its connection back.
    let (result, _) = send_to(&p, 0, get()).await;
    let (_resp, lease) = result.expect("answer");
    assert_eq!(p.members[0].idle_connections(), 0);
    drop(lease);
    assert_eq!(p.members[0].idle_connections(), 0);
}
