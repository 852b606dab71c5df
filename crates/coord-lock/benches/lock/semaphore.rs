//! Scenario `semaphore`: limit 10, 200 contenders, each with its own connection (and, for coord,
//! its own session), taking a permit and giving it back at once, again and again — the coord
//! Semaphore against the JSON-key CAS semaphores of [`crate::cas_semaphore`]: airlock's requests
//! (the target's baseline) and a leaner CAS without airlock's init transaction.
//!
//! Besides the rate it checks what a semaphore must never do: more than 10 holders at once (a
//! shared counter of permits held), and lost wake-ups — a waiter that is never woken shows up as a
//! wait far longer than everybody else's (more than 10× the round's median wait, counting the
//! waits still running at the deadline), or as a contender that never acquires at all.
//! Waiters still waiting at the deadline abandon their wait (coord's `acquire` is cancel safe; the
//! CAS baseline stops only between requests).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use coord_core::Session;
use coord_core::etcd_client::{Client as EtcdClient, Compare, CompareOp, Txn, TxnOp};
use coord_lock::{Limit, Permit, Semaphore};
use tokio::sync::watch;

use crate::Bench;
use crate::cas_semaphore::{CasSemaphore, Flavour};
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, median, order, rounded};

const SCENARIO: &str = "semaphore";
const CONTENDERS: usize = 200;
const LIMIT: usize = 10;
/// A wait longer than this many median waits counts as a lost wake-up.
const STUCK_FACTOR: f64 = 10.0;
const WARM_UP: Duration = Duration::from_secs(1);
const TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
enum Contender {
    Cas(Box<CasSemaphore>),
    Coord(Semaphore),
    /// No exclusion at all: a put-if-absent of the contender's own key and its delete — the two
    /// writes any one-key-per-holder semaphore makes per acquisition, without any waiting. An
    /// upper bound for this machine, not a semaphore.
    Ceiling(Box<(EtcdClient, String)>),
}

enum Held {
    Cas,
    Coord(Permit),
    Ceiling,
}

impl Contender {
    /// A permit, or `None` once `stop` is set.
    async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> Option<Held> {
        match self {
            Contender::Cas(semaphore) => semaphore.acquire(stop).await.then_some(Held::Cas),
            Contender::Coord(semaphore) => tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => None,
                permit = semaphore.acquire() => Some(Held::Coord(permit.expect("acquire"))),
            },
            Contender::Ceiling(own) => {
                if *stop.borrow() {
                    return None;
                }
                let (client, key) = &mut **own;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), "held", None)]);
                let created = client.txn(txn).await.expect("create txn").succeeded();
                assert!(created, "a ceiling contender's key was left behind");
                Some(Held::Ceiling)
            }
        }
    }

    async fn release(&mut self, held: Held) {
        match (self, held) {
            (Contender::Cas(semaphore), Held::Cas) => semaphore.release().await,
            (_, Held::Coord(permit)) => permit.release().await.expect("release"),
            (Contender::Ceiling(own), Held::Ceiling) => {
                let (client, key) = &mut **own;
                client.delete(key.clone(), None).await.expect("delete");
            }
            (_, Held::Cas | Held::Ceiling) => unreachable!("mismatched contender and permit"),
        }
    }
}

/// What one contender saw in one round.
#[derive(Debug, Default)]
struct Seen {
    in_window: u64,
    total: u64,
    /// Completed waits, in milliseconds.
    waits: Vec<f64>,
    /// The wait still running at the deadline, in milliseconds.
    abandoned: Option<f64>,
}

impl Seen {
    fn longest_wait(&self) -> f64 {
        self.waits
            .iter()
            .copied()
            .chain(self.abandoned)
            .fold(0.0, f64::max)
    }
}

#[derive(Debug)]
struct Outcome {
    seen: Vec<Seen>,
    over_limit: u64,
    most_held: usize,
}

