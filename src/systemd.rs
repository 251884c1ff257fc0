//! The service manager's side of the lifecycle: sd_notify messages (READY, RELOADING, STOPPING,
//! STATUS, WATCHDOG) and listening sockets handed over by socket activation (LISTEN_FDS) or by
//! waypost's own binary upgrade. Written against the documented protocols; no libsystemd.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The environment variable through which a process started by waypost's own binary upgrade
/// learns that the listening sockets in LISTEN_FDS come from its parent.
pub const UPGRADE_PARENT_ENV: &str = "WAYPOST_UPGRADE_PARENT";

/// Send one sd_notify message, if a service manager asked for them. Errors are not fatal: the
/// daemon serves the same with or without a supervisor.
pub fn notify(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify: cannot create a socket");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract namespace (Linux): "@name" stands for a leading NUL byte.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), std::path::Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "sd_notify: cannot send {msg:?}");
    }
}

/// CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// How often to send WATCHDOG=1: half the manager's WatchdogSec, when it is meant for us.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A listening socket handed to us, with the name the manager gave it (LISTEN_FDNAMES).
#[derive(Debug)]
pub struct Inherited {
    pub name: Option<String>,
    pub addr: Option<SocketAddr>,
    pub socket: TcpListener,
}

/// Take the listening sockets passed in LISTEN_FDS (fds 3, 4, ...), when they are meant for
/// this process: LISTEN_PID is our pid (systemd), or our parent is the waypost that upgraded
/// to us. The variables are cleared so that our own children do not take them again.
pub fn take_listen_fds() -> Vec<Inherited> {
    let count: usize = match std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse().ok()) {
        Some(n) => n,
        None => return Vec::new(),
    };
    let for_us = match std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        Some(pid) => pid == std::process::id(),
        None => std::env::var(UPGRADE_PARENT_ENV)
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|ppid| ppid == std::os::unix::process::parent_id()),
    };
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", UPGRADE_PARENT_ENV] {
        // SAFETY (edition 2021): no other thread reads the environment this early in start-up.
        std::env::remove_var(var);
    }
    if !for_us {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count.min(1024) {
        let fd = 3 + i as RawFd;
        if !is_listening_tcp(fd) {
            tracing::warn!(
                fd,
                "an inherited file descriptor is not a listening TCP socket; ignored"
            );
            continue;
        }
        // SAFETY: the fd was handed to this process to own, and is a listening TCP socket.
        let socket = unsafe { TcpListener::from_raw_fd(fd) };
        // SAFETY: setting FD_CLOEXEC on an fd we own; our children get sockets explicitly.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        let _ = socket.set_nonblocking(true);
        out.push(Inherited {
            name: names.get(i).filter(|n| !n.is_empty() && *n != "unknown").cloned(),
            addr: socket.local_addr().ok(),
            socket,
        });
    }
    out
}

fn is_listening_tcp(fd: RawFd) -> bool {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on an fd number; failure (not a socket) is reported by the return value.
    let listening = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            &mut val as *mut _ as *mut libc::c_void,
            &mut len,
        )
    } == 0
        && val == 1;
    let mut ty: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above.
    let stream = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut ty as *mut _ as *mut libc::c_void,
            &mut len,
        )
    } == 0
        && ty == libc::SOCK_STREAM;
    listening && stream
}

/// Pick the inherited socket for a listener: by name first, else by address.
pub fn claim(inherited: &mut Vec<Inherited>, name: &str, addr: SocketAddr) -> Option<TcpListener> {
    let pos = inherited
        .iter()
        .position(|i| i.name.as_deref() == Some(name))
        .or_else(|| inherited.iter().position(|i| i.addr == Some(addr)))?;
    Some(inherited.remove(pos).socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_counts_microseconds_since_boot() {
        let outer = crate::clock::now();
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec();
        let elapsed = outer.elapsed().as_micros() as u64;
        // Microseconds: at least the 20 ms slept, at most what a clock around it saw.
        assert!(b - a >= 20_000 && b - a <= elapsed, "{} us against {elapsed} us", b - a);
        // The monotonic clock, not the wall clock: no further from zero than the time since boot.
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            b <= (uptime * 1e6) as u64 + 1_000_000,
            "{b} us is more than the uptime {uptime} s"
        );
    }

    #[test]
    fn sockets_are_claimed_by_name_then_address() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut v = vec![
            Inherited {
                name: Some("web".into()),
                addr: Some(aa),
                socket: a,
            },
            Inherited {
                name: None,
                addr: Some(ba),
                socket: b,
            },
        ];
        assert!(claim(&mut v, "other", "127.0.0.1:1".parse().unwrap()).is_none());
        let got = claim(&mut v, "web", "127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(got.local_addr().unwrap(), aa);
        let got = claim(&mut v, "api", ba).unwrap();
        assert_eq!(got.local_addr().unwrap(), ba);
        assert!(v.is_empty());
    }

    #[test]
    fn a_plain_file_descriptor_is_not_a_listening_socket() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert!(!is_listening_tcp(f.as_raw_fd()));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_listening_tcp(l.as_raw_fd()));
    }
}
