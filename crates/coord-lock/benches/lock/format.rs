//! Scenario `semaphore-format`: a projection for a wire-format decision, not a semaphore.
//!
//! After the hand-off the semaphore is CPU-bound, and much of etcd's share goes to the two reads
//! in create-revision order that each acquisition makes (the enqueue read and the hand-off read):
//! etcd answers a range sorted by create revision by reading every key of the range first, so
//! with 200 queued keys each costs 200 key reads. A queue whose key order is its order
//! (docs/design/semaphore.md §7) would make bounded reads instead: a count of the keys before its
//! own (index only), a two-key window before it for the predecessor, and the first `limit + 1`
//! keys in key order for the hand-off.
//!
//! 200 workers, each with its own connection, send the requests of one acquisition and release
//! again and again, as fast as they can, with the queue held at about 200 keys — once as the
//! current format sends them and once as the key-ordered format would. No waiting, no watches:
//! the difference between the two rates is the etcd (and client) work per acquisition that the
//! format change would save, everything else being equal. Requests replayed per acquisition:
//!
//! | step | current format (create order) | key-ordered format |
//! |---|---|---|
//! | enqueue | `if create_revision(key) == 0 then put + get(prefix, newest 11 by create) + get(limit key)` | `if create_revision([key + "\0", prefix end)) == 0 then put + count([prefix, key)) + get([key − 1, key), limit 2) + get(limit key)` |
//! | waits | two single-key reads, a third one time in three (the semaphore scenario's 2.3) | the same |
//! | release | `if create_revision(key) == token then delete + get(prefix, oldest 10 by create) + get(limit key)` | `… then delete + get(prefix, first 11 by key) + get(limit key)` |
//! | hand-off | `if mod_revision(k) == m then put(k, held)` for the waiter the read shows | the same |
//!
//! Two more variants bound the answer: the key-ordered requests **without the guard** that keeps
//! key order equal to queue order (with 200 concurrent enqueuers most guarded enqueues find a later
//! number ahead of theirs, and pay another write), and the current requests **without any queue
//! read** — the ceiling of every change to how the queue is read. Each measured round starts from
//! a compacted history; then both formats run a few rounds without compaction, as etcd does by
//! default, because the key-ordered format never reuses a key and etcd's index keeps every deleted
//! key until the next compaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use coord_core::etcd_client::{
    CompactionOptions, Compare, CompareOp, GetOptions, KvClient, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, TxnOpResponse,
};
use coord_core::keys::prefix_range_end;
use tokio::sync::watch;

use crate::Bench;
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, order, rounded};

const SCENARIO: &str = "semaphore-format";
const WORKERS: usize = 200;
const LIMIT: i64 = 10;
/// Rounds per format run one after another without compaction, after the measured rounds.
const UNCOMPACTED_ROUNDS: usize = 3;
/// A semaphore record as coord writes it (about the same size).
const RECORD: &str = r#"{"holder":"7587893e5b6a1c24","held":false,"since_ms":1764555555555}"#;
const HELD: &str = r#"{"holder":"7587893e5b6a1c24","held":true,"since_ms":1764555555555}"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    CreateOrder,
    KeyOrder,
    /// The key-ordered requests without the guard that keeps key order equal to queue order: a
    /// lower bound of that format's cost (no enqueue ever fails).
    KeyOrderUnguarded,
    /// The current format's requests without their queue reads: the ceiling of any change to
    /// how the queue is read.
    NoQueueReads,
}

#[derive(Clone)]
struct Worker {
    kv: KvClient,
    prefix: String,
    limit_key: String,
    lease: i64,
    /// This worker's key in the create-order format (its session's, as coord names it).
    own: String,
    /// A key outside the queue that the no-read variant marks instead of a waiter.
    side: String,
    /// The next queue number of the key-ordered format, shared by all workers.
    sequence: Arc<AtomicU64>,
    /// Enqueues of the key-ordered format that found a key after theirs (two numbers taken out
    /// of order); the real format would retry them.
    out_of_order: Arc<AtomicU64>,
    reads: u64,
}

fn numbered(prefix: &str, n: u64) -> String {
    format!("{prefix}{n:020}")
}

