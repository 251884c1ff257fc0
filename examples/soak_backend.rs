//! One test backend ([`waypost::testbackend`], the demo's and the integration tests' backend) as
//! its own process, so that benches/soak.py can kill it and start it again:
//!
//! ```sh
//! cargo build --release --example soak_backend
//! target/release/examples/soak_backend 127.0.0.1:9001 b1
//! ```
//!
//! It answers every request with JSON saying who it is and what it received (body size
//! included), echoes WebSocket messages, and sets `x-backend: NAME` on every response, the
//! WebSocket `101` included. It prints `listening on ADDRESS` once it accepts connections.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use waypost::testbackend::TestBackend;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(name), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: soak_backend ADDRESS NAME");
        return ExitCode::from(2);
    };
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak_backend: bad address {addr:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak_backend: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let backend = match TestBackend::start_on(addr, &name).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("soak_backend: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        backend.set_header("x-backend", &name);
        println!("listening on {}", backend.addr);
        let _ = std::io::stdout().flush();
        std::future::pending::<ExitCode>().await
    })
}