async fn round(contenders: &[Contender], length: Duration) -> Outcome {
    let (stop_tx, stop_rx) = watch::channel(false);
    let held_now = Arc::new(AtomicUsize::new(0));
    let most_held = Arc::new(AtomicUsize::new(0));
    let over_limit = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let tasks: Vec<_> = contenders
        .iter()
        .cloned()
        .map(|mut contender| {
            let mut stop = stop_rx.clone();
            let (held_now, most_held, over_limit) =
                (held_now.clone(), most_held.clone(), over_limit.clone());
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while !*stop.borrow() {
                    let asked = Instant::now();
                    let Some(held) = contender.acquire(&mut stop).await else {
                        seen.abandoned = Some(asked.elapsed().as_secs_f64() * 1000.0);
                        break;
                    };
                    let acquired_at = Instant::now();
                    let holders = held_now.fetch_add(1, Ordering::SeqCst) + 1;
                    most_held.fetch_max(holders, Ordering::SeqCst);
                    if holders > LIMIT {
                        over_limit.fetch_add(1, Ordering::SeqCst);
                    }
                    // Give an excess holder a chance to show up.
                    tokio::task::yield_now().await;
                    held_now.fetch_sub(1, Ordering::SeqCst);
                    contender.release(held).await;
                    seen.waits
                        .push((acquired_at - asked).as_secs_f64() * 1000.0);
                    seen.total += 1;
                    if acquired_at < deadline {
                        seen.in_window += 1;
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep_until(deadline.into()).await;
    stop_tx.send_replace(true);
    let mut seen = Vec::with_capacity(tasks.len());
    for task in tasks {
        seen.push(task.await.expect("contender task"));
    }
    Outcome {
        seen,
        over_limit: over_limit.load(Ordering::SeqCst),
        most_held: most_held.load(Ordering::SeqCst),
    }
}

/// Everything one variant saw over all its rounds, beyond the rate.
#[derive(Debug, Default)]
struct Health {
    acquisitions: Vec<u64>,
    stuck: BTreeSet<usize>,
    worst_over_median: f64,
    over_limit: u64,
    most_held: usize,
    waits: Vec<f64>,
}

impl Health {
    fn new() -> Health {
        Health {
            acquisitions: vec![0; CONTENDERS],
            ..Health::default()
        }
    }

    fn add(&mut self, outcome: &Outcome) {
        let waits: Vec<f64> = outcome.seen.iter().flat_map(|s| s.waits.clone()).collect();
        // With no completed wait at all in the round, nobody was ever woken: every waiter is stuck.
        let median_wait = median(&waits);
        for (i, seen) in outcome.seen.iter().enumerate() {
            self.acquisitions[i] += seen.total;
            let longest = seen.longest_wait();
            if waits.is_empty() {
                self.stuck.insert(i);
                self.worst_over_median = f64::INFINITY;
            } else if median_wait > 0.0 {
                self.worst_over_median = self.worst_over_median.max(longest / median_wait);
                if longest > STUCK_FACTOR * median_wait {
                    self.stuck.insert(i);
                }
            }
        }
        self.over_limit += outcome.over_limit;
        self.most_held = self.most_held.max(outcome.most_held);
        self.waits.extend(waits);
    }

    fn never_acquired(&self) -> u64 {
        self.acquisitions.iter().filter(|n| **n == 0).count() as u64
    }

    fn wait_percentile(&self, p: f64) -> f64 {
        let mut waits = self.waits.clone();
        waits.sort_by(f64::total_cmp);
        if waits.is_empty() {
            return f64::NAN;
        }
        let rank = ((waits.len() - 1) as f64 * p).round() as usize;
        waits[rank]
    }
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let plan = bench.plan(4.0, 4);
    let namespace = coord_testkit::unique_namespace("bench-semaphore");
    let flavours = [
        (Flavour::Airlock, format!("{namespace}airlock-semaphore")),
        (Flavour::Lean, format!("{namespace}lean-cas-semaphore")),
    ];
    let conflicts = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let mut sessions = Vec::new();
    let mut cas = [Vec::new(), Vec::new()];
    let mut coord = Vec::new();
    let mut ceiling = Vec::new();
    for i in 0..CONTENDERS {
        let client = bench.client(&namespace).await;
        // The baselines on a plain etcd-client (etcd-client's own channel and defaults), as an
        // application without coord would run them.
        let raw = bench.etcd_client().await;
        for (f, (flavour, key)) in flavours.iter().enumerate() {
            if i == 0 {
                CasSemaphore::create(&raw, key, LIMIT).await;
            }
            cas[f].push(Contender::Cas(Box::new(CasSemaphore::new(
                raw.clone(),
                key,
                format!("contender-{i}"),
                LIMIT,
                *flavour,
                conflicts[f].clone(),
            ))));
        }
        ceiling.push(Contender::Ceiling(Box::new((
            raw.clone(),
            format!("{namespace}ceiling/{i}"),
        ))));
        let session = Session::new(client, TTL).await.expect("session");
        let limit = Limit::Fixed(LIMIT as u32);
        coord.push(Contender::Coord(
            Semaphore::new(&session, "semaphore", limit).expect("semaphore"),
        ));
        sessions.push(session);
    }
    let [airlock, lean] = cas;
    let variants = [
        ("airlock CAS semaphore", airlock),
        ("lean CAS semaphore", lean),
        ("coord Semaphore", coord),
        ("no-exclusion ceiling", ceiling),
    ];
    for (_, contenders) in &variants {
        round(contenders, WARM_UP).await;
    }
    for counter in &conflicts {
        counter.store(0, Ordering::SeqCst);
    }

    let mut tallies = vec![Tally::default(); variants.len()];
    let mut health: Vec<Health> = variants.iter().map(|_| Health::new()).collect();
    let mut cas_left = 0;
    for r in 0..plan.rounds {
        for i in order(r, variants.len()) {
            let (outcome, window) = bench.metered(round(&variants[i].1, plan.round), true).await;
            let in_window: u64 = outcome.seen.iter().map(|s| s.in_window).sum();
            let total: u64 = outcome.seen.iter().map(|s| s.total).sum();
            tallies[i].record(in_window as f64 / plan.round.as_secs_f64(), total, &window);
            health[i].add(&outcome);
            if let Contender::Cas(semaphore) = &variants[i].1[0] {
                cas_left += semaphore.clone().holders().await.len();
            }
        }
    }
    let (airlock, lean, coord, ceiling) = (&tallies[0], &tallies[1], &tallies[2], &tallies[3]);
    let (airlock_health, coord_health) = (&health[0], &health[2]);
    report.compare(
        &format!("{SCENARIO}: limit {LIMIT}, {CONTENDERS} contenders, acquisitions/s"),
        format!("airlock CAS {:.1}/s", airlock.median()),
        format!("{:.1}/s", coord.median()),
        Ratio::Rate(coord.median_ratio_to(airlock)),
        Target::RateAtLeast(20.0),
    );
    report.compare(
        &format!("{SCENARIO}: coord vs a lean CAS (airlock's without its init txn)"),
        format!("lean CAS {:.1}/s", lean.median()),
        format!("{:.1}/s", coord.median()),
        Ratio::Rate(coord.median_ratio_to(lean)),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: coord vs the no-exclusion ceiling (2 writes, no waiting)"),
        format!("ceiling {:.1}/s", ceiling.median()),
        format!("{:.1}/s", coord.median()),
        Ratio::Rate(coord.median_ratio_to(ceiling)),
        Target::None,
    );
    report.check(
        &format!("{SCENARIO}: holders over the limit"),
        format!("airlock CAS {}", airlock_health.over_limit),
        coord_health.over_limit,
        Target::Zero,
    );
    report.check(
        &format!("{SCENARIO}: contenders with a wait > {STUCK_FACTOR}× the median (lost wake-ups)"),
        format!("airlock CAS {}", airlock_health.stuck.len()),
        coord_health.stuck.len() as u64,
        Target::Zero,
    );
    report.check(
        &format!("{SCENARIO}: contenders that never acquired"),
        format!("airlock CAS {}", airlock_health.never_acquired()),
        coord_health.never_acquired(),
        Target::Zero,
    );
    let cas_seconds = plan.round.as_secs_f64() * plan.rounds as f64;
    for ((label, _), (counter, tally)) in variants.iter().zip(conflicts.iter().zip(&tallies)) {
        let conflicts = counter.load(Ordering::SeqCst);
        report.note(format!(
            "semaphore, {label}: {conflicts} CAS conflicts in {cas_seconds:.0} s ({:.1} per \
             acquisition)",
            conflicts as f64 / tally.ops.max(1) as f64
        ));
    }
    report.note(format!(
        "semaphore: {cas_left} ids were left in the CAS semaphores' keys after their rounds (must \
         be 0)"
    ));
    for ((label, _), (tally, health)) in variants.iter().zip(tallies.iter().zip(&health)) {
        report.requests(
            &format!("{SCENARIO}: {label}"),
            tally.ops,
            tally.requests_per_op(),
            tally.mean_unsynced(),
        );
        report.note(format!(
            "semaphore, {label}: wait p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; longest wait of a \
             contender = {:.1}× the round's median; most holders at once {}; acquisitions per \
             contender min {} / max {}",
            health.wait_percentile(0.5),
            health.wait_percentile(0.99),
            health.wait_percentile(1.0),
            health.worst_over_median,
            health.most_held,
            health.acquisitions.iter().min().copied().unwrap_or(0),
            health.acquisitions.iter().max().copied().unwrap_or(0),
        ));
        println!(
            "  {label:<20} per round (acquisitions/s): {:?}",
            rounded(&tally.per_round)
        );
    }
    drop(variants);
    for session in sessions {
        session.close().await.expect("close session");
    }
}
