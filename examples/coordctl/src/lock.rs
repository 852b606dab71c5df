//! `coordctl lock NAME [-- CMD…]`: coord-lock's Go-compatible `Mutex`, so `etcdctl lock` and
//! `coordctl lock` on the same name exclude each other.

use std::time::Duration;

use clap::Args;
use coord_core::Session;
use coord_lock::Mutex;
use serde_json::json;

use crate::connection::{close, parse_duration, parse_ttl, session};
use crate::held::{Held, acquire};
use crate::output::{self, Output};
use crate::signals::Signals;
use crate::{Connection, Error, exec};

/// `lock`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// The lock's name (under `--namespace`): the keys are `NAME/<lease hex>`, as etcdctl's.
    pub name: String,

    /// The command to run while holding the lock (with or without `--` before it, as etcdctl).
    /// Without one, coordctl prints the lock's key and holds the lock until SIGINT or SIGTERM.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,

    /// Session TTL: how long the lock outlives a coordctl that died without unlocking.
    #[arg(long, default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Give up waiting after this long (exit 75); `0s` takes the lock only if it is free now.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// When the lock is lost while CMD runs, CMD gets SIGTERM, then SIGKILL after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kill_after: Duration,
}

/// Runs `lock`; returns the exit code.
pub(crate) async fn run(connection: &Connection, args: &LockArgs) -> Result<u8, Error> {
    coord_core::keys::validate_name(&connection.namespace, &args.name)?;
    let mut signals = Signals::install()?;
    let client = connection.client().await?;
    let session = session(&client, args.ttl).await?;
    let result = locked(connection.output, &session, args, &mut signals).await;
    close(session).await;
    result
}

async fn locked(
    output: Output,
    session: &Session,
    args: &LockArgs,
    signals: &mut Signals,
) -> Result<u8, Error> {
    let mutex = Mutex::new(session, &args.name)?;
    let try_once = args.timeout.is_some_and(|t| t.is_zero());
    let guard = acquire(
        &format!("lock {}", mutex.prefix()),
        args.timeout,
        signals,
        async {
            if try_once {
                Ok(mutex.try_lock().await?)
            } else {
                Ok(mutex.lock().await?)
            }
        },
    )
    .await?;
    let held = Held::Lock(guard);
    if args.command.is_empty() {
        match output {
            // etcdctl prints the key alone.
            Output::Human => output::line(held.key()),
            Output::Json => output::json(&json!({
                "name": args.name,
                "key": held.key(),
                "token": held.token().revision(),
                "lease": session.lease_id().to_string(),
            })),
        }
        held.hold_until_stopped(signals).await?;
        return Ok(crate::exit::OK);
    }
    let token = held.token().revision().to_string();
    let env = vec![
        ("COORD_LOCK_KEY", held.key().to_owned()),
        ("COORD_FENCING_TOKEN", token.clone()),
        // etcdctl's names; its ETCD_LOCK_REV is the acquiring response's revision, ours the
        // key's create revision (the fencing token): both only grow from holder to holder.
        ("ETCD_LOCK_KEY", held.key().to_owned()),
        ("ETCD_LOCK_REV", token),
    ];
    exec::run_while_held(held, &args.command, env, signals, args.kill_after).await
}
