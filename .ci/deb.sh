#!/usr/bin/env bash
# The Debian package, end to end: build it with cargo-deb (a release build; skipped when
# target/debian holds a package newer than every file it is made from), install it with
# dpkg -i on this machine, check what it installed (files, conffiles, the service user,
# the default config, `systemd-analyze verify`, logrotate), upgrade it over a config that
# fails `waypost check` (no restart, a clear message), then purge it and check that nothing
# is left. Run by .ci/test.sh after cargo test; needs root, cargo-deb, systemd, logrotate.
set -euo pipefail

cd "$(dirname "$0")/.."

fail() { echo "deb.sh: FAIL: $*" >&2; exit 1; }
step() { echo "deb.sh: $*"; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
if dpkg-query -W -f='${Status}' waypost 2>/dev/null | grep -q "install ok installed"; then
    fail "a waypost package is already installed on this machine; not touching it"
fi

version=$(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="waypost"))')
arch=$(dpkg --print-architecture)
deb="target/debian/waypost_${version}-1_${arch}.deb"

# Current: no source of the package is newer than it.
if [ -f "$deb" ] && [ -z "$(find src Cargo.toml Cargo.lock config systemd docs README.md -newer "$deb" -print -quit)" ]; then
    step "$deb is current; not rebuilding"
else
    step "cargo deb (release build)"
    started=$SECONDS
    cargo deb --output "$deb"
    step "built in $((SECONDS - started))s"
fi
[ -f "$deb" ] || fail "no $deb"

cleanup() {
    if dpkg-query -W -f='${Status}' waypost 2>/dev/null | grep -q "installed"; then
        dpkg --purge waypost >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "package contents"
contents=$(dpkg-deb --contents "$deb")
for f in ./usr/bin/waypost ./lib/systemd/system/waypost.service ./lib/systemd/system/waypost.socket \
    ./etc/waypost/waypost.toml ./etc/logrotate.d/waypost ./usr/share/doc/waypost/README.md \
    ./usr/share/doc/waypost/operations.md ./usr/share/doc/waypost/grafana/waypost.json \
    ./usr/share/doc/waypost/prometheus/alerts.yml; do
    grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for f in /etc/waypost/waypost.toml /etc/logrotate.d/waypost; do
    grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
dpkg-deb --field "$deb" Depends | grep -q adduser || fail "Depends lacks adduser"

step "dpkg -i"
out=$(dpkg -i "$deb" 2>&1) || fail "dpkg -i: $out"
echo "$out" | sed 's/^/    /'
[ -x /usr/bin/waypost ] || fail "/usr/bin/waypost"
/usr/bin/waypost --version | grep -q "$version" || fail "installed binary is not version $version"
for f in /lib/systemd/system/waypost.service /lib/systemd/system/waypost.socket \
    /etc/waypost/waypost.toml /etc/logrotate.d/waypost; do
    [ -f "$f" ] || fail "$f not installed"
done
dpkg-query -W -f='${Conffiles}\n' waypost | grep -q /etc/waypost/waypost.toml || fail "dpkg does not list the conffile"

step "the waypost system user"
entry=$(getent passwd waypost) || fail "no waypost user"
uid=$(cut -d: -f3 <<<"$entry")
shell=$(cut -d: -f7 <<<"$entry")
[ "$uid" -lt 1000 ] || fail "waypost is not a system user (uid $uid)"
case "$shell" in */nologin|*/false) ;; *) fail "waypost has a login shell: $shell" ;; esac
getent group waypost >/dev/null || fail "no waypost group"
[ -d /var/log/waypost ] && [ "$(stat -c %U /var/log/waypost)" = waypost ] || fail "/var/log/waypost"

step "the default config: valid, admin on loopback, no backends"
runuser -u waypost -- /usr/bin/waypost check --config /etc/waypost/waypost.toml ||
    fail "the default config fails waypost check (as the waypost user)"
active=$(sed 's/#.*//' /etc/waypost/waypost.toml)
grep -Eq '^[[:space:]]*(backends|\[\[pool\]\])' <<<"$active" && fail "the default config has an active pool or backend"
admin_bind=$(awk '/^\[/{section=$0} section=="[admin]" && /^bind/{print $3}' <<<"$active")
grep -Eq '^"127\.0\.0\.1:[0-9]+"$' <<<"$admin_bind" || fail "admin is not on loopback: $admin_bind"

step "systemd-analyze verify"
out=$(systemd-analyze verify --man=no /lib/systemd/system/waypost.service /lib/systemd/system/waypost.socket 2>&1) ||
    fail "systemd-analyze verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify says: $out"

step "logrotate -d"
out=$(logrotate -d /etc/logrotate.d/waypost 2>&1) || fail "logrotate: $out"
if grep -qiE "^error|error:" <<<"$out"; then fail "logrotate: $out"; fi
grep -q "postrotate" /etc/logrotate.d/waypost && grep -q "USR1" /etc/logrotate.d/waypost ||
    fail "logrotate does not signal USR1"
# A forced rotation: the old file moves aside, a new one is created for the service user.
runuser -u waypost -- sh -c 'echo "{}" >/var/log/waypost/access.log'
state=$(mktemp)
logrotate -f -s "$state" /etc/logrotate.d/waypost || fail "logrotate -f"
rm -f "$state"
[ -s /var/log/waypost/access.log.1 ] || fail "access.log was not rotated to access.log.1"
[ "$(stat -c '%U %a' /var/log/waypost/access.log)" = "waypost 640" ] ||
    fail "the new access.log: $(stat -c '%U %a' /var/log/waypost/access.log)"

step "upgrade over a config that fails waypost check"
cp /etc/waypost/waypost.toml /tmp/waypost.toml.deb-test
printf '\ncolour = "red"\n' >>/etc/waypost/waypost.toml
out=$(dpkg -i "$deb" 2>&1) || fail "dpkg -i (upgrade) failed: $out"
grep -q "does not pass 'waypost check'" <<<"$out" || fail "no warning about the bad config: $out"
grep -q "colour" <<<"$out" || fail "the problem is not shown: $out"
cp /tmp/waypost.toml.deb-test /etc/waypost/waypost.toml
rm -f /tmp/waypost.toml.deb-test
out=$(dpkg -i "$deb" 2>&1) || fail "dpkg -i (upgrade) failed: $out"
grep -q "does not pass" <<<"$out" && fail "a good config was reported bad: $out"

step "dpkg --purge"
dpkg --purge waypost >/dev/null || fail "dpkg --purge"
for f in /usr/bin/waypost /lib/systemd/system/waypost.service /lib/systemd/system/waypost.socket \
    /etc/waypost /etc/logrotate.d/waypost /var/log/waypost /usr/share/doc/waypost; do
    [ -e "$f" ] && fail "$f is left after purge"
done
getent passwd waypost >/dev/null && fail "the waypost user is left after purge"
getent group waypost >/dev/null && fail "the waypost group is left after purge"
dpkg-query -W waypost >/dev/null 2>&1 && fail "dpkg still knows waypost"
trap - EXIT
step "OK"
