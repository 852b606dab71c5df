//! `demo`: a fleet rebooting through coord-reboot, on one machine.
//!
//! An embedded etcd (or the one `COORD_ENDPOINTS` names, in a namespace of its own), a FleetLock
//! server on a loopback port, and simulated nodes in two groups (`workers`: 2 slots, `db`: 1
//! slot). Each node is a real [`Agent`] with harmless commands: its reboot signal is a file that
//! appears at a random moment, its pre-reboot hook and "reboot" are short sleeps (the reboot
//! also removes the signal, as a real one clears `/run`), and when the reboot command returns a
//! fresh agent starts — the boot — which checks health (another sleep) and gives the slot back.
//!
//! The timeline is printed one event per line (readable in a terminal and in a log). The
//! concurrency is measured independently of the agents: a watch on the groups' keys in etcd
//! counts, revision by revision, the entries marked held. The summary states the highest count
//! per group against its limit; the exit code is 1 if a limit was exceeded, a node did not
//! finish, or a slot is left held.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coord_core::stream::{Event, Watcher};
use coord_core::{Client, ClientConfig};
use coord_reboot::agent::{Agent, AgentConfig, Outcome, Phase};
use coord_reboot::{Config, GroupName, Server};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::BoxError;

/// Options of `demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many simulated nodes (split about 5:3 between `workers` and `db`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=40))]
    nodes: u32,
    /// Everything 8 times faster (a few seconds instead of about 25).
    #[arg(long)]
    fast: bool,
}

/// The two groups and their limits.
const GROUPS: [(&str, u32); 2] = [("workers", 2), ("db", 1)];

/// Width of the final chart, in columns.
const CHART_WIDTH: usize = 60;

/// A simulated node's timing, in milliseconds at normal speed.
#[derive(Debug, Clone)]
struct NodePlan {
    id: String,
    group: &'static str,
    signal_after: u64,
    hook: u64,
    down: u64,
    health: u64,
}

/// A line of the live view.
#[derive(Debug)]
struct Line {
    node: String,
    text: String,
}

/// What the etcd watch has seen: held entries per group, the highest count per group, and for
/// the chart each node's holding intervals.
#[derive(Debug, Default, Clone)]
struct Seen {
    held: BTreeMap<String, BTreeSet<String>>,
    max: BTreeMap<String, usize>,
    spans: BTreeMap<String, Vec<(Duration, Option<Duration>)>>,
}

impl Seen {
    fn total_held(&self) -> usize {
        self.held.values().map(BTreeSet::len).sum()
    }

    fn occupancy(&self, slots: &BTreeMap<String, u32>) -> String {
        GROUPS
            .iter()
            .map(|(group, _)| {
                let held = self.held.get(*group);
                let ids: Vec<&str> = held
                    .map(|h| h.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "{group} [{}] {}/{}",
                    ids.join(" "),
                    ids.len(),
                    slots.get(*group).copied().unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join("  ")
    }
}

/// A random number source without a dependency: std's randomly keyed hasher.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        Dice(
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1,
        )
    }

    /// Uniform in `low..=high` (xorshift64).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low + 1)
    }
}

