//! Scenarios `handoff-waited` and `handoff-fresh`: the graceful hand-off latency — from the moment
//! the leader starts its resign until the standby's campaign returns — with coord's Election and
//! with the etcd server's Campaign/Resign RPCs (Go's `concurrency.Election` inside etcd).
//!
//! Two candidates per variant, each with its own connection and session, take turns: the standby
//! campaigns; once its key is in etcd (seen by the harness's own prefix watch) the leader resigns;
//! the standby becomes the leader and the roles swap.
//!
//! - `handoff-waited`: the standby has queued [`WAITED`] before the resign — the usual case of a
//!   standby that waits for a long time. By then etcd has moved Go's waiter out of its unsynced
//!   watcher group.
//! - `handoff-fresh`: the leader resigns as soon as the standby's key exists (a rolling restart
//!   that stops the old leader right after the new instance queued). Go's waiter watches from its
//!   read revision and is still unsynced: its events wait for etcd's 100 ms loop.

use std::time::{Duration, Instant};

use coord_core::etcd_client::{
    ElectionClient, EventType, LeaderKey, ResignOptions, WatchOptions, WatchStream,
};
use coord_core::keys::lease_key;
use coord_core::{Client, Session};
use coord_leader::{Election, Leadership};

use crate::Bench;
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, order, percentile, rounded};

const WARM_UP: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_secs(60);
/// How long the standby has been queued before the resign, in `handoff-waited`.
const WAITED: Duration = Duration::from_millis(300);
/// Hand-offs slower than this waited for etcd's 100 ms unsynced-watcher loop (loopback round
/// trips are ~1 ms).
const SLOW_MS: f64 = 50.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standby {
    Waited,
    Fresh,
}

impl Standby {
    fn scenario(self) -> &'static str {
        match self {
            Standby::Waited => "handoff-waited",
            Standby::Fresh => "handoff-fresh",
        }
    }

    fn pause(self) -> Duration {
        match self {
            Standby::Waited => WAITED,
            Standby::Fresh => Duration::ZERO,
        }
    }
}

/// One candidate.
#[derive(Clone)]
enum Side {
    Coord(Election),
    Server {
        elections: Box<ElectionClient>,
        name: String,
        lease: i64,
        key: String,
    },
}

/// A candidate that leads.
enum Leading {
    Coord(Leadership),
    Server(Box<ElectionClient>, Box<LeaderKey>),
}

impl Side {
    fn key(&self) -> String {
        match self {
            Side::Coord(election) => election.key().to_owned(),
            Side::Server { key, .. } => key.clone(),
        }
    }

    async fn campaign(self) -> Leading {
        match self {
            Side::Coord(election) => {
                Leading::Coord(election.campaign("candidate").await.expect("campaign"))
            }
            Side::Server {
                mut elections,
                name,
                lease,
                ..
            } => {
                let won = elections
                    .campaign(name, "candidate", lease)
                    .await
                    .expect("Campaign");
                let leader = won
                    .leader()
                    .expect("Campaign returns the leader key")
                    .clone();
                Leading::Server(elections, Box::new(leader))
            }
        }
    }
}

impl Leading {
    async fn resign(self) {
        match self {
            Leading::Coord(leadership) => leadership.resign().await.expect("resign"),
            Leading::Server(mut elections, leader) => {
                elections
                    .resign(Some(ResignOptions::new().with_leader(*leader)))
                    .await
                    .expect("Resign");
            }
        }
    }
}

struct Variant {
    label: &'static str,
    sides: [Side; 2],
    sessions: Vec<Session>,
    /// The harness's watch on the election's prefix: tells when the standby's key exists.
    seen: WatchStream,
    leading: Option<(usize, Leading)>,
}

impl Variant {
    async fn new(bench: &Bench, namespace: &str, label: &'static str, coord: bool) -> Variant {
        let name = if coord { "coord" } else { "server" };
        let mut sides = Vec::new();
        let mut sessions = Vec::new();
        let mut watcher: Option<Client> = None;
        for _ in 0..2 {
            let client = bench.client(namespace).await;
            let session = Session::new(client.clone(), TTL).await.expect("session");
            sides.push(if coord {
                Side::Coord(Election::new(&session, name).expect("election"))
            } else {
                Side::Server {
                    elections: Box::new(client.etcd().election_client()),
                    name: client.key(name),
                    lease: session.lease_id().get(),
                    key: lease_key(client.namespace(), name, session.lease_id()),
                }
            });
            sessions.push(session);
            watcher.get_or_insert(client);
        }
        let watcher = watcher.expect("two clients");
        let seen = watcher
            .etcd()
            .watch_client()
            .watch(
                watcher.key(&format!("{name}/")),
                Some(WatchOptions::new().with_prefix()),
            )
            .await
            .expect("harness watch");
        let [first, second]: [Side; 2] = sides.try_into().ok().expect("two sides");
        let leading = first.clone().campaign().await;
        Variant {
            label,
            sides: [first, second],
            sessions,
            seen,
            leading: Some((0, leading)),
        }
    }

