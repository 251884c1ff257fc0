//! One builder for the TOML configs the suites start waypost on: the admin API on port 0,
//! then whatever tables, listeners, pools and routes a test adds, each with the extra lines it
//! needs. `Config::proxy` is the usual shape: one listener "http" on port 0, one pool "web",
//! one catch-all route "all".
//!
//! ```ignore
//! let toml = Config::proxy(&[b.addr]).log("access = \"stdout\"").pool_extra("retries = 0").build();
//! ```

use std::net::SocketAddr;

#[derive(Debug, Clone, Default)]
pub struct Config {
    server: String,
    admin: String,
    log: String,
    tables: Vec<String>,
    listeners: Vec<String>,
    pools: Vec<String>,
    routes: Vec<String>,
}

impl Config {
    /// The admin API on 127.0.0.1:0 and nothing else yet.
    pub fn new() -> Config {
        Config::default()
    }

    /// One listener "http" on 127.0.0.1:0, one pool "web" of `backends` and a catch-all
    /// route "all" to it.
    pub fn proxy(backends: &[SocketAddr]) -> Config {
        let weighted: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
        Config::weighted(&weighted)
    }

    /// `proxy` with a weight for each backend.
    pub fn weighted(backends: &[(SocketAddr, u32)]) -> Config {
        Config::new()
            .listener("http", "127.0.0.1:0", "")
            .weighted_pool("web", backends, "")
            .route("all", "path_prefix = \"/\"\npool = \"web\"")
    }

    /// Lines for `[server]`.
    pub fn server(mut self, lines: &str) -> Config {
        push_lines(&mut self.server, lines);
        self
    }

    /// Lines for `[admin]` (after its `bind`).
    pub fn admin(mut self, lines: &str) -> Config {
        push_lines(&mut self.admin, lines);
        self
    }

    /// Lines for `[log]`.
    pub fn log(mut self, lines: &str) -> Config {
        push_lines(&mut self.log, lines);
        self
    }

    /// More top-level TOML (`[cache]`, `[dns]`, `[geo]`, `[[datacenter]]`, ...), placed before
    /// the listeners.
    pub fn table(mut self, toml: &str) -> Config {
        self.tables.push(toml.trim().to_string());
        self
    }

    /// A `[[listener]]` named `name` on `bind`; `extra` is the rest of its table (and its
    /// sub-tables, such as `[listener.tls]`).
    pub fn listener(mut self, name: &str, bind: &str, extra: &str) -> Config {
        self.listeners.push(format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\n{}",
            extra.trim()
        ));
        self
    }

    /// A `[[pool]]` of `backends` (weight 1).
    pub fn pool(self, name: &str, backends: &[SocketAddr], extra: &str) -> Config {
        let weighted: Vec<(SocketAddr, u32)> = backends.iter().map(|a| (*a, 1)).collect();
        self.weighted_pool(name, &weighted, extra)
    }

    /// A `[[pool]]` of weighted `backends`; `extra` is the rest of its table.
    pub fn weighted_pool(mut self, name: &str, backends: &[(SocketAddr, u32)], extra: &str) -> Config {
        let list: Vec<String> = backends
            .iter()
            .map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}"))
            .collect();
        self.pools.push(format!(
            "[[pool]]\nname = \"{name}\"\nbackends = [{}]\n{}",
            list.join(", "),
            extra.trim()
        ));
        self
    }

    /// A `[[pool]]` of backends given as text (`host:port` names for DNS, say).
    pub fn pool_addresses(mut self, name: &str, addresses: &[&str], extra: &str) -> Config {
        let list: Vec<String> = addresses.iter().map(|a| format!("{{ address = \"{a}\" }}")).collect();
        self.pools.push(format!(
            "[[pool]]\nname = \"{name}\"\nbackends = [{}]\n{}",
            list.join(", "),
            extra.trim()
        ));
        self
    }

    /// More lines for the last pool added (its keys first, then any sub-tables).
    pub fn pool_extra(mut self, lines: &str) -> Config {
        let last = self.pools.last_mut().expect("pool_extra needs a pool");
        push_lines(last, lines);
        self
    }

    /// A `[[route]]` named `name`; `body` is the rest of its table (match, pool, sub-tables).
    pub fn route(mut self, name: &str, body: &str) -> Config {
        self.routes
            .push(format!("[[route]]\nname = \"{name}\"\n{}", body.trim()));
        self
    }

    /// More lines for the last route added.
    pub fn route_extra(mut self, lines: &str) -> Config {
        let last = self.routes.last_mut().expect("route_extra needs a route");
        push_lines(last, lines);
        self
    }

    pub fn build(&self) -> String {
        let mut out = String::new();
        if !self.server.is_empty() {
            out.push_str(&format!("[server]\n{}\n", self.server));
        }
        out.push_str(&format!("[admin]\nbind = \"127.0.0.1:0\"\n{}\n", self.admin));
        if !self.log.is_empty() {
            out.push_str(&format!("[log]\n{}\n", self.log));
        }
        for part in self
            .tables
            .iter()
            .chain(&self.listeners)
            .chain(&self.pools)
            .chain(&self.routes)
        {
            out.push('\n');
            out.push_str(part);
            out.push('\n');
        }
        out
    }
}

fn push_lines(to: &mut String, lines: &str) {
    let lines = lines.trim();
    if lines.is_empty() {
        return;
    }
    if !to.is_empty() && !to.ends_with('\n') {
        to.push('\n');
    }
    to.push_str(lines);
}
