//! `agent --config FILE [--once]`: the node agent as a process.

use std::path::Path;
use std::process::ExitCode;

use coord_reboot::agent::{Agent, AgentConfig, Outcome};
use tokio::signal::unix::{SignalKind, signal};

use crate::BoxError;
use crate::operator::EXIT_FULL;

/// Runs the agent until it is done, or until SIGTERM / Ctrl-C (which kill a running command).
pub(crate) async fn run(path: &Path, once: bool) -> Result<ExitCode, BoxError> {
    let config = AgentConfig::load(path)?;
    let agent = Agent::connect(&config).await?.once(once);
    tracing::info!(id = %agent.id(), group = %agent.group(), "agent starting");
    let mut terminate = signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        outcome = agent.run() => outcome?,
        _ = terminate.recv() => {
            tracing::info!("stopped by SIGTERM");
            return Ok(ExitCode::SUCCESS);
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("stopped by Ctrl-C");
            return Ok(ExitCode::SUCCESS);
        }
    };
    // One line on stdout, for scripts and tests.
    let (line, code) = match outcome {
        Outcome::Rebooted => ("rebooted: the reboot command returned".to_owned(), 0),
        Outcome::Booted => ("booted".to_owned(), 0),
        Outcome::NoRebootNeeded => ("no reboot needed".to_owned(), 0),
        Outcome::OutsideWindow { opens_at } => (
            format!("outside the reboot window; the next opens at {opens_at}"),
            0,
        ),
        Outcome::GroupFull => (format!("group {} is full", agent.group()), EXIT_FULL),
        Outcome::Unhealthy => ("unhealthy after boot: slot kept".to_owned(), EXIT_FULL),
        other => (format!("{other:?}"), 0),
    };
    println!("{line}");
    Ok(ExitCode::from(code))
}
