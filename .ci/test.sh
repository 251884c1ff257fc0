#!/usr/bin/env bash
# The project's test command: install what the tests need (Debian packages, when missing),
# then check formatting, lint, run every test, and build the fuzz targets. Works from a fresh
# clone, as root, with no stdin (CI runs it as `bash .ci/run`).
set -euo pipefail

cd "$(dirname "$0")/.."

# Debian packages the tests use. Add to this list (space-separated) when a test needs a tool:
#   prometheus  promtool and the prometheus server (tests/prometheus.rs)
#   systemd     systemd-analyze verify of the unit files (tests/lifecycle.rs)
#   sslscan     the TLS scan of a listener (tests/tls.rs)
#   openssl     RSA (PKCS#1, PKCS#8) and EC (SEC1) keys for tests/tls.rs
#   redis-server  the Redis that shares rate limits between instances (tests/ratelimit_redis.rs)
#   chromium chromium-driver  the status page in a headless browser (tests/status_page.rs)
#   logrotate dpkg-dev adduser  the Debian package check (.ci/deb.sh)
APT_PACKAGES="prometheus systemd sslscan openssl redis-server chromium chromium-driver logrotate dpkg-dev adduser"

missing=()
for pkg in $APT_PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing Debian packages: ${missing[*]}"
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo -n)
        else
            echo "test.sh: need root (or sudo) to install: ${missing[*]}" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    started=$SECONDS
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" </dev/null
    echo "test.sh: installed in $((SECONDS - started))s"
fi

# cargo-deb builds the Debian package (.ci/deb.sh); from crates.io, a few minutes to build.
if ! cargo deb --version >/dev/null 2>&1; then
    echo "test.sh: cargo install cargo-deb"
    cargo install cargo-deb --locked
fi

echo "test.sh: cargo fmt --check"
cargo fmt --all -- --check

echo "test.sh: cargo clippy"
cargo clippy --all-targets -- -D warnings

echo "test.sh: cargo test"
cargo test

# The Debian package: a release build with cargo-deb (about 6 minutes; skipped when the
# package in target/debian is newer than its sources), installed with dpkg -i, checked and
# purged. A separate step so that `cargo test` stays a debug build.
echo "test.sh: Debian package (.ci/deb.sh)"
bash .ci/deb.sh

# The fuzz targets (fuzz/, its own crate; docs/fuzzing.md). cargo test above already replays
# their committed corpora on stable (tests/fuzz_corpus.rs); this proves the targets build. A
# real fuzz build needs nightly and cargo-fuzz; without them, check the crate on stable.
if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
    echo "test.sh: cargo +nightly fuzz build"
    cargo +nightly fuzz build
else
    echo "test.sh: no nightly toolchain or no cargo-fuzz: cargo check of the fuzz crate on stable"
    cargo check --manifest-path fuzz/Cargo.toml --bins
fi