impl Worker {
    async fn acquisition(&mut self, format: Format) {
        let put =
            |key: &str| TxnOp::put(key, RECORD, Some(PutOptions::new().with_lease(self.lease)));
        let limit_key = TxnOp::get(self.limit_key.clone(), None);
        let (key, enqueue) = match format {
            Format::NoQueueReads => {
                let key = self.own.clone();
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([put(&key), limit_key.clone()])
                    .or_else([TxnOp::get(key.clone(), None), limit_key.clone()]);
                (key, txn)
            }
            Format::CreateOrder => {
                let newest = GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(LIMIT + 1);
                let reads = [
                    TxnOp::get(self.prefix.clone(), Some(newest)),
                    limit_key.clone(),
                ];
                let key = self.own.clone();
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([vec![put(&key)], reads.to_vec()].concat())
                    .or_else([vec![TxnOp::get(key.clone(), None)], reads.to_vec()].concat());
                (key, txn)
            }
            Format::KeyOrder | Format::KeyOrderUnguarded => {
                let n = self.sequence.fetch_add(1, Ordering::Relaxed);
                let key = numbered(&self.prefix, n);
                let after = format!("{key}\0");
                let before = GetOptions::new().with_range(key.clone()).with_count_only();
                let window = GetOptions::new().with_range(key.clone()).with_limit(2);
                let reads = [
                    TxnOp::get(self.prefix.clone(), Some(before)),
                    TxnOp::get(numbered(&self.prefix, n.saturating_sub(1)), Some(window)),
                    limit_key.clone(),
                ];
                let later = GetOptions::new()
                    .with_range(prefix_range_end(self.prefix.as_bytes()))
                    .with_limit(1);
                let guard = if format == Format::KeyOrder {
                    Compare::create_revision(after.clone(), CompareOp::Equal, 0)
                        .with_range(prefix_range_end(self.prefix.as_bytes()))
                } else {
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0)
                };
                let txn = Txn::new()
                    .when([guard])
                    .and_then([vec![put(&key)], reads.to_vec()].concat())
                    .or_else([vec![TxnOp::get(after, Some(later))], reads.to_vec()].concat());
                (key, txn)
            }
        };
        let enqueued = self.kv.txn(enqueue).await.expect("enqueue txn");
        let token = if enqueued.succeeded() {
            enqueued.header().expect("header").revision()
        } else if matches!(format, Format::KeyOrder | Format::KeyOrderUnguarded) {
            // Another worker's later number landed first; write ours anyway (the cost of the
            // real format's retry is one more such transaction).
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
            let put = self
                .kv
                .put(
                    key.clone(),
                    RECORD,
                    Some(PutOptions::new().with_lease(self.lease)),
                )
                .await
                .expect("put");
            put.header().expect("header").revision()
        } else {
            panic!("the worker's key was left behind");
        };

        // The waits' single-key reads (the semaphore scenario makes 2.3 per acquisition).
        self.reads += 1;
        let reads = if self.reads % 3 == 0 { 3 } else { 2 };
        for _ in 0..reads {
            self.kv.get(key.clone(), None).await.expect("get");
        }

        let head = match format {
            Format::CreateOrder | Format::NoQueueReads => GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(LIMIT),
            Format::KeyOrder | Format::KeyOrderUnguarded => {
                GetOptions::new().with_prefix().with_limit(LIMIT + 1)
            }
        };
        let release = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                token,
            )])
            .and_then(if format == Format::NoQueueReads {
                vec![TxnOp::delete(key.clone(), None), limit_key]
            } else {
                vec![
                    TxnOp::delete(key.clone(), None),
                    TxnOp::get(self.prefix.clone(), Some(head)),
                    limit_key,
                ]
            });
        let released = self.kv.txn(release).await.expect("release txn");
        assert!(released.succeeded(), "the worker's key was gone");
        let waiter = released.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().get(LIMIT as usize - 1).cloned(),
            _ => None,
        });
        if format == Format::NoQueueReads {
            // No read names a waiter: write the same kind of guarded mark (a compare that always
            // holds) to a key of this worker's own.
            let mark = Txn::new()
                .when([Compare::mod_revision(
                    self.side.clone(),
                    CompareOp::Less,
                    i64::MAX,
                )])
                .and_then([TxnOp::put(self.side.clone(), HELD, None)]);
            self.kv.txn(mark).await.expect("mark txn");
        } else if let Some(waiter) = waiter {
            let mark = Txn::new()
                .when([Compare::mod_revision(
                    waiter.key().to_vec(),
                    CompareOp::Equal,
                    waiter.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    waiter.key().to_vec(),
                    HELD,
                    Some(PutOptions::new().with_ignore_lease()),
                )]);
            self.kv.txn(mark).await.expect("mark txn");
        }
    }
}

