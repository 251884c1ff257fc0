//! The Grafana dashboard (docs/grafana/waypost.json) and the Prometheus alerting rules
//! (docs/prometheus/alerts.yml) against the real thing: every PromQL expression in them is
//! parsed (promql-parser, and promtool on a generated rules file), every metric name they use
//! is one that a real waypost exports in /metrics after traffic of every kind, the dashboard
//! is consistent with the schema version it declares, and `promtool check rules` and
//! `promtool test rules` pass on the alerts.
//!
//! promtool comes from Debian's `prometheus` package, which `bash .ci/test.sh` installs.
mod ops_support;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use serde_json::Value;
use support::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("docs/grafana/waypost.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

fn promtool() -> Command {
    match Command::new("promtool").arg("--version").output() {
        Ok(o) if o.status.success() => Command::new("promtool"),
        other => panic!(
            "promtool is not usable ({other:?}): run `bash .ci/test.sh`, which installs Debian's `prometheus` package"
        ),
    }
}

/// Grafana's variables replaced by what a query would get: a range for the interval
/// variables, "match anything" for the template variables (all used inside `=~"..."`).
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$route", ".*")
        .replace("$pool", ".*")
}

/// Every PromQL expression of the dashboard, with where it is: panel targets, annotations,
/// and the selectors inside the variables' `label_values(SELECTOR, label)` queries.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn panels<'a>(list: &'a [Value], out: &mut Vec<&'a Value>) {
        for p in list {
            out.push(p);
            if let Some(inner) = p["panels"].as_array() {
                panels(inner, out);
            }
        }
    }
    let mut all = Vec::new();
    panels(d["panels"].as_array().expect("panels"), &mut all);
    for p in all {
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let e = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target without expr in {}", p["title"]));
            out.push((format!("panel {:?} target {}", p["title"], t["refId"]), e.to_string()));
        }
    }
    for a in d["annotations"]["list"].as_array().unwrap() {
        if let Some(e) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), e.to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("a variable query");
        assert_eq!(
            v["definition"].as_str(),
            Some(q),
            "variable {}: definition and query agree",
            v["name"]
        );
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: expected label_values(SELECTOR, label): {q}", v["name"]));
        out.push((format!("variable {}", v["name"]), inner.0.trim().to_string()));
    }
    out
}

/// The metric names an expression selects.
fn metric_names(expr: &Expr) -> Vec<String> {
    struct Names(Vec<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            match e {
                Expr::VectorSelector(vs) => self.0.extend(vs.name.clone()),
                Expr::MatrixSelector(ms) => self.0.extend(ms.vs.name.clone()),
                _ => {}
            }
            Ok(true)
        }
    }
    let mut v = Names(Vec::new());
    walk_expr(&mut v, expr).unwrap();
    v.0
}

/// Parse every expression (promql-parser) and return the metric names used, by place.
fn parse_all(exprs: &[(String, String)]) -> Vec<(String, String)> {
    let mut used = Vec::new();
    for (place, e) in exprs {
        let ast = parser::parse(&substitute(e)).unwrap_or_else(|err| panic!("{place}: {e}\ndoes not parse: {err}"));
        let names = metric_names(&ast);
        assert!(!names.is_empty(), "{place}: {e} selects no metric");
        used.extend(names.into_iter().map(|n| (place.clone(), n)));
    }
    used
}

