//! Start-up and shutdown wiring. Worker threads each run a single-threaded runtime that accepts
//! and serves connections (the per-core model of nginx and HAProxy: no work stealing, no
//! cross-thread wake-ups on the request path). The control runtime on the main thread runs the
//! admin API, signals and reloads. A reload builds a new State and swaps it in with arc-swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, metrics};
use crate::config::{self, Config, ListenerConfig, LoadError};
use crate::health::probe::Prober;
use crate::listener::{self, ConnGate, ListenerStats, Plane};
use crate::state::State;
use crate::upstream;
use crate::upstream::dns::Watcher;
use crate::{lifecycle, systemd};

/// Process-wide state that outlives generations.
pub struct Shared {
    /// What the listeners share with the control plane: the generation, the connection gate
    /// and the drain signal. `shared.state` and the like reach it through `Deref`.
    pub plane: Arc<Plane>,
    pub config_path: Option<PathBuf>,
    pub ready: AtomicBool,
    pub listeners: Mutex<HashMap<String, RunningListener>>,
    workers: Vec<mpsc::UnboundedSender<WorkerCmd>>,
    reload_lock: tokio::sync::Mutex<()>,
    pub last_reload: Mutex<LastReload>,
    /// The start and the latest reloads, for /status.
    pub reloads: admin::report::ReloadHistory,
    /// Active health probes, kept in step with the State.
    prober: Prober,
    /// Backend host names: last good answers and their refresh tasks.
    dns: Arc<Watcher>,
    /// Inherited listening sockets no listener has claimed yet (socket activation).
    spare: Mutex<Vec<systemd::Inherited>>,
    /// Our handle on the admin socket, passed on in a binary upgrade.
    pub(crate) admin_socket: Mutex<Option<std::net::TcpListener>>,
    /// This binary's path as of start-up, and our arguments: a binary upgrade runs them again.
    pub(crate) exe: Option<PathBuf>,
    pub(crate) args: Vec<std::ffi::OsString>,
    /// Unix time (f64 bits) of the last config load that went into service.
    last_success: AtomicU64,
}

impl std::ops::Deref for Shared {
    type Target = Plane;

    fn deref(&self) -> &Plane {
        &self.plane
    }
}

impl Shared {
    pub fn last_success(&self) -> f64 {
        f64::from_bits(self.last_success.load(Ordering::Relaxed))
    }

    fn mark_success(&self, generation: u64) -> f64 {
        let t = crate::clock::unix_f64();
        self.last_success.store(t.to_bits(), Ordering::Relaxed);
        metrics::set_generation(generation, t);
        t
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LastReload {
    pub ok: bool,
    pub time_unix: f64,
    pub errors: Vec<String>,
}

pub struct RunningListener {
    pub stats: Arc<ListenerStats>,
    /// Our own handle on the listening socket (workers hold duplicates).
    pub(crate) socket: std::net::TcpListener,
    /// The address as configured (the bound one may differ when the port is 0).
    pub configured: SocketAddr,
    stop: watch::Sender<bool>,
}

enum WorkerCmd {
    /// Answer to prove the worker's runtime is turning (the watchdog asks).
    Ping(tokio::sync::oneshot::Sender<()>),
    Listen {
        socket: std::net::TcpListener,
        stats: Arc<ListenerStats>,
        stop: watch::Receiver<bool>,
        plane: Arc<Plane>,
    },
}

/// The result of a reload, as POST /reload reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub generation: u64,
    pub errors: Vec<String>,
}

/// Raise the soft open-files limit to the hard limit: a proxy holds two descriptors per request.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
    }
}

type LevelHandle = tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_LEVEL: std::sync::OnceLock<LevelHandle> = std::sync::OnceLock::new();

fn level_filter(level: &str) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("waypost={level},warn"))
}

