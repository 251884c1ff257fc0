//! Consistent hashing with bounded load: which backend of a pool owns a key (a user id, a
//! session cookie, a client address), and where the key goes while its owner is down or busy.
//!
//! # Why a ring with virtual nodes, not a Maglev table
//!
//! Each member places points on a 32-bit ring at `hash_key(id, j)` for `j` in `0..count`,
//! with `count` proportional to its weight; a key is owned by the member of the first point at
//! or after the key's position. Maglev (a prime-sized lookup table filled from per-member
//! permutations) has exact weight shares and an O(1) lookup, but every membership change also
//! moves some keys between members that stayed, and it has no per-key fallback order. The ring
//! gives, by construction, what sharded backends need:
//!
//! - removing (or marking down) one member moves only that member's keys, and they spread over
//!   the others in proportion to their points; adding one takes only the keys it now owns;
//! - a down member is skipped by walking on to the next point, which yields exactly the member
//!   the key would have if the table were rebuilt without it, so instances with different views
//!   of health still agree on every other key, and keys go home when the member returns;
//! - "consistent hashing with bounded loads" (Mirrokni, Thorup, Zadimoghaddam, 2018) is
//!   defined as that same walk past members that are full.
//!
//! The ring's usual binary search over all points is replaced by a bucket index on the top bits
//! of the position, about one point per bucket. Memory is about 12 bytes per point.
//!
//! # Weights and point counts
//!
//! The lightest member gets [`POINTS_PER_MEMBER`] points (each share off by about 8%, 1 sigma;
//! bounded load absorbs that), heavier ones proportionally more, at most [`MAX_POINTS`] in all.
//! Counts depend only on a member's own weight and the lightest weight, so with equal weights
//! adding or removing a member never changes the others' points; and a member's points are a
//! prefix of one fixed sequence, so a changed count moves only the keys of the points changed.
//!
//! The table is a pure function of the (id, weight) set: ids are stable hashes of pool name and
//! address ([`backend_id`]), ties on the ring break by id, and input order only
//! decides which index [`HashTable::pick`] returns, so every process and every reload agrees.

/// Points of the lightest member.
pub const POINTS_PER_MEMBER: u64 = 160;
/// Upper bound on points in a table (about 6 MB with the index); weights are scaled down to
/// fit, which only matters past ~3000 equal members or for extreme weight ratios.
pub const MAX_POINTS: u64 = 1 << 19;

/// wyhash's default secret; any odd 64-bit constants with balanced bits would do.
const S0: u64 = 0x2d35_8dcc_aa6c_78a5;
const S1: u64 = 0x8bb8_4b93_962e_acc9;
const S2: u64 = 0x4b33_a62e_d433_d4a3;
const S3: u64 = 0x4d5a_2da5_1de1_aa47;
/// "waypost!": fixed, so every process and every release maps a key to the same position.
/// Changing it (or the function) remaps every key of every consistent-hash pool.
const SEED: u64 = 0x7761_7970_6f73_7421;

/// A stable 64-bit hash of a key: the wyhash (final 4) construction with a fixed seed. Unlike
/// `std`'s `DefaultHasher`, whose algorithm may change between Rust releases, it is the same
/// in every process and build, so two waypost instances send a key to the same backend.
/// Not keyed: it spreads keys, it does not resist chosen keys (bounded load does that).
pub fn hash_key(bytes: &[u8]) -> u64 {
    let len = bytes.len();
    let mut seed = SEED ^ mix(SEED ^ S0, S1);
    let (a, b);
    if len <= 16 {
        if len >= 4 {
            // Two overlapping 4-byte reads from each end cover 4..=16 bytes without a branch per size.
            let q = (len >> 3) << 2;
            a = (r4(bytes, 0) << 32) | r4(bytes, q);
            b = (r4(bytes, len - 4) << 32) | r4(bytes, len - 4 - q);
        } else if len > 0 {
            a = (u64::from(bytes[0]) << 16) | (u64::from(bytes[len >> 1]) << 8) | u64::from(bytes[len - 1]);
            b = 0;
        } else {
            (a, b) = (0, 0);
        }
    } else {
        let mut p = bytes;
        if p.len() > 48 {
            // Three independent lanes keep the multiplier busy on long keys (paths, cookies).
            let (mut see1, mut see2) = (seed, seed);
            while p.len() > 48 {
                seed = mix(r8(p, 0) ^ S1, r8(p, 8) ^ seed);
                see1 = mix(r8(p, 16) ^ S2, r8(p, 24) ^ see1);
                see2 = mix(r8(p, 32) ^ S3, r8(p, 40) ^ see2);
                p = &p[48..];
            }
            seed ^= see1 ^ see2;
        }
        while p.len() > 16 {
            seed = mix(r8(p, 0) ^ S1, r8(p, 8) ^ seed);
            p = &p[16..];
        }
        // The last 16 bytes of the input, overlapping what was read when the tail is short.
        a = r8(bytes, len - 16);
        b = r8(bytes, len - 8);
    }
    let (lo, hi) = mum(a ^ S1, b ^ seed);
    mix(lo ^ S0 ^ len as u64, hi ^ S1)
}

