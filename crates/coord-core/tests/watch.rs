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

/// An etcd of the test's own, a fault proxy in front of it, a client connected directly and one
/// (in the same namespace) through the proxy.
async fn proxied(label: &str) -> (Etcd, FaultProxy, coord_core::Client, coord_core::Client) {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, label).await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    (etcd, proxy, direct, via_proxy)
}

/// Cuts the proxy's connections once the client behind it has one (its watch is being set up).
async fn cut_once_connected(proxy: &FaultProxy) {
    let established = async {
        while proxy.connections() == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(BOUND, established).await.unwrap();
    proxy.cut();
}

#[tokio::test]
async fn the_wait_survives_a_reset_connection() {
    let (_etcd, proxy, direct, via_proxy) = proxied("reset").await;
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
    cut_once_connected(&proxy).await;
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

/// Range requests served by etcd so far.
fn ranges(text: &str) -> f64 {
    metric(text, "grpc_server_handled_total", "grpc_method=\"Range\"")
}

/// A `KeyWatch` opened before the key is written reports the write, then the delete, from its
/// events alone: no read. Changes before a wait's start revision do not end it.
#[tokio::test]
async fn a_key_watch_opened_before_the_writes_reports_them_without_a_read() {
    let (etcd, client) = metered_etcd("key_watch").await;
    let key = client.key("k");
    let before = etcd.metrics().await.unwrap();
    let mut watch = coord_core::watch::KeyWatch::open(&client, key.clone());
    // Until the watch exists on the server, so that it predates the writes.
    let created = async {
        while watchers(&etcd.metrics().await.unwrap()) <= watchers(&before) {
            tokio::time::sleep(Duration::from_millis(20)).await; // polling a gauge: no event
        }
    };
    tokio::time::timeout(BOUND, created)
        .await
        .expect("the watch was not created");

    let revision = |r: etcd_client::PutResponse| r.header().unwrap().revision();
    let first = revision(client.put(key.clone(), "1", None).await.unwrap());
    let second = revision(client.put(key.clone(), "2", None).await.unwrap());
    let (at, kv) = tokio::time::timeout(BOUND, watch.changed_since(second))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at, second, "the write before the start ended the wait");
    assert_eq!(kv.unwrap().value(), b"2");
    // An earlier start is answered with the newest change seen.
    let (at, _) = watch.changed_since(first).await.unwrap();
    assert_eq!(at, second);

    let deleted = client
        .delete(key.clone(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (at, kv) = tokio::time::timeout(BOUND, watch.changed_since(second + 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((at, kv.is_none()), (deleted, true));

    let after = etcd.metrics().await.unwrap();
    assert_eq!(ranges(&after) - ranges(&before), 0.0, "a wait read the key");
}

/// Opened after the change it is asked about, a `KeyWatch` still reports it (with a read, as
/// `wait_changed_value` does), and then waits for later ones on its events.
#[tokio::test]
async fn a_key_watch_opened_after_a_change_reports_it_from_a_read() {
    let client = shared_client("key_watch_late").await;
    let key = client.key("k");
    let put = client
        .put(key.clone(), "early", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut watch = coord_core::watch::KeyWatch::open(&client, key.clone());
    let (at, kv) = tokio::time::timeout(BOUND, watch.changed_since(put))
        .await
        .unwrap()
        .unwrap();
    assert!(at >= put);
    assert_eq!(kv.unwrap().value(), b"early");

    let later = tokio::spawn(async move { watch.changed_since(at + 1).await });
    let again = client
        .put(key.clone(), "later", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (at, kv) = tokio::time::timeout(BOUND, later)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(at, again);
    assert_eq!(kv.unwrap().value(), b"later");
}

/// When its watch breaks, a `KeyWatch`'s waits still end with the change (they become
/// `wait_changed_value`s, which re-create their watches).
#[tokio::test]
async fn a_key_watch_survives_a_reset_connection() {
    let (_etcd, proxy, direct, via_proxy) = proxied("key_watch_reset").await;
    let key = direct.key("k");
    let start = direct
        .put(key.clone(), "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        + 1;
    let mut watch = coord_core::watch::KeyWatch::open(&via_proxy, key.clone());
    let waiter = tokio::spawn(async move { watch.changed_since(start).await });
    cut_once_connected(&proxy).await;
    let deleted = direct
        .delete(key, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (at, kv) = tokio::time::timeout(BOUND, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        at >= deleted && kv.is_none(),
        "({at}, {kv:?}) after the delete at {deleted}"
    );
}

/// A wait from history reports a change made before it was called, and later ones, without
/// reading the key.
#[tokio::test]
async fn a_wait_from_history_sees_past_and_later_changes_without_a_read() {
    let (etcd, client) = metered_etcd("from_history").await;
    let key = client.key("k");
    let before = etcd.metrics().await.unwrap();
    let revision = |r: etcd_client::PutResponse| r.header().unwrap().revision();
    let first = revision(client.put(key.clone(), "1", None).await.unwrap());
    let second = revision(client.put(key.clone(), "2", None).await.unwrap());
    let wait = coord_core::watch::wait_changed_value_from_history;
    let (at, kv) = tokio::time::timeout(BOUND, wait(&client, key.clone(), first + 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((at, kv.unwrap().value().to_vec()), (second, b"2".to_vec()));

    let later = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move { wait(&client, key, second + 1).await }
    });
    let deleted = client
        .delete(key.clone(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let (at, kv) = tokio::time::timeout(BOUND, later)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((at, kv.is_none()), (deleted, true));
    let after = etcd.metrics().await.unwrap();
    assert_eq!(ranges(&after) - ranges(&before), 0.0, "a wait read the key");
}
