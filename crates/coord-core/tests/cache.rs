//! The cache (`coord_core::cache::Cache`) against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{client_of, shared_client};
use coord_core::ClientConfig;
use coord_core::cache::{Cache, Snapshot};
use coord_testkit::{Etcd, FaultProxy};
use serde::Deserialize;

const BOUND: Duration = Duration::from_secs(30); // failure bound only

/// The first snapshot that satisfies `done` (failing after `BOUND`).
async fn wait_for<T: Clone>(
    cache: &Cache<T>,
    done: impl FnMut(&Snapshot<T>) -> bool,
) -> Snapshot<T> {
    let mut snapshots = cache.receiver();
    let snapshot = tokio::time::timeout(BOUND, snapshots.wait_for(done))
        .await
        .expect("no such snapshot in time")
        .expect("cache gone");
    snapshot.clone()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Item {
    n: u32,
}

#[tokio::test]
async fn an_undecodable_entry_is_reported_without_poisoning_the_rest() {
    let client = shared_client("cache_decode").await;
    let k = |name: &str| client.key(&format!("items/{name}"));
    client.put(k("a"), r#"{"n":1}"#, None).await.unwrap();
    let bad_at = client
        .put(k("b"), "not json", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.put(k("c"), r#"{"n":3}"#, None).await.unwrap();

    let mut cache = Cache::<Item>::new(&client, "items/").unwrap();
    {
        let snapshot = tokio::time::timeout(BOUND, cache.wait_ready())
            .await
            .unwrap()
            .unwrap();
        let names: Vec<&str> = snapshot.entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(snapshot.entries["c"], Item { n: 3 });
        assert_eq!(snapshot.errors.len(), 1);
        assert_eq!(snapshot.errors[0].key, "b");
        assert_eq!(snapshot.errors[0].mod_revision, bad_at);
    }

    // Fixing the entry clears its error.
    client.put(k("b"), r#"{"n":2}"#, None).await.unwrap();
    let snapshot = wait_for(&cache, |s| s.entries.len() == 3).await;
    assert!(snapshot.errors.is_empty());
    assert_eq!(snapshot.entries["b"], Item { n: 2 });
}

#[tokio::test]
async fn a_subscriber_ends_at_the_last_of_rapid_updates_with_increasing_revisions() {
    let client = shared_client("cache_rapid").await;
    let key = client.key("counters/k");
    let mut cache = Cache::<u32>::new(&client, "counters/").unwrap();
    tokio::time::timeout(BOUND, cache.wait_ready())
        .await
        .unwrap()
        .unwrap();
    cache.borrow_and_update();

    let writer = tokio::spawn({
        let client = client.clone();
        async move {
            for i in 0..1000u32 {
                client.put(key.clone(), i.to_string(), None).await.unwrap();
            }
        }
    });
    let mut revisions = Vec::new();
    loop {
        tokio::time::timeout(BOUND, cache.changed())
            .await
            .unwrap()
            .unwrap();
        let snapshot = cache.borrow_and_update();
        revisions.push(snapshot.revision);
        if snapshot.entries.get("k") == Some(&999) {
            break;
        }
    }
    writer.await.unwrap();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

#[tokio::test]
async fn a_cache_disconnected_across_a_compaction_comes_back_to_the_exact_state() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "cache_compaction").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let k = |name: &str| direct.key(&format!("items/{name}"));
    direct.put(k("a"), r#"{"n":1}"#, None).await.unwrap();
    direct.put(k("b"), r#"{"n":1}"#, None).await.unwrap();
    let mut cache = Cache::<Item>::new(&via_proxy, "items/").unwrap();
    tokio::time::timeout(BOUND, cache.wait_ready())
        .await
        .unwrap()
        .unwrap();
    // A delivered event proves the watch is established through the proxy.
    direct.put(k("seen"), r#"{"n":0}"#, None).await.unwrap();
    wait_for(&cache, |s| s.entries.contains_key("seen")).await;

    proxy.blackhole();
    proxy.cut();
    direct.put(k("a"), r#"{"n":2}"#, None).await.unwrap();
    direct.delete(k("b"), None).await.unwrap();
    direct.put(k("c"), r#"{"n":3}"#, None).await.unwrap();
    let last = direct
        .put(k("bad"), "not json", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.compact().await.unwrap();
    proxy.heal();

    let snapshot = wait_for(&cache, |s| s.revision >= last).await;
    let entries: Vec<(&str, u32)> = snapshot
        .entries
        .iter()
        .map(|(name, item)| (name.as_str(), item.n))
        .collect();
    assert_eq!(entries, [("a", 2), ("c", 3), ("seen", 0)]);
    let errors: Vec<&str> = snapshot.errors.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(errors, ["bad"]);
}

/// Sums the samples of one metric (optionally filtered by a label) from etcd's Prometheus text.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn many_subscribers_share_one_etcd_watch_that_ends_with_the_last() {
    let etcd = Etcd::builder()
        .arg("--metrics=extensive")
        .start()
        .await
        .unwrap();
    let client = client_of(&etcd, "cache_shared").await;
    let streams = |text: &str| metric(text, "grpc_server_started_total", "grpc_method=\"Watch\"");
    let watchers = |text: &str| metric(text, "etcd_debugging_mvcc_watcher_total", "");
    let before = etcd.metrics().await.unwrap();

    let mut caches = Vec::new();
    for _ in 0..500 {
        // Clones of the client, as independent parts of a program would hold.
        caches.push(Cache::<u32>::new(&client.clone(), "shared/").unwrap());
    }
    for cache in &mut caches {
        tokio::time::timeout(BOUND, cache.wait_ready())
            .await
            .unwrap()
            .unwrap();
    }
    client.put(client.key("shared/x"), "7", None).await.unwrap();
    for cache in &caches {
        wait_for(cache, |s| s.entries.get("x") == Some(&7)).await;
    }

    let during = etcd.metrics().await.unwrap();
    assert_eq!(
        streams(&during) - streams(&before),
        1.0,
        "one gRPC watch stream"
    );
    assert_eq!(
        watchers(&during) - watchers(&before),
        1.0,
        "one etcd watcher"
    );

    drop(caches);
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
        .expect("the shared watch was not cancelled after the last subscriber left");
}
