//! `coordctl services list|watch SERVICE`: coord-discovery's `Discovery` over the service
//! registry (Go's `naming/endpoints` format, so Go-registered instances show up too).

use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use coord_core::Client;
use coord_discovery::service::{Change, Discovery, Endpoint, Origin, ServiceSet, Status};
use serde_json::{Value, json};

use crate::output::{self, Output};
use crate::signals::Signals;
use crate::{Connection, Error};

/// The `services` subcommands.
#[derive(Debug, Clone, Subcommand)]
#[non_exhaustive]
pub enum ServicesCommand {
    /// List SERVICE's instances: id, address, status, zone, weight, version (JSON: also the
    /// metadata, lease and revisions). Unusable entries are reported on stderr.
    List(ServiceArgs),
    /// Print SERVICE's instances as insertions, then every change (`+` insert, `~` update, `-`
    /// remove; JSON: one object per line) until SIGINT or SIGTERM.
    Watch(ServiceArgs),
}

/// The arguments of `services list` and `services watch`.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// The service's name (under `--namespace`): instances are `SERVICE/<id>`.
    pub service: String,
    /// Only instances with one of these statuses (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub status: Vec<StatusArg>,
}

/// An instance status, for `--status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    /// Registered, not ready yet.
    Starting,
    /// Serving.
    Healthy,
    /// Finishing its work before leaving.
    Draining,
    /// Alive but failing its health checks.
    Unhealthy,
}

impl From<StatusArg> for Status {
    fn from(status: StatusArg) -> Status {
        match status {
            StatusArg::Starting => Status::Starting,
            StatusArg::Healthy => Status::Healthy,
            StatusArg::Draining => Status::Draining,
            StatusArg::Unhealthy => Status::Unhealthy,
        }
    }
}

/// Runs a `services` subcommand; returns the exit code.
pub(crate) async fn run(connection: &Connection, command: &ServicesCommand) -> Result<u8, Error> {
    let client = connection.client().await?;
    match command {
        ServicesCommand::List(args) => list(connection, &client, args).await,
        ServicesCommand::Watch(args) => watch(connection.output, &client, args).await,
    }
}

fn discovery(client: &Client, args: &ServiceArgs) -> Result<Discovery<Value>, Error> {
    let mut builder = Discovery::<Value>::builder(client, &args.service);
    if !args.status.is_empty() {
        builder = builder.statuses(args.status.iter().copied().map(Status::from));
    }
    Ok(builder.start()?)
}

async fn list(connection: &Connection, client: &Client, args: &ServiceArgs) -> Result<u8, Error> {
    let mut discovery = discovery(client, args)?;
    // The discovery retries for ever; a one-shot listing gives up like a request would.
    let after = connection.command_timeout;
    let set = tokio::time::timeout(after, discovery.wait_ready())
        .await
        .map_err(|_| coord_core::Error::Timeout {
            operation: "services list",
            after,
        })??;
    report_malformed(&set);
    match connection.output {
        Output::Json => output::json(&json!({
            "service": args.service,
            "revision": set.revision,
            "instances": set.iter().map(endpoint_json).collect::<Vec<_>>(),
            "malformed": set.malformed.iter().map(|m| json!({
                "key": m.key, "mod_revision": m.mod_revision, "reason": m.reason,
            })).collect::<Vec<_>>(),
        })),
        Output::Human => {
            output::line(&format!(
                "service {}: {} instance(s)",
                args.service,
                set.len()
            ));
            if !set.is_empty() {
                let rows: Vec<Vec<String>> = set
                    .iter()
                    .map(|e| {
                        vec![
                            e.id.clone(),
                            e.addr.clone(),
                            e.status.to_string(),
                            e.zone.clone().unwrap_or_else(|| "-".to_owned()),
                            e.weight.map_or_else(|| "-".to_owned(), |w| w.to_string()),
                            e.version.clone().unwrap_or_else(|| "-".to_owned()),
                        ]
                    })
                    .collect();
                let header = ["ID", "ADDR", "STATUS", "ZONE", "WEIGHT", "VERSION"];
                for line in output::table(&header, &rows) {
                    output::line(&format!("  {line}"));
                }
            }
        }
    }
    Ok(crate::exit::OK)
}

async fn watch(output: Output, client: &Client, args: &ServiceArgs) -> Result<u8, Error> {
    let mut signals = Signals::install()?;
    let mut discovery = discovery(client, args)?;
    // A service etcd refuses to let us read fails here, instead of printing nothing for ever.
    tokio::select! {
        ready = discovery.wait_ready() => {
            let set: Arc<ServiceSet<Value>> = ready?;
            report_malformed(&set);
        }
        _ = signals.recv() => return Ok(crate::exit::OK),
    }
    let mut changes = discovery.changes();
    loop {
        let change = tokio::select! {
            change = changes.next() => change?,
            _ = signals.recv() => return Ok(crate::exit::OK),
        };
        let (kind, sign, endpoint) = match &change {
            Change::Insert(e) => ("insert", '+', e),
            Change::Update { new, .. } => ("update", '~', new),
            Change::Remove(e) => ("remove", '-', e),
            _ => continue,
        };
        match output {
            Output::Human => output::line(&format!(
                "{sign} {} {} {}",
                endpoint.id, endpoint.addr, endpoint.status
            )),
            Output::Json => output::json(&json!({
                "service": args.service,
                "change": kind,
                "instance": endpoint_json(endpoint),
            })),
        }
    }
}

fn report_malformed(set: &ServiceSet<Value>) {
    for entry in &set.malformed {
        eprintln!("coordctl: {entry}");
    }
}

fn endpoint_json(endpoint: &Arc<Endpoint<Value>>) -> Value {
    let origin = match endpoint.origin {
        Origin::Coord => "coord",
        Origin::Foreign => "foreign",
        _ => "other",
    };
    json!({
        "id": endpoint.id,
        "key": endpoint.key,
        "addr": endpoint.addr,
        "origin": origin,
        "status": endpoint.status.as_str(),
        "zone": endpoint.zone,
        "weight": endpoint.weight,
        "version": endpoint.version,
        "metadata": endpoint.metadata.clone().or_else(|| endpoint.raw_metadata.clone()),
        "lease": endpoint.lease.to_string(),
        "create_revision": endpoint.create_revision,
        "mod_revision": endpoint.mod_revision,
    })
}
