//! The response store: moka, weighed in bytes, one entry per URL holding its Vary variants.
//!
//! - The key is the request's host (lower-cased) followed by its path and query, e.g.
//!   `example.com/app.js?v=3`. The scheme is not part of it: http and https share entries.
//! - An entry ([`Resource`]) holds up to [`MAX_VARIANTS`] stored responses ([`Object`]), one
//!   per Vary secondary key, or is a short-lived "pass" marker for a URL whose last response
//!   could not be stored (so its requests skip coalescing, as Varnish's hit-for-pass does).
//! - Entries are replaced whole (copy on write, through moka's per-key `and_compute_with`), so a
//!   reader never sees a half-updated entry and moka re-weighs every change.
//! - Bodies are `Bytes`: a hit hands out a reference-counted view, never a copy.
//! - Bytes and entries are counted here (on insert and in moka's eviction listener), because
//!   moka's own weighted size is only exact after its pending tasks ran. When the count passes
//!   `max_size`, the inserting request runs those tasks at once, so the cache never stays over
//!   its bound waiting for a later housekeeping run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use moka::ops::compute::Op;
use moka::policy::Expiry;
use tokio::sync::watch;

use super::rules::EntryFacts;
use crate::config::CacheConfig;

/// Variants kept per URL; past it, the oldest goes.
pub const MAX_VARIANTS: usize = 32;
/// How long a URL whose response could not be stored skips coalescing.
pub const PASS_FOR: Duration = Duration::from_secs(30);
/// Fixed overhead counted per stored response and per entry, for the structures around them.
const OBJECT_OVERHEAD: usize = 256;
const ENTRY_OVERHEAD: usize = 128;
/// Version records kept for `version_param` eviction.
const MAX_VERSION_RECORDS: u64 = 100_000;

/// One stored response.
pub struct Object {
    pub status: StatusCode,
    /// As stored: hop-by-hop fields and Set-Cookie removed, Content-Length set.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub facts: EntryFacts,
    /// The Vary secondary key this response answers (empty without Vary).
    pub vary_key: Box<[u8]>,
    /// From Surrogate-Key and Cache-Tag, for purge by tag.
    pub tags: Box<[Box<str>]>,
    /// Set while one background refresh (stale-while-revalidate) is under way.
    pub refreshing: AtomicBool,
    /// How long the entry is worth keeping after it was stored: freshness left, then the stale
    /// windows, then a grace time to revalidate when it has a validator.
    pub keep: Duration,
    weight: usize,
}

impl Object {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        facts: EntryFacts,
        vary_key: Vec<u8>,
        tags: Vec<Box<str>>,
        keep: Duration,
    ) -> Object {
        let header_bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        let tag_bytes: usize = tags.iter().map(|t| t.len() + 16).sum();
        let weight = body.len() + header_bytes + vary_key.len() + tag_bytes + OBJECT_OVERHEAD;
        Object {
            status,
            headers,
            body,
            facts,
            vary_key: vary_key.into_boxed_slice(),
            tags: tags.into_boxed_slice(),
            refreshing: AtomicBool::new(false),
            keep,
            weight,
        }
    }

    /// The same response with new headers (after a 304 refreshed them): the body is shared.
    pub fn refreshed(&self, headers: HeaderMap, facts: EntryFacts, keep: Duration) -> Object {
        Object::new(
            self.status,
            headers,
            self.body.clone(),
            facts,
            self.vary_key.to_vec(),
            self.tags.to_vec(),
            keep,
        )
    }

    /// Claim this entry's background refresh (stale-while-revalidate): true for the one request
    /// that takes it, false while another refresh runs.
    pub fn begin_refresh(&self) -> bool {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    pub fn weight(&self) -> usize {
        self.weight
    }
}

/// Everything stored under one URL.
pub struct Resource {
    pub variants: Vec<Arc<Object>>,
    /// A pass marker: until then, requests go straight upstream without coalescing.
    pub pass_until: Option<Instant>,
    weight: usize,
    keep: Duration,
}

impl Resource {
    fn new(variants: Vec<Arc<Object>>, pass_until: Option<Instant>, key_len: usize) -> Resource {
        let weight = key_len + ENTRY_OVERHEAD + variants.iter().map(|o| o.weight).sum::<usize>();
        let keep = match pass_until {
            Some(_) => PASS_FOR,
            None => variants.iter().map(|o| o.keep).max().unwrap_or_default(),
        };
        Resource {
            variants,
            pass_until,
            weight,
            keep,
        }
    }