    /// One hand-off; returns its latency.
    async fn handoff(&mut self, pause: Duration) -> Duration {
        let (leader, leading) = self.leading.take().expect("someone leads");
        let standby = self.sides[1 - leader].clone();
        let key = standby.key();
        let campaign = tokio::spawn(standby.campaign());
        self.key_appears(&key).await;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let start = Instant::now();
        leading.resign().await;
        let next = campaign.await.expect("campaign task");
        let took = start.elapsed();
        self.leading = Some((1 - leader, next));
        took
    }

    async fn key_appears(&mut self, key: &str) {
        loop {
            let resp = self
                .seen
                .message()
                .await
                .expect("harness watch")
                .expect("harness watch ended");
            let put = resp.events().iter().any(|e| {
                e.event_type() == EventType::Put
                    && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
            });
            if put {
                return;
            }
        }
    }

    /// Hand-offs for `length`; returns their latencies in milliseconds.
    async fn round(&mut self, length: Duration, pause: Duration) -> Vec<f64> {
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < length {
            samples.push(self.handoff(pause).await.as_secs_f64() * 1000.0);
        }
        samples
    }

    async fn finish(mut self) {
        if let Some((_, leading)) = self.leading.take() {
            leading.resign().await;
        }
        for session in self.sessions {
            session.close().await.expect("close session");
        }
    }
}

pub(crate) async fn run(bench: &Bench, report: &mut Report, standby: Standby) {
    let scenario = standby.scenario();
    let plan = match standby {
        Standby::Waited => bench.plan(3.0, 4),
        Standby::Fresh => bench.plan(2.0, 4),
    };
    let namespace = coord_testkit::unique_namespace(scenario);
    let mut variants = vec![
        Variant::new(bench, &namespace, "coord Election", true).await,
        Variant::new(bench, &namespace, "server Campaign RPC", false).await,
    ];
    for variant in &mut variants {
        variant.round(WARM_UP, standby.pause()).await;
    }

    let mut p50 = vec![Tally::default(); variants.len()];
    let mut p99 = vec![Tally::default(); variants.len()];
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for r in 0..plan.rounds {
        for i in order(r, variants.len()) {
            let (samples, window) = bench
                .metered(variants[i].round(plan.round, standby.pause()))
                .await;
            p50[i].record(percentile(&samples, 50.0), samples.len() as u64, &window);
            p99[i].per_round.push(percentile(&samples, 99.0));
            all[i].extend(samples);
        }
    }

    for (tallies, what) in [(&p50, "p50"), (&p99, "p99")] {
        let (coord, server) = (&tallies[0], &tallies[1]);
        report.compare(
            &format!("{scenario}: hand-off {what} (resign → standby leads)"),
            format!("Campaign RPC {:.2} ms", server.median()),
            format!("{:.2} ms", coord.median()),
            Ratio::Time(coord.median_ratio_to(server)),
            Target::None,
        );
    }
    for (i, variant) in variants.iter().enumerate() {
        report.requests(
            &format!("{scenario}: {}", variant.label),
            p50[i].ops,
            p50[i].requests_per_op(),
            p50[i].mean_unsynced(),
        );
        println!(
            "  {:<20} per round p50 (ms): {:?}  p99 (ms): {:?}",
            variant.label,
            rounded(&p50[i].per_round),
            rounded(&p99[i].per_round)
        );
        let slow = all[i].iter().filter(|ms| **ms > SLOW_MS).count();
        report.note(format!(
            "{scenario}: {} — {} hand-offs, all rounds pooled: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {slow} ({:.1} %) over {SLOW_MS} ms",
            variant.label,
            all[i].len(),
            percentile(&all[i], 50.0),
            percentile(&all[i], 99.0),
            percentile(&all[i], 100.0),
            100.0 * slow as f64 / all[i].len().max(1) as f64,
        ));
    }
    for variant in variants {
        variant.finish().await;
    }
}
