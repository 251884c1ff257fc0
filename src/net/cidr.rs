//! Network tables (plain validated data, built by the config): client region lookup, CIDR networks → region index (longest prefix wins), the set of trusted
//! proxies, and which address a request comes from when it crossed them (X-Forwarded-For).
//!
//! Both tables flatten their networks into disjoint sorted ranges, one sorted array of range
//! starts per address family (`u32` keys for IPv4, `u128` for IPv6): a lookup is one binary
//! search, with no scan and no allocation, whatever the number of networks.
//!
//! IPv4 and IPv6 are separate spaces. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the
//! IPv4 client it stands for, both when looked up and when written as a network
//! (`::ffff:10.0.0.0/104` is `10.0.0.0/8`); so `::/0` does not cover IPv4 clients, `0.0.0.0/0` does.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::net::canonical_ip;

/// One network, in canonical form: an IPv4-mapped IPv6 network of /96 or longer is IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a network's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{cidr:?} is not a network: {reason} (expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or an address)")]
    Invalid { cidr: String, reason: &'static str },
    /// Refused rather than masked: `10.1.2.3/8` is far more often a typo for a /24 or a /32 than
    /// a wish to route all of 10.0.0.0/8, and masking would silently move a whole /8.
    #[error("{cidr:?} has address bits set past its prefix length: did you mean \"{network}\"?")]
    HostBits { cidr: String, network: Cidr },
}

impl Cidr {
    /// `addr/len`, or a bare address (a /32 or /128). Refuses bits set past the prefix length.
    pub fn parse(text: &str) -> Result<Cidr, CidrError> {
        let invalid = |reason| CidrError::Invalid {
            cidr: text.to_string(),
            reason,
        };
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| invalid("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len_text {
            None => max,
            // Digits only: `u8::from_str` would take "+8".
            Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => l
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| invalid("prefix length too long"))?,
            Some(_) => return Err(invalid("the prefix length is not a number")),
        };
        let cidr = Cidr { addr, len }.canonical();
        let network = cidr.masked();
        if network != cidr {
            return Err(CidrError::HostBits {
                cidr: text.to_string(),
                network,
            });
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn canonical(self) -> Cidr {
        match self.addr {
            IpAddr::V6(a) if self.len >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => Cidr {
                    addr: IpAddr::V4(v4),
                    len: self.len - 96,
                },
                None => self,
            },
            _ => self,
        }
    }

