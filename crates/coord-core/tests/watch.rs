//! `watch::wait_deleted` against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{client_of, shared_client};
use coord_core::watch::wait_deleted;
use coord_core::{ClientConfig, Error};
use coord_testkit::{Etcd, FaultProxy};

const BOUND: Duration = Duration::from_secs(20); // failure bound only

#[tokio::test]
async fn returns_the_revision_of_the_delete_and_ignores_puts() {
    let client = shared_client("wait_deleted").await;
    let key = client.key("k");
    let rev = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let waiter = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move { wait_deleted(&client, key, rev + 1).await }
    });
    client.put(key.clone(), "2", None).await.unwrap();
    let deleted = client
        .delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);
}

#[tokio::test]
async fn a_delete_before_the_wait_started_is_still_seen() {
    let client = shared_client("wait_deleted_past").await;
    let key = client.key("k");
    let rev = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let deleted = client
        .delete(key.clone(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, wait_deleted(&client, key.clone(), rev + 1))
        .await
        .unwrap()
        .unwrap();
    // The delete happened before the wait's watch existed, so the wait answers with the revision
    // of the read that showed the key gone (documented): the delete's own revision, or a later one
    // when other tests sharing this etcd wrote in between — never earlier, never in the future.
    let now = client
        .get(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(
        (deleted..=now).contains(&got),
        "{deleted} <= {got} <= {now}"
    );
}

#[tokio::test]
async fn a_key_wait_from_a_compacted_revision_is_answered_by_a_read() {
    let etcd = Etcd::start().await.unwrap();
    let client = client_of(&etcd, "compacted_key").await;
    let (kept, gone) = (client.key("kept"), client.key("gone"));
    let rev = client
        .put(kept.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.put(gone.clone(), "1", None).await.unwrap();
    client.delete(gone.clone(), None).await.unwrap();
    etcd.compact().await.unwrap();

    // Deleted inside the compacted range: seen at once.
    tokio::time::timeout(BOUND, wait_deleted(&client, gone, rev + 1))
        .await
        .unwrap()
        .unwrap();
    // Still there: the wait goes on, and sees the delete that comes later.
    let waiter = tokio::spawn({
        let (client, kept) = (client.clone(), kept.clone());
        async move { wait_deleted(&client, kept, rev + 1).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), async {
            while !waiter.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .is_err()
    );
    client.delete(kept, None).await.unwrap();
    tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_prefix_wait_from_a_compacted_revision_is_reported() {
    let etcd = Etcd::start().await.unwrap();
    let client = client_of(&etcd, "compacted_prefix").await;
    let prefix = client.key("q/");
    let rev = client
        .put(format!("{prefix}a"), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.put(client.key("other"), "x", None).await.unwrap();
    client.put(client.key("other"), "y", None).await.unwrap();
    etcd.compact().await.unwrap();

    let err = tokio::time::timeout(
        BOUND,
        coord_core::watch::wait_prefix_deleted(&client, prefix, rev + 1),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err, Error::Compacted { requested, .. } if requested == rev + 1),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_wait_survives_a_reset_connection() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "reset").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let key = direct.key("k");
    let rev = direct
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let waiter = tokio::spawn({
        let key = key.clone();
        async move { wait_deleted(&via_proxy, key, rev + 1).await }
    });
    // Let the watch be established through the proxy before cutting it.
    let established = async {
        while proxy.connections() == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(BOUND, established).await.unwrap();
    proxy.cut();
    let deleted = direct
        .delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let got = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted);
}

/// Reads one unlabelled-or-summed metric from etcd's Prometheus text.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// An etcd of the test's own with extensive metrics (the watcher gauge), and a client of it.
async fn metered_etcd(label: &str) -> (Etcd, coord_core::Client) {
    let etcd = Etcd::builder()
        .arg("--metrics=extensive")
        .start()
        .await
        .unwrap();
    let client = client_of(&etcd, label).await;
    (etcd, client)
}

/// Watchers on the server (etcd's gauge).
fn watchers(text: &str) -> f64 {
    metric(text, "etcd_debugging_mvcc_watcher_total", "")
}

/// A wait whose start revision is ahead of the member serving its watch — the caller's read was
/// answered by an up-to-date member, the watch by one still catching up, as after a member
/// restart or pause — must not take a delete from before its start for the one it waits for.
/// Here the watch is created before the start revision exists, and the key is deleted (its
/// earlier incarnation) and created again in between: only the later delete ends the wait.
#[tokio::test]
async fn a_delete_before_the_start_revision_does_not_end_the_wait() {
    let (etcd, client) = metered_etcd("ahead").await;
    let server_watchers = || async { watchers(&etcd.metrics().await.unwrap()) };
    let key = client.key("k");
    let now = client
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // The first delete (now + 1) and the new key (now + 2) come before the wait's start.
    let start = now + 3;
    let before = server_watchers().await;
    let wait = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move { wait_deleted(&client, key, start).await }
    });
    // Until the wait's watch exists on the server (created at `now`, behind its start).
    let created = async {
        while server_watchers().await <= before {
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a gauge: no event
        }
    };
    tokio::time::timeout(BOUND, created)
        .await
        .expect("the wait's watch was not created");

    client.delete(key.clone(), None).await.unwrap();
    client.put(key.clone(), "2", None).await.unwrap();
    let deleted = client
        .delete(key.clone(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(deleted, start);
    let got = tokio::time::timeout(BOUND, wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, deleted, "woken by the delete before its start");
}

#[tokio::test]
async fn waits_share_one_watch_stream_and_dropped_waits_are_cancelled() {
    let (etcd, client) = metered_etcd("hub").await;
    let streams = |text: &str| metric(text, "grpc_server_started_total", "grpc_method=\"Watch\"");
    let before = etcd.metrics().await.unwrap();

    // Twenty waits at once, each for its own key, then all satisfied.
    let mut waits = Vec::new();
    for i in 0..20 {
        let key = client.key(&format!("k{i}"));
        let rev = client
            .put(key.clone(), "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let client = client.clone();
        waits.push(tokio::spawn(async move {
            wait_deleted(&client, key, rev + 1).await
        }));
    }
    // Twenty more that are abandoned before their keys change.
    let mut abandoned = Vec::new();
    for i in 0..20 {
        let key = client.key(&format!("never{i}"));
        let rev = client
            .put(key.clone(), "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let client = client.clone();
        abandoned.push(tokio::spawn(async move {
            wait_deleted(&client, key, rev + 1).await
        }));
    }
    for i in 0..20 {
        client
            .delete(client.key(&format!("k{i}")), None)
            .await
            .unwrap();
    }
    for wait in waits {
        tokio::time::timeout(BOUND, wait)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    for wait in abandoned {
        wait.abort();
    }

    let after = etcd.metrics().await.unwrap();
    assert_eq!(
        streams(&after) - streams(&before),
        1.0,
        "one gRPC watch stream for all waits"
    );
    // Every watch ends up cancelled on the server (the count returns to where it was).
    let settled = async {
        loop {
            let now = etcd.metrics().await.unwrap();
            if watchers(&now) <= watchers(&before) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(BOUND, settled)
        .await
        .expect("server-side watchers were not cancelled");
}