/// The stable identity of a backend for hashing and for sticky cookies: a hash of the pool name
/// and the address text, so it is the same in every process, reload and DNS refresh that keeps
/// the address.
pub fn backend_id(pool: &str, address: &str) -> u64 {
    let mut bytes = Vec::with_capacity(pool.len() + 1 + address.len());
    bytes.extend_from_slice(pool.as_bytes());
    // 0xff never occurs in UTF-8, so ("ab", "c") and ("a", "bc") cannot collide.
    bytes.push(0xff);
    bytes.extend_from_slice(address.as_bytes());
    hash_key(&bytes)
}

#[inline]
fn mum(a: u64, b: u64) -> (u64, u64) {
    let r = u128::from(a) * u128::from(b);
    (r as u64, (r >> 64) as u64)
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let (lo, hi) = mum(a, b);
    lo ^ hi
}

#[inline]
fn r8(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

#[inline]
fn r4(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[i..i + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// In-flight load over the usable members, for the bounded-load cap. [`HashTable::pick`]
/// computes it by visiting every member; a pool that keeps a running total can pass its own to
/// [`HashTable::pick_bounded`] and make the pick O(1) again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSummary {
    /// Requests in flight on the usable members, not counting the one being placed.
    pub total: usize,
    /// Sum of the usable members' weights.
    pub weight: u64,
}

/// One generation's consistent-hash table over a pool's members. Immutable and lock-free:
/// build it with the pool, share it by reference.
#[derive(Debug, Clone)]
pub struct HashTable {
    /// Point positions on the ring, ascending.
    positions: Box<[u32]>,
    /// The member index owning each point.
    owners: Box<[u32]>,
    /// `index[b]`: the first point whose position's top bits are >= b; `2^bits + 1` entries.
    index: Box<[u32]>,
    shift: u32,
    weights: Box<[u32]>,
}

impl HashTable {
    /// Build from `(stable id, weight)` per member; a weight of 0 counts as 1, as in
    /// [`super::Balancer`]. Members with the same id share points and the first by id order
    /// wins them, so a duplicate only takes keys while its twin is down.
    pub fn new(members: &[(u64, u32)]) -> HashTable {
        let weights: Box<[u32]> = members.iter().map(|m| m.1.max(1)).collect();
        let counts = point_counts(&weights);
        // Rank members by (id, index): ties on the ring break by rank, so by id whatever the input order.
        let mut by_rank: Vec<u32> = (0..members.len() as u32).collect();
        by_rank.sort_unstable_by_key(|&i| (members[i as usize].0, i));
        let total: u64 = counts.iter().sum();
        let mut points: Vec<u64> = Vec::with_capacity(total as usize);
        for (rank, &i) in by_rank.iter().enumerate() {
            let id = members[i as usize].0;
            let mut buf = [0u8; 16];
            buf[..8].copy_from_slice(&id.to_le_bytes());
            for j in 0..counts[i as usize] {
                buf[8..].copy_from_slice(&j.to_le_bytes());
                let pos = hash_key(&buf) >> 32;
                // Position in the high half, rank in the low half: one integer sort orders both.
                points.push((pos << 32) | rank as u64);
            }
        }
        points.sort_unstable();
        let positions: Box<[u32]> = points.iter().map(|p| (p >> 32) as u32).collect();
        let owners: Box<[u32]> = points.iter().map(|&p| by_rank[(p & 0xffff_ffff) as usize]).collect();
        // About one point per bucket; at least one bit so the shift stays below 32.
        let bits = (usize::BITS - 1 - positions.len().max(2).leading_zeros()).clamp(1, 20);
        let shift = 32 - bits;
        let mut index = Vec::with_capacity((1 << bits) + 1);
        let mut k = 0usize;
        for b in 0..=(1u64 << bits) {
            while k < positions.len() && u64::from(positions[k] >> shift) < b {
                k += 1;
            }
            index.push(k as u32);
        }
        HashTable {
            positions,
            owners,
            index: index.into_boxed_slice(),
            shift,
            weights,
        }
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Points on the ring (memory and build cost grow with it).
    pub fn points(&self) -> usize {
        self.positions.len()
    }

    /// The member owning the key when every member is usable.
    pub fn home(&self, key_hash: u64) -> Option<usize> {
        self.sequence(key_hash).next()
    }

    /// The key's preference order: the owners of the points from the key's position on, with
    /// runs of one member folded. A member may appear more than once. Past a bounded walk
    /// (4 points per member + 64) it continues in index order from the home member, so even a
    /// pick over a mostly-down pool costs O(members), not O(points).
    pub fn sequence(&self, key_hash: u64) -> Sequence<'_> {
        let n = self.positions.len();
        let start = if n == 0 { 0 } else { self.start(key_hash) };
        Sequence {
            table: self,
            point: start,
            steps: 0,
            limit: n.min(4 * self.weights.len() + 64),
            last: None,
            home: None,
            fallback: 0,
        }
    }

    /// The first point at or after the key's position, wrapping to 0.
    fn start(&self, key_hash: u64) -> usize {
        let pos = (key_hash >> 32) as u32;
        let b = (pos >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let k = lo + self.positions[lo..hi].partition_point(|&p| p < pos);
        if k == self.positions.len() {
            0
        } else {
            k
        }
    }

    /// The member for a key: its home when usable, else the next usable member of its
    /// sequence. With `balance_factor = Some(c)`, members that would go above their share of
    /// `c` times the mean in-flight load are passed over too (see [`HashTable::pick_bounded`]).
    /// `None` only when no member is usable.
    pub fn pick(
        &self,
        key_hash: u64,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
        balance_factor: Option<f64>,
    ) -> Option<usize> {
        match balance_factor {
            None => self.sequence(key_hash).find(|&i| usable(i)),
            Some(c) => {
                let summary = self.load_summary(&usable, &load);
                self.pick_bounded(key_hash, usable, load, c, summary)
            }
        }
    }

    /// Total in-flight load and weight of the usable members: O(members).
    pub fn load_summary(&self, usable: impl Fn(usize) -> bool, load: impl Fn(usize) -> usize) -> LoadSummary {
        let mut s = LoadSummary { total: 0, weight: 0 };
        for (i, &w) in self.weights.iter().enumerate() {
            if usable(i) {
                s.total += load(i);
                s.weight += u64::from(w);
            }
        }
        s
    }

    /// Consistent hashing with bounded loads: member i takes the request only if its load,
    /// counting this request, stays within `ceil(factor × (total + 1) × weight_i / weight)`,
    /// its weighted share of factor × the mean (with equal weights: `ceil(c × (total+1) / n)`).
    /// The caps add up to at least total + 1, so some usable member always has room; if racing
    /// loads still leave none, the first usable member of the sequence takes it. A factor below
    /// 1 counts as 1.
    pub fn pick_bounded(
        &self,
        key_hash: u64,
        usable: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
        factor: f64,
        summary: LoadSummary,
    ) -> Option<usize> {
        if summary.weight == 0 {
            return None;
        }
        let per_weight = factor.max(1.0) * (summary.total + 1) as f64 / summary.weight as f64;
        let mut first_usable = None;
        for i in self.sequence(key_hash) {
            if !usable(i) {
                continue;
            }
            let cap = (per_weight * f64::from(self.weights[i])).ceil();
            if (load(i) + 1) as f64 <= cap {
                return Some(i);
            }
            first_usable.get_or_insert(i);
        }
        first_usable
    }
}

/// Points per member: the lightest gets POINTS_PER_MEMBER, the rest in proportion, and the
/// whole scaled down to MAX_POINTS when it would exceed it (every member keeps at least one).
fn point_counts(weights: &[u32]) -> Vec<u64> {
    let min = u64::from(weights.iter().copied().min().unwrap_or(1));
    let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let capped = sum.saturating_mul(POINTS_PER_MEMBER) / min > MAX_POINTS;
    let count = |w: u64| match capped {
        false => (w * POINTS_PER_MEMBER + min / 2) / min,
        true => w * MAX_POINTS / sum,
    };
    weights.iter().map(|&w| count(u64::from(w)).max(1)).collect()
}

/// Iterator over a key's preference order; see [`HashTable::sequence`].
#[derive(Debug, Clone)]
pub struct Sequence<'a> {
    table: &'a HashTable,
    point: usize,
    steps: usize,
    limit: usize,
    last: Option<u32>,
    home: Option<usize>,
    fallback: usize,
}

impl Iterator for Sequence<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let t = self.table;
        while self.steps < self.limit {
            let owner = t.owners[self.point];
            self.steps += 1;
            self.point += 1;
            if self.point == t.owners.len() {
                self.point = 0;
            }
            if self.last != Some(owner) {
                self.last = Some(owner);
                self.home.get_or_insert(owner as usize);
                return Some(owner as usize);
            }
        }
        // Past the walk: every other member once, in index order after home.
        let n = t.weights.len();
        let home = self.home?;
        if self.fallback + 1 >= n {
            return None;
        }
        self.fallback += 1;
        Some((home + self.fallback) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<(u64, u32)> {
        (0..n)
            .map(|i| (backend_id("pool", &format!("10.0.0.{i}:80")), 1))
            .collect()
    }

    fn keys(n: usize) -> impl Iterator<Item = u64> {
        (0..n).map(|k| hash_key(format!("user-{k}").as_bytes()))
    }

    /// Keys owned by each member.
    fn counts(t: &HashTable, keys_n: usize) -> Vec<u32> {
        let mut count = vec![0u32; t.len()];
        keys(keys_n).for_each(|k| count[t.home(k).unwrap()] += 1);
        count
    }

    /// The id of the key's home member, comparable across tables built from different sets.
    fn home_id(t: &HashTable, m: &[(u64, u32)], key: u64) -> u64 {
        m[t.home(key).unwrap()].0
    }

    #[test]
    fn hash_key_is_pinned_and_spreads_every_length() {
        // Pinned: a change here remaps every key of every running pool; bump it deliberately.
        let pinned: Vec<u64> = ["", "a", "user-42", "a key of over sixteen bytes", &"x".repeat(100)]
            .iter()
            .map(|s| hash_key(s.as_bytes()))
            .collect();
        let want = [
            0x3029_3c7f_c0f8_82cd,
            0xaa1f_047e_0b31_e20a,
            0x743c_d840_f88b_e1e3,
            0xd6fb_b417_ddc3_8a67,
            0xbb9e_dabf_b2dc_3999,
        ];
        assert_eq!(pinned, want);
        let mut seen: Vec<u64> = (0..=200).map(|n| hash_key(&vec![7u8; n])).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 201);
        let mut buckets = [0u32; 64];
        for h in keys(64_000) {
            buckets[(h >> 58) as usize] += 1;
        }
        assert!(buckets.iter().all(|&c| (900..1100).contains(&c)), "{buckets:?}");
    }

    #[test]
    fn weights_are_honoured() {
        let m = [(backend_id("p", "a:1"), 2), (backend_id("p", "b:1"), 1)];
        let count = counts(&HashTable::new(&m), 30_000);
        let ratio = f64::from(count[0]) / f64::from(count[1]);
        // About 8% share error per member with 160 points per weight unit (this build: 1.86).
        assert!((1.7..2.3).contains(&ratio), "{count:?}");
    }

    #[test]
    fn equal_members_share_keys_evenly() {
        let count = counts(&HashTable::new(&members(10)), 50_000);
        assert!(count.iter().all(|&c| (3_750..6_250).contains(&c)), "{count:?}");
    }

    #[test]
    fn a_key_maps_to_the_same_member_across_builds_and_input_orders() {
        let m = members(7);
        let mut reversed = m.clone();
        reversed.reverse();
        let (a, b, c) = (HashTable::new(&m), HashTable::new(&m), HashTable::new(&reversed));
        for k in keys(5_000) {
            assert_eq!(home_id(&a, &m, k), home_id(&b, &m, k));
            assert_eq!(home_id(&a, &m, k), home_id(&c, &reversed, k));
        }
    }

    #[test]
    fn removing_one_of_five_moves_only_its_keys() {
        let all = members(5);
        let rest: Vec<_> = all.iter().copied().filter(|m| m.0 != all[2].0).collect();
        let moved = moves(&all, &rest);
        assert!(
            moved.iter().all(|&(old, _)| old == all[2].0),
            "a remaining member's key moved"
        );
        assert!((1_500..=2_500).contains(&moved.len()), "{} of 10000 moved", moved.len());
    }

    #[test]
    fn adding_one_to_five_takes_about_a_sixth() {
        let (five, six) = (members(5), members(6));
        let moved = moves(&five, &six);
        assert!(
            moved.iter().all(|&(_, new)| new == six[5].0),
            "a key moved between old members"
        );
        assert!((1_200..2_200).contains(&moved.len()), "{} of 10000 moved", moved.len());
    }

    /// (old home id, new home id) of each of 10k keys whose home changes from one set to the other.
    fn moves(from: &[(u64, u32)], to: &[(u64, u32)]) -> Vec<(u64, u64)> {
        let (before, after) = (HashTable::new(from), HashTable::new(to));
        keys(10_000)
            .map(|k| (home_id(&before, from, k), home_id(&after, to, k)))
            .filter(|(old, new)| old != new)
            .collect()
    }

    #[test]
    fn down_member_keys_go_where_removal_would_send_them_and_come_back() {
        let all = members(5);
        let rest: Vec<_> = all.iter().copied().filter(|m| m.0 != all[3].0).collect();
        let (t, without) = (HashTable::new(&all), HashTable::new(&rest));
        for k in keys(10_000) {
            let down = t.pick(k, |i| i != 3, |_| 0, None).unwrap();
            assert_eq!(all[down].0, home_id(&without, &rest, k));
            assert_eq!(t.pick(k, |_| true, |_| 0, None), t.home(k));
        }
    }

    #[test]
    fn a_mostly_down_pool_still_finds_its_one_usable_member() {
        let t = HashTable::new(&members(1_000));
        assert_eq!(t.points(), 160_000);
        for k in keys(200) {
            assert_eq!(t.pick(k, |i| i == 777, |_| 0, None), Some(777));
            assert_eq!(t.pick(k, |i| i == 777, |_| 5, Some(1.25)), Some(777));
            assert_eq!(t.pick(k, |_| false, |_| 0, None), None);
            assert_eq!(t.pick(k, |_| false, |_| 0, Some(1.25)), None);
        }
        assert_eq!(HashTable::new(&[]).pick(1, |_| true, |_| 0, None), None);
    }

    #[test]
    fn bounded_load_keeps_keys_home_until_their_member_is_full() {
        let t = HashTable::new(&members(8));
        for k in keys(2_000) {
            assert_eq!(t.pick(k, |_| true, |_| 0, Some(1.25)), t.home(k));
            assert_eq!(t.pick(k, |_| true, |_| 3, Some(1.25)), t.home(k));
        }
    }

    #[test]
    fn bounded_load_spreads_a_hot_key_without_passing_the_cap() {
        let n = 8;
        let t = HashTable::new(&members(n));
        let mut rng = fastrand::Rng::with_seed(7);
        let hot = hash_key(b"celebrity");
        let mut load = vec![0usize; n];
        let mut served_hot = vec![0u32; n];
        for _ in 0..20_000 {
            // Half the arrivals are one key; completions keep the pool around 40 in flight.
            let is_hot = rng.bool();
            let key = if is_hot { hot } else { rng.u64(..) };
            let total: usize = load.iter().sum();
            let i = t.pick(key, |_| true, |i| load[i], Some(1.25)).unwrap();
            let cap = (1.25 * (total + 1) as f64 / n as f64).ceil() as usize;
            load[i] += 1;
            assert!(load[i] <= cap, "member {i} at {} over cap {cap}: {load:?}", load[i]);
            served_hot[i] += u32::from(is_hot);
            while load.iter().sum::<usize>() > 40 {
                let j = rng.usize(..n);
                load[j] = load[j].saturating_sub(1);
            }
        }
        assert!(served_hot.iter().filter(|&&c| c > 0).count() >= 3, "{served_hot:?}");
    }

    #[test]
    fn bounded_load_caps_follow_weights() {
        let m = [(backend_id("p", "a:1"), 3), (backend_id("p", "b:1"), 1)];
        let t = HashTable::new(&m);
        let load = [7usize, 0];
        // total 7 + 1: caps are ceil(8 × 3/4) = 6 and ceil(8 × 1/4) = 2, so a's keys go to b.
        for k in keys(500) {
            assert_eq!(t.pick(k, |_| true, |i| load[i], Some(1.0)), Some(1));
        }
    }

    #[test]
    fn extreme_weights_stay_within_the_point_budget() {
        let mut m = members(100);
        m[0].1 = 10_000;
        let t = HashTable::new(&m);
        assert!(t.points() as u64 <= MAX_POINTS + 100, "{}", t.points());
        let count = counts(&t, 20_000);
        assert!(count[0] > 19_000, "{}", count[0]);
    }
}
