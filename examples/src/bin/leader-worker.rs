//! leader-worker: one member of a group of workers of which exactly one does the work — the leader.
//!
//! Each worker runs `coord_leader::Runner`: it campaigns for the election `leader-worker`; while it
//! leads, it writes a heartbeat to `coord-examples/heartbeats/leader-worker` every second, each write
//! fenced with the term's `owns()` compare, so a worker that lost its leadership (paused, cut off)
//! can never overwrite its successor's heartbeats. On SIGTERM or Ctrl-C it stops the work, resigns,
//! and a standby takes over at once.
//!
//! ```text
//! export COORD_ENDPOINTS=http://127.0.0.1:2379        # or ETCDCTL_ENDPOINTS
//! cargo run -p coord-examples --bin leader-worker -- --id a &
//! cargo run -p coord-examples --bin leader-worker -- --id b &
//! kill -TERM %1      # b leads within a round trip
//! kill -KILL %2      # (after restarting a) a leads once b's lease expires: the TTL
//! ```
//!
//! Without `COORD_ENDPOINTS`/`ETCDCTL_ENDPOINTS` it starts an embedded etcd (only this process
//! can reach it). Options: `--id NAME` (default: host name and pid), `--ttl SECONDS` (default 10),
//! `--for SECONDS` (shut down by itself after that long).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::{ClientConfig, Session};
use coord_leader::{CancellationToken, Role, Runner, Term};

const NAMESPACE: &str = "coord-examples/";
const ELECTION: &str = "leader-worker";

#[derive(Debug)]
struct Options {
    id: String,
    ttl: Duration,
    run_for: Option<Duration>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        id: default_id(),
        ttl: Duration::from_secs(10),
        run_for: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} needs {what}"));
        match arg.as_str() {
            "--id" => options.id = value("a name")?,
            "--ttl" => options.ttl = Duration::from_secs(value("seconds")?.parse()?),
            "--for" => options.run_for = Some(Duration::from_secs(value("seconds")?.parse()?)),
            other => anyhow::bail!("unknown argument {other:?} (try --id, --ttl, --for)"),
        }
    }
    Ok(options)
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    coord_examples::init_tracing();
    let options = options()?;

    // Keep the embedded server alive until the end of main; it is killed when dropped.
    let (_embedded, endpoints) = coord_examples::etcd_from_env_or_embedded().await?;
    let client = ClientConfig::new(endpoints.clone())
        .with_namespace(NAMESPACE)
        .connect()
        .await?;
    let info = client.check().await.context("reaching etcd")?;
    println!(
        "{}: etcd {} at {endpoints:?}, election {NAMESPACE}{ELECTION}, session TTL {:?}",
        options.id, info.version, options.ttl
    );

    let sessions = Session::builder(client.clone()).ttl(options.ttl);
    let runner = Runner::builder(sessions, ELECTION, options.id.clone())
        .shutdown_grace(Duration::from_secs(5))
        .build()?;
    let health = runner.health();
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone(), options.run_for));
    tokio::spawn(report(health.clone(), options.id.clone()));

    // Outside the election's prefix (`leader-worker/`): every key under it counts as a candidate.
    let heartbeat = client.key(&format!("heartbeats/{ELECTION}"));
    let id = options.id.clone();
    runner
        .run(shutdown, move |term: Term| {
            work(term, heartbeat.clone(), id.clone())
        })
        .await?;

    let status = health.status();
    println!(
        "{}: stopped after {} term(s) won, {} lost, {} resigned",
        options.id, status.terms_won, status.losses, status.resignations
    );
    Ok(())
}

/// The leader's work: a fenced heartbeat every second until the term ends.
async fn work(term: Term, heartbeat: String, id: String) {
    println!(
        "{id}: leading — term {}, fencing token {}",
        term.number(),
        term.token()
    );
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = term.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let beat = format!(
            "{id} term={} token={} at_ms={now}",
            term.number(),
            term.token()
        );
        let write =
            Txn::new()
                .when([term.owns()])
                .and_then([TxnOp::put(heartbeat.clone(), beat, None)]);
        match term.client().txn(write).await {
            Ok(resp) if resp.succeeded() => {}
            Ok(_) => {
                // The fence held: someone else leads now. The runner cancels this term shortly.
                println!("{id}: heartbeat refused by the fence — no longer leader");
                term.cancelled().await;
                break;
            }
            Err(error) => println!("{id}: heartbeat failed ({error}); retrying"),
        }
    }
    println!("{id}: term {} over; work stopped", term.number());
}

/// Prints every change of role.
async fn report(health: coord_leader::Health, id: String) {
    let mut status = health.subscribe();
    let mut last = None;
    loop {
        let role = status.borrow_and_update().role;
        if last != Some(role) {
            let leader = health
                .leader()
                .and_then(|l| l.value_str().map(str::to_owned))
                .unwrap_or_else(|| "nobody".to_owned());
            match role {
                Role::Campaigning => println!("{id}: standing by (leader: {leader})"),
                Role::Starting => println!("{id}: starting a session"),
                Role::Stopping => {
                    println!("{id}: shutting down: stopping the work, then resigning")
                }
                _ => {}
            }
            last = Some(role);
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

/// Cancels `shutdown` on SIGTERM, Ctrl-C, or after `run_for`.
async fn cancel_on_signal(shutdown: CancellationToken, run_for: Option<Duration>) {
    let timer = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut sigterm) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            sigterm.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C"),
        () = terminate => println!("SIGTERM"),
        () = timer => println!("--for elapsed"),
    }
    shutdown.cancel();
}
