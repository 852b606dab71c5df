//! Scenario `failover`: a leader is cut off from etcd (its connection blackholed by a fault proxy:
//! to etcd, a crash) while a standby waits; measured from the cut until the standby's campaign
//! returns, against the session TTL. Variants: coord's Election for both candidates, and the
//! etcd server's Campaign RPC for both (the leases are kept alive by coord sessions in both
//! variants, so the lease behaviour is the same; what differs is the campaign and wait).
//!
//! Every failover uses fresh sessions and a fresh proxy; the variants alternate (A B B A …). The
//! standby has been queued for at least [`QUEUED`] before the cut, which falls at a different
//! point of the leader's keep-alive interval (TTL/3) in each repetition — evenly spread, the same
//! points for both variants — since that phase decides how much of the TTL is left. The time at
//! which the leader's own session declared loss is recorded too: it must come before the standby
//! leads.

use std::time::{Duration, Instant};

use coord_core::etcd_client::{EventType, WatchOptions};
use coord_core::keys::lease_key;
use coord_core::{ClientConfig, Session};
use coord_leader::Election;
use coord_testkit::FaultProxy;

use crate::Bench;
use coord_testkit::bench::report::{Ratio, Report, Target};
use coord_testkit::bench::rounds::{Tally, median, order, percentile, rounded};

const SCENARIO: &str = "failover";
/// Short enough to keep the run short, long enough that the loss margin (TTL/6 = 500 ms) is
/// distinct from etcd's 500 ms expiry tick.
const TTL: Duration = Duration::from_secs(3);
const QUEUED: Duration = Duration::from_millis(300);

struct Outcome {
    /// Cut → the standby's campaign returned.
    failover: Duration,
    /// Cut → the leader's session declared loss.
    loss_declared: Duration,
}

async fn once(bench: &Bench, namespace: &str, coord: bool, phase: f64) -> Outcome {
    let proxy = FaultProxy::start(bench.etcd().client_addr())
        .await
        .expect("fault proxy");
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(namespace)
        .connect()
        .await
        .expect("connect through the proxy");
    let direct = bench.client(namespace).await;
    let granted = Instant::now();
    let leader = Session::new(via_proxy.clone(), TTL).await.expect("session");
    let standby = Session::new(direct.clone(), TTL).await.expect("session");
    let name = if coord { "coord" } else { "server" };

    // The leader.
    let coord_leadership = if coord {
        let election = Election::new(&leader, name).expect("election");
        Some(election.campaign("leader").await.expect("campaign"))
    } else {
        let mut elections = via_proxy.etcd().election_client();
        elections
            .campaign(via_proxy.key(name), "leader", leader.lease_id().get())
            .await
            .expect("Campaign");
        None
    };

    // The standby queues behind it.
    let standby_key = lease_key(namespace, name, standby.lease_id());
    let mut seen = direct
        .etcd()
        .watch_client()
        .watch(standby_key.clone(), Some(WatchOptions::new()))
        .await
        .expect("harness watch");
    let waiting = {
        let (standby, direct) = (standby.clone(), direct.clone());
        tokio::spawn(async move {
            if coord {
                let election = Election::new(&standby, name).expect("election");
                let leadership = election.campaign("standby").await.expect("campaign");
                leadership.resign().await.expect("resign");
            } else {
                let mut elections = direct.etcd().election_client();
                elections
                    .campaign(direct.key(name), "standby", standby.lease_id().get())
                    .await
                    .expect("Campaign");
            }
            Instant::now()
        })
    };
    loop {
        let resp = seen.message().await.expect("watch").expect("watch ended");
        if resp
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Put)
        {
            break;
        }
    }
    // The leader's keep-alives go out every TTL/3 from its grant: cut at `phase` of an interval.
    let interval = TTL / 3;
    let since_grant = granted.elapsed() + QUEUED;
    let into_interval = since_grant.as_secs_f64() % interval.as_secs_f64();
    let to_phase =
        (phase * interval.as_secs_f64() - into_interval).rem_euclid(interval.as_secs_f64());
    tokio::time::sleep(QUEUED + Duration::from_secs_f64(to_phase)).await;

    let cut = Instant::now();
    let loss = {
        let leader = leader.clone();
        tokio::spawn(async move {
            leader.ended().await;
            Instant::now()
        })
    };
    proxy.blackhole();
    let led_at = waiting.await.expect("standby");
    let lost_at = loss.await.expect("loss");
    // The cut-off leader's handles: dropping them only starts background clean-ups that fail.
    drop(coord_leadership);
    drop(proxy);
    standby.close().await.expect("close standby session");
    Outcome {
        failover: led_at - cut,
        loss_declared: lost_at - cut,
    }
}

pub(crate) async fn run(bench: &Bench, report: &mut Report) {
    let repetitions = bench.repetitions(6);
    println!("  {repetitions} failovers per variant (TTL {TTL:?}), alternating");
    let namespace = coord_testkit::unique_namespace("bench-failover");
    let labels = ["coord Election", "server Campaign RPC"];
    let mut ratios = vec![Tally::default(); 2];
    let mut margins: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for r in 0..repetitions {
        let phase = (r as f64 + 0.5) / repetitions as f64;
        for i in order(r, 2) {
            let outcome = once(bench, &namespace, i == 0, phase).await;
            ratios[i]
                .per_round
                .push(outcome.failover.as_secs_f64() / TTL.as_secs_f64());
            margins[i].push(
                (outcome.failover.as_secs_f64() - outcome.loss_declared.as_secs_f64()) * 1000.0,
            );
        }
    }
    let late: Vec<u64> = margins
        .iter()
        .map(|m| m.iter().filter(|gap| **gap <= 0.0).count() as u64)
        .collect();
    report.check(
        &format!("{SCENARIO}: leaders whose loss was declared only after the standby led"),
        format!("Campaign RPC variant {}", late[1]),
        late[0],
        Target::Zero,
    );
    let (coord, server) = (&ratios[0], &ratios[1]);
    let secs = |t: &Tally| {
        format!(
            "{:.2} s = {:.2}× TTL",
            t.median() * TTL.as_secs_f64(),
            t.median()
        )
    };
    report.compare(
        &format!("{SCENARIO}: cut-off leader → standby leads, p50 (TTL {TTL:?})"),
        format!("Campaign RPC {}", secs(server)),
        secs(coord),
        Ratio::Time(coord.median_ratio_to(server)),
        Target::None,
    );
    for (i, label) in labels.iter().enumerate() {
        let values = &ratios[i].per_round;
        println!(
            "  {label:<20} failover / TTL per run: {:?}; loss declared before the takeover by (ms): {:?}",
            rounded(values),
            rounded(&margins[i])
        );
        report.note(format!(
            "{SCENARIO}: {label} — failover / TTL: min {:.2}, p50 {:.2}, max {:.2}; the leader's session declared loss {:.0}–{:.0} ms (median {:.0}) before the standby led",
            percentile(values, 0.0),
            median(values),
            percentile(values, 100.0),
            percentile(&margins[i], 0.0),
            percentile(&margins[i], 100.0),
            median(&margins[i]),
        ));
    }
}