/// promtool, Prometheus' own parser, on every expression (as recording rules).
fn promtool_accepts(exprs: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in exprs.iter().enumerate() {
        yaml.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(&substitute(e)).unwrap()
        ));
    }
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &yaml).unwrap();
    let out = promtool().args(["check", "rules"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard's expressions:\n{}{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample names of a real waypost's /metrics after traffic of every kind the dashboard
/// shows: cached routes, both regions and a failover, a failed and a good reload, a purge,
/// TLS handshakes that work and fail, a replica reporting lag, ejections and 503s.
async fn exported_names() -> HashSet<String> {
    let replica = TestBackend::start("replica").await.unwrap();
    replica.set_header("x-replica-lag", "0.25");
    let flaky = TestBackend::start("flaky").await.unwrap();
    flaky.set_mode(waypost::testbackend::Mode::Status(502));
    let extra = format!(
        r#"
[[pool]]
name = "db-replicas"
backends = [{{ address = "{replica}" }}]
[pool.health]
path = "/healthz"
interval = "200ms"
lag_header = "x-replica-lag"

[[pool]]
name = "flaky"
backends = [{{ address = "{flaky}" }}]
retries = 0
[pool.passive]
consecutive_failures = 1
eject_for = "30s"

[[route]]
name = "flaky"
path_prefix = "/flaky/"
pool = "flaky"
"#,
        replica = replica.addr,
        flaky = flaky.addr,
    );
    let mut rich = ops_support::start_with(&extra).await;
    let p = &rich.proxy;
    // Ejection and no-healthy-backend: the flaky pool's only backend answers 502.
    for _ in 0..3 {
        let r = get(p.addr(), "/flaky/x").await;
        assert!(r.status().is_server_error(), "{}", r.status());
    }
    // A successful reload as well as the failed one.
    let (code, body) = ops_support::admin_post(p, "/reload", "").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = ops_support::admin_post(p, "/cache/purge", r#"{"prefix": "/assets/"}"#).await;
    assert_eq!(code, 200, "{body}");
    // A TLS handshake that fails (plain text on the TLS port) and one that completes.
    ops_support::tls_handshakes(p).await;
    // Geo failover: the eu data center loses its backends, an eu client is served by us-east.
    let eu: Vec<_> = rich.eu.drain(..).collect();
    let addrs: Vec<_> = eu.iter().map(|b| b.addr).collect();
    for b in eu {
        b.kill();
    }
    for a in addrs {
        assert!(
            eventually(Duration::from_secs(10), || async {
                ops_support::backend_state(p, a).await == "down"
            })
            .await,
            "{a} never went down"
        );
    }
    let r = send(
        p.addr(),
        Request::get("/page")
            .header("x-region", "eu")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(echo(&r)["backend"], "us-1", "an eu client is served by us-east");
    assert!(
        eventually(Duration::from_secs(10), || async {
            p.metric(&format!(
                "waypost_replica_lag_seconds{{pool=\"db-replicas\",backend=\"{}\"}}",
                replica.addr
            ))
            .await
                == Some(0.25)
        })
        .await,
        "the replica's lag is exported"
    );
    let (_, text) = p.admin_get("/metrics").await;
    let names: HashSet<String> = text
        .lines()
        .filter_map(waypost::admin::report::parse_sample)
        .map(|s| s.name.to_string())
        .collect();
    assert!(names.len() > 30, "{text}");
    names
}

fn assert_exported(used: &[(String, String)], exported: &HashSet<String>) {
    let missing: BTreeSet<String> = used
        .iter()
        .filter(|(_, n)| !exported.contains(n))
        .map(|(place, n)| format!("{n} (in {place})"))
        .collect();
    assert!(
        missing.is_empty(),
        "names that waypost does not export: {missing:#?}\nexported: {exported:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_parses_and_names_exported_metrics() {
    let d = dashboard();
    let exprs = dashboard_exprs(&d);
    assert!(exprs.len() > 30, "{} expressions", exprs.len());
    let mut used = parse_all(&exprs);
    promtool_accepts(&exprs);

    let rules: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(repo("docs/prometheus/alerts.yml")).unwrap()).unwrap();
    let mut alerts = Vec::new();
    for g in rules["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts.push((format!("alert {}", r["alert"]), r["expr"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(alerts.len(), 4);
    used.extend(parse_all(&alerts));

    // What the dashboard is about is there.
    let all: BTreeSet<&str> = used.iter().map(|(_, n)| n.as_str()).collect();
    for needed in [
        "waypost_requests_total",
        "waypost_request_duration_seconds_bucket",
        "waypost_backend_up",
        "waypost_backend_ejections_total",
        "waypost_cache_requests_total",
        "waypost_cache_bytes",
        "waypost_config_reloads_total",
        "waypost_tls_cert_not_after_seconds",
        "waypost_datacenter_failovers_total",
    ] {
        assert!(all.contains(needed), "nothing shows {needed}");
    }
    let exported = exported_names().await;
    assert_exported(&used, &exported);
}

#[test]
fn promtool_checks_and_tests_the_alerting_rules() {
    let dir = repo("docs/prometheus");
    let out = promtool()
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("4 rules found"), "{text}");
    let out = promtool()
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool test rules:\n{text}");
    // Each of the four alerts has a case that fires.
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let tests: Value = serde_yaml_ng::from_str(&tests).unwrap();
    let fired: BTreeSet<&str> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str())
        .collect();
    assert_eq!(fired.len(), 4, "{fired:?}");
}

/// The dashboard's structure is the one its schemaVersion describes (Grafana 10.4 / 11:
/// schemaVersion 39): panels in one flat list with gridPos on a 24-column grid (no legacy
/// `rows`, schema < 16), datasources as {type, uid} objects (string names were migrated at
/// 33), panel types that exist in that version (no "graph" or "singlestat", migrated away),
/// unique panel ids and refIds, and every variable the expressions use defined.
#[test]
fn the_dashboard_matches_its_declared_schema_version() {
    let d = dashboard();
    assert_eq!(d["schemaVersion"], 39, "the version this structure was written for");
    assert!(d.get("rows").is_none(), "legacy rows (schema < 16)");
    for key in ["title", "uid", "panels", "templating", "annotations", "time"] {
        assert!(d.get(key).is_some(), "missing {key}");
    }
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    let panels = d["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut cells: HashSet<(i64, i64)> = HashSet::new();
    let known = [
        "row",
        "timeseries",
        "stat",
        "bargauge",
        "gauge",
        "table",
        "state-timeline",
        "text",
    ];
    let ds_ok = |v: &Value, place: &str| {
        assert!(
            v.is_object(),
            "{place}: datasource must be an object {{type, uid}} at schema 39, got {v}"
        );
        assert_eq!(v["type"], "prometheus", "{place}");
        assert_eq!(v["uid"], "${datasource}", "{place}");
    };
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_i64().expect("an integer id")),
            "duplicate id in {title}"
        );
        let ty = p["type"].as_str().unwrap();
        assert!(
            known.contains(&ty),
            "{title}: panel type {ty} is not one of schema 39's"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_i64().unwrap(),
            g["y"].as_i64().unwrap(),
            g["w"].as_i64().unwrap(),
            g["h"].as_i64().unwrap(),
        );
        assert!(
            x >= 0 && w > 0 && x + w <= 24 && h > 0 && y >= 0,
            "{title}: gridPos {g}"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel at ({cx}, {cy})");
            }
        }
        if ty == "row" {
            assert!(p["collapsed"].is_boolean() && p["panels"].is_array(), "{title}");
            continue;
        }
        ds_ok(&p["datasource"], &title);
        assert!(
            p["fieldConfig"]["defaults"].is_object() && p["fieldConfig"]["overrides"].is_array(),
            "{title}"
        );
        assert!(p["options"].is_object(), "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        let mut refs = HashSet::new();
        for t in targets {
            assert!(refs.insert(t["refId"].as_str().unwrap()), "{title}: duplicate refId");
            ds_ok(&t["datasource"], &title);
        }
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars[0], "datasource");
    assert_eq!(d["templating"]["list"][0]["type"], "datasource");
    assert_eq!(d["templating"]["list"][0]["query"], "prometheus");
    let text = serde_json::to_string(&d).unwrap();
    for used in ["$instance", "$route", "$pool", "${datasource}"] {
        let name = used.trim_start_matches('$').trim_matches(|c| c == '{' || c == '}');
        assert!(vars.contains(&name), "{used} is used but not defined");
        assert!(text.contains(used));
    }
}
