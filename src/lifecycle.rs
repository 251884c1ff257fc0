//! Lifecycle pieces around the running daemon: the systemd watchdog (fed only while every
//! worker runtime answers), the config-file watcher (debounced, survives replacement by
//! rename), and the binary upgrade on SIGUSR2 (the new binary inherits the listening sockets,
//! so no connection is refused while the old process drains).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::app::{self, Shared};
use crate::systemd;

/// One line for systemd's STATUS=: what is being served.
pub fn status_line(shared: &Shared) -> String {
    let state = shared.state.load();
    let listeners = shared.listeners.lock().map(|m| m.len()).unwrap_or(0);
    format!(
        "serving generation {} ({} listener(s), {} route(s), {} open connection(s))",
        state.generation,
        listeners,
        state.routes.len(),
        shared.gate.active()
    )
}

/// Send WATCHDOG=1 at half of WatchdogSec, but only when every worker runtime answered a ping
/// in time: a wedged worker must let systemd restart the service.
pub fn spawn_watchdog(shared: &Arc<Shared>) {
    let Some(interval) = systemd::watchdog_interval() else {
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let replies = app::ping_workers(&shared);
            let all = async {
                for r in replies {
                    if r.await.is_err() {
                        return false;
                    }
                }
                true
            };
            match tokio::time::timeout(interval, all).await {
                Ok(true) => systemd::notify("WATCHDOG=1"),
                _ => tracing::error!("a worker runtime did not answer in time; not feeding the watchdog"),
            }
        }
    });
}

/// Watch the config file's directory, and the directories of the TLS certificates, keys and
/// client CAs it names, and reload when the contents change. Editors and config management
/// replace files by rename, and Kubernetes swaps a symlinked directory, so any change in a
/// watched directory is a hint; the digests of the config file and of the TLS files decide.
pub fn spawn_config_watch(shared: &Arc<Shared>) {
    let Some(path) = shared.config_path.clone() else {
        return;
    };
    let Some(dir) = path.parent().map(PathBuf::from) else {
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    // One check right after the watch starts: a change made between loading the file and
    // watching it would otherwise go unseen until the next one.
    let _ = tx.send(());
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload");
            return;
        }
    };
    use notify::Watcher as _;
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory");
        return;
    }
    let mut watched: HashSet<PathBuf> = HashSet::from([dir]);
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut watcher = watcher;
        watch_tls_dirs(&mut watcher, &mut watched, &shared);
        while rx.recv().await.is_some() {
            // Debounce: a save is often several events (truncate, write, rename).
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            // A reload by signal or POST /reload may have named new directories.
            watch_tls_dirs(&mut watcher, &mut watched, &shared);
            let p = path.clone();
            let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || std::fs::read(p)).await else {
                continue; // Mid-replacement or removed: the next event will tell.
            };
            let current = shared.state.load_full();
            let config_changed = crate::config::digest(&bytes) != current.config.hash;
            let tls_changed = !config_changed && {
                let sets: Vec<(Vec<PathBuf>, String)> = current
                    .config
                    .listeners
                    .iter()
                    .filter_map(|l| l.tls.as_ref())
                    .map(|t| (t.files(), t.files_digest.clone()))
                    .collect();
                // A file mid-replacement (unreadable) counts as unchanged: the next event tells.
                tokio::task::spawn_blocking(move || {
                    sets.iter()
                        .any(|(files, d)| crate::config::tls::files_digest(files).is_some_and(|now| now != *d))
                })
                .await
                .unwrap_or(false)
            };
            drop(current);
            if !config_changed && !tls_changed {
                continue;
            }
            let out = app::reload(&shared).await;
            if out.ok {
                let what = if config_changed {
                    "the config file"
                } else {
                    "a TLS file"
                };
                tracing::info!(generation = out.generation, "reloaded after {what} changed");
            }
        }
    });
}

/// Add a watch on every directory holding a TLS file of the running config.
fn watch_tls_dirs(watcher: &mut notify::RecommendedWatcher, watched: &mut HashSet<PathBuf>, shared: &Shared) {
    use notify::Watcher as _;
    let state = shared.state.load();
    for l in &state.config.listeners {
        for f in l.tls.iter().flat_map(|t| t.files()) {
            let Some(dir) = f.parent().map(|d| match d.as_os_str().is_empty() {
                true => PathBuf::from("."),
                false => d.to_path_buf(),
            }) else {
                continue;
            };
            if watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot watch a TLS file directory"),
            }
        }
    }
}

/// Certificate expiry gauges are set when a generation is built; refresh them so that the
/// exporter does not drop them as idle.
pub fn spawn_tls_gauges(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let Some(shared) = weak.upgrade() else { return };
            let state = shared.state.load();
            for l in &state.config.listeners {
                for c in l.tls.iter().flat_map(|t| &t.certificates) {
                    crate::admin::metrics::set_cert_not_after(&c.cert_file.display().to_string(), c.not_after);
                }
            }
        }
    });
}

/// Start this binary again (as it is on disk now) with our arguments, handing it every
/// listening socket (listeners and admin) as LISTEN_FDS. Once it serves, it asks us to drain.
pub fn upgrade(shared: &Shared) -> Result<u32, String> {
    if shared.drain.borrow().to_owned() {
        return Err("already shutting down".into());
    }
    let exe = shared.exe.clone().ok_or("the path of this binary is unknown")?;
    let mut handed: Vec<(String, RawFd)> = Vec::new();
    let mut keep = Vec::new();
    {
        let map = shared.listeners.lock().map_err(|_| "listener table poisoned")?;
        for (name, r) in map.iter() {
            keep.push(r.socket.try_clone().map_err(|e| e.to_string())?);
            handed.push((name.clone(), 0));
        }
    }
    if let Some(admin) = shared
        .admin_socket
        .lock()
        .ok()
        .and_then(|a| a.as_ref().and_then(|s| s.try_clone().ok()))
    {
        keep.push(admin);
        handed.push(("admin".into(), 0));
    }
    // Move the descriptors out of the way of 3..3+n first, so the child's dup2 calls cannot
    // overwrite one source with another.
    let mut high = Vec::with_capacity(keep.len());
    for s in &keep {
        // SAFETY: F_DUPFD_CLOEXEC on a socket we hold; the result is closed below.
        let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        if fd < 0 {
            close_all(&high);
            return Err(format!(
                "cannot duplicate a socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        high.push(fd);
    }
    for (h, fd) in handed.iter_mut().zip(&high) {
        h.1 = *fd;
    }
    let names: Vec<&str> = handed.iter().map(|(n, _)| n.as_str()).collect();
    let fds = high.clone();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(&shared.args)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(systemd::UPGRADE_PARENT_ENV, std::process::id().to_string())
        .env_remove("LISTEN_PID")
        .stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2) are made.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    close_all(&high);
    let mut child = spawned.map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let pid = child.id();
    // Reap the new process if it fails early (a bad config, say), and say so; this process
    // then keeps serving as before.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            tracing::warn!(pid, %status, "the upgraded process exited");
        }
    });
    Ok(pid)
}

fn close_all(fds: &[RawFd]) {
    for fd in fds {
        // SAFETY: closing duplicates this function made.
        unsafe {
            libc::close(*fd);
        }
    }
}
