//! `coordctl elect NAME VALUE` (campaign, hold, resign) and `coordctl elect --observe NAME`:
//! coord-leader's Go-compatible `Election`, so `etcdctl elect` sees coordctl's candidates and
//! the other way round.

use std::time::Duration;

use clap::Args;
use coord_core::{Client, Session};
use coord_leader::{Election, LeaderInfo};
use serde_json::{Value, json};

use crate::connection::{close, parse_positive_duration, parse_ttl, session};
use crate::held::{Held, acquire};
use crate::output::{self, Output};
use crate::signals::Signals;
use crate::{Connection, Error};

/// `elect`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct ElectArgs {
    /// The election's name (under `--namespace`): candidates' keys are `NAME/<lease hex>`.
    pub name: String,

    /// The value to campaign with (what observers see as the leader's). Required unless
    /// `--observe`.
    #[arg(required_unless_present = "observe", conflicts_with = "observe")]
    pub value: Option<String>,

    /// Do not campaign: print the leader, then every change (including "no leader"), until
    /// SIGINT or SIGTERM (etcdctl's `elect --listen`).
    #[arg(long, short = 'l', alias = "listen")]
    pub observe: bool,

    /// Session TTL: how long the leadership outlives a coordctl that died without resigning.
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Give up campaigning after this long (exit 75).
    #[arg(long, value_parser = parse_positive_duration, conflicts_with = "observe")]
    pub timeout: Option<Duration>,
}

/// Runs `elect`; returns the exit code.
pub(crate) async fn run(connection: &Connection, args: &ElectArgs) -> Result<u8, Error> {
    coord_core::keys::validate_name(&connection.namespace, &args.name)?;
    let mut signals = Signals::install()?;
    let client = connection.client().await?;
    match &args.value {
        Some(value) if !args.observe => {
            let session = session(&client, args.ttl).await?;
            let result = campaign(connection.output, &session, args, value, &mut signals).await;
            close(session).await;
            result
        }
        _ => observe(connection.output, &client, &args.name, &mut signals).await,
    }
}

async fn campaign(
    output: Output,
    session: &Session,
    args: &ElectArgs,
    value: &str,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let election = Election::new(session, &args.name)?;
    let leadership = acquire(
        &format!("leadership of {}", election.prefix()),
        args.timeout,
        signals,
        async { Ok(election.campaign(value).await?) },
    )
    .await?;
    let held = Held::Leadership(leadership);
    match output {
        // etcdctl prints the leader's key and value.
        Output::Human => {
            output::line(held.key());
            output::line(value);
        }
        Output::Json => output::json(&json!({
            "name": args.name,
            "key": held.key(),
            "value": value,
            "token": held.token().revision(),
            "lease": session.lease_id().to_string(),
        })),
    }
    held.hold_until_stopped(signals).await?;
    Ok(crate::exit::OK)
}

async fn observe(
    output: Output,
    client: &Client,
    name: &str,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let mut leader = coord_leader::observe(client, name).await?;
    loop {
        let current = leader.borrow_and_update().clone();
        match output {
            Output::Human => match &current {
                Some(info) => {
                    output::line(&info.key);
                    output::line(&String::from_utf8_lossy(&info.value));
                }
                None => output::line("no leader"),
            },
            Output::Json => output::json(&json!({
                "name": name,
                "leader": current.as_ref().map_or(Value::Null, leader_json),
            })),
        }
        tokio::select! {
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(Error::WatchEnded { what: format!("observing election {name}") });
                }
            }
            _ = signals.recv() => return Ok(crate::exit::OK),
        }
    }
}

fn leader_json(info: &LeaderInfo) -> Value {
    json!({
        "key": info.key,
        "value": String::from_utf8_lossy(&info.value),
        "token": info.token.revision(),
        "lease": info.lease.to_string(),
        "since": info.since,
    })
}