/// Log to stderr at `level`; RUST_LOG, when set, overrides the config (then reloads keep it).
pub fn init_tracing(level: &str) {
    use tracing_subscriber::prelude::*;
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = if from_env {
        tracing_subscriber::EnvFilter::from_default_env()
    } else {
        level_filter(level)
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if tracing_subscriber::registry().with(filter).with(fmt).try_init().is_ok() && !from_env {
        let _ = LOG_LEVEL.set(handle);
    }
}

/// Apply a reloaded `[log] level` (no-op when RUST_LOG rules).
fn set_log_level(level: &str) {
    if let Some(h) = LOG_LEVEL.get() {
        let _ = h.reload(level_filter(level));
    }
}

/// Run the daemon until SIGTERM/SIGINT, then drain and return.
pub fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    init_tracing(&config.log.level);
    // Before any other thread starts: this reads and clears LISTEN_* from the environment.
    let upgraded_from = std::env::var(systemd::UPGRADE_PARENT_ENV)
        .ok()
        .and_then(|p| p.parse().ok());
    let inherited = systemd::take_listen_fds();
    if !inherited.is_empty() {
        tracing::info!(count = inherited.len(), "serving on inherited listening sockets");
    }
    metrics::install();
    raise_nofile_limit();
    let workers = match config.server.worker_threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    upstream::set_workers(workers);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let origin = Origin {
        inherited,
        upgraded_from: upgraded_from.filter(|p| *p == std::os::unix::process::parent_id()),
    };
    rt.block_on(control(config, config_path, workers, origin))
}

/// What the process got from whoever started it.
struct Origin {
    inherited: Vec<systemd::Inherited>,
    /// The pid of the waypost that started this one as its binary upgrade.
    upgraded_from: Option<u32>,
}

async fn control(config: Config, config_path: Option<PathBuf>, workers: usize, origin: Origin) -> anyhow::Result<()> {
    let admin_bind = config.admin.bind;
    let max_conns = config.server.max_connections;
    let listener_cfgs = config.listeners.clone();
    let dns = Arc::new(Watcher::default());
    dns.prime(&config).await;
    let state = State::build(config, None, 1, &dns.answers()).map_err(|p| anyhow::anyhow!(format_problems(&p)))?;

    let mut senders = Vec::with_capacity(workers);
    for id in 0..workers {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        std::thread::Builder::new()
            .name(format!("waypost-worker-{id}"))
            .spawn(move || worker(id + 1, rx))
            .context("cannot start a worker thread")?;
    }
    let shared = Arc::new(Shared {
        plane: Arc::new(Plane {
            state: ArcSwap::from_pointee(state),
            gate: ConnGate::new(max_conns),
            drain: watch::channel(false).0,
        }),
        config_path,
        ready: AtomicBool::new(false),
        listeners: Mutex::new(HashMap::new()),
        workers: senders,
        reload_lock: tokio::sync::Mutex::new(()),
        last_reload: Mutex::new(LastReload {
            ok: true,
            time_unix: crate::clock::unix_f64(),
            errors: vec![],
        }),
        last_success: AtomicU64::new(0),
        reloads: admin::report::ReloadHistory::started(crate::clock::unix_f64()),
        prober: Prober::default(),
        dns,
        spare: Mutex::new(origin.inherited),
        admin_socket: Mutex::new(None),
        exe: std::env::current_exe().ok(),
        args: std::env::args_os().skip(1).collect(),
    });
    shared.prober.reconcile(&shared.state.load());
    watch_dns(&shared);
    shared.mark_success(1);
    lifecycle::spawn_config_watch(&shared);
    lifecycle::spawn_tls_gauges(&shared);

    let bound = listener_cfgs
        .iter()
        .map(|c| obtain_socket(&shared, c))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e))?;
    for (cfg, socket) in listener_cfgs.iter().zip(bound) {
        start_listener(&shared, cfg, socket);
    }
    let admin_socket = match shared
        .spare
        .lock()
        .ok()
        .and_then(|mut s| systemd::claim(&mut s, "admin", admin_bind))
    {
        Some(s) => s,
        None => listener::bind(admin_bind).with_context(|| format!("cannot bind the admin API on {admin_bind}"))?,
    };
    if let Ok(mut slot) = shared.admin_socket.lock() {
        *slot = admin_socket.try_clone().ok();
    }
    let admin_addr = admin_socket.local_addr()?;
    let admin_listener = tokio::net::TcpListener::from_std(admin_socket)?;
    tracing::info!(address = %admin_addr, "admin API listening");
    tokio::spawn(admin::serve(admin_listener, shared.clone()));
    tokio::spawn(upkeep());
    shared.ready.store(true, Ordering::Relaxed);
    let unclaimed = shared.spare.lock().map(|s| s.len()).unwrap_or(0);
    if unclaimed > 0 {
        tracing::warn!(
            count = unclaimed,
            "inherited sockets that no listener claims (kept for later reloads)"
        );
    }
    systemd::notify(&format!("READY=1\nSTATUS={}", lifecycle::status_line(&shared)));
    if let Some(parent) = origin.upgraded_from {
        // The old process drains once this one serves: no listening socket ever went unserved.
        systemd::notify(&format!("MAINPID={}", std::process::id()));
        tracing::info!(parent, "binary upgrade complete; asking the previous process to drain");
        // SAFETY: kill(2) with a pid we were handed by our parent.
        unsafe {
            libc::kill(parent as libc::pid_t, libc::SIGTERM);
        }
    }
    lifecycle::spawn_watchdog(&shared);

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = usr2.recv() => match lifecycle::upgrade(&shared) {
                Ok(pid) => tracing::info!(pid, "binary upgrade: started the new process; this one drains when it is ready"),
                Err(e) => tracing::error!("binary upgrade failed: {e}"),
            },
            _ = hup.recv() => {
                let out = reload(&shared).await;
                if out.ok {
                    tracing::info!(generation = out.generation, "reloaded on SIGHUP");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // The running generation's timeout: a reload may have changed it.
    let grace = shared.state.load().config.server.graceful_shutdown_timeout;
    shutdown(&shared, grace).await;
    Ok(())
}

pub(crate) fn ping_workers(shared: &Shared) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    shared
        .workers
        .iter()
        .map(|w| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = w.send(WorkerCmd::Ping(tx));
            rx
        })
        .collect()
}

