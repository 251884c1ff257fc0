//! The parts of `GET /status` that the status page and `waypost status` need beyond the
//! live backend state: recent reloads, served TLS certificates, request counters (read from
//! the metric registry, so the page computes rates from the same numbers Prometheus sees),
//! cache hit counters, and per-route match rules.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::admin::metrics;
use crate::config::{HostMatch, PathMatch};
use crate::state::State;

/// How many reloads `/status` keeps (the start counts as the first).
pub const RELOADS_KEPT: usize = 10;

/// One configuration load: the start, or a reload (SIGHUP, POST /reload, a watched file).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    pub time_unix: f64,
    /// "start" or "reload".
    pub kind: &'static str,
    pub ok: bool,
    /// The generation in service after this load (unchanged by a failed reload).
    pub generation: u64,
    pub errors: Vec<String>,
}

/// The last [`RELOADS_KEPT`] loads, newest last.
#[derive(Debug, Default)]
pub struct ReloadHistory(Mutex<VecDeque<ReloadRecord>>);

impl ReloadHistory {
    /// A history holding the start-up load.
    pub fn started(time_unix: f64) -> ReloadHistory {
        let h = ReloadHistory::default();
        h.push(ReloadRecord {
            time_unix,
            kind: "start",
            ok: true,
            generation: 1,
            errors: vec![],
        });
        h
    }

    pub fn record_reload(&self, time_unix: f64, ok: bool, generation: u64, errors: &[String]) {
        self.push(ReloadRecord {
            time_unix,
            kind: "reload",
            ok,
            generation,
            errors: errors.to_vec(),
        });
    }

    fn push(&self, r: ReloadRecord) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == RELOADS_KEPT {
                q.pop_front();
            }
            q.push_back(r);
        }
    }

    /// Newest first.
    pub fn newest_first(&self) -> Vec<ReloadRecord> {
        self.0
            .lock()
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// Every certificate served by a TLS listener of the running config, soonest expiry first.
pub fn certificates(state: &State) -> Value {
    let now = crate::clock::unix_f64();
    let mut v: Vec<(i64, Value)> = state
        .config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|t| (l, t)))
        .flat_map(|(l, t)| {
            t.certificates.iter().enumerate().map(move |(i, c)| {
                let days = (c.not_after as f64 - now) / 86_400.0;
                (
                    c.not_after,
                    json!({
                        "listener": l.name,
                        "file": c.cert_file.display().to_string(),
                        "names": c.names,
                        "default": i == 0,
                        "not_after_unix": c.not_after,
                        "days_left": (days * 10.0).floor() / 10.0,
                    }),
                )
            })
        })
        .collect();
    v.sort_by_key(|(t, _)| *t);
    Value::Array(v.into_iter().map(|(_, c)| c).collect())
}

/// The host and path rules of each route, in the config's words.
pub fn route_rules(state: &State) -> BTreeMap<String, Value> {
    state
        .config
        .routes
        .iter()
        .map(|r| {
            let hosts: Vec<String> = r
                .hosts
                .iter()
                .map(|h| match h {
                    HostMatch::Exact(s) => s.clone(),
                    HostMatch::Wildcard(s) => format!("*{s}"),
                })
                .collect();
            let (kind, path) = match &r.path {
                PathMatch::Exact(p) => ("path", p.clone()),
                PathMatch::Prefix(p) => ("path_prefix", p.clone()),
            };
            let mut o = json!({
                "hosts": hosts,
                kind: path,
                "methods": r.methods.as_ref().map(|m| m.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>()),
                "cached": r.cache.is_some(),
            });
            if !r.pools.is_empty() {
                o["pools"] = json!(r.pools);
            }
            if let Some(s) = &r.split {
                o["split"] = json!({"primary": s.primary, "replicas": s.replicas});
            }
            (r.name.clone(), o)
        })
        .collect()
}

/// One series of a Prometheus text exposition: its name, labels and value.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }
}

