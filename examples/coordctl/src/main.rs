//! `coordctl`: parses the command line, runs it on a Tokio runtime, prints a failure on stderr
//! and exits with the documented code (`coordctl --help`, docs/coordctl.md).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use coordctl::{Cli, chain, exit, run};

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("coordctl: cannot start the runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("coordctl: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings; coordctl itself reports the
/// config values it cannot use, so the library's own warning about them is left out).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,coord_discovery::config=error")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
