//! Forwarding rules for headers (RFC 9110 §7.6): hop-by-hop fields stay on their hop, the
//! client's address and scheme travel in X-Forwarded-*, and `Via` marks both directions. All
//! edits are in place on the message's own HeaderMap.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};

pub const VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 waypost");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks to switch protocols (WebSocket and friends) in a way we tunnel.
/// `h2c` upgrades are ours to refuse, not a backend's to take.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    let Some(up) = headers.get(header::UPGRADE) else {
        return false;
    };
    if up.as_bytes().eq_ignore_ascii_case(b"h2c") {
        return false;
    }
    connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The fixed hop-by-hop fields, each with a bit for [`hop_fields`].
const CONNECTION_BIT: u8 = 1;
const UPGRADE_BIT: u8 = 1 << 1;

fn hop_bit(n: &HeaderName) -> u8 {
    if *n == header::CONNECTION {
        CONNECTION_BIT
    } else if *n == header::UPGRADE {
        UPGRADE_BIT
    } else if *n == header::TE {
        1 << 2
    } else if *n == header::TRANSFER_ENCODING {
        1 << 3
    } else if *n == header::PROXY_AUTHENTICATE {
        1 << 4
    } else if *n == header::PROXY_AUTHORIZATION {
        1 << 5
    } else if *n == KEEP_ALIVE {
        1 << 6
    } else if *n == PROXY_CONNECTION {
        1 << 7
    } else {
        0
    }
}

/// Which fixed hop-by-hop fields a message has, found in one pass over its field names: most
/// messages have none or one, so this replaces eight hashed removals with a few comparisons.
fn hop_fields(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |acc, n| acc | hop_bit(n))
}

/// Remove hop-by-hop fields: those named in Connection, then the fixed list. `Trailer` is not
/// hop-by-hop under RFC 9110 and stays: it declares the trailer fields that travel end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let present = hop_fields(headers);
    if present & CONNECTION_BIT != 0 {
        if let Some(conn) = headers.get(header::CONNECTION) {
            if conn.as_bytes().contains(&b',')
                || headers.get_all(header::CONNECTION).iter().count() > 1
                || !is_simple_token(conn.as_bytes())
            {
                let named: Vec<HeaderName> = headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|s| s.split(','))
                    .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                    .collect();
                for n in named {
                    if !(keep_upgrade && n == header::UPGRADE) {
                        headers.remove(&n);
                    }
                }
            } else if let Ok(n) = HeaderName::from_bytes(conn.as_bytes()) {
                if !(keep_upgrade && n == header::UPGRADE) {
                    headers.remove(&n);
                }
            }
        }
        headers.remove(header::CONNECTION);
    }
    let fixed: [(u8, &HeaderName); 6] = [
        (1 << 2, &header::TE),
        (1 << 3, &header::TRANSFER_ENCODING),
        (1 << 4, &header::PROXY_AUTHENTICATE),
        (1 << 5, &header::PROXY_AUTHORIZATION),
        (1 << 6, &KEEP_ALIVE),
        (1 << 7, &PROXY_CONNECTION),
    ];
    for (bit, name) in fixed {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

fn is_simple_token(b: &[u8]) -> bool {
    b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// Request headers towards a backend. `client_ip` is the client's address as a header value
/// (made once per connection); `host` is the client's Host (or :authority).
pub fn prepare_request(headers: &mut HeaderMap, client_ip: &HeaderValue, scheme: &'static str, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    // TE is hop-by-hop: the client's is gone, and this hop declares our own. waypost relays
    // trailers (HTTP/2 clients take them; for an HTTP/1.1 client hyper drops what it can't),
    // and backends (hyper among them) only send trailer fields to a peer that says so.
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    append_forwarded_for(headers, client_ip);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.append(header::VIA, VIA_VALUE);
}

/// Append to an existing X-Forwarded-For list, or start one.
pub fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    match headers.entry(X_FORWARDED_FOR.clone()) {
        header::Entry::Vacant(v) => {
            v.insert(client_ip.clone());
        }
        header::Entry::Occupied(mut o) => {
            // Several XFF lines are one list; fold them so the backend sees a single field.
            let mut joined = Vec::with_capacity(64);
            for v in o.iter() {
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => {
                    o.insert(v);
                }
                Err(_) => {
                    o.insert(client_ip.clone());
                }
            }
        }
    }
}

/// Response headers towards the client.
pub fn prepare_response(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade);
    headers.append(header::VIA, VIA_VALUE);
}

