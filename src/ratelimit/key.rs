//! A request's key for one limit: its parts (client address by prefix, a header, a cookie, the
//! route) hashed with SipHash-1-3 under a key derived from the [session] secret, so that
//! instances sharing the secret name the same counters in Redis and a client cannot choose a
//! header value that lands on another client's counter. No allocation.

use std::hash::Hasher;
use std::net::IpAddr;

use http::header::{HeaderMap, COOKIE};
use siphasher::sip::SipHasher13;

use crate::config::LimitKeyPart;

pub struct KeySpec {
    parts: Vec<LimitKeyPart>,
    v4_mask: u32,
    v6_mask: u128,
    k0: u64,
    k1: u64,
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - prefix.min(32) as u32).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - prefix.min(128) as u32).unwrap_or(0)
}

impl KeySpec {
    pub fn new(parts: &[LimitKeyPart], ipv4_prefix: u8, ipv6_prefix: u8, sip_key: [u8; 16]) -> KeySpec {
        let (a, b) = sip_key.split_at(8);
        KeySpec {
            parts: parts.to_vec(),
            v4_mask: mask_v4(ipv4_prefix),
            v6_mask: mask_v6(ipv6_prefix),
            k0: u64::from_le_bytes(a.try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(b.try_into().expect("8 bytes")),
        }
    }

    /// The key's hash, or None when the request lacks a header or cookie the key needs (such
    /// a request is not counted by this limit).
    pub fn hash(&self, client: IpAddr, headers: &HeaderMap, route: &str) -> Option<u64> {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        for part in &self.parts {
            match part {
                LimitKeyPart::ClientIp => match client {
                    IpAddr::V4(v4) => {
                        h.write_u8(4);
                        h.write_u32(u32::from(v4) & self.v4_mask);
                    }
                    IpAddr::V6(v6) => {
                        h.write_u8(6);
                        h.write_u128(u128::from(v6) & self.v6_mask);
                    }
                },
                LimitKeyPart::Header(name) => {
                    let v = headers.get(name)?;
                    h.write_u8(b'h');
                    h.write_usize(v.len());
                    h.write(v.as_bytes());
                }
                LimitKeyPart::Cookie(name) => {
                    let values = headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok());
                    let v = crate::session::find_cookie(values, name)?;
                    h.write_u8(b'c');
                    h.write_usize(v.len());
                    h.write(v.as_bytes());
                }
                LimitKeyPart::Route => {
                    h.write_u8(b'r');
                    h.write_usize(route.len());
                    h.write(route.as_bytes());
                }
            }
        }
        Some(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn spec(parts: &[LimitKeyPart]) -> KeySpec {
        KeySpec::new(parts, 32, 64, [7; 16])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_of_one_prefix_share_a_key() {
        let s = spec(&[LimitKeyPart::ClientIp]);
        let h = HeaderMap::new();
        let a = s.hash(ip("2001:db8:1:2::1"), &h, "r");
        assert_eq!(a, s.hash(ip("2001:db8:1:2:ffff::9"), &h, "r"));
        assert_ne!(a, s.hash(ip("2001:db8:1:3::1"), &h, "r"));
        // IPv4 addresses stay apart at /32.
        assert_ne!(s.hash(ip("10.0.0.1"), &h, "r"), s.hash(ip("10.0.0.2"), &h, "r"));
        let s24 = KeySpec::new(&[LimitKeyPart::ClientIp], 24, 64, [7; 16]);
        assert_eq!(s24.hash(ip("10.0.0.1"), &h, "r"), s24.hash(ip("10.0.0.2"), &h, "r"));
    }

    #[test]
    fn a_missing_header_or_cookie_means_no_key() {
        let name = http::HeaderName::from_static("x-api-key");
        let s = spec(&[LimitKeyPart::Header(name.clone())]);
        let mut h = HeaderMap::new();
        assert_eq!(s.hash(ip("10.0.0.1"), &h, "r"), None);
        h.insert(name, HeaderValue::from_static("k1"));
        let k1 = s.hash(ip("10.0.0.1"), &h, "r");
        assert!(k1.is_some());
        assert_eq!(
            k1,
            s.hash(ip("10.0.0.2"), &h, "r"),
            "the address is not part of this key"
        );

        let c = spec(&[LimitKeyPart::Cookie("sid".into())]);
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1"));
        assert_eq!(c.hash(ip("10.0.0.1"), &h, "r"), None);
        h.append(COOKIE, HeaderValue::from_static("sid=abc; b=2"));
        assert!(c.hash(ip("10.0.0.1"), &h, "r").is_some());
    }

    #[test]
    fn combined_parts_and_the_route_tell_keys_apart() {
        let s = spec(&[LimitKeyPart::ClientIp, LimitKeyPart::Route]);
        let h = HeaderMap::new();
        assert_ne!(s.hash(ip("10.0.0.1"), &h, "a"), s.hash(ip("10.0.0.1"), &h, "b"));
        let other_key = KeySpec::new(&[LimitKeyPart::ClientIp, LimitKeyPart::Route], 32, 64, [8; 16]);
        assert_ne!(s.hash(ip("10.0.0.1"), &h, "a"), other_key.hash(ip("10.0.0.1"), &h, "a"));
    }
}
