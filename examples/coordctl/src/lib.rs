//! # coordctl — coord's primitives from the command line
//!
//! In the spirit of `etcdctl lock/elect` and `locksmithctl`, over the coord libraries (so with
//! their wire formats: Go-compatible locks and elections, coord's semaphores, service registry
//! and config values):
//!
//! | command | what it does | module |
//! |---|---|---|
//! | `lock NAME [-- CMD…]` | hold a lock (coord-lock `Mutex`, excludes `etcdctl lock NAME`) while CMD runs, or until signalled | [`lock`] |
//! | `elect NAME VALUE`, `elect --observe NAME` | campaign and lead until signalled; follow the leader | [`elect`] |
//! | `sem acquire\|release\|list\|set-limit` | semaphore permits (session-bound or durable by id), holders and waiters, the stored limit | [`sem`] |
//! | `services list\|watch SERVICE` | a service's registered instances, and their insertions, updates and removals | [`services`] |
//! | `config get\|set\|watch NAME [VALUE]` | a JSON config value as coord-discovery's `Config` reads and writes it | [`config`] |
//!
//! The binary is a thin `main` over [`Cli`] and [`run`]; the manual with the exit codes is
//! `docs/coordctl.md`, and [`exit`] lists the codes.
//!
//! ```no_run
//! # async fn demo() {
//! use clap::Parser;
//!
//! let cli = coordctl::Cli::parse_from(["coordctl", "--endpoints", "http://127.0.0.1:2379", "lock", "jobs/nightly", "--", "true"]);
//! let code = match coordctl::run(&cli).await {
//!     Ok(code) => code,
//!     Err(e) => e.exit_code(),
//! };
//! # let _ = code; }
//! ```
#![forbid(unsafe_code)]

pub mod config;
mod connection;
pub mod elect;
mod error;
mod exec;
mod held;
pub mod lock;
mod output;
pub mod sem;
pub mod services;
mod signals;

use clap::{Parser, Subcommand};

pub use connection::{Connection, DEFAULT_ENDPOINT, ENDPOINT_VARIABLES};
pub use error::{Error, chain, exit};
pub use output::Output;

/// The exit codes, as `--help` shows them (docs/coordctl.md has the same table).
const EXIT_CODES: &str = "\
Exit codes:
  0        success; with CMD: CMD exited 0
  1        error (etcd unreachable, authentication, permission, TLS…)
  2        usage: bad flags or arguments, or an argument rejected before anything was written
  3        config get: the key is not set
  75       not acquired within --timeout (lock, sem acquire, elect)
  80       lost: the session expired or the key was deleted while waiting or holding
           (a running CMD was sent SIGTERM)
  126/127  CMD could not be executed / was not found
  128+N    CMD was killed by signal N, or coordctl was interrupted by signal N while waiting
  other    CMD's own exit code";

/// coordctl: locks, elections, semaphores, services and config in etcd, from the command line.
#[derive(Debug, Parser)]
#[command(name = "coordctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How to reach etcd, and the output format.
    #[command(flatten)]
    pub connection: Connection,
}

/// The commands.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Hold a lock while CMD runs (its exit code is coordctl's; the key and fencing token are in
    /// COORD_LOCK_KEY / COORD_FENCING_TOKEN and etcdctl's ETCD_LOCK_KEY / ETCD_LOCK_REV), or
    /// without CMD print the key and hold until SIGINT/SIGTERM. Excludes `etcdctl lock NAME`.
    #[command(after_help = EXIT_CODES)]
    Lock(lock::LockArgs),
    /// Campaign with VALUE, print the leader's key and value once elected, lead until
    /// SIGINT/SIGTERM, then resign; or, with --observe, print the leader and every change.
    #[command(after_help = EXIT_CODES)]
    Elect(elect::ElectArgs),
    /// Semaphores: at most N holders at once.
    #[command(subcommand, after_help = EXIT_CODES)]
    Sem(sem::SemCommand),
    /// Service registry: list a service's instances, or follow their changes.
    #[command(subcommand, after_help = EXIT_CODES)]
    Services(services::ServicesCommand),
    /// Config values (JSON) read by coord-discovery's `Config`: get, set, follow.
    #[command(subcommand, after_help = EXIT_CODES)]
    Config(config::ConfigCommand),
}

/// Runs a parsed command line; returns the exit code (a failure's code is
/// [`Error::exit_code`]).
///
/// # Errors
///
/// Whatever the command fails with; the caller prints it ([`chain`]) and exits with its code.
pub async fn run(cli: &Cli) -> Result<u8, Error> {
    let connection = &cli.connection;
    match &cli.command {
        Command::Lock(args) => lock::run(connection, args).await,
        Command::Elect(args) => elect::run(connection, args).await,
        Command::Sem(command) => sem::run(connection, command).await,
        Command::Services(command) => services::run(connection, command).await,
        Command::Config(command) => config::run(connection, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
