//! Observers against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BOUND, Rng, queue_len_becomes, session, shared_client};
use coord_core::etcd_client::GetOptions;
use coord_core::queue::first_by_create;
use coord_core::{ClientConfig, Session};
use coord_leader::{Election, LeaderInfo};
use tokio::sync::watch;

type Observed = watch::Receiver<Option<LeaderInfo>>;

/// Waits until the observer reports a state satisfying `f`, and returns it.
async fn reported(
    observed: &mut Observed,
    what: &str,
    f: impl FnMut(&Option<LeaderInfo>) -> bool,
) -> Option<LeaderInfo> {
    tokio::time::timeout(BOUND, observed.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("the observer never reported {what}"))
        .expect("the observer ended")
        .clone()
}

fn key_of(state: &Option<LeaderInfo>) -> Option<&str> {
    state.as_ref().map(|l| l.key.as_str())
}

#[tokio::test]
async fn an_empty_election_is_reported_as_no_leader() {
    let client = shared_client("observe_empty").await;
    let observed = coord_leader::observe(&client, "e").await.unwrap();
    assert_eq!(*observed.borrow(), None);
    assert!(!observed.has_changed().unwrap());
}

#[tokio::test]
async fn the_current_leader_is_reported_at_once() {
    let client = shared_client("observe_current").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e").unwrap().campaign("a").await.unwrap();
    let observed = Election::new(&s, "e").unwrap().observe().await.unwrap();
    assert!(
        !observed.has_changed().unwrap(),
        "the current state is marked seen"
    );
    let info = observed.borrow().clone().unwrap();
    assert_eq!(
        (info.key.as_str(), info.value.as_slice(), info.token),
        (leadership.key(), b"a".as_slice(), leadership.token())
    );
    assert_eq!(info.lease, s.lease_id());
}

#[tokio::test]
async fn every_leader_change_is_reported_in_order_down_to_no_leader() {
    let client = shared_client("observe_changes").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let mut observed = coord_leader::observe(&client, "e").await.unwrap();

    let first = Election::new(&a, "e").unwrap().campaign("a").await.unwrap();
    let seen = reported(&mut observed, "a", |l| key_of(l) == Some(first.key())).await;
    assert_eq!(seen.unwrap().since, first.token().revision());

    let standby = Election::new(&b, "e").unwrap();
    let waiting = tokio::spawn({
        let standby = standby.clone();
        async move { standby.campaign("b").await }
    });
    queue_len_becomes(&client, standby.prefix(), 2).await;
    // A waiting candidate changes nothing.
    assert!(!observed.has_changed().unwrap());

    let first_token = first.token();
    first.resign().await.unwrap();
    let seen = reported(&mut observed, "b", |l| key_of(l) == Some(standby.key())).await;
    let seen = seen.unwrap();
    assert!(seen.token > first_token);
    assert!(
        seen.since > seen.token.revision(),
        "since = the resign's revision"
    );

    let second = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    second.resign().await.unwrap();
    reported(&mut observed, "no leader", Option::is_none).await;
}

#[tokio::test]
async fn a_proclaim_is_reported_with_the_same_leader() {
    let client = shared_client("observe_proclaim").await;
    let s = session(&client).await;
    let leadership = Election::new(&s, "e")
        .unwrap()
        .campaign("v1")
        .await
        .unwrap();
    let mut observed = coord_leader::observe(&client, "e").await.unwrap();

    leadership.proclaim("v2").await.unwrap();
    let seen = reported(&mut observed, "v2", |l| {
        l.as_ref().is_some_and(|l| l.value == b"v2")
    })
    .await
    .unwrap();
    assert_eq!(
        (seen.key.as_str(), seen.token),
        (leadership.key(), leadership.token())
    );
}

#[tokio::test]
async fn observers_of_one_election_share_one_channel() {
    let client = shared_client("observe_shared").await;
    let other_client = ClientConfig::new(client.endpoints().to_vec())
        .with_namespace(client.namespace())
        .connect()
        .await
        .unwrap();
    let first = coord_leader::observe(&client, "e").await.unwrap();
    let second = coord_leader::observe(&other_client, "e").await.unwrap();
    let other_election = coord_leader::observe(&client, "other").await.unwrap();
    assert!(first.same_channel(&second));
    assert!(!first.same_channel(&other_election));
}