async fn round(workers: &[Worker], format: Format, length: Duration) -> u64 {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks: Vec<_> = workers
        .iter()
        .cloned()
        .map(|mut worker| {
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while !*stop.borrow() {
                    worker.acquisition(format).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    tokio::time::sleep(length).await; // the length of the round, not a synchronisation
    stop_tx.send_replace(true);
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("worker task");
    }
    done
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let plan = bench.plan(4.0, 4);
    let namespace = coord_testkit::unique_namespace("bench-format");
    let sequence = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let mut variants: Vec<(Format, &str, Vec<Worker>)> = vec![
        (Format::CreateOrder, "create order (current)", Vec::new()),
        (Format::KeyOrder, "key order (projected)", Vec::new()),
        (
            Format::KeyOrderUnguarded,
            "key order, unguarded",
            Vec::new(),
        ),
        (Format::NoQueueReads, "no queue reads", Vec::new()),
    ];
    let mut leases = Vec::new();
    for i in 0..WORKERS {
        let client = bench.client(&namespace).await;
        // Longer than the whole scenario: nobody keeps these leases alive.
        let lease = client.lease_grant(600).await.expect("lease").id();
        leases.push((client.clone(), lease));
        for (format, _, workers) in &mut variants {
            let prefix = client.key(&format!("{format:?}/q/"));
            let limit_key = client.key(&format!("{format:?}/q"));
            let own = format!("{prefix}{:016x}-{i}", lease);
            workers.push(Worker {
                kv: client.etcd().kv_client(),
                prefix,
                limit_key,
                lease,
                own,
                side: client.key(&format!("{format:?}/side/{i}")),
                sequence: Arc::clone(&sequence),
                out_of_order: Arc::clone(&out_of_order),
                reads: 0,
            });
        }
    }
    for (format, _, workers) in &variants {
        round(workers, *format, Duration::from_secs(1)).await;
    }
    out_of_order.store(0, Ordering::Relaxed);

    let mut tallies = vec![Tally::default(); variants.len()];
    let started = Instant::now();
    for r in 0..plan.rounds {
        for i in order(r, variants.len()) {
            let (format, _, workers) = &variants[i];
            // Every round starts from a compacted history: keys deleted earlier (the key-ordered
            // formats never reuse a key) no longer weigh on etcd's index.
            let revision = workers[0]
                .kv
                .clone()
                .get("compaction", None)
                .await
                .expect("get")
                .header()
                .expect("header")
                .revision();
            workers[0]
                .kv
                .clone()
                .compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
                .expect("compact");
            let (done, window) = bench
                .metered(round(workers, *format, plan.round), false)
                .await;
            tallies[i].record(done as f64 / plan.round.as_secs_f64(), done, &window);
        }
    }
    // Then without compaction: keys deleted by the key-ordered format stay in etcd's index (as
    // tombstones until the next compaction, which etcd does not do by default), and the count and
    // the key-order read of each acquisition step over all of them.
    let mut uncompacted: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for _ in 0..UNCOMPACTED_ROUNDS {
        for (slot, i) in [0, 1].into_iter().enumerate() {
            let (format, _, workers) = &variants[i];
            let done = round(workers, *format, plan.round).await;
            uncompacted[slot].push(done as f64 / plan.round.as_secs_f64());
        }
    }
    let (current, projected, unguarded, no_reads) =
        (&tallies[0], &tallies[1], &tallies[2], &tallies[3]);
    report.compare(
        &format!(
            "{SCENARIO}: requests of one acquisition, {WORKERS} workers, queue of ~{WORKERS} keys, \
             acquisitions/s (projection, no waiting)"
        ),
        format!("create order {:.0}/s", current.median()),
        format!("key order {:.0}/s", projected.median()),
        Ratio::Rate(projected.median_ratio_to(current)),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: the same, key order without its ordering guard (lower bound)"),
        format!("create order {:.0}/s", current.median()),
        format!("key order, unguarded {:.0}/s", unguarded.median()),
        Ratio::Rate(unguarded.median_ratio_to(current)),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: the same, create order without its queue reads (ceiling)"),
        format!("create order {:.0}/s", current.median()),
        format!("no queue reads {:.0}/s", no_reads.median()),
        Ratio::Rate(no_reads.median_ratio_to(current)),
        Target::None,
    );
    report.note(format!(
        "{SCENARIO}: {UNCOMPACTED_ROUNDS} more rounds each without compaction, acquisitions/s: \
         create order {:?}, key order {:?}",
        rounded(&uncompacted[0]),
        rounded(&uncompacted[1])
    ));
    report.note(format!(
        "{SCENARIO}: {} key-ordered enqueues found a later number ahead of theirs in {:.0} s",
        out_of_order.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    ));
    for ((_, label, _), tally) in variants.iter().zip(&tallies) {
        report.requests(
            &format!("{SCENARIO}: {label}"),
            tally.ops,
            tally.requests_per_op(),
            None,
        );
        println!(
            "  {label:<24} per round (acquisitions/s): {:?}",
            rounded(&tally.per_round)
        );
    }
    for (client, lease) in leases {
        let _ = client.lease_revoke(coord_core::LeaseId::new(lease)).await;
    }
}
