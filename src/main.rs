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
        Cmd::Demo => match waypost::demo::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("waypost demo: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