fn worker(id: usize, mut rx: mpsc::UnboundedReceiver<WorkerCmd>) {
    upstream::set_worker_id(id);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a worker runtime");
            return;
        }
    };
    rt.block_on(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                WorkerCmd::Ping(reply) => {
                    let _ = reply.send(());
                }
                WorkerCmd::Listen {
                    socket,
                    stats,
                    stop,
                    plane,
                } => {
                    tokio::spawn(listener::accept_loop(socket, stats, plane, stop));
                }
            }
        }
    });
}

/// The socket for a listener: one handed over by the service manager (matched by name, else
/// address), or a new one.
fn obtain_socket(shared: &Shared, c: &ListenerConfig) -> Result<std::net::TcpListener, String> {
    if let Some(s) = shared
        .spare
        .lock()
        .ok()
        .and_then(|mut spare| systemd::claim(&mut spare, &c.name, c.bind))
    {
        return Ok(s);
    }
    listener::bind(c.bind).map_err(|e| format!("listener {:?}: cannot bind {}: {e}", c.name, c.bind))
}

fn start_listener(shared: &Arc<Shared>, cfg: &ListenerConfig, socket: std::net::TcpListener) {
    let addr = socket.local_addr().unwrap_or(cfg.bind);
    let stats = Arc::new(ListenerStats::new(&cfg.name, addr, cfg.proxy_protocol));
    let (stop_tx, stop_rx) = watch::channel(false);
    for w in &shared.workers {
        match socket.try_clone() {
            Ok(s) => {
                let _ = w.send(WorkerCmd::Listen {
                    socket: s,
                    stats: stats.clone(),
                    stop: stop_rx.clone(),
                    plane: shared.plane.clone(),
                });
            }
            Err(e) => {
                tracing::error!(listener = %cfg.name, error = %e, "cannot share listener with a worker")
            }
        }
    }
    tracing::info!(listener = %cfg.name, address = %addr, "listening");
    if let Ok(mut map) = shared.listeners.lock() {
        map.insert(
            cfg.name.clone(),
            RunningListener {
                stats,
                socket,
                configured: cfg.bind,
                stop: stop_tx,
            },
        );
    }
}

