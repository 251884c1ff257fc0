//! `[geo]` and `[[datacenter]]`: how a client's region is found, and which data center serves
//! each region, with failover order.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::reader::{At, Ctx, Obj};
use super::{check_name, resolve};
use crate::net::cidr::{RegionTable, TrustedProxies};

#[derive(Clone)]
pub struct GeoConfig {
    pub trusted_proxies: Vec<String>,
    pub region_header: Option<http::HeaderName>,
    pub default_region: Option<String>,
    pub mmdb: Option<PathBuf>,
    /// The MaxMind database, opened when the config is read.
    pub mmdb_reader: Option<Arc<maxminddb::Reader<Vec<u8>>>>,
    /// Region names, in file order; indexes are region ids.
    pub regions: Vec<String>,
    pub region_cidrs: Vec<(String, u16)>,
    /// ISO country code (upper case) -> region id.
    pub countries: HashMap<String, u16>,
    /// Built once here, so a bad table is a config error with its key.
    pub table: Arc<RegionTable>,
    pub trusted: Arc<TrustedProxies>,
}

impl std::fmt::Debug for GeoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoConfig")
            .field("regions", &self.regions)
            .field("default_region", &self.default_region)
            .field("mmdb", &self.mmdb)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatacenterConfig {
    pub name: String,
    pub regions: Vec<String>,
    pub failover: Vec<String>,
}

impl GeoConfig {
    pub fn region_id(&self, name: &str) -> Option<u16> {
        self.regions.iter().position(|r| r == name).map(|i| i as u16)
    }
}

pub(super) fn read_geo(o: Option<Obj>, base: Option<&Path>) -> Option<GeoConfig> {
    let empty = || GeoConfig {
        trusted_proxies: vec![],
        region_header: None,
        default_region: None,
        mmdb: None,
        mmdb_reader: None,
        regions: vec![],
        region_cidrs: vec![],
        countries: HashMap::new(),
        table: Arc::new(RegionTable::default()),
        trusted: Arc::new(TrustedProxies::default()),
    };
    let Some(o) = o else { return Some(empty()) };
    let mut g = empty();
    let trusted: Vec<(String, At)> = o.str_list("trusted_proxies").unwrap_or_default();
    match TrustedProxies::build(&trusted.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()) {
        Ok(t) => g.trusted = Arc::new(t),
        Err(errors) => {
            for e in errors {
                let at = &trusted[e.index().min(trusted.len().saturating_sub(1))].1;
                o.ctx().problem(&at.path, at.line, e.to_string());
            }
        }
    }
    g.trusted_proxies = trusted.into_iter().map(|(c, _)| c).collect();
    if let Some(h) = o.str("region_header") {
        if !h.is_empty() {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => g.region_header = Some(n),
                Err(_) => o.problem("region_header", format!("{h:?} is not a valid header name")),
            }
        }
    }
    g.default_region = o.str("default_region").filter(|r| !r.is_empty());
    if let Some(regions) = o.obj("regions") {
        let mut cidrs: Vec<(String, u16, At)> = Vec::new();
        for (name, _) in regions.entries_list() {
            let id = g.regions.len() as u16;
            g.regions.push(name.clone());
            for (cidr, at) in regions.str_list_dyn(&name).unwrap_or_default() {
                cidrs.push((cidr, id, at));
            }
        }
        let entries: Vec<(&str, u16)> = cidrs.iter().map(|(c, id, _)| (c.as_str(), *id)).collect();
        match RegionTable::build(&entries) {
            Ok(t) => g.table = Arc::new(t),
            Err(errors) => {
                for e in errors {
                    let at = &cidrs[e.index().min(cidrs.len().saturating_sub(1))].2;
                    o.ctx().problem(&at.path, at.line, e.to_string());
                }
            }
        }
        g.region_cidrs = cidrs.into_iter().map(|(c, id, _)| (c, id)).collect();
    }
    if let Some(f) = o.str("mmdb") {
        let path = resolve(base, &f);
        match maxminddb::Reader::open_readfile(&path) {
            Ok(r) => g.mmdb_reader = Some(Arc::new(r)),
            Err(e) => o.problem(
                "mmdb",
                format!("cannot open the MaxMind database {}: {e}", path.display()),
            ),
        }
        g.mmdb = Some(path);
    }
    if let Some(countries) = o.obj("countries") {
        for (code, at) in countries.entries_list() {
            match countries.peek_str(&code) {
                Some(region) => match g.region_id(&region) {
                    Some(id) => {
                        g.countries.insert(code.to_ascii_uppercase(), id);
                    }
                    None => o.ctx().problem(at.path, at.line, format!("unknown region {region:?}")),
                },
                None => o.ctx().problem(at.path, at.line, "expected a region name (a string)"),
            }
        }
    }
    if let Some(r) = &g.default_region {
        if g.region_id(r).is_none() {
            o.problem("default_region", format!("unknown region {r:?}"));
        }
    }
    o.finish();
    Some(g)
}

pub(super) fn read_datacenter(o: &Obj) -> Option<(DatacenterConfig, At)> {
    let name = o.req_str("name");
    if let Some(n) = &name {
        check_name(o, "name", n);
    }
    let regions = o.str_list("regions").unwrap_or_default();
    let failover = o.str_list("failover").unwrap_or_default();
    Some((
        DatacenterConfig {
            name: name?,
            regions: regions.into_iter().map(|(r, _)| r).collect(),
            failover: failover.into_iter().map(|(f, _)| f).collect(),
        },
        o.at(),
    ))
}

/// Cross-references of the geo tables: regions and data centers named but not defined, a
/// region served by two data centers.
pub(super) fn check_datacenters(ctx: &Ctx, geo: &GeoConfig, dc_objs: &[Obj]) {
    let names: HashSet<String> = dc_objs.iter().filter_map(|o| o.peek_str("name")).collect();
    let mut served: HashMap<String, String> = HashMap::new();
    for o in dc_objs {
        let dc = o.peek_str("name").unwrap_or_default();
        for (key, list) in [
            ("regions", o.peek_str_list("regions")),
            ("failover", o.peek_str_list("failover")),
        ] {
            for (value, at) in list {
                if key == "regions" {
                    if geo.region_id(&value).is_none() {
                        ctx.problem(at.path, at.line, format!("unknown region {value:?}"));
                    } else if let Some(other) = served.insert(value.clone(), dc.clone()) {
                        ctx.problem(
                            at.path,
                            at.line,
                            format!("region {value:?} is already served by data center {other:?}"),
                        );
                    }
                } else if !names.contains(&value) {
                    ctx.problem(at.path, at.line, format!("unknown data center {value:?}"));
                } else if value == dc {
                    ctx.problem(at.path, at.line, "a data center cannot fail over to itself");
                }
            }
        }
    }
}