/// The receivers of one election share one etcd watch, which ends with the last receiver.
#[tokio::test]
async fn one_etcd_watch_serves_an_election_until_its_last_receiver_is_dropped() {
    let etcd = coord_testkit::Etcd::start().await.unwrap();
    let client = ClientConfig::new(etcd.endpoints())
        .with_namespace("one-watch/")
        .connect()
        .await
        .unwrap();
    let watchers = || async {
        let metrics = etcd.metrics().await.unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap()
    };
    assert_eq!(watchers().await, 0.0);

    let receivers: Vec<Observed> = futures_join(&client, 5).await;
    assert_eq!(watchers().await, 1.0);
    drop(receivers);
    // No event tells when the server has dropped the watch: poll its gauge.
    tokio::time::timeout(BOUND, async {
        while watchers().await != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watch outlived its receivers");
}

async fn futures_join(client: &coord_core::Client, n: usize) -> Vec<Observed> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            coord_leader::observe(&client, "e").await.unwrap()
        }));
    }
    let mut receivers = Vec::new();
    for task in tasks {
        receivers.push(task.await.unwrap());
    }
    receivers
}

/// Under a random schedule of campaigns, resigns, proclaims and expiring sessions, every report
/// is exactly etcd's leader (the lowest create revision) at the report's revision, and leaders'
/// tokens only grow: observers never see two leaders at once or a non-minimal key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_report_is_the_lowest_key_at_its_revision_under_a_random_schedule() {
    let client = shared_client("observe_random").await;
    let mut observed = coord_leader::observe(&client, "e").await.unwrap();
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let reports = reports.clone();
        async move {
            while observed.changed().await.is_ok() {
                let state = observed.borrow_and_update().clone();
                reports.lock().unwrap().push(state);
            }
        }
    });

    let mut rng = Rng::from_env_or_time();
    let mut candidates = Vec::new();
    for i in 0..4 {
        let client = client.clone();
        let seed = rng.next();
        candidates.push(tokio::spawn(async move {
            let mut rng = Rng::seeded(seed);
            for round in 0..6 {
                let s = Session::new(client.clone(), Duration::from_secs(10))
                    .await
                    .unwrap();
                let election = Election::new(&s, "e").unwrap();
                let Ok(leadership) = election.campaign(format!("c{i}-r{round}")).await else {
                    continue;
                };
                if rng.below(2) == 0 {
                    let _ = leadership.proclaim(format!("c{i}-r{round}-p")).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                match rng.below(3) {
                    0 => drop(leadership.resign().await),
                    1 => {
                        std::mem::forget(leadership);
                        client.lease_revoke(s.lease_id()).await.unwrap();
                    }
                    _ => {
                        std::mem::forget(leadership);
                        s.close().await.unwrap();
                    }
                }
            }
        }));
    }
    for candidate in candidates {
        tokio::time::timeout(Duration::from_secs(60), candidate)
            .await
            .expect("the schedule got stuck")
            .unwrap();
    }
    let prefix = client.key("e/");
    // The last report is "no leader", once every candidate is gone.
    tokio::time::timeout(BOUND, async {
        loop {
            if matches!(reports.lock().unwrap().last(), Some(None)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the observer never reported the empty election");
    recorder.abort();

    let reports = reports.lock().unwrap().clone();
    let leaders: Vec<LeaderInfo> = reports.into_iter().flatten().collect();
    eprintln!("{} leader reports checked", leaders.len());
    assert!(
        leaders.len() >= 4,
        "only {} leaders reported",
        leaders.len()
    );
    let mut last_token = None;
    for leader in &leaders {
        let at = client
            .get(
                prefix.clone(),
                Some(first_by_create().with_revision(leader.since)),
            )
            .await
            .unwrap();
        let kv = at.kvs().first().unwrap_or_else(|| {
            panic!(
                "reported {leader:?}, but nobody led at revision {}",
                leader.since
            )
        });
        assert_eq!(
            (kv.key(), kv.value(), kv.create_revision()),
            (
                leader.key.as_bytes(),
                leader.value.as_slice(),
                leader.token.revision()
            ),
            "reported {leader:?}, etcd's leader at that revision differs"
        );
        assert!(last_token <= Some(leader.token), "tokens went backwards");
        last_token = Some(leader.token);
    }
    let left = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 0);
}