    /// Whether the stored responses vary (their Vary field names request headers).
    pub fn varies(&self) -> bool {
        self.variants
            .first()
            .is_some_and(|o| o.headers.contains_key(http::header::VARY))
    }

    /// The variant for this Vary secondary key.
    pub fn variant(&self, vary_key: &[u8]) -> Option<&Arc<Object>> {
        self.variants.iter().find(|o| &*o.vary_key == vary_key)
    }
}

/// What `POST /cache/purge` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// One URL: `host` plus path and query; without a host, that path on every host.
    Url {
        host: Option<String>,
        path: String,
    },
    /// Every URL whose path starts with `prefix` (on `host`, or on every host).
    Prefix {
        host: Option<String>,
        prefix: String,
    },
    /// Every stored response tagged so by its origin.
    Tag(String),
    All,
}

struct KeepFor;

impl Expiry<Box<[u8]>, Arc<Resource>> for KeepFor {
    fn expire_after_create(&self, _: &Box<[u8]>, value: &Arc<Resource>, _: Instant) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _: &Box<[u8]>,
        value: &Arc<Resource>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

#[derive(Default)]
struct Counts {
    bytes: AtomicI64,
    entries: AtomicI64,
}

struct VersionRecord {
    version: Box<[u8]>,
    primary: Box<[u8]>,
}

pub struct Cache {
    store: moka::sync::Cache<Box<[u8]>, Arc<Resource>>,
    /// For `version_param`: the URL without its version → the version last requested.
    versions: moka::sync::Cache<Box<[u8]>, Arc<VersionRecord>>,
    /// Misses being fetched: later requests for the same URL wait for the first.
    flights: Mutex<HashMap<Box<[u8]>, watch::Receiver<()>>>,
    counts: Arc<Counts>,
    pub max_size: u64,
    max_object_size: AtomicU64,
}

impl Cache {
    pub fn new(cfg: &CacheConfig) -> Cache {
        let counts = Arc::new(Counts::default());
        let listener_counts = counts.clone();
        let store = moka::sync::Cache::builder()
            .max_capacity(cfg.max_size)
            .weigher(|_k, v: &Arc<Resource>| u32::try_from(v.weight).unwrap_or(u32::MAX))
            .expire_after(KeepFor)
            .eviction_listener(move |_k, v: Arc<Resource>, _cause| {
                listener_counts.bytes.fetch_sub(v.weight as i64, Ordering::Relaxed);
                listener_counts
                    .entries
                    .fetch_sub(v.variants.len() as i64, Ordering::Relaxed);
            })
            .build();
        Cache {
            store,
            versions: moka::sync::Cache::new(MAX_VERSION_RECORDS),
            flights: Mutex::new(HashMap::new()),
            counts,
            max_size: cfg.max_size,
            max_object_size: AtomicU64::new(cfg.max_object_size),
        }
    }

    /// Apply a reloaded `[cache]` that kept `max_size`.
    pub fn set_max_object_size(&self, n: u64) {
        self.max_object_size.store(n, Ordering::Relaxed);
    }

    pub fn max_object_size(&self) -> u64 {
        self.max_object_size.load(Ordering::Relaxed)
    }

    pub fn get(&self, key: &[u8]) -> Option<Arc<Resource>> {
        self.store.get(key)
    }

