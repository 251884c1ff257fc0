//! The `waypost` command: run the daemon, check a config, or start the demo.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: per-thread free lists suit a proxy's many small, short-lived allocations (headers,
/// request state) better than glibc malloc; measured in the peer benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use waypost::config::{self, LoadError};

#[derive(Parser)]
#[command(name = "waypost", version, about = "A layer-7 reverse proxy and load balancer")]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Validate the config file: print every problem with its key path and line; exit 1 if any.
    Check,
    /// Start local test backends and the proxy on the built-in demo config.
    Demo,
    /// Print a running daemon's state (GET /status) as tables; exit 1 if a pool has no
    /// healthy backend, 2 if the status cannot be read.
    Status {
        /// The admin API address (e.g. 127.0.0.1:9901); default: [admin].bind of the config.
        #[arg(long)]
        admin: Option<String>,
        /// Seconds between the two readings that give request rates (0: one reading, no rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Never colour the output (it is coloured only on a terminal anyway).
        #[arg(long)]
        no_color: bool,
    },
}

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    match config::load(path) {
        Ok(c) => Ok(c),
        Err(e @ LoadError::Read { .. }) => {
            eprintln!("waypost: {e}");
            Err(ExitCode::FAILURE)
        }
        Err(LoadError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{}: {p}", path.display());
            }
            eprintln!("waypost: {} problem(s) in {}", problems.len(), path.display());
            Err(ExitCode::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Check => match load(&cli.config) {
            Ok(c) => {
                println!(
                    "{}: OK ({} listener(s), {} pool(s), {} route(s))",
                    cli.config.display(),
                    c.listeners.len(),
                    c.pools.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run => {
            let cfg = match load(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let path = std::fs::canonicalize(&cli.config).unwrap_or(cli.config);
            match waypost::app::run(cfg, Some(path)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("waypost: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Status {
            admin,
            interval,
            no_color,
        } => {
            let opts = waypost::admin::cli::Options {
                config: &cli.config,
                admin: admin.as_deref(),
                interval: std::time::Duration::from_secs_f64(if interval.is_finite() {
                    interval.clamp(0.0, 60.0)
                } else {
                    0.0
                }),
                color: !no_color && std::env::var_os("NO_COLOR").is_none(),
            };
            match waypost::admin::cli::run(&opts) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("waypost status: {}", e.0);
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Demo => match waypost::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("waypost demo: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
