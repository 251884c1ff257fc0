//! The fuzz corpora, replayed on stable: every file under fuzz/corpus/<target>/ goes through the
//! same property check as the cargo-fuzz target of that name (fuzz/src/lib.rs, included here by
//! path), so a change that breaks a property on an input the fuzzers once found fails the
//! normal test run, nightly or not. How the corpora were made: docs/fuzzing.md.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files fail their check (messages above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn config_corpus() {
    replay("config", checks::check_config);
}

#[test]
fn cache_control_corpus() {
    replay("cache_control", checks::check_cache_control);
}

#[test]
fn vary_corpus() {
    replay("vary", checks::check_vary);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", checks::check_proxy_protocol);
}

#[test]
fn cookie_corpus() {
    replay("cookie", checks::check_cookie);
}
