//! `waypost status`, run as the real binary against a real daemon: the tables show what the
//! status page shows, the exit status is 1 while a pool has no healthy backend and 0 again
//! once it has, 2 when the status cannot be read (no token, a wrong token, nothing
//! listening); the admin address and token come from --admin and WAYPOST_ADMIN_TOKEN, or from
//! the config file's [admin] bind and token_file.
mod ops_support;
mod support;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn status(args: &[&str], token: Option<&str>) -> Out {
    let mut cmd = Command::new(BIN);
    cmd.arg("status")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove(waypost::admin::cli::TOKEN_ENV)
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env(waypost::admin::cli::TOKEN_ENV, t);
    }
    let o = cmd.output().expect("run waypost status");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The table row (line) that mentions `needle`.
fn line_with<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_tables_and_exits_1_while_a_pool_has_no_healthy_backend() {
    let mut rich = ops_support::start().await;
    let admin = rich.proxy.admin.to_string();
    let none = "/nonexistent/waypost.toml";
    let o = status(
        &["--config", none, "--admin", &admin, "--interval", "0.5"],
        Some(ops_support::TOKEN),
    );
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    let out = &o.stdout;
    assert!(!out.contains("\x1b["), "no colour when not on a terminal");
    for head in [
        "LISTENER",
        "ROUTE",
        "POOL",
        "BACKEND",
        "DATA CENTER",
        "REGION",
        "CACHE",
        "CERTIFICATE",
        "RELOAD",
    ] {
        assert!(out.contains(head), "no {head} table:\n{out}");
    }
    for b in [rich.eu[0].addr, rich.eu[1].addr, rich.us.addr] {
        let l = line_with(out, &b.to_string());
        assert!(l.contains(" up "), "{b} is up: {l}");
    }
    assert!(line_with(out, "assets (cached)").contains("/assets/*"));
    assert!(line_with(out, "app ").contains("web-eu > web-us"), "{out}");
    let cert = line_with(out, "site.crt");
    assert!(cert.contains("https") && cert.contains("localhost"), "{cert}");
    let days: f64 = cert.split_whitespace().last().unwrap().parse().unwrap();
    assert!(
        (8.9..=10.0).contains(&days),
        "the certificate expires in 10 days: {cert}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" failed ") && l.contains("colour: unknown key")),
        "the failed reload and its error:\n{out}"
    );
    assert!(line_with(out, "start").contains("ok"));
    assert!(line_with(out, "requests ").contains("/s"), "a request rate: {out}");
    assert!(line_with(out, "http ").contains("/s"), "a listener's rate: {out}");
    // The hit ratio of the cached route: 3 misses then 6 hits.
    let cache = out.lines().skip_while(|l| !l.starts_with("CACHE")).nth(1).unwrap();
    assert!(cache.contains("66.7%"), "{cache}");

    // web-us loses its only backend: exit 1, and the table says why.
    let us = rich.us.addr;
    std::mem::replace(&mut rich.us, TestBackend::start("placeholder").await.unwrap()).kill();
    assert!(
        eventually(Duration::from_secs(10), || async {
            ops_support::backend_state(&rich.proxy, us).await == "down"
        })
        .await
    );
    let o = status(
        &["--config", none, "--admin", &admin, "--interval", "0"],
        Some(ops_support::TOKEN),
    );
    assert_eq!(o.code, Some(1), "{}\n{}", o.stdout, o.stderr);
    assert!(line_with(&o.stdout, &us.to_string()).contains(" down "));
    assert!(
        o.stdout.contains("pool \"web-us\" has no healthy backend"),
        "{}",
        o.stdout
    );
    assert!(line_with(&o.stdout, "us-east").contains("no healthy pool"));
    assert!(
        line_with(&o.stdout, "na ").contains("eu-west (failed over)"),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.stdout
            .lines()
            .filter(|l| l.contains("has no healthy backend"))
            .count(),
        1
    );

    // Back: exit 0 again.
    let _back = TestBackend::start_on(us, "us-1-again").await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            ops_support::backend_state(&rich.proxy, us).await == "up"
        })
        .await
    );
    let o = status(
        &["--config", none, "--admin", &admin, "--interval", "0"],
        Some(ops_support::TOKEN),
    );
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);

    // No token, a wrong one: 2, and it says what to do.
    let o = status(&["--config", none, "--admin", &admin], None);
    assert_eq!(o.code, Some(2), "{}", o.stdout);
    assert!(o.stderr.contains("WAYPOST_ADMIN_TOKEN"), "{}", o.stderr);
    assert!(o.stdout.is_empty());
    let o = status(&["--config", none, "--admin", &admin], Some("wrong"));
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.contains("refused"), "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_admin_address_and_token_file_from_the_config() {
    let b = TestBackend::start("b").await.unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, "from-the-file\n").unwrap();
    let cfg = simple_config(&[b.addr], "").replace(
        "[admin]\nbind = \"127.0.0.1:0\"",
        &format!(
            "[admin]\nbind = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    assert!(cfg.contains(&format!("127.0.0.1:{port}")), "{cfg}");
    let p = Proxy::start(&cfg);
    assert_eq!(p.admin.port(), port);
    // A copy that outlives the daemon's directory.
    let copy = secrets.path().join("waypost.toml");
    std::fs::copy(&p.config_path, &copy).unwrap();
    let path = copy.display().to_string();
    let o = status(&["--config", &path, "--interval", "0"], None);
    assert_eq!(o.code, Some(0), "{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.contains(&format!("at 127.0.0.1:{port}")), "{}", o.stdout);
    assert!(line_with(&o.stdout, &b.addr.to_string()).contains(" up "));
    // The environment's token wins over the file's.
    let o = status(&["--config", &path, "--interval", "0"], Some("not-it"));
    assert_eq!(o.code, Some(2), "{}", o.stdout);

    // Nothing listening: 2.
    drop(p);
    let o = status(&["--config", &path, "--interval", "0"], None);
    assert_eq!(o.code, Some(2));
    assert!(o.stderr.contains("cannot connect"), "{}", o.stderr);
}
