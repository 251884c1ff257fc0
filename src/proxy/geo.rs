//! Phase 2: the client's address and region, and for geo routes the pool of the data center
//! that serves the region, failing over in the configured order while it has no backend able
//! to serve. Lookups are a sorted range table and small vectors: no allocation per request.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderMap;

use crate::admin::metrics;
use crate::router::geo::client_address;
use crate::state::{Geo, PoolId, Route, State};

static XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Where a request comes from, as far as routing is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub client: IpAddr,
    pub region: Option<u16>,
}

/// The client's address (the right-most untrusted X-Forwarded-For entry when the peer is a
/// trusted proxy) and region (a trusted region header, the CIDR table, the MaxMind database
/// through [geo.countries], else the default region).
pub fn origin(geo: &Geo, peer: IpAddr, headers: &HeaderMap) -> Origin {
    let trusted = geo.cfg.trusted.contains(peer);
    let client = if trusted {
        // A line that is not text must stop the walk, not vanish: dropping it would let the
        // walk reach an entry the client wrote. "?" is never an address, so it stops there.
        client_address(
            peer,
            headers.get_all(&XFF).iter().map(|v| v.to_str().unwrap_or("?")),
            &geo.cfg.trusted,
        )
    } else {
        peer
    };
    let from_header = if trusted {
        geo.cfg
            .region_header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .and_then(|r| geo.cfg.region_id(r.trim()))
    } else {
        None
    };
    let region = from_header
        .or_else(|| geo.cfg.table.lookup(client))
        .or_else(|| country_region(geo, client))
        .or(geo.default_region);
    Origin { client, region }
}

fn country_region(geo: &Geo, ip: IpAddr) -> Option<u16> {
    let reader = geo.cfg.mmdb_reader.as_ref()?;
    let country: maxminddb::geoip2::Country = reader.lookup(ip).ok()??;
    let code = country.country?.iso_code?;
    geo.cfg
        .countries
        .get(code)
        .copied()
        .or_else(|| geo.cfg.countries.get(&code.to_ascii_uppercase()).copied())
}

/// The data centers a region tries, in order: its own, then its failover list.
pub fn dc_order(geo: &Geo, region: Option<u16>) -> &[usize] {
    region
        .and_then(|r| geo.order.get(r as usize))
        .map(|v| v.as_slice())
        .unwrap_or(&[])
}

/// A geo route's choice: the pool, and the data centers involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub pool: PoolId,
    /// The client's region's own data center.
    pub home: Option<usize>,
    /// The data center of the chosen pool (another than `home` after a failover).
    pub serving: Option<usize>,
}

/// For a geo route: the first pool, in the region's data-center order, that can serve at `now`
/// (`clock::now_ms`).
pub fn choose(state: &State, route: &Route, origin: Origin, now: u64) -> Choice {
    let geo = &state.geo;
    let order = dc_order(geo, origin.region);
    let home = order.first().copied();
    let serves = |p: PoolId| state.pool(p).can_serve(now);
    let in_dc = |dc: usize| {
        route
            .geo_pools
            .iter()
            .copied()
            .find(|p| geo.pool_dc[p.index()] == Some(dc))
    };
    // The region's data centers in order, then the route's other pools in listed order.
    let pool = order
        .iter()
        .filter_map(|dc| in_dc(*dc))
        .chain(route.geo_pools.iter().copied())
        .find(|&p| serves(p))
        .unwrap_or_else(|| home.and_then(in_dc).unwrap_or(route.geo_pools[0]));
    Choice {
        pool,
        home,
        serving: geo.pool_dc[pool.index()],
    }
}

/// Count the request, and a failover when another data center than the home one served.
pub fn account(state: &State, origin: Origin, home: Option<usize>, serving: Option<usize>) {
    let geo = &state.geo;
    let r = origin.region.map(|r| r as usize + 1).unwrap_or(0);
    let d = serving.map(|d| d + 1).unwrap_or(0);
    if let Some(c) = geo.requests.get(r).and_then(|row| row.get(d)) {
        c.increment(1);
    }
    if let (Some(h), Some(s)) = (home, serving) {
        if h != s {
            metrics::datacenter_failover(&geo.dc_names[h], &geo.dc_names[s]);
        }
    }
}

pub fn region_name(state: &State, region: Option<u16>) -> Option<Arc<str>> {
    region.and_then(|r| state.geo.region_names.get(r as usize).cloned())
}

pub fn dc_name(state: &State, dc: Option<usize>) -> Option<Arc<str>> {
    dc.and_then(|d| state.geo.dc_names.get(d).cloned())
}
