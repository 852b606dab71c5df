//! `coordctl sem acquire|release|list|set-limit`: coord-lock's `Semaphore` with its limit stored
//! in etcd (`--limit` is the default while none is stored; `set-limit` stores one), session-bound
//! permits held while coordctl runs, and durable holders by id that outlive it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use coord_core::{Client, Session};
use coord_lock::{Durability, HolderInfo, Limit, MAX_LIMIT, Semaphore, SemaphoreAdmin};
use serde_json::{Value, json};

use crate::connection::{close, parse_duration, parse_ttl, session};
use crate::held::{Held, acquire};
use crate::output::{self, Output, short};
use crate::signals::Signals;
use crate::{Connection, Error, exec};

/// The default session TTL (etcdctl's).
const SESSION_TTL: Duration = Duration::from_secs(10);

/// Recorded with every entry coordctl takes, shown by `sem list`.
const TAKEN_BY: &str = "coordctl";

/// The `sem` subcommands.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum SemCommand {
    /// Take a permit. With `--id`: a durable permit for that id, which stays after coordctl
    /// exits (until `sem release --id`, or `--ttl`). Without: a permit bound to coordctl's
    /// session, held while CMD runs (exit code CMD's; COORD_PERMIT_KEY and COORD_FENCING_TOKEN
    /// in its environment), or without CMD printed and held until SIGINT/SIGTERM.
    Acquire(AcquireArgs),
    /// Remove the holder or waiter ID (a durable id, or a session-bound holder's lease in hex),
    /// whoever it is.
    Release(ReleaseArgs),
    /// Show the limit, the holders and the waiters (id, kind, age, fencing token).
    List(ListArgs),
    /// Store the limit. Lowering it evicts nobody; raising it lets waiters in at once.
    SetLimit(SetLimitArgs),
}

/// `sem acquire`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct AcquireArgs {
    /// The semaphore's name (under `--namespace`).
    pub name: String,

    /// The command to run while holding a session-bound permit (with or without `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD",
        conflicts_with = "id"
    )]
    pub command: Vec<String>,

    /// The limit while none is stored in etcd (a stored one, from `set-limit`, wins). Every
    /// participant should agree.
    #[arg(long, default_value_t = 1, value_parser = limit_parser())]
    pub limit: u32,

    /// Take a durable permit for this id (a machine, a job), not bound to coordctl's process.
    /// Taking it again for the same id returns the same permit.
    #[arg(long)]
    pub id: Option<String>,

    /// With `--id`: the permit expires on its own after this long (default: never). Without:
    /// the session TTL (default 10s), how long the permit outlives a coordctl that died.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,

    /// Give up waiting after this long (exit 75); `0s` takes a permit only if one is free now.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// When the permit is lost while CMD runs, CMD gets SIGTERM, then SIGKILL after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kill_after: Duration,
}

/// `sem release`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// The semaphore's name.
    pub name: String,
    /// The holder (or waiter) to remove.
    #[arg(long)]
    pub id: String,
}

/// `sem list`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// The semaphore's name.
    pub name: String,
    /// The limit to assume while none is stored in etcd.
    #[arg(long, default_value_t = 1, value_parser = limit_parser())]
    pub limit: u32,
}

/// `sem set-limit`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct SetLimitArgs {
    /// The semaphore's name.
    pub name: String,
    /// The new limit.
    #[arg(value_parser = limit_parser())]
    pub limit: u32,
}

fn limit_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT))
}

/// Runs a `sem` subcommand; returns the exit code.
pub(crate) async fn run(connection: &Connection, command: &SemCommand) -> Result<u8, Error> {
    let name = match command {
        SemCommand::Acquire(args) => &args.name,
        SemCommand::Release(args) => &args.name,
        SemCommand::List(args) => &args.name,
        SemCommand::SetLimit(args) => &args.name,
    };
    coord_core::keys::validate_name(&connection.namespace, name)?;
    let given_id = match command {
        SemCommand::Acquire(AcquireArgs { id: Some(id), .. })
        | SemCommand::Release(ReleaseArgs { id, .. }) => Some(id),
        _ => None,
    };
    if let Some(id) = given_id {
        coord_core::keys::validate_segment(id)?;
    }
    let client = connection.client().await?;
    let output = connection.output;
    let args = match command {
        SemCommand::Acquire(args) => args,
        SemCommand::Release(args) => return release(output, &client, args).await,
        SemCommand::List(args) => return list(output, &client, args).await,
        SemCommand::SetLimit(args) => return set_limit(output, &client, args).await,
    };
    let mut signals = Signals::install()?;
    let ttl = match &args.id {
        None => args.ttl.unwrap_or(SESSION_TTL),
        // Only bound to the session while waiting.
        Some(_) => SESSION_TTL,
    };
    let session = session(&client, ttl).await?;
    let result = match &args.id {
        Some(id) => acquire_durable(output, &session, args, id, &mut signals).await,
        None => acquire_permit(output, &session, args, &mut signals).await,
    };
    close(session).await;
    result
}

fn admin(client: &Client, name: &str, default: u32) -> Result<SemaphoreAdmin, Error> {
    Ok(SemaphoreAdmin::new(
        client,
        name,
        Limit::Stored { default },
    )?)
}

fn semaphore(session: &Session, name: &str, default: u32) -> Result<Semaphore, Error> {
    Ok(Semaphore::new(session, name, Limit::Stored { default })?.with_taken_by(TAKEN_BY)?)
}

