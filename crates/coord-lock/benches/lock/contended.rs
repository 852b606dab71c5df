//! Scenario `mutex-contended`: 16 contenders, each with its own connection and session, taking one
//! lock in turn as fast as they can (lock, leave at once, unlock, again), with the coord Mutex and
//! with the etcd server's Lock RPC. Measures acquisitions per second and checks exclusion: a shared
//! counter of holders inside the critical section must never exceed one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coord_core::Session;
use coord_core::etcd_client::{LockClient, LockOptions};
use coord_lock::{Mutex, MutexGuard};

use crate::Bench;
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, order, rounded};

const SCENARIO: &str = "mutex-contended";
const CONTENDERS: usize = 16;
const WARM_UP: Duration = Duration::from_millis(500);
const TTL: Duration = Duration::from_secs(60);

/// One contender's handle on the lock.
#[derive(Clone)]
enum Contender {
    Coord(Mutex),
    Server {
        lock: Box<LockClient>,
        name: String,
        lease: i64,
    },
}

enum Held {
    Coord(MutexGuard),
    Server(Vec<u8>),
}

impl Contender {
    async fn lock(&mut self) -> Held {
        match self {
            Contender::Coord(mutex) => Held::Coord(mutex.lock().await.expect("lock")),
            Contender::Server { lock, name, lease } => {
                let options = LockOptions::new().with_lease(*lease);
                let held = lock.lock(name.clone(), Some(options)).await.expect("Lock");
                Held::Server(held.key().to_vec())
            }
        }
    }

    async fn unlock(&mut self, held: Held) {
        match (self, held) {
            (_, Held::Coord(guard)) => guard.unlock().await.expect("unlock"),
            (Contender::Server { lock, .. }, Held::Server(key)) => {
                lock.unlock(key).await.expect("Unlock");
            }
            (Contender::Coord(_), Held::Server(_)) => {
                unreachable!("a coord contender holds a guard")
            }
        }
    }
}

/// What one round measured.
#[derive(Debug, Default)]
struct Outcome {
    /// Acquisitions that happened before the deadline.
    in_window: u64,
    /// All acquisitions, including those of waiters served after the deadline.
    total: u64,
    /// Times a holder found another holder inside the critical section.
    overlaps: u64,
}

/// Every contender cycles until `length` has passed; waiters queued at the deadline still get
/// their turn (and count in the request totals, not in the rate).
async fn round(contenders: &[Contender], length: Duration) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let inside = Arc::new(AtomicU64::new(0));
    let overlaps = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + length;
    let tasks: Vec<_> = contenders
        .iter()
        .cloned()
        .map(|mut contender| {
            let (stop, inside, overlaps) = (stop.clone(), inside.clone(), overlaps.clone());
            tokio::spawn(async move {
                let (mut in_window, mut total) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let held = contender.lock().await;
                    let acquired_at = Instant::now();
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // Give an overlapping holder a chance to show up.
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    contender.unlock(held).await;
                    total += 1;
                    if acquired_at < deadline {
                        in_window += 1;
                    }
                }
                (in_window, total)
            })
        })
        .collect();
    tokio::time::sleep_until(deadline.into()).await;
    stop.store(true, Ordering::SeqCst);
    let mut outcome = Outcome::default();
    for task in tasks {
        let (in_window, total) = task.await.expect("contender task");
        outcome.in_window += in_window;
        outcome.total += total;
    }
    outcome.overlaps = overlaps.load(Ordering::SeqCst);
    outcome
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let plan = bench.plan(3.0, 4);
    let namespace = coord_testkit::unique_namespace("bench-contended");
    let mut sessions = Vec::new();
    let mut coord = Vec::new();
    let mut server = Vec::new();
    for _ in 0..CONTENDERS {
        let client = bench.client(&namespace).await;
        let session = Session::new(client.clone(), TTL).await.expect("session");
        coord.push(Contender::Coord(
            Mutex::new(&session, "contended").expect("mutex"),
        ));
        sessions.push(session);
        let session = Session::new(client.clone(), TTL).await.expect("session");
        server.push(Contender::Server {
            // On a plain etcd-client (its own channel and defaults), as without coord.
            lock: Box::new(bench.etcd_client().await.lock_client()),
            name: format!("{namespace}server-contended"),
            lease: session.lease_id().get(),
        });
        sessions.push(session);
    }
    let variants = [("coord Mutex", coord), ("server Lock RPC", server)];
    for (_, contenders) in &variants {
        round(contenders, WARM_UP).await;
    }

    let mut tallies = vec![Tally::default(); variants.len()];
    let mut overlaps = [0; 2];
    for r in 0..plan.rounds {
        for i in order(r, variants.len()) {
            let (outcome, window) = bench.metered(round(&variants[i].1, plan.round), true).await;
            let rate = outcome.in_window as f64 / plan.round.as_secs_f64();
            tallies[i].record(rate, outcome.total, &window);
            overlaps[i] += outcome.overlaps;
        }
    }

    let (coord, server) = (&tallies[0], &tallies[1]);
    report.compare(
        &format!("{SCENARIO}: {CONTENDERS} contenders, acquisitions/s"),
        format!("Lock RPC {:.0}/s", server.median()),
        format!("{:.0}/s", coord.median()),
        Ratio::Rate(coord.median_ratio_to(server)),
        Target::RateAtLeast(3.0),
    );
    report.check(
        &format!("{SCENARIO}: exclusion violations"),
        format!("Lock RPC {}", overlaps[1]),
        overlaps[0],
        Target::Zero,
    );
    // The interval at which one contender gets the lock: compare it with etcd's 100 ms loop that
    // catches up unsynced watchers.
    report.note(format!(
        "{SCENARIO}: each contender acquired once every {:.0} ms (coord) / {:.0} ms (Lock RPC)",
        1000.0 * CONTENDERS as f64 / coord.median(),
        1000.0 * CONTENDERS as f64 / server.median(),
    ));
    for ((label, _), tally) in variants.iter().zip(&tallies) {
        report.requests(
            &format!("{SCENARIO}: {label}"),
            tally.ops,
            tally.requests_per_op(),
            tally.mean_unsynced(),
        );
        println!(
            "  {label:<16} per round (acquisitions/s): {:?}",
            rounded(&tally.per_round)
        );
    }
    drop(variants);
    for session in sessions {
        session.close().await.expect("close session");
    }
}
