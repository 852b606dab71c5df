//! `coord-reboot`: the FleetLock server (`serve`) and the operator commands.

mod agent;
#[cfg(feature = "demo")]
mod demo;
mod operator;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coord_reboot::{Config, Server};
use tokio::signal::unix::{SignalKind, signal};

/// A FleetLock reboot coordinator over etcd: at most N machines of a group reboot at once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: operator::Connection,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve FleetLock (`/v1/pre-reboot`, `/v1/steady-state`), `/metrics`, `/healthz`, `/readyz`.
    /// SIGHUP reloads the configuration (groups, slots, limits); SIGTERM or Ctrl-C stops.
    /// Needs `--config FILE`.
    Serve,
    /// Show each group's slots and holders (age, fencing token, expiry) and waiters.
    Status {
        /// Only these groups (default: every group in etcd and in `--config`).
        groups: Vec<String>,
    },
    /// Store how many machines of GROUP may reboot at once. Lowering it evicts nobody. A server
    /// whose configuration sets `slots` for the group writes its value back at start and reload.
    SetMax {
        /// The group.
        group: String,
        /// The new number of slots.
        slots: u32,
    },
    /// Take a slot of GROUP for ID now, as a FleetLock pre-reboot would (exit code 75, EX_TEMPFAIL, when full).
    Lock {
        /// The group.
        group: String,
        /// The holder id.
        id: String,
        /// Release the slot on its own after this long (`90s`, `2h`).
        #[arg(long, value_parser = operator::parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Remove ID's slot of GROUP, whoever took it (a machine that will not come back).
    Unlock {
        /// The group.
        group: String,
        /// The holder id.
        id: String,
    },
    /// Run the node agent (needs `--config FILE` with an `[agent]` section): after boot, give
    /// the slot back once healthy; then wait for the reboot signal, a window and a slot, run the
    /// pre-reboot hook and reboot.
    Agent {
        /// Do not wait: exit when there is nothing to do now (no signal: 0; window closed: 0;
        /// group full or unhealthy after boot: 75), for a systemd timer or cron.
        #[arg(long)]
        once: bool,
    },
    /// Demo: an embedded etcd (or COORD_ENDPOINTS), a FleetLock server and simulated nodes in
    /// two groups rebooting through agents, with a live timeline and the highest concurrency
    /// seen in etcd per group against its limit (exit 1 if a limit was exceeded).
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's timeline is the output: only warnings from the library.
    #[cfg(feature = "demo")]
    let quiet = matches!(cli.command, Command::Demo(_));
    #[cfg(not(feature = "demo"))]
    let quiet = false;
    init_tracing(if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let connection = &cli.connection;
        match cli.command {
            Command::Serve => match connection.config() {
                Some(config) => serve(config).await,
                None => Err("serve needs --config FILE".into()),
            },
            Command::Status { groups } => operator::status(connection, &groups).await,
            Command::SetMax { group, slots } => operator::set_max(connection, &group, slots).await,
            Command::Lock { group, id, ttl } => operator::lock(connection, &group, &id, ttl).await,
            Command::Unlock { group, id } => operator::unlock(connection, &group, &id).await,
            Command::Agent { once } => match connection.config() {
                Some(config) => agent::run(config, once).await,
                None => Err("agent needs --config FILE".into()),
            },
            #[cfg(feature = "demo")]
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve(path: &Path) -> Result<ExitCode, BoxError> {
    let config = Config::load(path)?;
    let server = Server::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    // On stdout, for scripts that bind port 0.
    println!("listening on {}", listener.local_addr()?);
    tracing::info!(listen = %listener.local_addr()?, groups = ?config.groups.keys().collect::<Vec<_>>(), "serving FleetLock");

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let reloader = server.clone();
    let path = path.to_owned();
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = hangup.recv() => reload(&reloader, &path).await,
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!("stopping: finishing the requests in flight");
    };
    server.serve(listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn reload(server: &Server, path: &Path) {
    let loaded = match Config::load(path) {
        Ok(config) => server.reload(&config).await.map(|()| config),
        Err(e) => Err(e.into()),
    };
    match loaded {
        Ok(config) => {
            tracing::info!(groups = ?config.groups.keys().collect::<Vec<_>>(), "configuration reloaded")
        }
        Err(e) => {
            tracing::error!(error = %chain(&e), "reload failed; the previous configuration stays")
        }
    }
}

/// An error and its causes on one line.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs to stderr, filtered by `RUST_LOG` (default `default_level`).
fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