async fn acquire_permit(
    output: Output,
    session: &Session,
    args: &AcquireArgs,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let semaphore = semaphore(session, &args.name, args.limit)?;
    let try_once = args.timeout.is_some_and(|t| t.is_zero());
    let permit = acquire(
        &format!("permit of {}", semaphore.prefix()),
        args.timeout,
        signals,
        async {
            if try_once {
                Ok(semaphore.try_acquire().await?)
            } else {
                Ok(semaphore.acquire().await?)
            }
        },
    )
    .await?;
    let held = Held::Permit(permit);
    if args.command.is_empty() {
        match output {
            Output::Human => output::line(held.key()),
            Output::Json => output::json(&json!({
                "name": args.name,
                "key": held.key(),
                "token": held.token().revision(),
                "lease": session.lease_id().to_string(),
                "durable": false,
            })),
        }
        held.hold_until_stopped(signals).await?;
        return Ok(crate::exit::OK);
    }
    let env = vec![
        ("COORD_PERMIT_KEY", held.key().to_owned()),
        ("COORD_FENCING_TOKEN", held.token().revision().to_string()),
    ];
    exec::run_while_held(held, &args.command, env, signals, args.kill_after).await
}

async fn acquire_durable(
    output: Output,
    session: &Session,
    args: &AcquireArgs,
    id: &str,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let semaphore = semaphore(session, &args.name, args.limit)?;
    let durability = args
        .ttl
        .map_or(Durability::UntilReleased, Durability::Expires);
    let try_once = args.timeout.is_some_and(|t| t.is_zero());
    let slot = acquire(
        &format!("permit of {} for {id}", semaphore.prefix()),
        args.timeout,
        signals,
        async {
            if try_once {
                Ok(semaphore.try_acquire_as(id, durability).await?)
            } else {
                Ok(semaphore.acquire_as(id, durability).await?)
            }
        },
    )
    .await?;
    match output {
        Output::Human => output::line(&format!(
            "{id} holds a permit of {} (token {})",
            args.name,
            slot.token()
        )),
        Output::Json => output::json(&json!({
            "name": args.name,
            "id": id,
            "key": slot.key(),
            "token": slot.token().revision(),
            "durable": true,
            "expires_after_secs": args.ttl.map(|t| t.as_secs()),
        })),
    }
    Ok(crate::exit::OK)
}

async fn release(output: Output, client: &Client, args: &ReleaseArgs) -> Result<u8, Error> {
    let semaphore = admin(client, &args.name, 1)?;
    let released = semaphore.force_release(&args.id).await?;
    match output {
        Output::Human if released => {
            output::line(&format!("released {}'s permit of {}", args.id, args.name))
        }
        Output::Human => output::line(&format!("{} held nothing in {}", args.id, args.name)),
        Output::Json => output::json(&json!({
            "name": args.name, "id": args.id, "released": released,
        })),
    }
    Ok(crate::exit::OK)
}

async fn list(output: Output, client: &Client, args: &ListArgs) -> Result<u8, Error> {
    let semaphore = admin(client, &args.name, args.limit)?;
    let stored = !client
        .get(semaphore.limit_key(), None)
        .await?
        .kvs()
        .is_empty();
    let limit = semaphore.limit().await?;
    let queue = semaphore.queue().await?;
    let (holders, waiting): (Vec<&HolderInfo>, Vec<&HolderInfo>) =
        queue.iter().partition(|h| h.held);
    match output {
        Output::Json => output::json(&json!({
            "name": args.name,
            "limit": limit,
            "limit_stored": stored,
            "holders": holders.iter().map(|h| holder_json(h)).collect::<Vec<_>>(),
            "waiting": waiting.iter().map(|h| holder_json(h)).collect::<Vec<_>>(),
        })),
        Output::Human => {
            let origin = if stored { "stored" } else { "default" };
            output::line(&format!(
                "semaphore {}: {} of {limit} permit(s) held ({origin} limit), {} waiting",
                args.name,
                holders.len(),
                waiting.len()
            ));
            if !queue.is_empty() {
                let now = SystemTime::now();
                let rows: Vec<Vec<String>> = queue
                    .iter()
                    .map(|h| {
                        vec![
                            h.id.clone(),
                            h.taken_by.clone().unwrap_or_else(|| "-".to_owned()),
                            if h.held { "held" } else { "waiting" }.to_owned(),
                            if h.durable { "durable" } else { "session" }.to_owned(),
                            short(now.duration_since(h.since).unwrap_or_default()),
                            h.token.to_string(),
                        ]
                    })
                    .collect();
                for line in output::table(&["ID", "BY", "STATE", "KIND", "AGE", "TOKEN"], &rows) {
                    output::line(&format!("  {line}"));
                }
            }
        }
    }
    Ok(crate::exit::OK)
}

fn holder_json(holder: &HolderInfo) -> Value {
    json!({
        "id": holder.id,
        "key": holder.key,
        "token": holder.token.revision(),
        "durable": holder.durable,
        "taken_by": holder.taken_by,
        "since_unix_ms": holder.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()),
        "age_secs": SystemTime::now().duration_since(holder.since).map_or(0, |d| d.as_secs()),
        "lease": coord_core::LeaseId::new(holder.lease).to_string(),
    })
}

async fn set_limit(output: Output, client: &Client, args: &SetLimitArgs) -> Result<u8, Error> {
    let semaphore = admin(client, &args.name, args.limit)?;
    let stored = client
        .get(semaphore.limit_key(), None)
        .await?
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    semaphore.set_limit(args.limit).await?;
    match output {
        Output::Human => output::line(&format!(
            "semaphore {}: limit {} (was {})",
            args.name,
            args.limit,
            stored.as_deref().unwrap_or("not stored")
        )),
        Output::Json => output::json(&json!({
            "name": args.name,
            "limit": args.limit,
            "previous": stored.and_then(|s| s.trim().parse::<u32>().ok()),
        })),
    }
    Ok(crate::exit::OK)
}