/// Reload the config file: validate, bind new listeners, build and swap the new State, stop
/// removed listeners. Any failure keeps the running generation untouched.
pub async fn reload(shared: &Arc<Shared>) -> ReloadOutcome {
    let _guard = shared.reload_lock.lock().await;
    systemd::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", systemd::monotonic_usec()));
    let out = reload_locked(shared).await;
    let status = if out.ok {
        lifecycle::status_line(shared)
    } else {
        format!(
            "reload failed, generation {} keeps serving: {}",
            out.generation,
            out.errors.join("; ")
        )
    };
    systemd::notify(&format!("READY=1\nSTATUS={status}"));
    out
}

async fn reload_locked(shared: &Arc<Shared>) -> ReloadOutcome {
    let current = shared.state.load_full();
    let fail = |errors: Vec<String>| {
        for e in &errors {
            tracing::error!("reload rejected: {e}");
        }
        metrics::reload(false);
        shared
            .reloads
            .record_reload(crate::clock::unix_f64(), false, current.generation, &errors);
        if let Ok(mut l) = shared.last_reload.lock() {
            *l = LastReload {
                ok: false,
                time_unix: crate::clock::unix_f64(),
                errors: errors.clone(),
            };
        }
        ReloadOutcome {
            ok: false,
            generation: current.generation,
            errors,
        }
    };
    let Some(path) = shared.config_path.clone() else {
        return fail(vec![
            "this instance runs a built-in config and has no file to reload".into()
        ]);
    };
    let cfg = match tokio::task::spawn_blocking(move || config::load(&path)).await {
        Ok(Ok(c)) => c,
        Ok(Err(LoadError::Invalid(problems))) => return fail(problems.iter().map(|p| p.to_string()).collect()),
        Ok(Err(e)) => return fail(vec![e.to_string()]),
        Err(e) => return fail(vec![format!("reload task failed: {e}")]),
    };
    let old = &current.config;
    if cfg.server.worker_threads != old.server.worker_threads {
        tracing::warn!("server.worker_threads changed: takes effect at the next restart");
    }
    if cfg.admin.bind != old.admin.bind {
        tracing::warn!("admin.bind changed: takes effect at the next restart");
    }

    // Listeners to add (a new name, or a known name on a new address) and to remove.
    // A listener is the same when its name, address and PROXY protocol setting are.
    let running: Vec<(String, SocketAddr, bool)> = shared
        .listeners
        .lock()
        .map(|m| {
            m.iter()
                .map(|(n, r)| (n.clone(), r.configured, r.stats.proxy_protocol))
                .collect()
        })
        .unwrap_or_default();
    let to_add: Vec<ListenerConfig> = cfg
        .listeners
        .iter()
        .filter(|l| {
            !running
                .iter()
                .any(|(n, a, pp)| *n == l.name && *a == l.bind && *pp == l.proxy_protocol)
        })
        .cloned()
        .collect();
    let to_remove: Vec<(String, SocketAddr)> = running
        .into_iter()
        .filter(|(n, a, pp)| {
            !cfg.listeners
                .iter()
                .any(|l| l.name == *n && l.bind == *a && l.proxy_protocol == *pp)
        })
        .map(|(n, a, _)| (n, a))
        .collect();
    // A new listener on an address that a removed one frees takes over its socket: no rebind,
    // no moment without a listening socket. Everything else is bound now, before anything
    // changes, so a failure leaves the running generation untouched.
    let mut reusable: HashMap<SocketAddr, std::net::TcpListener> = shared
        .listeners
        .lock()
        .map(|m| {
            // Keyed by the configured and by the bound address (they differ for port 0).
            let mut by_addr = HashMap::new();
            for (n, a) in &to_remove {
                if let Some(r) = m.get(n) {
                    for addr in [*a, r.stats.bind] {
                        if let Ok(s) = r.socket.try_clone() {
                            by_addr.entry(addr).or_insert(s);
                        }
                    }
                }
            }
            by_addr
        })
        .unwrap_or_default();
    let mut sockets = Vec::with_capacity(to_add.len());
    for l in &to_add {
        match reusable.remove(&l.bind) {
            Some(s) => sockets.push(s),
            None => match obtain_socket(shared, l) {
                Ok(s) => sockets.push(s),
                Err(e) => return fail(vec![e]),
            },
        }
    }
    let generation = current.generation + 1;
    let max_conns = cfg.server.max_connections;
    shared.dns.prime(&cfg).await;
    let new_state = match State::build(cfg, Some(&current), generation, &shared.dns.answers()) {
        Ok(s) => s,
        Err(p) => return fail(p.iter().map(|p| p.to_string()).collect()),
    };
    let level = new_state.config.log.level.clone();
    shared.state.store(Arc::new(new_state));
    shared.prober.reconcile(&shared.state.load());
    watch_dns(shared);
    set_log_level(&level);
    shared.gate.set_max(max_conns);
    for (name, _) in &to_remove {
        let removed = shared.listeners.lock().ok().and_then(|mut m| m.remove(name));
        if let Some(r) = removed {
            let _ = r.stop.send(true);
            tracing::info!(listener = %name, "listener removed; its connections drain");
        }
    }
    for (cfg, socket) in to_add.iter().zip(sockets) {
        start_listener(shared, cfg, socket);
    }
    metrics::reload(true);
    let t = shared.mark_success(generation);
    shared.reloads.record_reload(t, true, generation, &[]);
    if let Ok(mut l) = shared.last_reload.lock() {
        *l = LastReload {
            ok: true,
            time_unix: t,
            errors: vec![],
        };
    }
    ReloadOutcome {
        ok: true,
        generation,
        errors: vec![],
    }
}