/// The request target for an HTTP/1.1 backend: origin-form (`/path?query`), with `strip` bytes
/// of matched prefix removed. Reuses the parsed URI when nothing changes.
pub fn upstream_uri(uri: &Uri, strip: usize) -> Uri {
    if strip == 0 && uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri.path_and_query().map(PathAndQuery::as_str).unwrap_or("/");
    if strip == 0 {
        return match uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
    }
    let rest = pq.get(strip..).unwrap_or("");
    let target = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    target.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_named_in_connection_are_dropped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-authenticate", "Basic"),
            ("upgrade", "websocket"),
            ("trailer", "x-checksum"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["trailer", "x-end-to-end"]);
    }

    #[test]
    fn a_single_named_field_in_connection_is_dropped_too() {
        let mut h = map(&[("connection", "x-hop"), ("x-hop", "1"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
        assert!(h.get("x-keep").is_some());
    }

    #[test]
    fn upgrade_is_kept_when_tunnelling() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn h2c_upgrade_is_not_tunnelled() {
        let h = map(&[("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c")]);
        assert!(!wants_upgrade(&h));
    }

    #[test]
    fn forwarded_headers_are_set_and_via_appended() {
        let mut h = map(&[("host", "shop.example.com"), ("via", "1.0 fred")]);
        let ip = HeaderValue::from_static("192.0.2.7");
        prepare_request(&mut h, &ip, "http", false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example.com");
        assert_eq!(h["te"], "trailers", "this hop accepts trailers");
        assert_eq!(h["host"], "shop.example.com");
        let via: Vec<_> = h.get_all("via").iter().collect();
        assert_eq!(via, vec!["1.0 fred", "1.1 waypost"]);
    }

    #[test]
    fn forwarded_for_appends_to_an_existing_list() {
        let mut h = map(&[("x-forwarded-for", "203.0.113.1"), ("x-forwarded-for", "198.51.100.2")]);
        append_forwarded_for(&mut h, &HeaderValue::from_static("192.0.2.7"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, vec!["203.0.113.1, 198.51.100.2, 192.0.2.7"]);
    }

    #[test]
    fn response_gets_via_and_loses_hop_by_hop() {
        let mut h = map(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("content-length", "3"),
        ]);
        prepare_response(&mut h, false);
        assert!(h.get("connection").is_none() && h.get("keep-alive").is_none());
        assert_eq!(h["via"], "1.1 waypost");
        assert_eq!(h["content-length"], "3");
    }

    #[test]
    fn upstream_uri_is_origin_form_with_prefix_stripped() {
        let u: Uri = "/assets/app.js?v=1".parse().unwrap();
        assert_eq!(upstream_uri(&u, 0), "/assets/app.js?v=1");
        assert_eq!(upstream_uri(&u, "/assets".len()), "/app.js?v=1");
        assert_eq!(upstream_uri(&u, "/assets/".len()), "/app.js?v=1");
        let exact: Uri = "/assets/".parse().unwrap();
        assert_eq!(upstream_uri(&exact, "/assets/".len()), "/");
        let h2: Uri = "http://example.com/a/b?c".parse().unwrap();
        assert_eq!(upstream_uri(&h2, 0), "/a/b?c");
        assert_eq!(upstream_uri(&h2, 2), "/b?c");
    }
}