pub(crate) async fn run(args: DemoArgs) -> Result<ExitCode, BoxError> {
    let speed = if args.fast { 8 } else { 1 };
    let scaled = |ms: u64| Duration::from_millis(ms / speed);

    // etcd: the one named in the environment (in a fresh namespace), or our own.
    let endpoints = crate::operator::endpoints_from_env();
    let (embedded, endpoints, namespace) = if endpoints.is_empty() {
        println!("starting an embedded etcd…");
        let etcd = coord_testkit::Etcd::start().await?;
        let endpoints = etcd.endpoints();
        (Some(etcd), endpoints, String::new())
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let namespace = format!("coord-reboot-demo/{}-{nanos}/", std::process::id());
        (None, endpoints, namespace)
    };
    let client = ClientConfig::new(endpoints.clone())
        .with_namespace(&namespace)
        .connect()
        .await?;

    // The FleetLock server, its groups' slots written to etcd at start.
    let groups_toml: String = GROUPS
        .iter()
        .map(|(group, slots)| format!("[groups.{group}]\nslots = {slots}\n"))
        .collect();
    let config = Config::from_toml(&format!(
        "[etcd]\nendpoints = {endpoints:?}\nnamespace = {namespace:?}\n{groups_toml}"
    ))?;
    let server = Server::start_with_client(client.clone(), &config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/", listener.local_addr()?);
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.clone().serve(listener, async {
        let _ = server_stopped.await;
    }));

    let mut slots = BTreeMap::new();
    for (group, _) in GROUPS {
        slots.insert(
            group.to_owned(),
            server.groups().slots(&GroupName::new(group)?).await?,
        );
    }

    let plans = node_plans(args.nodes);
    println!(
        "etcd {}{}, FleetLock server {base}",
        endpoints.join(","),
        if namespace.is_empty() {
            String::new()
        } else {
            format!(" (namespace {namespace})")
        }
    );
    for (group, limit) in GROUPS {
        let members: Vec<&str> = plans
            .iter()
            .filter(|p| p.group == group)
            .map(|p| p.id.as_str())
            .collect();
        println!(
            "group {group}: {limit} slot(s), nodes {}",
            members.join(" ")
        );
    }
    println!();

    // The clock of the timeline starts with the nodes.
    let started = Instant::now();
    // The independent measurement: etcd's view of the holders.
    let (seen_tx, mut seen_rx) = watch::channel(Seen::default());
    let (lines_tx, mut lines_rx) = mpsc::unbounded_channel::<Line>();
    let measuring = tokio::spawn(measure(client.clone(), started, seen_tx, lines_tx.clone()));

    // The live view: one line per event, with the groups' occupancy as etcd has it.
    let printer_seen = seen_rx.clone();
    let printer_slots = slots.clone();
    let printing = tokio::spawn(async move {
        while let Some(line) = lines_rx.recv().await {
            let occupancy = printer_seen.borrow().occupancy(&printer_slots);
            println!(
                "{:>6.1}s  {:<5} {:<34} {occupancy}",
                started.elapsed().as_secs_f64(),
                line.node,
                line.text
            );
        }
    });

    let dir = demo_dir();
    std::fs::create_dir_all(&dir)?;
    let mut nodes = Vec::new();
    for plan in plans.clone() {
        let dir = dir.clone();
        let base = base.clone();
        let lines = lines_tx.clone();
        nodes.push(tokio::spawn(async move {
            simulate(&plan, &dir, &base, speed, lines).await
        }));
    }
    drop(lines_tx);

    let mut failures = Vec::new();
    for (node, plan) in nodes.into_iter().zip(&plans) {
        match node.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{}: {}", plan.id, crate::chain(e.as_ref()))),
            Err(e) => failures.push(format!("{}: {e}", plan.id)),
        }
    }
    // Every node is done: wait for etcd's view to show the last release (an event, bounded).
    let settled = matches!(
        tokio::time::timeout(
            scaled(10_000).max(Duration::from_secs(5)),
            seen_rx.wait_for(|seen| seen.total_held() == 0),
        )
        .await,
        Ok(Ok(_))
    );
    if !settled {
        failures.push("etcd still shows held slots".to_owned());
    }
    let elapsed = started.elapsed();
    measuring.abort();
    let seen = seen_rx.borrow().clone();
    let _ = printing.await;
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    print_chart(&plans, &seen, elapsed);
    println!();
    println!("summary (concurrency measured from etcd's holder keys, revision by revision):");
    let mut exceeded = false;
    for (group, _) in GROUPS {
        let max = seen.max.get(group).copied().unwrap_or(0);
        let limit = slots.get(group).copied().unwrap_or(0);
        let within = u32::try_from(max).is_ok_and(|m| m <= limit);
        exceeded |= !within;
        println!(
            "  group {group}: max {max} concurrent of {limit} slot(s): {}",
            if within { "ok" } else { "LIMIT EXCEEDED" }
        );
    }
    let done = plans.len() - failures.len();
    println!(
        "  {done} of {} nodes rebooted and released their slot in {:.1} s",
        plans.len(),
        elapsed.as_secs_f64()
    );
    for failure in &failures {
        println!("  failed: {failure}");
    }

    let _ = stop_server.send(());
    let _ = serving.await;
    let _ = server.groups().close().await;
    drop(embedded);
    Ok(if exceeded || !failures.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// About 5 in 8 nodes are workers, the rest db (at least one of each).
fn node_plans(nodes: u32) -> Vec<NodePlan> {
    let nodes = u64::from(nodes);
    let db = (nodes * 3 / 8).clamp(1, nodes - 1);
    let mut dice = Dice::new();
    (0..nodes)
        .map(|i| {
            let (group, number) = if i < nodes - db {
                ("workers", i + 1)
            } else {
                ("db", i - (nodes - db) + 1)
            };
            let prefix = if group == "workers" { "w" } else { "db" };
            NodePlan {
                id: format!("{prefix}{number}"),
                group,
                signal_after: dice.between(0, 4000),
                hook: dice.between(300, 800),
                down: dice.between(3000, 6000),
                health: dice.between(500, 1500),
            }
        })
        .collect()
}

fn demo_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::env::temp_dir().join(format!("coord-reboot-demo-{}-{nanos}", std::process::id()))
}

