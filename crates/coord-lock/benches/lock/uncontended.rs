//! Scenario `mutex-uncontended`: one holder taking and releasing a lock nobody else wants, against
//! the raw floor (one create transaction + one delete, the least any etcd lock can send) and
//! against the etcd server's Lock/Unlock RPC. Each variant keeps one session for all its cycles.
//!
//! Two measurements, both with every variant on its own connection and session:
//! - *rounds*: each variant cycles alone for a round, rounds interleaved; the etcd request counts
//!   per variant come from these;
//! - *interleaved per cycle*: one cycle of each variant in turn, in a rotating order, for as long
//!   as all the rounds took. Slow drift of the machine (the VM's neighbours, etcd's compactions and
//!   fsync latency) then falls on every variant alike, so the ratio of the mean cycle times is far
//!   steadier from run to run than the rounds' (rounds of the same variant differ by up to 15 %
//!   here). The target is judged on this one.
//!
//! The rounds also measure the CPU time each variant costs per cycle, in this process (the
//! client) and in etcd (the server), which splits a cycle's cost without the wall clock's noise.
//!
//! The raw floor is sent by a plain etcd-client on its own channel (tonic's balanced channel) with
//! etcd-client's defaults, as an application without coord would send it. coord's `Client` runs
//! etcd-client over coord's own HTTP/2 transport (`coord_core`'s `transport` module), so the same
//! floor is measured a second time through that transport ("raw floor, coord's transport"): the
//! gap between the two floors is the transport's share, the gap between that floor and coord's
//! Mutex is coord's on equal transports. Every variant but the first uses coord's transport.
//!
//! Three more variants send raw, through etcd-client on coord's transport, the requests a lock
//! with coord's semantics sends, splitting coord's distance from the floor into what etcd does for
//! those requests and what coord's client code adds:
//! - "raw floor, guarded delete": the floor's create transaction, then the delete guarded by the
//!   create revision (`if create_revision(k) == rev then delete(k)`), as an unlock that must never
//!   delete a newer holder's key (Go's bug #22082) sends it: what that guard alone costs etcd;
//! - "coord's requests, raw": what coord's Mutex sends while it finds the queue empty — the
//!   empty-queue transaction `if create_revision([prefix, end)) == 0 then put(k, lease)`, and the
//!   delete guarded by the create revision;
//! - "Go's acquire txn, raw": Go's acquire transaction (reading the two newest keys, as coord
//!   sends it when the queue is busy) and the same guarded delete — coord's uncontended requests
//!   until 2026-11-30.

use std::time::{Duration, Instant};

use coord_core::Session;
use coord_core::etcd_client::{
    Compare, CompareOp, KvClient, LockClient, LockOptions, PutOptions, Txn, TxnOp,
};
use coord_lock::Mutex;

use crate::Bench;
use coord_testkit::bench::cpu::{CpuMeter, CpuSpent};
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, order, rounded};

const SCENARIO: &str = "mutex-uncontended";
const WARM_UP: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_secs(60);

/// One way of taking and releasing the lock.
enum Cycle {
    /// `if create_revision(k) == 0 then put(k, lease)`, then `delete(k)` (`guarded`: `if
    /// create_revision(k) == rev then delete(k)`).
    Floor {
        kv: KvClient,
        key: String,
        guarded: bool,
    },
    Coord {
        mutex: Mutex,
    },
    /// A lock's requests without coord: the acquire transaction (`fast`: `if
    /// create_revision([prefix, end)) == 0 then put(k, lease)`; otherwise Go's `if
    /// create_revision(k) == 0 then put(k, lease) + get(newest two) else get(k) + get(newest
    /// two)`), then `if create_revision(k) == rev then delete(k)`.
    Requests {
        kv: KvClient,
        key: String,
        prefix: String,
        fast: bool,
    },
    /// The server runs Go's `concurrency.Mutex` for us.
    Server {
        lock: LockClient,
        name: String,
    },
}

struct Variant {
    label: &'static str,
    session: Session,
    lease: i64,
    cycle: Cycle,
}