/// Keep the DNS refresh tasks in step with the running config; a changed answer rebuilds the
/// State (same generation, same config) so pools follow the new addresses.
fn watch_dns(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let on_change: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        if let Some(shared) = weak.upgrade() {
            tokio::spawn(async move { rebuild(&shared).await });
        }
    });
    shared.dns.reconcile(&shared.state.load().config, on_change);
}

async fn rebuild(shared: &Arc<Shared>) {
    let _guard = shared.reload_lock.lock().await;
    let current = shared.state.load_full();
    match State::build(
        (*current.config).clone(),
        Some(&current),
        current.generation,
        &shared.dns.answers(),
    ) {
        Ok(s) => {
            shared.state.store(Arc::new(s));
            shared.prober.reconcile(&shared.state.load());
        }
        Err(p) => tracing::error!("cannot apply new DNS answers: {}", format_problems(&p)),
    }
}

/// Stop accepting, let connections finish their requests up to `grace`, then return.
async fn shutdown(shared: &Arc<Shared>, grace: Duration) {
    tracing::info!(timeout = ?grace, "shutting down: draining connections");
    systemd::notify("STOPPING=1\nSTATUS=draining connections");
    shared.ready.store(false, Ordering::Relaxed);
    // Stop every accept loop and close our own handle on each socket: new connections are
    // refused from now on rather than left waiting in a backlog nobody serves.
    let running = shared
        .listeners
        .lock()
        .map(|mut m| std::mem::take(&mut *m))
        .unwrap_or_default();
    for r in running.values() {
        let _ = r.stop.send(true);
    }
    drop(running);
    let _ = shared.drain.send(true);
    if tokio::time::timeout(grace, shared.gate.idle()).await.is_err() {
        tracing::warn!(
            open = shared.gate.active(),
            "graceful shutdown timed out; closing remaining connections"
        );
    } else {
        tracing::info!("all connections drained");
    }
}

/// Histograms are summarised periodically rather than on the request path.
async fn upkeep() {
    let handle = metrics::install();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

pub fn format_problems(problems: &[config::Problem]) -> String {
    problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
}