    /// Bytes held by stored responses and their entries (as weighed).
    pub fn bytes(&self) -> u64 {
        self.counts.bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Stored responses (every variant counts).
    pub fn entries(&self) -> u64 {
        self.counts.entries.load(Ordering::Relaxed).max(0) as u64
    }

    /// Let moka finish evictions and expiries it has queued, so the counts are exact.
    pub fn settle(&self) {
        self.store.run_pending_tasks();
    }

    fn put(&self, res: Resource) -> Op<Arc<Resource>> {
        self.counts.bytes.fetch_add(res.weight as i64, Ordering::Relaxed);
        self.counts
            .entries
            .fetch_add(res.variants.len() as i64, Ordering::Relaxed);
        Op::Put(Arc::new(res))
    }

    /// Store `obj` under `key`: it replaces the variant with the same Vary key; variants of a
    /// different Vary go (the origin changed what it varies on).
    pub fn store(&self, key: Box<[u8]>, obj: Object) {
        let key_len = key.len();
        let obj = Arc::new(obj);
        self.store.entry(key).and_compute_with(|current| {
            let mut variants: Vec<Arc<Object>> = Vec::new();
            if let Some(cur) = current {
                let vary = obj.headers.get(http::header::VARY);
                for o in cur.value().variants.iter() {
                    if o.headers.get(http::header::VARY) == vary && o.vary_key != obj.vary_key {
                        variants.push(o.clone());
                    }
                }
            }
            if variants.len() >= MAX_VARIANTS {
                variants.remove(0);
            }
            variants.push(obj);
            self.put(Resource::new(variants, None, key_len))
        });
        self.bound();
    }

    /// Replace `old` (a variant of `key`) by `new`, unless the entry changed meanwhile.
    pub fn replace(&self, key: &[u8], old: &Arc<Object>, new: Arc<Object>) {
        let key_len = key.len();
        self.store.entry(key.into()).and_compute_with(|current| {
            let Some(cur) = current else { return Op::Nop };
            let cur = cur.value();
            let Some(i) = cur.variants.iter().position(|o| Arc::ptr_eq(o, old)) else {
                return Op::Nop;
            };
            let mut variants = cur.variants.clone();
            variants[i] = new;
            self.put(Resource::new(variants, None, key_len))
        });
        self.bound();
    }

    /// Mark `key` as not cacheable for a while, unless something is stored there.
    pub fn mark_pass(&self, key: &[u8]) {
        let key_len = key.len();
        self.store.entry(key.into()).and_compute_with(|current| match current {
            Some(c) if !c.value().variants.is_empty() => Op::Nop,
            _ => self.put(Resource::new(
                Vec::new(),
                Some(crate::clock::now().into_std() + PASS_FOR),
                key_len,
            )),
        });
    }

    /// Keep the count of stored bytes under `max_size`: when inserts have run ahead of moka's
    /// housekeeping, do the housekeeping now.
    fn bound(&self) {
        if self.bytes() > self.max_size {
            self.store.run_pending_tasks();
        }
    }

    /// Remove everything stored for `key`; returns how many stored responses went.
    pub fn invalidate(&self, key: &[u8]) -> usize {
        match self.store.remove(key) {
            Some(r) => r.variants.len(),
            None => 0,
        }
    }

    /// Remove what `what` names; returns how many stored responses went.
    pub fn purge(&self, what: &Purge) -> usize {
        // A key is the host, then the path (which starts at the first '/').
        fn split(k: &[u8]) -> (&[u8], &[u8]) {
            k.split_at(k.iter().position(|b| *b == b'/').unwrap_or(k.len()))
        }
        let host_ok = |want: &Option<String>, host: &[u8]| want.as_ref().map_or(true, |h| h.as_bytes() == host);
        let mut purged = 0;
        if let Purge::Tag(tag) = what {
            let keys: Vec<Arc<Box<[u8]>>> = self
                .store
                .iter()
                .filter(|(_, r)| r.variants.iter().any(|o| o.tags.iter().any(|t| **t == **tag)))
                .map(|(k, _)| k)
                .collect();
            for k in keys {
                let key_len = k.len();
                self.store.entry((*k).clone()).and_compute_with(|current| {
                    let Some(cur) = current else { return Op::Nop };
                    let keep: Vec<Arc<Object>> = cur
                        .value()
                        .variants
                        .iter()
                        .filter(|o| !o.tags.iter().any(|t| **t == **tag))
                        .cloned()
                        .collect();
                    purged += cur.value().variants.len() - keep.len();
                    if keep.is_empty() {
                        Op::Remove
                    } else {
                        self.put(Resource::new(keep, None, key_len))
                    }
                });
            }
            return purged;
        }
        let keys: Vec<Arc<Box<[u8]>>> = self
            .store
            .iter()
            .filter(|(k, _)| {
                let (host, path) = split(k);
                match what {
                    Purge::All => true,
                    Purge::Url { host: h, path: p } => host_ok(h, host) && path == p.as_bytes(),
                    Purge::Prefix { host: h, prefix } => host_ok(h, host) && path.starts_with(prefix.as_bytes()),
                    Purge::Tag(_) => false,
                }
            })
            .map(|(k, _)| k)
            .collect();
        for k in keys {
            purged += self.invalidate(&k);
        }
        purged
    }

    /// `version_param`: `base` (the URL without its version) was requested at `version`, under
    /// the key `primary`. The first request for a new version removes the older one's entry.
    pub fn see_version(&self, base: &[u8], version: &[u8], primary: &[u8]) {
        if let Some(rec) = self.versions.get(base) {
            if &*rec.version == version {
                return;
            }
            self.invalidate(&rec.primary);
        }
        self.versions.insert(
            base.into(),
            Arc::new(VersionRecord {
                version: version.into(),
                primary: primary.into(),
            }),
        );
    }

    /// Join the fetch of `key` under way, or lead a new one.
    pub fn join_flight(self: &Arc<Self>, key: &[u8]) -> Flight {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = flights.get(key) {
            return Flight::Follower(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.into(), rx);
        Flight::Leader(FlightGuard {
            cache: self.clone(),
            key: key.into(),
            tx: Some(tx),
        })
    }
}

/// A request's place in the fetch of a URL.
pub enum Flight {
    Leader(FlightGuard),
    /// Wait for the leader: the channel closes when it has stored its response, or found it
    /// could not.
    Follower(watch::Receiver<()>),
}

/// Held by the request that fetches a URL for the others. Dropping it (after storing, or on
/// finding the response uncacheable, or on failure) lets the waiters go.
pub struct FlightGuard {
    cache: Arc<Cache>,
    key: Box<[u8]>,
    tx: Option<watch::Sender<()>>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let mut flights = self.cache.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights
                .get(&self.key)
                .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
            {
                flights.remove(&self.key);
            }
            drop(flights);
            drop(tx);
        }
    }
}

/// Wait for a flight's leader, at most `timeout`.
pub async fn wait(mut rx: watch::Receiver<()>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async { while rx.changed().await.is_ok() {} }).await;
}