    fn masked(self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & !host_mask32(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & !host_mask128(self.len))),
        };
        Cidr { addr, len: self.len }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn host_mask32(len: u8) -> u32 {
    u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

fn host_mask128(len: u8) -> u128 {
    u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

/// A problem with one entry of a table's input; `index` is the entry's position in that input,
/// so the config layer can name the key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{error}")]
    Cidr { index: usize, error: CidrError },
    /// The same network (after canonical form) given to two different regions. The same network
    /// twice for one region is accepted: it is harmless, and lists merged by hand repeat.
    #[error("{network} is given to two regions (#{previous_region} by entry {previous}, #{region} by entry {index})")]
    Conflict {
        index: usize,
        previous: usize,
        network: Cidr,
        region: u16,
        previous_region: u16,
    },
}

impl TableError {
    pub fn index(&self) -> usize {
        match self {
            TableError::Cidr { index, .. } | TableError::Conflict { index, .. } => *index,
        }
    }
}

trait Key: Copy + Ord + std::ops::BitOr<Output = Self> {
    fn succ(self) -> Option<Self>;
    fn top16(self) -> usize;
}

macro_rules! key {
    ($t:ty) => {
        impl Key for $t {
            fn succ(self) -> Option<$t> {
                self.checked_add(1)
            }

            fn top16(self) -> usize {
                (self >> (<$t>::BITS - 16)) as usize
            }
        }
    };
}

key!(u32);
key!(u128);

/// One network as an inclusive range, with its value, and its input position and text form
/// for errors.
struct Net<K> {
    start: K,
    end: K,
    value: u16,
    index: usize,
    cidr: Cidr,
}

impl<K: Key> Net<K> {
    fn new(start: K, host_mask: K, value: u16, index: usize, cidr: Cidr) -> Net<K> {
        let end = start | host_mask;
        Net {
            start,
            end,
            value,
            index,
            cidr,
        }
    }
}

/// Disjoint ranges: `values[i]` holds from `starts[i]` up to the next start. Separate arrays
/// keep the binary search on a dense array of keys.
#[derive(Debug, Default)]
struct Ranges<K> {
    starts: Box<[K]>,
    values: Box<[Option<u16>]>,
    /// For large tables only: `index[b]` counts the starts whose top 16 bits are below `b`. A
    /// lookup then searches only the starts that share its key's top 16 bits: one access to this
    /// index instead of the first dozen steps of a search over the whole table, each a likely
    /// cache miss once the table outgrows the cache.
    index: Box<[u32]>,
}

/// Below this many ranges the whole table stays in cache and the index (256 KiB) is not worth it.
const INDEX_FROM: usize = 4096;

impl<K: Key> Ranges<K> {
    fn get(&self, key: K) -> Option<u16> {
        let (lo, hi) = match self.index.get(key.top16()..key.top16() + 2) {
            Some(&[lo, hi]) => (lo as usize, hi as usize),
            _ => (0, self.starts.len()),
        };
        let i = lo + self.starts.get(lo..hi)?.partition_point(|&s| s <= key);
        i.checked_sub(1).and_then(|i| self.values[i])
    }

    fn from_sorted(sorted: RangesBuilder<K>) -> Ranges<K> {
        let mut index = Vec::new();
        if sorted.starts.len() >= INDEX_FROM {
            index.reserve(1 << 16 | 1);
            let mut below = 0;
            for b in 0..=1 << 16 {
                while sorted.starts.get(below).is_some_and(|s| s.top16() < b) {
                    below += 1;
                }
                index.push(below as u32);
            }
        }
        Ranges {
            starts: sorted.starts.into_boxed_slice(),
            values: sorted.values.into_boxed_slice(),
            index: index.into_boxed_slice(),
        }
    }

    /// Flattens networks, which CIDRs guarantee are either nested or disjoint, with a sweep in
    /// address order that keeps the stack of networks enclosing the current point.
    fn build(mut nets: Vec<Net<K>>, errors: &mut Vec<TableError>) -> Ranges<K> {
        // Outer networks before the ones they contain; equal networks in input order.
        nets.sort_unstable_by(|a, b| (a.start, b.end, a.index).cmp(&(b.start, a.end, b.index)));
        nets.dedup_by(|later, kept| {
            if (later.start, later.end) != (kept.start, kept.end) {
                return false;
            }
            if later.value != kept.value {
                errors.push(TableError::Conflict {
                    index: later.index,
                    previous: kept.index,
                    network: later.cidr,
                    region: later.value,
                    previous_region: kept.value,
                });
            }
            true
        });
        let mut out = RangesBuilder {
            starts: Vec::with_capacity(nets.len() * 2),
            values: Vec::with_capacity(nets.len() * 2),
        };
        let mut open: Vec<(K, u16)> = Vec::new();
        for n in &nets {
            out.close(&mut open, Some(n.start));
            out.push(n.start, Some(n.value));
            open.push((n.end, n.value));
        }
        out.close(&mut open, None);
        Ranges::from_sorted(out)
    }
}

struct RangesBuilder<K> {
    starts: Vec<K>,
    values: Vec<Option<u16>>,
}

impl<K: Key> RangesBuilder<K> {
    /// A later boundary at the same start replaces the earlier one (an inner network starting
    /// where its outer one does, or networks ending together); equal neighbours merge.
    fn push(&mut self, start: K, value: Option<u16>) {
        if self.starts.last() == Some(&start) {
            self.starts.pop();
            self.values.pop();
        }
        if self.values.last().copied().flatten() != value {
            self.starts.push(start);
            self.values.push(value);
        }
    }

    /// Closes the open networks that end before `before` (all of them for `None`): past each
    /// one's end, the network enclosing it applies again.
    fn close(&mut self, open: &mut Vec<(K, u16)>, before: Option<K>) {
        while let Some(&(end, _)) = open.last() {
            if before.is_some_and(|b| end >= b) {
                break;
            }
            open.pop();
            if let Some(next) = end.succ() {
                self.push(next, open.last().map(|&(_, v)| v));
            }
        }
    }
}

/// IPv4 and IPv6 ranges, built from `(network text, value)` entries.
#[derive(Debug, Default)]
struct Table {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl Table {
    fn build<'a>(entries: impl Iterator<Item = (&'a str, u16)>) -> Result<Table, Vec<TableError>> {
        let mut errors = Vec::new();
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (index, (text, value)) in entries.enumerate() {
            match Cidr::parse(text) {
                Ok(cidr) => match cidr.addr {
                    IpAddr::V4(a) => v4.push(Net::new(u32::from(a), host_mask32(cidr.len), value, index, cidr)),
                    IpAddr::V6(a) => v6.push(Net::new(u128::from(a), host_mask128(cidr.len), value, index, cidr)),
                },
                Err(error) => errors.push(TableError::Cidr { index, error }),
            }
        }
        let table = Table {
            v4: Ranges::build(v4, &mut errors),
            v6: Ranges::build(v6, &mut errors),
        };
        if errors.is_empty() {
            return Ok(table);
        }
        errors.sort_by_key(TableError::index);
        Err(errors)
    }

    fn get(&self, ip: IpAddr) -> Option<u16> {
        match canonical_ip(ip) {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => self.v6.get(u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.starts.is_empty() && self.v6.starts.is_empty()
    }
}

/// Networks → region index; the longest matching prefix wins. `default()` is the empty table.
#[derive(Debug, Default)]
pub struct RegionTable(Table);

impl RegionTable {
    /// From `(network, region index)` entries; every problem is reported, each with its entry.
    pub fn build<S: AsRef<str>>(entries: &[(S, u16)]) -> Result<RegionTable, Vec<TableError>> {
        Table::build(entries.iter().map(|(c, r)| (c.as_ref(), *r))).map(RegionTable)
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<u16> {
        self.0.get(ip)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The networks whose connections may speak for a client (X-Forwarded-For, the region header).
/// `default()` trusts no one.
#[derive(Debug, Default)]
pub struct TrustedProxies(Table);

impl TrustedProxies {
    pub fn build<S: AsRef<str>>(cidrs: &[S]) -> Result<TrustedProxies, Vec<TableError>> {
        Table::build(cidrs.iter().map(|c| (c.as_ref(), 0))).map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.get(ip).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the right-most
/// X-Forwarded-For entry that is not a trusted proxy (the hop that reached our trusted chain).
///
/// `xff_values` are the header's lines in order; entries may carry ports (`1.2.3.4:5`,
/// `[2001:db8::1]:5`), brackets and spaces; empty entries are ignored (RFC 9110 lists). Everything
/// left of the first untrusted entry was written by that untrusted hop, so it is never read. An
/// entry that is not an address stops the walk at the last good address right of it (a trusted
/// proxy, or the peer): every address right of it was written by trusted proxies, so no client
/// chooses its address that way. Pass a line that is not text as `"?"` rather than dropping it:
/// dropped, it would let the walk go on past it to entries no trusted proxy vouches for.
pub fn client_address<'a>(peer: IpAddr, xff_values: impl Iterator<Item = &'a str>, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    // One left-to-right pass computes the right-to-left walk without collecting the entries:
    // `found` is what the walk returns once it reaches the entries seen so far, coming from the
    // right: `Some(a)` whatever it carries in, `None` the last good address it carries in.
    let mut found: Option<IpAddr> = None;
    for entry in xff_values.flat_map(|line| line.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        found = match forwarded_address(entry) {
            None => None,
            Some(a) if !trusted.contains(a) => Some(a),
            Some(a) => found.or(Some(a)),
        };
    }
    found.unwrap_or(peer)
}

/// One X-Forwarded-For entry: an address, perhaps in brackets, perhaps with a port.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_port) {
            return None;
        }
        IpAddr::V6(inside.parse().ok()?)
    } else if let Ok(ip) = entry.parse::<IpAddr>() {
        ip
    } else {
        let (addr, port) = entry.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(addr.parse().ok()?)
    };
    Some(canonical_ip(ip))
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Checks `address=region` pairs (`-` for no region), separated by spaces.
    fn expect(t: &RegionTable, cases: &str) {
        for case in cases.split_whitespace() {
            let (a, want) = case.split_once('=').unwrap();
            assert_eq!(t.lookup(ip(a)), want.parse().ok(), "{a}");
        }
    }

    #[test]
    fn longest_prefix_wins_across_nested_ipv4_networks() {
        // Given out of order on purpose: the build sorts.
        let t = RegionTable::build(&[
            ("10.1.2.3/32", 3),
            ("10.0.0.0/8", 0),
            ("10.1.2.0/24", 2),
            ("10.1.0.0/16", 1),
        ]);
        expect(
            &t.unwrap(),
            "10.1.2.3=3 10.1.2.4=2 10.1.2.2=2 10.1.3.0=1 10.0.255.255=0 10.2.0.0=0 9.255.255.255=- 11.0.0.0=-",
        );
    }

    #[test]
    fn longest_prefix_wins_across_nested_ipv6_networks() {
        let t = RegionTable::build(&[
            ("2001:db8::/32", 0),
            ("2001:db8:1::/48", 1),
            ("2001:db8:1:2::/64", 2),
            ("::/0", 9),
        ]);
        // IPv6 and IPv4 are separate spaces: ::/0 says nothing about IPv4 clients.
        expect(
            &t.unwrap(),
            "2001:db8:1:2::5=2 2001:db8:1:3::=1 2001:db8:2::=0 2001:db9::=9 10.0.0.1=- ::ffff:10.0.0.1=-",
        );
    }

    #[test]
    fn first_and_last_address_of_each_range_are_inside_and_neighbours_outside() {
        let t = RegionTable::build(&[("192.0.2.0/24", 1), ("192.0.2.128/25", 2), ("198.51.100.0/24", 3)]).unwrap();
        // The inner /25 ends where the outer /24 does: past both, nothing.
        expect(
            &t,
            "192.0.1.255=- 192.0.2.0=1 192.0.2.127=1 192.0.2.128=2 192.0.2.255=2 192.0.3.0=-",
        );
        expect(&t, "198.51.99.255=- 198.51.100.0=3 198.51.100.255=3 198.51.101.0=-");
    }

    #[test]
    fn ranges_touching_the_ends_of_the_address_space() {
        let t = RegionTable::build(&[
            ("0.0.0.0/0", 0),
            ("255.255.255.255", 1),
            ("0.0.0.0/32", 2),
            ("::/0", 3),
            ("ffff::/16", 4),
        ]);
        let t = t.unwrap();
        expect(&t, "0.0.0.0=2 0.0.0.1=0 255.255.255.254=0 255.255.255.255=1 ::=3");
        expect(
            &t,
            "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff=3 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff=4",
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_and_written_as_ipv4() {
        let t = RegionTable::build(&[("192.0.2.0/24", 1), ("::ffff:198.51.100.0/120", 2)]).unwrap();
        expect(&t, "::ffff:192.0.2.7=1 198.51.100.9=2 ::ffff:198.51.100.9=2");
        assert_eq!(Cidr::parse("::ffff:10.0.0.0/104").unwrap().to_string(), "10.0.0.0/8");
    }

    #[test]
    fn one_network_given_to_two_regions_is_refused_naming_both_entries() {
        let errors = RegionTable::build(&[("10.0.0.0/8", 0), ("192.0.2.0/24", 1), ("::ffff:10.0.0.0/104", 1)]);
        let errors = errors.unwrap_err();
        assert!(matches!(
            errors[..],
            [TableError::Conflict {
                index: 2,
                previous: 0,
                region: 1,
                previous_region: 0,
                ..
            }]
        ));
        assert_eq!(
            errors[0].to_string(),
            "10.0.0.0/8 is given to two regions (#0 by entry 0, #1 by entry 2)"
        );
    }

    #[test]
    fn one_network_twice_for_one_region_is_accepted() {
        expect(
            &RegionTable::build(&[("10.0.0.0/8", 4), ("10.0.0.0/8", 4)]).unwrap(),
            "10.9.9.9=4",
        );
    }

    #[test]
    fn bad_networks_are_all_reported_with_their_entry() {
        let errors = RegionTable::build(&[("10.0.0.0/8", 0), ("10.1.2.3/16", 0), ("banana", 1), ("10.0.0.0/33", 1)]);
        let errors = errors.unwrap_err();
        assert_eq!(errors.iter().map(TableError::index).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(
            errors[0].to_string().contains("did you mean \"10.1.0.0/16\""),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn network_text_is_strict() {
        let bad = "/8 10.0.0.0/ 10.0.0/8 10.0.0.0/+8 10.0.0.0/8/8 010.0.0.0/8 2001:db8::/129 fe80::1%eth0/64 \
                   10.0.0.0/0008 2001:db8::1/64 10.0.0.0/-1";
        for bad in bad.split_whitespace().chain(["", " 10.0.0.0/8", "10.0.0.0/ 8"]) {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Cidr::parse("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(Cidr::parse("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
    }

    #[test]
    fn lookups_agree_with_a_linear_longest_prefix_search() {
        // Dense random networks in 10.0.0.0/8, so that they nest, touch and share ends: a small
        // table, and one large enough to be searched through its index.
        let mut rng = fastrand::Rng::with_seed(6);
        for (count, space_bits, probes) in [(300, 14, 20_000), (6000, 24, 3000)] {
            let mut seen = std::collections::HashSet::new();
            let mut nets: Vec<(u32, u8, u16)> = Vec::new();
            while nets.len() < count {
                let len = rng.u8(32 - space_bits + 6..=32);
                let start = (0x0a00_0000 | rng.u32(..1 << space_bits)) & !host_mask32(len);
                if seen.insert((start, len)) {
                    nets.push((start, len, rng.u16(..8)));
                }
            }
            let text: Vec<_> = nets
                .iter()
                .map(|&(s, l, r)| (format!("{}/{l}", Ipv4Addr::from(s)), r))
                .collect();
            let t = RegionTable::build(&text).unwrap();
            assert_eq!(t.0.v4.index.is_empty(), count < INDEX_FROM);
            for _ in 0..probes {
                // Half of the probes fall outside every network.
                let a = 0x0a00_0000 | rng.u32(..1 << space_bits) | if rng.bool() { 0 } else { 1 << 24 };
                let matching = nets.iter().filter(|&&(s, l, _)| a & !host_mask32(l) == s);
                let want = matching.max_by_key(|&&(_, l, _)| l).map(|&(_, _, r)| r);
                assert_eq!(t.lookup(IpAddr::V4(Ipv4Addr::from(a))), want, "{}", Ipv4Addr::from(a));
            }
        }
    }

    fn client(peer: &str, lines: &[&str], trusted: &TrustedProxies) -> IpAddr {
        client_address(ip(peer), lines.iter().copied(), trusted)
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let t = TrustedProxies::build(&["10.0.0.0/8"]).unwrap();
        assert_eq!(client("198.51.100.1", &["203.0.113.9"], &t), ip("198.51.100.1"));
        let none = TrustedProxies::default();
        assert!(none.is_empty() && RegionTable::default().lookup(ip("10.0.0.1")).is_none());
        assert_eq!(client("10.0.0.1", &["203.0.113.9"], &none), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_gives_the_right_most_untrusted_entry() {
        let t = TrustedProxies::build(&["10.0.0.0/8", "2001:db8:ffff::/48"]).unwrap();
        let cases: &[(&[&str], &str)] = &[
            // A client's own forged entry sits left of the address our proxy saw: never read.
            (&["1.1.1.1, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),
            (&["1.1.1.1", "203.0.113.9", "10.0.0.7, 10.0.0.8"], "203.0.113.9"),
            (&["203.0.113.9:4711 ,10.0.0.7:80"], "203.0.113.9"),
            (&["[2001:db8::9]:443, [2001:db8:ffff::1]"], "2001:db8::9"),
            (&[" 2001:db8::9 ,, "], "2001:db8::9"),
            (&["::ffff:203.0.113.9"], "203.0.113.9"),
            // No header, or nothing but empty entries: the peer.
            (&[], "10.0.0.2"),
            (&["", " , "], "10.0.0.2"),
            // Every entry trusted: the left-most, the farthest hop known.
            (&["10.0.0.5, 10.0.0.7"], "10.0.0.5"),
        ];
        for (lines, want) in cases {
            assert_eq!(client("10.0.0.2", lines, &t), ip(want), "{lines:?}");
        }
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_trusted_address() {
        let t = TrustedProxies::build(&["10.0.0.0/8"]).unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["203.0.113.9, unknown, 10.0.0.7"], "10.0.0.7"),
            (&["203.0.113.9, 10.0.0.6, 10.0.0.7", "?"], "10.0.0.2"),
            (&["203.0.113.9, [::1, 10.0.0.7"], "10.0.0.7"),
            (&["203.0.113.9, 1.2.3.4:99999, 10.0.0.7"], "10.0.0.7"),
            (&["fe80::1%eth0"], "10.0.0.2"),
            // Garbage left of the first untrusted entry is never reached.
            (&["junk, 203.0.113.9, 10.0.0.7"], "203.0.113.9"),
        ];
        for (lines, want) in cases {
            // The peer as a dual-stack socket reports it.
            assert_eq!(client("::ffff:10.0.0.2", lines, &t), ip(want), "{lines:?}");
        }
    }
}
