//! DNS-discovered backends: a backend address with a host name becomes one backend per address
//! it resolves to. Each name is re-resolved after its record's TTL (clamped to [dns] min_ttl and
//! max_ttl); a changed answer rebuilds the State's pools (backends that stay keep their state
//! and connections); a failed resolution keeps the last good answer.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::{BackendAddress, Config, DnsConfig};

/// The last good answer for every backend host name.
pub type Resolved = HashMap<String, Vec<IpAddr>>;

/// Every host name the config's pools use.
pub fn names(cfg: &Config) -> BTreeSet<String> {
    cfg.pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter_map(|b| match &b.address {
            BackendAddress::Name { host, .. } => Some(host.clone()),
            BackendAddress::Ip(_) => None,
        })
        .collect()
}

pub fn resolver(cfg: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if cfg.servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
    } else {
        let servers = cfg
            .servers
            .iter()
            .map(|s| {
                let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                for c in &mut ns.connections {
                    c.port = s.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.use_hosts_file = ResolveHosts::Always;
    // waypost schedules its own re-resolution by TTL; a cached answer would only delay changes.
    opts.cache_size = 0;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// Resolve `host`: its addresses (sorted, deduplicated) and how long they are valid.
pub async fn resolve(r: &TokioResolver, host: &str) -> Result<(Vec<IpAddr>, Duration), String> {
    let lookup = r.lookup_ip(host).await.map_err(|e| e.to_string())?;
    let mut ips: Vec<IpAddr> = lookup.iter().map(crate::net::canonical_ip).collect();
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err("no addresses in the answer".into());
    }
    let ttl = lookup
        .valid_until()
        .saturating_duration_since(crate::clock::now().into_std());
    Ok((ips, ttl))
}

pub fn clamp_ttl(ttl: Duration, cfg: &DnsConfig) -> Duration {
    ttl.clamp(cfg.min_ttl, cfg.max_ttl.max(cfg.min_ttl))
}

/// Shared answers plus the tasks that keep them fresh.
#[derive(Default)]
pub struct Watcher {
    pub answers: Mutex<Resolved>,
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    resolver: Mutex<Option<(DnsConfig, Arc<TokioResolver>)>>,
}

impl Watcher {
    pub fn answers(&self) -> Resolved {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn resolver_for(&self, cfg: &DnsConfig) -> Result<Arc<TokioResolver>, String> {
        let mut slot = self.resolver.lock().map_err(|_| "resolver lock poisoned".to_string())?;
        if let Some((c, r)) = slot.as_ref() {
            if c == cfg {
                return Ok(r.clone());
            }
        }
        let r = Arc::new(resolver(cfg)?);
        *slot = Some((cfg.clone(), r.clone()));
        Ok(r)
    }

    /// Resolve every name not answered yet (so a new State has its backends from the start).
    /// Failures are logged; the name then has no backends until a later answer.
    pub async fn prime(&self, cfg: &Config) {
        let missing: Vec<String> = {
            let a = self.answers.lock().map(|a| a.clone()).unwrap_or_default();
            names(cfg).into_iter().filter(|n| !a.contains_key(n)).collect()
        };
        if missing.is_empty() {
            return;
        }
        let r = match self.resolver_for(&cfg.dns) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        for name in missing {
            match resolve(&r, &name).await {
                Ok((ips, _)) => {
                    crate::admin::metrics::dns_resolution(&name, true);
                    tracing::info!(name = %name, addresses = ?ips, "resolved backend host name");
                    if let Ok(mut a) = self.answers.lock() {
                        a.insert(name, ips);
                    }
                }
                Err(e) => {
                    crate::admin::metrics::dns_resolution(&name, false);
                    tracing::error!(name = %name, error = %e, "cannot resolve backend host name; it has no backends until it resolves");
                }
            }
        }
    }

    /// Keep one refresh task per name of `cfg`; `changed` runs (on this runtime) whenever an
    /// answer changes.
    pub fn reconcile(self: &Arc<Self>, cfg: &Config, changed: Arc<dyn Fn() + Send + Sync>) {
        let wanted = names(cfg);
        let Ok(mut tasks) = self.tasks.lock() else { return };
        tasks.retain(|name, t| {
            let keep = wanted.contains(name);
            if !keep {
                t.abort();
            }
            keep
        });
        if let Ok(mut a) = self.answers.lock() {
            a.retain(|name, _| wanted.contains(name));
        }
        // A changed [dns] table restarts every task with the new resolver.
        let dns = cfg.dns.clone();
        let restart = self
            .resolver
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|(c, _)| *c != dns))
            .unwrap_or(false);
        if restart {
            for t in tasks.values() {
                t.abort();
            }
            tasks.clear();
        }
        for name in wanted {
            if tasks.contains_key(&name) {
                continue;
            }
            let me = self.clone();
            let dns = dns.clone();
            let changed = changed.clone();
            let n = name.clone();
            let h = tokio::spawn(async move { me.refresh_loop(n, dns, changed).await }).abort_handle();
            tasks.insert(name, h);
        }
    }

    async fn refresh_loop(&self, name: String, dns: DnsConfig, changed: Arc<dyn Fn() + Send + Sync>) {
        let mut wait = dns.min_ttl;
        loop {
            tokio::time::sleep(wait).await;
            let r = match self.resolver_for(&dns) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("{e}");
                    wait = dns.max_ttl;
                    continue;
                }
            };
            match resolve(&r, &name).await {
                Ok((ips, ttl)) => {
                    crate::admin::metrics::dns_resolution(&name, true);
                    wait = clamp_ttl(ttl, &dns);
                    let differs = self
                        .answers
                        .lock()
                        .map(|mut a| {
                            let differs = a.get(&name) != Some(&ips);
                            if differs {
                                a.insert(name.clone(), ips.clone());
                            }
                            differs
                        })
                        .unwrap_or(false);
                    if differs {
                        tracing::info!(name = %name, addresses = ?ips, "backend host name resolves differently; updating pools");
                        changed();
                    }
                }
                Err(e) => {
                    crate::admin::metrics::dns_resolution(&name, false);
                    tracing::warn!(name = %name, error = %e, "re-resolution failed; keeping the last good answer");
                    wait = dns.min_ttl.max(Duration::from_secs(1)).min(dns.max_ttl);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_clamped() {
        let cfg = DnsConfig {
            servers: vec![],
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(60),
        };
        assert_eq!(clamp_ttl(Duration::from_secs(0), &cfg), Duration::from_secs(5));
        assert_eq!(clamp_ttl(Duration::from_secs(30), &cfg), Duration::from_secs(30));
        assert_eq!(clamp_ttl(Duration::from_secs(86400), &cfg), Duration::from_secs(60));
    }
}