/// Parse one sample line of the text format (`name{a="x",b="y"} 12`); None for comments,
/// blank lines and anything malformed. Label values are unescaped (`\\`, `\"`, `\n`).
pub fn parse_sample(line: &str) -> Option<Sample<'_>> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            s = s.trim_start_matches(',');
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s.find('=')?;
            let key = &s[..eq];
            let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
            let mut value = String::new();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            s = &s[eq + 1 + 1 + end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

/// Request and cache counters from the metric registry's current exposition.
pub fn counters(exposition: &str) -> (Value, Value) {
    let classes = metrics::STATUS_CLASSES;
    let mut total = 0u64;
    let mut by_class: BTreeMap<&str, u64> = classes[..5].iter().map(|c| (*c, 0)).collect();
    let mut routes: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut listeners: BTreeMap<String, u64> = BTreeMap::new();
    let mut cache: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for s in exposition.lines().filter_map(parse_sample) {
        let n = s.value as u64;
        if s.name == metrics::REQUESTS_TOTAL {
            let class = s.label("status_class").unwrap_or("");
            total += n;
            if let Some(c) = by_class.get_mut(class) {
                *c += n;
            }
            *listeners
                .entry(s.label("listener").unwrap_or("").to_string())
                .or_default() += n;
            let route = routes.entry(s.label("route").unwrap_or("").to_string()).or_default();
            *route.entry(class.to_string()).or_default() += n;
            *route.entry("total".into()).or_default() += n;
        } else if s.name == metrics::CACHE_REQUESTS_TOTAL {
            let route = cache.entry(s.label("route").unwrap_or("").to_string()).or_default();
            *route.entry(s.label("result").unwrap_or("").to_string()).or_default() += n;
        }
    }
    let requests = json!({
        "total": total,
        "status_classes": by_class,
        "listeners": listeners.into_iter().map(|(name, total)| json!({"name": name, "total": total})).collect::<Vec<_>>(),
        "routes": routes.into_iter().map(|(name, mut c)| {
            let total = c.remove("total").unwrap_or(0);
            json!({"name": name, "total": total, "status_classes": c})
        }).collect::<Vec<_>>(),
    });
    let mut sum: BTreeMap<&str, u64> = ["hit", "miss", "stale", "revalidated", "bypass"]
        .iter()
        .map(|r| (*r, 0))
        .collect();
    for c in cache.values() {
        for (result, n) in c {
            if let Some(s) = sum.get_mut(result.as_str()) {
                *s += n;
            }
        }
    }
    let served = sum["hit"] + sum["stale"] + sum["revalidated"];
    let lookups = served + sum["miss"];
    let cache = json!({
        "results": sum,
        "hit_ratio": if lookups == 0 { Value::Null } else { json!(served as f64 / lookups as f64) },
        "routes": cache.into_iter().map(|(name, results)| json!({"name": name, "results": results})).collect::<Vec<_>>(),
    });
    (requests, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_line_parses_with_escaped_label_values() {
        let s =
            parse_sample(r#"waypost_requests_total{listener="http",route="a\"b\\c",status_class="2xx"} 42"#).unwrap();
        assert_eq!(s.name, "waypost_requests_total");
        assert_eq!(s.label("route"), Some("a\"b\\c"));
        assert_eq!(s.label("status_class"), Some("2xx"));
        assert_eq!(s.value, 42.0);
        let s = parse_sample("waypost_cache_bytes 1024").unwrap();
        assert!(s.labels.is_empty());
        assert_eq!(s.value, 1024.0);
        assert!(parse_sample("# HELP waypost_cache_bytes x").is_none());
        assert!(parse_sample("waypost_x{a=\"unterminated} 1").is_none());
    }

    #[test]
    fn counters_sum_by_route_listener_class_and_cache_result() {
        let text = r#"# TYPE waypost_requests_total counter
waypost_requests_total{listener="http",route="a",status_class="2xx"} 7
waypost_requests_total{listener="http",route="a",status_class="5xx"} 3
waypost_requests_total{listener="tls",route="b",status_class="2xx"} 5
waypost_requests_total{listener="http",route="",status_class="4xx"} 1
waypost_cache_requests_total{route="a",result="hit"} 6
waypost_cache_requests_total{route="a",result="miss"} 2
waypost_cache_requests_total{route="a",result="bypass"} 9
waypost_request_duration_seconds_count{route="a"} 10
"#;
        let (req, cache) = counters(text);
        assert_eq!(req["total"], 16);
        assert_eq!(req["status_classes"]["5xx"], 3);
        assert_eq!(req["status_classes"]["1xx"], 0);
        assert_eq!(req["routes"][1]["name"], "a");
        assert_eq!(req["routes"][1]["total"], 10);
        assert_eq!(req["routes"][1]["status_classes"]["5xx"], 3);
        assert_eq!(req["listeners"][0]["total"], 11);
        assert_eq!(cache["results"]["hit"], 6);
        assert_eq!(cache["hit_ratio"], 0.75);
    }

    #[test]
    fn the_history_keeps_the_newest_loads() {
        let h = ReloadHistory::started(1.0);
        for g in 0..RELOADS_KEPT as u64 + 3 {
            h.record_reload(2.0 + g as f64, g % 2 == 0, g + 2, &["e".into()]);
        }
        let all = h.newest_first();
        assert_eq!(all.len(), RELOADS_KEPT);
        assert_eq!(all[0].generation, RELOADS_KEPT as u64 + 4);
        assert!(all.iter().all(|r| r.kind == "reload"), "the start fell off");
    }
}
