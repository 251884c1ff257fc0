//! `waypost demo`: the test backends of config/demo.toml started in-process, then the proxy on
//! that config, with a note on what to curl.

use std::collections::BTreeSet;

use anyhow::Context as _;

use crate::app;
use crate::config;
use crate::testbackend::TestBackend;

pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

pub fn run() -> anyhow::Result<()> {
    let cfg = config::parse(DEMO_CONFIG, None).map_err(|p| anyhow::anyhow!(app::format_problems(&p)))?;
    let addrs: BTreeSet<_> = cfg
        .pools
        .iter()
        .flat_map(|p| p.backends.iter())
        .filter_map(|b| match b.address {
            config::BackendAddress::Ip(a) => Some(a),
            config::BackendAddress::Name { .. } => None,
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-backends".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the demo backends' runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let mut started = Vec::new();
                for (i, addr) in addrs.into_iter().enumerate() {
                    match TestBackend::start_on(addr, &format!("demo-backend-{}", i + 1)).await {
                        Ok(b) => started.push(b),
                        Err(e) => {
                            let _ = tx.send(Err(format!(
                                "cannot start a demo backend on {addr}: {e} (is something else using the port?)"
                            )));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(started
                    .iter()
                    .map(|b| (b.name().to_string(), b.addr))
                    .collect::<Vec<_>>()));
                std::future::pending::<()>().await;
            });
        })?;
    let backends = rx
        .recv()
        .context("the demo backends did not start")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let listen = cfg.listeners[0].bind;
    let admin = cfg.admin.bind;
    println!("waypost demo: {} test backends up:", backends.len());
    for (name, addr) in &backends {
        println!("  {name} on {addr}");
    }
    println!(
        "\nTry:\n  curl -s http://{listen}/hello            # pool web, round robin 2:1\n  curl -s http://{listen}/api/users        # pool api, /api stripped\n  curl -s -H 'x-test-status: 503' http://{listen}/   # a backend error passed through\n  curl -si http://{listen}/static/logo.png | grep -i cache-status   # miss, then hit for 30s\n  curl -s http://{admin}/status            # admin: generation, pools, backends\n  curl -s http://{admin}/metrics           # Prometheus metrics\n\nAccess log lines follow below. Ctrl-C stops.\n"
    );
    app::run(cfg, None)
}