fn seconds(ms: u64, speed: u64) -> String {
    format!("{:.3}", (ms / speed) as f64 / 1000.0)
}

/// One node: the reboot signal appears, an agent takes a slot and "reboots", a fresh agent
/// boots and gives the slot back once healthy.
async fn simulate(
    plan: &NodePlan,
    dir: &Path,
    base: &str,
    speed: u64,
    lines: mpsc::UnboundedSender<Line>,
) -> Result<(), BoxError> {
    let say = {
        let node = plan.id.clone();
        move |text: String| {
            let _ = lines.send(Line {
                node: node.clone(),
                text,
            });
        }
    };
    let signal = dir.join(format!("{}.reboot-required", plan.id));
    let tick = (200 / speed).max(10);
    let config = AgentConfig::from_toml(&format!(
        "[agent]\nid = {id:?}\ngroup = {group:?}\nsignal_file = {signal:?}\n\
         check_interval = \"{tick}ms\"\nretry_min = \"{tick}ms\"\nretry_max = \"{max}ms\"\n\
         pre_reboot = \"sleep {hook}\"\nreboot = \"rm -f '{signal_path}' && sleep {down}\"\n\
         health = \"sleep {health}\"\nhealth_timeout = \"30s\"\n\
         [agent.fleetlock]\nurl = {base:?}\ntimeout = \"5s\"\n",
        id = plan.id,
        group = plan.group,
        signal = signal.display().to_string(),
        signal_path = signal.display(),
        max = (1000 / speed).max(50),
        hook = seconds(plan.hook, speed),
        down = seconds(plan.down, speed),
        health = seconds(plan.health, speed),
    ))?;

    // The update lands at some point: the reboot signal appears.
    let running = Agent::connect(&config).await?;
    let mut phases = running.subscribe();
    let watching = tokio::spawn({
        let say = say.clone();
        let down = seconds(plan.down, speed);
        async move {
            let mut waiting_said = false;
            while phases.changed().await.is_ok() {
                let phase = *phases.borrow_and_update();
                match phase {
                    Phase::WaitingForSlot { refusals } if refusals > 0 && !waiting_said => {
                        waiting_said = true;
                        say("waits: group full".to_owned());
                    }
                    Phase::PreReboot => say("pre-reboot hook (drain)".to_owned()),
                    Phase::Rebooting => say(format!("reboots (down {down} s)")),
                    Phase::Stopped => break,
                    _ => {}
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(plan.signal_after / speed)).await;
    std::fs::write(&signal, b"")?;
    say("needs a reboot".to_owned());
    let outcome = running.run().await?;
    let _ = watching.await;
    if outcome != Outcome::Rebooted {
        return Err(format!("the agent ended with {outcome:?}").into());
    }

    // The boot: a fresh agent, which finds the slot and gives it back once healthy.
    say(format!(
        "boots; health check ({} s)",
        seconds(plan.health, speed)
    ));
    let booted = Agent::connect(&config).await?;
    match booted.boot().await? {
        Outcome::Booted => Ok(()),
        other => Err(format!("the boot ended with {other:?}").into()),
    }
}

/// Follows the groups' keys in etcd and keeps [`Seen`] up to date; announces every grant and
/// release on the live view.
async fn measure(
    client: Client,
    started: Instant,
    seen: watch::Sender<Seen>,
    lines: mpsc::UnboundedSender<Line>,
) -> Result<(), coord_core::Error> {
    let prefix = client.key(coord_reboot::GROUP_PREFIX);
    let mut watcher = Watcher::prefix(&client, prefix.clone());
    // Held entries by key: (group, id).
    let mut held: BTreeMap<Vec<u8>, (String, String)> = BTreeMap::new();
    let mut revision = 0;
    loop {
        let event = watcher.next().await?;
        // A new revision: the previous one is complete, measure it.
        if event.revision() != revision {
            record(&seen, &held);
            revision = event.revision();
        }
        let mut changes = Vec::new();
        match event {
            Event::Put { entry } => changes.push((
                entry.key.clone(),
                held_entry(&prefix, &entry.key, &entry.value),
            )),
            Event::Delete { key, .. } => changes.push((key, None)),
            Event::Resync { puts, deletes, .. } => {
                for entry in puts {
                    changes.push((
                        entry.key.clone(),
                        held_entry(&prefix, &entry.key, &entry.value),
                    ));
                }
                changes.extend(deletes.into_iter().map(|key| (key, None)));
            }
            _ => {}
        }
        for (key, entry) in changes {
            let at = started.elapsed();
            match entry {
                Some((group, id)) => {
                    if held.insert(key, (group.clone(), id.clone())).is_none() {
                        seen.send_modify(|s| {
                            s.held.entry(group.clone()).or_default().insert(id.clone());
                            s.spans.entry(id.clone()).or_default().push((at, None));
                        });
                        let _ = lines.send(Line {
                            node: id,
                            text: format!("takes a slot of {group}"),
                        });
                    }
                }
                None => {
                    if let Some((group, id)) = held.remove(&key) {
                        seen.send_modify(|s| {
                            if let Some(ids) = s.held.get_mut(&group) {
                                ids.remove(&id);
                            }
                            if let Some(span) = s.spans.get_mut(&id).and_then(|v| v.last_mut()) {
                                span.1 = Some(at);
                            }
                        });
                        let _ = lines.send(Line {
                            node: id,
                            text: format!("released its slot of {group}"),
                        });
                    }
                }
            }
        }
        // Nothing more of this revision buffered: measure now, for the live view.
        if watcher.buffered() == 0 {
            record(&seen, &held);
        }
    }
}

/// Updates the per-group maximum from the held entries of a complete revision.
fn record(seen: &watch::Sender<Seen>, held: &BTreeMap<Vec<u8>, (String, String)>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (group, _) in held.values() {
        *counts.entry(group.as_str()).or_default() += 1;
    }
    seen.send_if_modified(|s| {
        let mut changed = false;
        for (group, count) in &counts {
            let max = s.max.entry((*group).to_owned()).or_default();
            if *count > *max {
                *max = *count;
                changed = true;
            }
        }
        changed
    });
}

/// `(group, id)` when `key` is a durable holder entry of a group (`reboot/<group>/id-<id>`)
/// whose record says it is held.
fn held_entry(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, String)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    let (group, entry) = rest.split_once('/')?;
    let id = entry.strip_prefix("id-")?;
    let record: serde_json::Value = serde_json::from_slice(value).ok()?;
    record
        .get("held")
        .and_then(serde_json::Value::as_bool)
        .filter(|held| *held)
        .map(|_| (group.to_owned(), id.to_owned()))
}

/// Each node's time holding a slot (`#`), and per group the most holders at once in each column.
fn print_chart(plans: &[NodePlan], seen: &Seen, elapsed: Duration) {
    const SAMPLES: usize = 16;
    let total = elapsed.as_secs_f64().max(0.001);
    let width = total / CHART_WIDTH as f64;
    let column =
        |at: Duration| -> usize { ((at.as_secs_f64() / width) as usize).min(CHART_WIDTH - 1) };
    let spans = |id: &str| -> Vec<(f64, f64)> {
        seen.spans
            .get(id)
            .into_iter()
            .flatten()
            .map(|(from, to)| (from.as_secs_f64(), to.unwrap_or(elapsed).as_secs_f64()))
            .collect()
    };
    println!(
        "slots held over time (one column = {width:.2} s; '#' holds a slot; digits: most holders at once):"
    );
    for (group, _) in GROUPS {
        let members: Vec<&NodePlan> = plans.iter().filter(|p| p.group == group).collect();
        for plan in &members {
            let mut row = vec!['.'; CHART_WIDTH];
            for (from, to) in seen.spans.get(&plan.id).into_iter().flatten() {
                let (first, last) = (column(*from), column(to.unwrap_or(elapsed)));
                for cell in row.iter_mut().take(last + 1).skip(first) {
                    *cell = '#';
                }
            }
            println!("  {:<5} {}", plan.id, row.into_iter().collect::<String>());
        }
        let all: Vec<(f64, f64)> = members.iter().flat_map(|p| spans(&p.id)).collect();
        let digits: String = (0..CHART_WIDTH)
            .map(|i| {
                let most = (0..SAMPLES)
                    .map(|k| {
                        let t = (i as f64 + k as f64 / SAMPLES as f64) * width;
                        all.iter()
                            .filter(|(from, to)| *from <= t && t < *to)
                            .count()
                    })
                    .max()
                    .unwrap_or(0);
                match most {
                    0 => '.',
                    n => char::from_digit(u32::try_from(n.min(9)).unwrap_or(9), 10).unwrap_or('+'),
                }
            })
            .collect();
        println!("  {:<5} {digits}  {group}", "");
    }
}
