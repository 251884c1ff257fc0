//! Address helpers shared by the listeners, the geo tables and DNS resolution.

use std::net::IpAddr;

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are the IPv4 client they stand for.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub mod cidr;