/// The tags an origin gave a response: Surrogate-Key (space-separated) and Cache-Tag
/// (comma-separated).
pub fn tags_of(headers: &HeaderMap) -> Vec<Box<str>> {
    let mut tags: Vec<Box<str>> = Vec::new();
    let mut add = |values: http::header::GetAll<'_, HeaderValue>, sep: &[char]| {
        for v in values {
            let Ok(s) = v.to_str() else { continue };
            for t in s.split(sep).map(str::trim).filter(|t| !t.is_empty()) {
                if !tags.iter().any(|x| &**x == t) {
                    tags.push(t.into());
                }
            }
        }
    };
    add(headers.get_all("surrogate-key"), &[' ', '\t']);
    add(headers.get_all("cache-tag"), &[',']);
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(body: &'static [u8], vary_key: &[u8], tags: &[&str]) -> Object {
        let h = HeaderMap::new();
        let now = crate::clock::wall();
        let facts = EntryFacts::new(&h, Duration::from_secs(60), now, now);
        Object::new(
            StatusCode::OK,
            h,
            Bytes::from_static(body),
            facts,
            vary_key.to_vec(),
            tags.iter().map(|t| (*t).into()).collect(),
            Duration::from_secs(60),
        )
    }

    fn cache() -> Arc<Cache> {
        Arc::new(Cache::new(&CacheConfig {
            max_size: 1 << 20,
            max_object_size: 1 << 19,
        }))
    }

    #[test]
    fn counts_follow_inserts_replacements_and_removals() {
        let c = cache();
        c.store(b"h/a".as_slice().into(), obj(b"one", b"", &[]));
        c.settle();
        assert_eq!(c.entries(), 1);
        let one = c.bytes();
        assert!(one >= 3 + 3 + (OBJECT_OVERHEAD + ENTRY_OVERHEAD) as u64);
        // The same variant again replaces it: still one, same weight.
        c.store(b"h/a".as_slice().into(), obj(b"two", b"", &[]));
        c.settle();
        assert_eq!((c.entries(), c.bytes()), (1, one));
        // Variants of one URL count one each.
        c.store(b"h/v".as_slice().into(), obj(b"gz", b"accept-encoding:gzip\n", &["t"]));
        c.store(
            b"h/v".as_slice().into(),
            obj(b"br", b"accept-encoding:br\n", &["t", "u"]),
        );
        c.settle();
        assert_eq!(c.entries(), 3);
        let res = c.get(b"h/v").unwrap();
        assert_eq!(res.variants.len(), 2);
        assert_eq!(&*res.variant(b"accept-encoding:br\n").unwrap().body, b"br");
        // A refreshed variant replaces exactly the old one.
        let old = res.variant(b"accept-encoding:gzip\n").unwrap().clone();
        let fresh = Arc::new(old.refreshed(HeaderMap::new(), old.facts.clone(), old.keep));
        c.replace(b"h/v", &old, fresh.clone());
        let res = c.get(b"h/v").unwrap();
        assert!(Arc::ptr_eq(res.variant(b"accept-encoding:gzip\n").unwrap(), &fresh));
        // Replacing a variant that is no longer there changes nothing.
        c.replace(b"h/v", &old, Arc::new(obj(b"stale", b"accept-encoding:gzip\n", &[])));
        assert!(Arc::ptr_eq(
            c.get(b"h/v").unwrap().variant(b"accept-encoding:gzip\n").unwrap(),
            &fresh
        ));
        c.settle();
        assert_eq!(c.entries(), 3);
        // Purge by tag removes only the tagged variants.
        assert_eq!(c.purge(&Purge::Tag("u".into())), 1);
        c.settle();
        assert_eq!(c.entries(), 2);
        assert_eq!(c.invalidate(b"h/v"), 1);
        assert_eq!(c.purge(&Purge::All), 1);
        c.settle();
        assert_eq!((c.entries(), c.bytes()), (0, 0));
    }

    #[test]
    fn a_pass_marker_never_hides_a_stored_response() {
        let c = cache();
        c.mark_pass(b"h/p");
        assert!(c.get(b"h/p").unwrap().pass_until.is_some());
        c.store(b"h/p".as_slice().into(), obj(b"now cacheable", b"", &[]));
        let res = c.get(b"h/p").unwrap();
        assert!(res.pass_until.is_none());
        c.mark_pass(b"h/p");
        assert_eq!(c.get(b"h/p").unwrap().variants.len(), 1, "the mark did not replace it");
    }

    #[test]
    fn purge_matches_hosts_paths_and_prefixes() {
        let c = cache();
        for k in [
            "a.test/x?q=1",
            "a.test/x",
            "b.test/x",
            "a.test/assets/1",
            "b.test/assets/2",
        ] {
            c.store(k.as_bytes().into(), obj(b".", b"", &[]));
        }
        let url = |h: Option<&str>, p: &str| Purge::Url {
            host: h.map(str::to_string),
            path: p.to_string(),
        };
        assert_eq!(c.purge(&url(Some("a.test"), "/x")), 1);
        assert_eq!(
            c.purge(&url(None, "/x")),
            1,
            "b.test/x; the query makes a.test/x?q=1 another URL"
        );
        assert_eq!(
            c.purge(&Purge::Prefix {
                host: Some("b.test".into()),
                prefix: "/assets/".into()
            }),
            1
        );
        assert_eq!(
            c.purge(&Purge::Prefix {
                host: None,
                prefix: "/".into()
            }),
            2
        );
    }

    #[test]
    fn a_new_version_removes_the_old_one() {
        let c = cache();
        c.store(b"h/app.js?v=1".as_slice().into(), obj(b"1", b"", &[]));
        c.see_version(b"h/app.js", b"1", b"h/app.js?v=1");
        c.see_version(b"h/app.js", b"1", b"h/app.js?v=1");
        assert!(c.get(b"h/app.js?v=1").is_some(), "the same version keeps it");
        c.see_version(b"h/app.js", b"2", b"h/app.js?v=2");
        assert!(c.get(b"h/app.js?v=1").is_none());
    }

    #[test]
    fn tags_come_from_both_headers() {
        let mut h = HeaderMap::new();
        h.append("surrogate-key", HeaderValue::from_static("a  b"));
        h.append("surrogate-key", HeaderValue::from_static("c"));
        h.append("cache-tag", HeaderValue::from_static("b, d,,e"));
        let tags: Vec<String> = tags_of(&h).iter().map(|t| t.to_string()).collect();
        assert_eq!(tags, ["a", "b", "c", "d", "e"]);
    }
}