impl Variant {
    async fn once(&mut self) {
        match &mut self.cycle {
            Cycle::Floor { kv, key, guarded } => {
                let create = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        "",
                        Some(PutOptions::new().with_lease(self.lease)),
                    )]);
                let created = kv.txn(create).await.expect("create txn");
                assert!(created.succeeded(), "the floor's key was left behind");
                if *guarded {
                    let revision = created.header().expect("header").revision();
                    guarded_delete(kv, key, revision).await;
                } else {
                    kv.delete(key.clone(), None).await.expect("delete");
                }
            }
            Cycle::Requests {
                kv,
                key,
                prefix,
                fast,
            } => {
                let newest_two =
                    || TxnOp::get(prefix.clone(), Some(coord_core::queue::newest_two()));
                let create = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([
                        TxnOp::put(
                            key.clone(),
                            "",
                            Some(PutOptions::new().with_lease(self.lease)),
                        ),
                        newest_two(),
                    ])
                    .or_else([TxnOp::get(key.clone(), None), newest_two()]);
                let create = if *fast {
                    Txn::new()
                        .when([
                            Compare::create_revision(prefix.clone(), CompareOp::Equal, 0)
                                .with_prefix(),
                        ])
                        .and_then([TxnOp::put(
                            key.clone(),
                            "",
                            Some(PutOptions::new().with_lease(self.lease)),
                        )])
                } else {
                    create
                };
                let created = kv.txn(create).await.expect("create txn");
                assert!(created.succeeded(), "the variant's key was left behind");
                let revision = created.header().expect("header").revision();
                guarded_delete(kv, key, revision).await;
            }
            Cycle::Coord { mutex } => {
                let guard = mutex.lock().await.expect("lock");
                guard.unlock().await.expect("unlock");
            }
            Cycle::Server { lock, name } => {
                let options = LockOptions::new().with_lease(self.lease);
                let held = lock.lock(name.clone(), Some(options)).await.expect("Lock");
                lock.unlock(held.key()).await.expect("Unlock");
            }
        }
    }

    /// Cycles for `length`; returns the cycles done and the time they took.
    async fn round(&mut self, length: Duration) -> (u64, Duration) {
        let start = Instant::now();
        let mut cycles = 0;
        while start.elapsed() < length {
            self.once().await;
            cycles += 1;
        }
        (cycles, start.elapsed())
    }
}

/// `if create_revision(key) == revision then delete(key)`, which must find the key.
async fn guarded_delete(kv: &mut KvClient, key: &str, revision: i64) {
    let delete = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, revision)])
        .and_then([TxnOp::delete(key, None)]);
    let deleted = kv.txn(delete).await.expect("delete txn");
    assert!(deleted.succeeded(), "the guarded delete missed its key");
}

