#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into fuzz/corpus/<target>/seed-*: the project's
configs and the TOML of its tests, real Cache-Control / Vary / PROXY protocol headers, and
cookies sealed under the fuzz key (same derivation as src/session.rs). The committed corpora
started from these and were then grown by fuzzing and minimised with `cargo fuzz cmin`, so
this is only needed to start afresh:

    python3 fuzz/seeds.py && cargo +nightly fuzz cmin <target>
"""
import base64, hashlib, hmac, ipaddress, pathlib, re, struct

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data if isinstance(data, bytes) else data.encode())


# --- config: the example configs, the contract, and the TOML in the tests -------------------
def config_seeds():
    n = 0
    for p in sorted((ROOT / "config").glob("*.toml")):
        write("config", p.stem, p.read_bytes())
    contract = pathlib.Path("/work/shared/config-contract.toml")
    if contract.exists():
        write("config", "contract", contract.read_bytes())
    raw = re.compile(r'r(#+)"(.*?)"\1', re.S)
    for src in sorted(list((ROOT / "tests").glob("*.rs")) + list((ROOT / "src").rglob("*.rs"))):
        for m in raw.finditer(src.read_text()):
            body = m.group(2)
            if not re.search(r"^\s*\[", body, re.M) or "=" not in body:
                continue
            # format! placeholders: doubled braces are literal ones; a quoted {name} becomes an
            # address, a bare one (a TOML fragment) goes.
            body = body.replace("{{", "\0").replace("}}", "\1")
            body = re.sub(r'"\{[a-z_0-9.:?]*\}"', '"127.0.0.1:9001"', body)
            body = re.sub(r"\{[a-z_0-9.:?]*\}", "", body)
            body = body.replace("\0", "{").replace("\1", "}")
            n += 1
            write("config", f"{src.stem}-{n}", body)


# --- Cache-Control ---------------------------------------------------------------------------
CACHE_CONTROL = [
    "max-age=3600",
    "public, max-age=31536000, immutable",
    "no-cache",
    "no-store",
    "private, max-age=0, must-revalidate",
    "s-maxage=600, max-age=60, stale-while-revalidate=30, stale-if-error=86400",
    'private="Set-Cookie, X-User", no-cache="x-debug"',
    "max-stale, min-fresh=10",
    "max-stale=120\nonly-if-cached",
    "no-transform, proxy-revalidate, must-understand, no-store",
    'ext="a, max-age=1, \\"q\\"", max-age=60',
    "max-age=\"60\"\nmax-age=30",
    "MAX-AGE=99999999999999999999, S-MAXAGE=-1",
    "public=yes, immutable=1, max-age=",
    "no-cache=\"x-a,\\x-b\", private=\"unterminated",
]


def cache_control_seeds():
    for i, v in enumerate(CACHE_CONTROL):
        write("cache_control", str(i), v)


# --- Vary: response Vary lines, an empty line, then request fields ---------------------------
VARY = [
    "Accept-Encoding\n\naccept-encoding: gzip, deflate, br\nuser-agent: curl/8.5.0",
    "Accept-Encoding, Accept-Language\n\naccept-encoding: br;q=1.0, gzip;q=0.8, *;q=0.1\naccept-language: de-DE,de;q=0.9,en;q=0.8",
    "accept\naccept-encoding\n\naccept: text/html,application/xhtml+xml;q=0.9,*/*;q=0.8\naccept-encoding: x-gzip, identity;q=0",
    "Cookie\n\ncookie: a=1; b=2\ncookie: c=\"x; y\"",
    "*",
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers\n\norigin: https://example.com",
    "X-Device\n\nx-device: mobile\nx-device:  tablet \t",
    "accept-language\n\naccept-language: en , fr\naccept-language: \"q, r\"",
]


def vary_seeds():
    for i, v in enumerate(VARY):
        write("vary", str(i), v)


# --- PROXY protocol: v1 and v2 headers, each followed by a request ---------------------------
V2_SIG = b"\r\n\r\n\0\r\nQUIT\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def v2(cmd, fam, block):
    return V2_SIG + bytes([cmd, fam]) + struct.pack(">H", len(block)) + block


def v2_inet(src, dst, sport, dport, tlvs=b""):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    return v2(0x21, fam, s.packed + d.packed + struct.pack(">HH", sport, dport) + tlvs)


def proxy_protocol_seeds():
    ssl = tlv(0x20, bytes([0x07]) + b"\0\0\0\0" + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example"))
    seeds = {
        "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" + REQUEST,
        "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n" + REQUEST,
        "v1-mapped": b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 65535\r\n",
        "v1-unknown": b"PROXY UNKNOWN\r\n" + REQUEST,
        "v1-unknown-junk": b"PROXY UNKNOWN ffff:f...f:ffff 65535 65535\r\n",
        "v2-ipv4": v2_inet("192.0.2.1", "198.51.100.2", 56324, 443) + REQUEST,
        "v2-ipv6": v2_inet("2001:db8::1", "2001:db8::2", 56324, 443) + REQUEST,
        # HAProxy send-proxy-v2-ssl: ALPN, authority, CRC32C, unique id, SSL with sub-TLVs.
        "v2-haproxy-tlvs": v2_inet(
            "203.0.113.7", "10.0.0.5", 40000, 8443,
            tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x03, b"\0\0\0\0") + tlv(0x05, b"id-1") + ssl,
        ) + REQUEST,
        # AWS NLB: the VPC endpoint id in a custom TLV, padded with NOOP.
        "v2-aws": v2_inet("10.1.2.3", "10.1.2.4", 1234, 80, tlv(0xEA, b"\x01vpce-0123456789abcdef") + tlv(0x04, b"\0\0\0")),
        "v2-local": v2(0x20, 0x00, b"") + REQUEST,
        "v2-udp": v2(0x21, 0x12, b"\0" * 12),
        "v2-unix": v2(0x21, 0x31, b"/run/lb.sock".ljust(216, b"\0")),
        "http": REQUEST,
    }
    for name, data in seeds.items():
        write("proxy_protocol", name, data)


# --- cookies, sealed under the fuzz key of fuzz/src/lib.rs -----------------------------------
SECRET = b"waypost fuzzing secret, 32 bytes"
NOW = 1_795_478_400


def sub(label):
    return hmac.new(SECRET, label, hashlib.sha256).digest()


def seal(purpose, fields):
    mac, mask = sub(b"waypost cookie tag v1"), sub(b"waypost cookie mask v1")
    head = bytes([1, purpose]) + fields
    tag = hmac.new(mac, head, hashlib.sha256).digest()[:16]
    m = hmac.new(mask, tag, hashlib.sha256).digest()
    masked = bytes(a ^ b for a, b in zip(fields, m))
    return base64.urlsafe_b64encode(bytes([1, purpose]) + masked + tag).rstrip(b"=").decode()


def cookie_seeds():
    sticky = seal(1, struct.pack(">QQ", 0x1234_5678_9ABC_DEF0, NOW + 3600))
    ryw = seal(2, struct.pack(">Q", NOW + 5))
    expired = seal(1, struct.pack(">QQ", 7, NOW - 1))
    seeds = {
        "sticky": sticky,
        "ryw": ryw,
        "expired": expired,
        "header": f"theme=dark; waypost_affinity={sticky}; waypost_ryw=\"{ryw}\"",
        "set-cookie": f"waypost_affinity={sticky}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax; Secure",
        "junk": "waypost_affinity=\"unterminated; =; ;;a=b",
    }
    for name, data in seeds.items():
        write("cookie", name, data)


if __name__ == "__main__":
    config_seeds()
    cache_control_seeds()
    vary_seeds()
    proxy_protocol_seeds()
    cookie_seeds()
    for d in sorted(CORPUS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} files")
