//! `coordctl config get|set|watch NAME [VALUE]`: coord-discovery's `Config` with JSON values —
//! what a service following the key with `Config<T>` reads.

use clap::{Args, Subcommand};
use coord_core::Client;
use coord_discovery::config::{Config, Snapshot, Source};
use serde_json::{Value, json};

use crate::output::{self, Output};
use crate::signals::Signals;
use crate::{Connection, Error};

/// The `config` subcommands.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum ConfigCommand {
    /// Print NAME's value as JSON (exit 3 when it is not set).
    Get(NameArgs),
    /// Store VALUE, which must be JSON (`'{"max_jobs": 8}'`, `42`, `'"text"'`), at NAME.
    Set(SetArgs),
    /// Print NAME's value, then every change, until SIGINT or SIGTERM. A stored value that is not
    /// JSON is reported on stderr and the last good one stays, as a `Config<T>` reader keeps it.
    Watch(NameArgs),
}

/// The arguments of `config get` and `config watch`.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// The config value's name (under `--namespace`): the key is `NAME`.
    pub name: String,
}

/// `config set`'s arguments.
#[derive(Debug, Clone, Args)]
pub struct SetArgs {
    /// The config value's name.
    pub name: String,
    /// The value, as JSON.
    pub value: String,
}

/// Runs a `config` subcommand; returns the exit code.
pub(crate) async fn run(connection: &Connection, command: &ConfigCommand) -> Result<u8, Error> {
    let name = match command {
        ConfigCommand::Get(args) | ConfigCommand::Watch(args) => &args.name,
        ConfigCommand::Set(args) => &args.name,
    };
    coord_core::keys::validate_name(&connection.namespace, name)?;
    // Checked before connecting: nothing is written for a bad value.
    let value = match command {
        ConfigCommand::Set(args) => Some(
            serde_json::from_str::<Value>(&args.value)
                .map_err(|e| Error::Usage(format!("the value is not JSON: {e}")))?,
        ),
        _ => None,
    };
    let client = connection.client().await?;
    match (command, value) {
        (ConfigCommand::Set(args), Some(value)) => {
            set(connection.output, &client, args, value).await
        }
        (ConfigCommand::Watch(args), _) => watch(connection.output, &client, args).await,
        (_, _) => get(connection, &client, name).await,
    }
}

fn config(client: &Client, name: &str) -> Result<Config<Value>, Error> {
    // The default marks "not set": `Snapshot::source` tells it from a stored `null`.
    Ok(Config::new(client, name, Value::Null)?)
}

async fn get(connection: &Connection, client: &Client, name: &str) -> Result<u8, Error> {
    let mut config = config(client, name)?;
    // The config's watch retries for ever; a one-shot read gives up like a request would.
    let after = connection.command_timeout;
    let snapshot = tokio::time::timeout(after, async {
        config.wait_ready().await.map(|snapshot| snapshot.clone())
    })
    .await
    .map_err(|_| coord_core::Error::Timeout {
        operation: "config get",
        after,
    })??;
    if let Some(error) = &snapshot.last_error {
        return Err(Error::ConfigUnusable {
            key: config.key().to_owned(),
            reason: crate::chain(error.as_ref()),
        });
    }
    if snapshot.source == Source::Default {
        return Err(Error::NotSet {
            key: config.key().to_owned(),
        });
    }
    match connection.output {
        Output::Human => output::line(&snapshot.value.to_string()),
        Output::Json => output::json(&snapshot_json(name, config.key(), &snapshot)),
    }
    Ok(crate::exit::OK)
}

async fn set(output: Output, client: &Client, args: &SetArgs, value: Value) -> Result<u8, Error> {
    let config = config(client, &args.name)?;
    let written = config.set(value).await?;
    match output {
        Output::Human => output::line(&format!(
            "{} = {} (revision {})",
            args.name, written.value, written.revision
        )),
        Output::Json => output::json(&json!({
            "name": args.name,
            "key": config.key(),
            "value": written.value,
            "revision": written.revision,
        })),
    }
    Ok(crate::exit::OK)
}

async fn watch(output: Output, client: &Client, args: &NameArgs) -> Result<u8, Error> {
    let mut signals = Signals::install()?;
    let mut config = config(client, &args.name)?;
    tokio::select! {
        ready = config.wait_ready() => { ready?; }
        _ = signals.recv() => return Ok(crate::exit::OK),
    }
    loop {
        let snapshot = config.borrow_and_update().clone();
        if let Some(error) = &snapshot.last_error {
            // A value that does not decode (the last good one stays), or a refused read.
            eprintln!(
                "coordctl: {}: {}",
                config.key(),
                crate::chain(error.as_ref())
            );
        }
        match output {
            Output::Human if snapshot.source == Source::Default => output::line("(not set)"),
            Output::Human => output::line(&snapshot.value.to_string()),
            Output::Json => output::json(&snapshot_json(&args.name, config.key(), &snapshot)),
        }
        tokio::select! {
            changed = config.changed() => changed?,
            _ = signals.recv() => return Ok(crate::exit::OK),
        }
    }
}

fn snapshot_json(name: &str, key: &str, snapshot: &Snapshot<Value>) -> Value {
    let set = snapshot.source == Source::Stored;
    json!({
        "name": name,
        "key": key,
        "set": set,
        "value": if set { snapshot.value.as_ref().clone() } else { Value::Null },
        "mod_revision": snapshot.mod_revision,
        "revision": snapshot.revision,
        "error": snapshot.last_error.as_ref().map(|e| crate::chain(e.as_ref())),
    })
}