/// One cycle of each variant in turn (the order rotating every pass) for `length`; returns each
/// variant's mean cycle time in milliseconds.
async fn interleave(variants: &mut [Variant], length: Duration) -> Vec<f64> {
    let mut spent = vec![Duration::ZERO; variants.len()];
    let mut passes = 0u32;
    let start = Instant::now();
    while start.elapsed() < length {
        for i in order(passes as usize, variants.len()) {
            let cycle = Instant::now();
            variants[i].once().await;
            spent[i] += cycle.elapsed();
        }
        passes += 1;
    }
    spent
        .iter()
        .map(|total| total.as_secs_f64() * 1000.0 / f64::from(passes.max(1)))
        .collect()
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let plan = bench.plan(2.0, 6);
    let namespace = coord_testkit::unique_namespace("bench-uncontended");
    let mut variants = Vec::new();
    for label in [
        "raw floor",
        "coord Mutex",
        "server Lock RPC",
        "coord's requests, raw",
        "Go's acquire txn, raw",
        "raw floor, guarded delete",
        "raw floor, coord's transport",
    ] {
        let client = bench.client(&namespace).await;
        let session = Session::new(client.clone(), TTL).await.expect("session");
        let lease = session.lease_id().get();
        let cycle = match label {
            "raw floor" => Cycle::Floor {
                kv: bench.etcd_client().await.kv_client(),
                key: format!("{namespace}floor/{lease:x}"),
                guarded: false,
            },
            "raw floor, coord's transport" => Cycle::Floor {
                kv: client.etcd().kv_client(),
                key: format!("{namespace}floor-coord/{lease:x}"),
                guarded: false,
            },
            "raw floor, guarded delete" => Cycle::Floor {
                kv: client.etcd().kv_client(),
                key: format!("{namespace}guarded/{lease:x}"),
                guarded: true,
            },
            "coord Mutex" => Cycle::Coord {
                mutex: Mutex::new(&session, "mutex").expect("mutex"),
            },
            "coord's requests, raw" => Cycle::Requests {
                kv: client.etcd().kv_client(),
                key: format!("{namespace}requests/{lease:x}"),
                prefix: format!("{namespace}requests/"),
                fast: true,
            },
            "Go's acquire txn, raw" => Cycle::Requests {
                kv: client.etcd().kv_client(),
                key: format!("{namespace}go-txn/{lease:x}"),
                prefix: format!("{namespace}go-txn/"),
                fast: false,
            },
            _ => Cycle::Server {
                lock: client.etcd().lock_client(),
                name: format!("{namespace}server"),
            },
        };
        variants.push(Variant {
            label,
            session,
            lease,
            cycle,
        });
    }
    for variant in &mut variants {
        variant.round(WARM_UP).await;
    }

    let mut tallies = vec![Tally::default(); variants.len()];
    // CPU time over the rounds, per variant; `None` where it cannot be read.
    let mut cpu = vec![Some(CpuSpent::default()); variants.len()];
    let etcd_pid = bench.etcd_pid();
    for round in 0..plan.rounds {
        for i in order(round, variants.len()) {
            let variant = &mut variants[i];
            let measured = async {
                let meter = etcd_pid.and_then(CpuMeter::start);
                let outcome = variant.round(plan.round).await;
                (outcome, meter.and_then(|meter| meter.spent()))
            };
            let (((cycles, took), spent), window) = bench.metered(measured, false).await;
            let ms_per_cycle = took.as_secs_f64() * 1000.0 / cycles.max(1) as f64;
            tallies[i].record(ms_per_cycle, cycles, &window);
            cpu[i] = cpu[i].zip(spent).map(|(mut total, spent)| {
                total.add(spent);
                total
            });
        }
    }
    // Times (client, server) threads were put on a CPU per cycle.
    let slices: Vec<Option<(f64, f64)>> = cpu
        .iter()
        .zip(&tallies)
        .map(|(spent, tally)| spent.map(|spent| spent.slices_per(tally.ops)))
        .collect();
    // Microseconds of (client, server) CPU per cycle.
    let cpu: Vec<Option<(f64, f64)>> = cpu
        .iter()
        .zip(&tallies)
        .map(|(spent, tally)| spent.map(|spent| spent.micros_per(tally.ops)))
        .collect();

    let interleaved = interleave(&mut variants, plan.round * plan.rounds as u32).await;
    println!(
        "  interleaved per cycle, mean ms/cycle: {}",
        variants
            .iter()
            .zip(&interleaved)
            .map(|(v, ms)| format!("{} {ms:.3}", v.label))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (floor, coord, server, requests) = (&tallies[0], &tallies[1], &tallies[2], &tallies[3]);
    let ms = |t: &Tally| format!("{:.3} ms/cycle", t.median());
    let mean = |i: usize| format!("{:.3} ms/cycle", interleaved[i]);
    report.compare(
        &format!("{SCENARIO}: coord vs raw floor, interleaved per cycle"),
        format!("floor {}", mean(0)),
        mean(1),
        Ratio::Time(interleaved[1] / interleaved[0]),
        Target::TimeAtMost(1.05),
    );
    report.compare(
        &format!(
            "{SCENARIO}: coord vs raw floor on coord's transport, interleaved (same transport)"
        ),
        format!("floor {}", mean(6)),
        mean(1),
        Ratio::Time(interleaved[1] / interleaved[6]),
        Target::None,
    );
    report.compare(
        &format!(
            "{SCENARIO}: raw floor on coord's transport vs on etcd-client's channel, interleaved (the transport's share)"
        ),
        format!("floor {}", mean(0)),
        mean(6),
        Ratio::Time(interleaved[6] / interleaved[0]),
        Target::None,
    );
    report.compare(
        &format!(
            "{SCENARIO}: coord's requests sent raw vs raw floor, coord's transport, interleaved (etcd's share)"
        ),
        format!("floor {}", mean(6)),
        mean(3),
        Ratio::Time(interleaved[3] / interleaved[6]),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: coord vs its requests sent raw, interleaved (coord's client share)"),
        format!("raw {}", mean(3)),
        mean(1),
        Ratio::Time(interleaved[1] / interleaved[3]),
        Target::None,
    );
    report.compare(
        &format!(
            "{SCENARIO}: Go's acquire txn + guarded delete sent raw vs raw floor, coord's transport, interleaved"
        ),
        format!("floor {}", mean(6)),
        mean(4),
        Ratio::Time(interleaved[4] / interleaved[6]),
        Target::None,
    );
    report.compare(
        &format!(
            "{SCENARIO}: raw floor with the delete guarded vs without, coord's transport, interleaved"
        ),
        format!("floor {}", mean(6)),
        mean(5),
        Ratio::Time(interleaved[5] / interleaved[6]),
        Target::None,
    );
    if let (Some(floor), Some(coord), Some(requests), Some(guarded), Some(ours)) =
        (cpu[0], cpu[1], cpu[3], cpu[5], cpu[6])
    {
        let us = |(client, server): (f64, f64)| {
            format!("client {client:.1} µs, etcd {server:.1} µs per cycle")
        };
        report.compare(
            &format!("{SCENARIO}: client CPU, raw floor on coord's transport vs on etcd-client's channel, rounds"),
            format!("floor {}", us(floor)),
            us(ours),
            Ratio::Time(ours.0 / floor.0),
            Target::None,
        );
        report.compare(
            &format!(
                "{SCENARIO}: etcd CPU, coord's requests vs raw floor, coord's transport, rounds"
            ),
            format!("floor {}", us(ours)),
            us(requests),
            Ratio::Time(requests.1 / ours.1),
            Target::None,
        );
        report.compare(
            &format!(
                "{SCENARIO}: etcd CPU, raw floor with the delete guarded vs without, coord's transport, rounds"
            ),
            format!("floor {}", us(ours)),
            us(guarded),
            Ratio::Time(guarded.1 / ours.1),
            Target::None,
        );
        report.compare(
            &format!("{SCENARIO}: client CPU, coord vs its requests sent raw, rounds"),
            format!("raw {}", us(requests)),
            us(coord),
            Ratio::Time(coord.0 / requests.0),
            Target::None,
        );
    }
    report.compare(
        &format!("{SCENARIO}: coord vs raw floor, rounds"),
        format!("floor {}", ms(floor)),
        ms(coord),
        Ratio::Time(coord.median_ratio_to(floor)),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: coord vs server Lock RPC"),
        format!("Lock RPC {}", ms(server)),
        ms(coord),
        Ratio::Time(coord.median_ratio_to(server)),
        Target::None,
    );
    report.compare(
        &format!("{SCENARIO}: coord's requests sent raw vs raw floor, coord's transport, rounds"),
        format!("floor {}", ms(&tallies[6])),
        ms(requests),
        Ratio::Time(requests.median_ratio_to(&tallies[6])),
        Target::None,
    );
    for (((variant, tally), cpu), slices) in variants.iter().zip(&tallies).zip(&cpu).zip(&slices) {
        report.requests(
            &format!("{SCENARIO}: {}", variant.label),
            tally.ops,
            tally.requests_per_op(),
            tally.mean_unsynced(),
        );
        println!(
            "  {:<26} per round (ms/cycle): {:?}",
            variant.label,
            rounded(&tally.per_round)
        );
        if let (Some((client, server)), Some((client_slices, server_slices))) = (cpu, slices) {
            println!(
                "  {:<26} CPU per cycle: client {client:.1} µs, etcd {server:.1} µs; threads put on a CPU per cycle: client {client_slices:.2}, etcd {server_slices:.2}",
                variant.label
            );
        }
    }
    for variant in variants {
        variant.session.close().await.expect("close session");
    }
}
