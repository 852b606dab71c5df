//! `pick`: what one `Balancer::pick` costs with 10 and with 10,000 instances, against the floor
//! of any pick: taking the next `Arc<Endpoint>` from a `Vec` of the same instances (what a
//! hand-written round-robin over a snapshot does). No etcd request is involved; the sets come
//! from real `Discovery`s of services written to etcd as `register` writes them.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coord_discovery::balance::{Balancer, Strategy};
use coord_discovery::service::{Discovery, Endpoint};
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::median;

use crate::build::write_instances;
use crate::{Bench, Meta};

/// How long each variant picks per round.
const SLICE: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Floor,
    Pick(Strategy),
    ByKey,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Floor => "floor: next Arc from a Vec",
            Variant::Pick(Strategy::RoundRobin) => "pick, round-robin",
            Variant::Pick(Strategy::Random) => "pick, weighted random",
            Variant::Pick(Strategy::PowerOfTwoChoices) => "pick, power of two choices",
            Variant::Pick(_) | Variant::ByKey => "pick_by_key, consistent hashing",
        }
    }
}

const VARIANTS: [Variant; 5] = [
    Variant::Floor,
    Variant::Pick(Strategy::RoundRobin),
    Variant::Pick(Strategy::Random),
    Variant::Pick(Strategy::PowerOfTwoChoices),
    Variant::ByKey,
];

/// Nanoseconds per pick of `variant` over `discovery`'s set, picking for [`SLICE`].
fn per_pick(variant: Variant, discovery: &Discovery<Meta>) -> f64 {
    let snapshot: Vec<Arc<Endpoint<Meta>>> = discovery.snapshot().iter().cloned().collect();
    let balancer = match variant {
        Variant::Pick(strategy) => Some(Balancer::new(discovery, strategy)),
        Variant::ByKey => Some(Balancer::new(discovery, Strategy::ConsistentHash)),
        Variant::Floor => None,
    };
    let started = Instant::now();
    let mut picks = 0u64;
    while started.elapsed() < SLICE {
        for _ in 0..64 {
            match (&balancer, variant) {
                (Some(balancer), Variant::ByKey) => {
                    black_box(balancer.pick_by_key(&picks.to_le_bytes()));
                }
                (Some(balancer), _) => {
                    black_box(balancer.pick());
                }
                (None, _) => {
                    let i = picks as usize % snapshot.len();
                    black_box(snapshot[i].clone());
                }
            }
            picks += 1;
        }
    }
    started.elapsed().as_nanos() as f64 / picks as f64
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let rounds = bench.plan(SLICE.as_secs_f64(), 3).rounds;
    let namespace = coord_testkit::unique_namespace("discovery_pick");
    let client = bench.client(&namespace).await;
    let mut writer = bench.raw().await;
    let lease = writer.lease_grant(3_600, None).await.expect("lease").id();
    let mut discoveries = Vec::new();
    for (service, count) in [("small", 10u64), ("large", 10_000)] {
        write_instances(
            &mut writer,
            &client.key(&format!("{service}/")),
            count,
            lease,
        )
        .await;
        let mut discovery = Discovery::<Meta>::builder(&client, service)
            .start()
            .expect("start");
        let ready = discovery.wait_ready().await.expect("ready");
        assert_eq!(ready.len() as u64, count);
        discoveries.push((count, discovery));
    }
    println!(
        "  {rounds} rounds of {} ms per variant and size (ns per pick, per round)",
        SLICE.as_millis()
    );
    for (count, discovery) in &discoveries {
        let mut results: Vec<Vec<f64>> = VARIANTS.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (i, variant) in VARIANTS.iter().enumerate() {
                results[i].push(per_pick(*variant, discovery));
            }
        }
        let floor = median(&results[0]);
        for (variant, times) in VARIANTS.iter().zip(&results) {
            let rounded: Vec<f64> = times.iter().map(|t| (t * 10.0).round() / 10.0).collect();
            println!(
                "  {count:>6} instances  {:<34} {rounded:?}",
                variant.label()
            );
            if *variant != Variant::Floor {
                let ns = median(times);
                report.compare(
                    &format!("pick: {}, {count} instances, ns per pick", variant.label()),
                    format!("floor {floor:.0} ns"),
                    format!("{ns:.0} ns"),
                    Ratio::Time(ns / floor),
                    Target::None,
                );
            }
        }
    }
}
