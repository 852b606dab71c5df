//! Config watches and compare-and-set writes (`coord_discovery::config`) against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::sync::Arc;
use std::time::Duration;

use coord_core::{Client, ClientConfig};
use coord_discovery::config::{Config, ConfigError, ConfigMap, MapSnapshot, Snapshot, Source};
use serde::{Deserialize, Serialize};

const BOUND: Duration = Duration::from_secs(30); // failure bound only

async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

/// The first snapshot that satisfies `done` (failing after `BOUND`).
async fn wait_for<T>(config: &Config<T>, done: impl FnMut(&Snapshot<T>) -> bool) -> Snapshot<T> {
    let mut snapshots = config.receiver();
    let snapshot = tokio::time::timeout(BOUND, snapshots.wait_for(done))
        .await
        .expect("no such snapshot in time")
        .expect("config task gone");
    snapshot.clone()
}

async fn ready<T>(config: &Config<T>) -> Snapshot<T> {
    wait_for(config, Snapshot::is_ready).await
}

/// The first map snapshot that satisfies `done` (failing after `BOUND`).
async fn wait_for_map<T>(
    map: &ConfigMap<T>,
    done: impl FnMut(&MapSnapshot<T>) -> bool,
) -> MapSnapshot<T> {
    let mut snapshots = map.receiver();
    let snapshot = tokio::time::timeout(BOUND, snapshots.wait_for(done))
        .await
        .expect("no such snapshot in time")
        .expect("config map task gone");
    snapshot.clone()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Limits {
    max_jobs: u32,
}

#[tokio::test]
async fn the_default_is_used_while_the_key_is_absent() {
    let client = shared_client("config_default").await;
    let config = Config::new(&client, "limits", Limits { max_jobs: 8 }).unwrap();
    let snapshot = ready(&config).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 8 });
    assert_eq!(snapshot.source, Source::Default);
    assert_eq!(snapshot.mod_revision, 0);
    assert!(snapshot.last_error.is_none());
}

#[tokio::test]
async fn a_stored_value_is_read_at_start() {
    let client = shared_client("config_stored").await;
    let at = client
        .put(client.key("limits"), r#"{"max_jobs":3}"#, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let config = Config::new(&client, "limits", Limits { max_jobs: 8 }).unwrap();
    let snapshot = ready(&config).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 3 });
    assert_eq!(snapshot.source, Source::Stored);
    assert_eq!(snapshot.mod_revision, at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_rapid_updates_end_at_the_last_value_in_revision_order() {
    let client = shared_client("config_rapid").await;
    let mut config = Config::new(&client, "n", 0u64).unwrap();
    ready(&config).await;
    config.borrow_and_update();

    let writer = {
        let config = config.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for n in 1..=1000u64 {
                last = config.set(n).await.unwrap().revision;
            }
            last
        })
    };
    let mut revisions = Vec::new();
    let mut values = Vec::new();
    loop {
        tokio::time::timeout(BOUND, config.changed())
            .await
            .expect("no change in time")
            .unwrap();
        let snapshot = config.borrow_and_update();
        revisions.push(snapshot.revision);
        values.push(*snapshot.value);
        if *snapshot.value == 1000 {
            break;
        }
    }
    let last_written_at = writer.await.unwrap();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions out of order: {revisions:?}"
    );
    assert!(
        values.windows(2).all(|w| w[0] < w[1]),
        "values out of order: {values:?}"
    );
    let last = config.borrow().clone();
    assert_eq!(*last.value, 1000);
    assert_eq!(last.mod_revision, last_written_at);
}

#[tokio::test]
async fn invalid_json_keeps_the_last_good_value_and_reports_the_error() {
    let client = shared_client("config_bad_json").await;
    let config = Config::new(&client, "limits", Limits { max_jobs: 8 }).unwrap();
    ready(&config).await;
    let good_at = config.set(Limits { max_jobs: 5 }).await.unwrap().revision;
    wait_for(&config, |s| s.mod_revision == good_at).await;

    // A raw etcd-client write, as etcdctl or another tool would do it.
    let mut raw = client.etcd().clone();
    let bad_at = raw
        .put(client.key("limits"), "{ not json", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for(&config, |s| s.revision >= bad_at).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 5 });
    assert_eq!(snapshot.source, Source::Stored);
    assert_eq!(snapshot.mod_revision, good_at);
    let error = snapshot.last_error.expect("the decode error is reported");
    assert!(
        matches!(*error, ConfigError::Decode { mod_revision, .. } if mod_revision == bad_at),
        "{error:?}"
    );

    let fixed_at = raw
        .put(client.key("limits"), r#"{"max_jobs":6}"#, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for(&config, |s| s.revision >= fixed_at).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 6 });
    assert_eq!(snapshot.mod_revision, fixed_at);
    assert!(snapshot.last_error.is_none());
}

#[tokio::test]
async fn an_undecodable_value_at_start_leaves_the_default_in_use() {
    let client = shared_client("config_bad_at_start").await;
    client
        .put(client.key("limits"), "[1, 2", None)
        .await
        .unwrap();
    let config = Config::new(&client, "limits", Limits { max_jobs: 8 }).unwrap();
    let snapshot = ready(&config).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 8 });
    assert_eq!(snapshot.source, Source::Default);
    let error = snapshot.last_error.expect("the decode error is reported");
    assert!(matches!(*error, ConfigError::Decode { .. }), "{error:?}");
}

#[tokio::test]
async fn a_value_the_hook_rejects_keeps_the_last_good_one() {
    let client = shared_client("config_validate").await;
    let config = Config::builder(&client, "limits", Limits { max_jobs: 8 })
        .validate(|l: &Limits| {
            if l.max_jobs == 0 {
                Err("max_jobs must be positive")
            } else {
                Ok(())
            }
        })
        .start()
        .unwrap();
    ready(&config).await;
    let good_at = config.set(Limits { max_jobs: 4 }).await.unwrap().revision;
    wait_for(&config, |s| s.mod_revision == good_at).await;

    let rejected_at = client
        .put(client.key("limits"), r#"{"max_jobs":0}"#, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for(&config, |s| s.revision >= rejected_at).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 4 });
    assert_eq!(snapshot.mod_revision, good_at);
    let error = snapshot.last_error.expect("the rejection is reported");
    assert!(
        matches!(*error, ConfigError::Invalid { mod_revision, .. } if mod_revision == rejected_at),
        "{error:?}"
    );
}

#[tokio::test]
async fn writing_a_value_the_hook_rejects_fails_without_writing() {
    let client = shared_client("config_validate_write").await;
    let config = Config::builder(&client, "workers", 1u32)
        .validate(|n: &u32| if *n == 0 { Err("zero") } else { Ok(()) })
        .start()
        .unwrap();
    let error = config.set(0).await.unwrap_err();
    assert!(matches!(error, ConfigError::Invalid { .. }), "{error:?}");
    let error = config.update(|_| 0).await.unwrap_err();
    assert!(matches!(error, ConfigError::Invalid { .. }), "{error:?}");
    let read = client.get(client.key("workers"), None).await.unwrap();
    assert!(read.kvs().is_empty());
}

#[tokio::test]
async fn a_deleted_key_falls_back_to_the_default() {
    let client = shared_client("config_delete").await;
    let config = Config::new(&client, "limits", Limits { max_jobs: 8 }).unwrap();
    ready(&config).await;
    let set_at = config.set(Limits { max_jobs: 2 }).await.unwrap().revision;
    wait_for(&config, |s| s.mod_revision == set_at).await;

    let deleted_at = client
        .delete(client.key("limits"), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for(&config, |s| s.revision >= deleted_at).await;
    assert_eq!(*snapshot.value, Limits { max_jobs: 8 });
    assert_eq!(snapshot.source, Source::Default);
    assert_eq!(snapshot.mod_revision, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_lose_no_increment() {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 50;
    let client = shared_client("config_cas").await;
    let config = Config::new(&client, "counter", 0u64).unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let config = config.clone();
            tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    config.update(|n| n + 1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("updates in time")
            .unwrap();
    }
    let read = client.get(client.key("counter"), None).await.unwrap();
    let stored: u64 = serde_json::from_slice(read.kvs()[0].value()).unwrap();
    assert_eq!(stored, TASKS * INCREMENTS);
    let snapshot = wait_for(&config, |s| *s.value == TASKS * INCREMENTS).await;
    assert_eq!(snapshot.mod_revision, read.kvs()[0].mod_revision());
}

#[tokio::test]
async fn update_of_an_absent_key_starts_from_the_default() {
    let client = shared_client("config_update_absent").await;
    let config = Config::new(&client, "counter", 10u64).unwrap();
    let written = config.update(|n| n + 1).await.unwrap();
    assert_eq!(written.value, 11);
    let snapshot = wait_for(&config, |s| s.revision >= written.revision).await;
    assert_eq!(*snapshot.value, 11);
    assert_eq!(snapshot.source, Source::Stored);
}

#[tokio::test]
async fn update_refuses_to_build_on_an_undecodable_value() {
    let client = shared_client("config_update_bad").await;
    client
        .put(client.key("counter"), "garbage", None)
        .await
        .unwrap();
    let config = Config::new(&client, "counter", 0u64).unwrap();
    let error = config.update(|n| n + 1).await.unwrap_err();
    assert!(matches!(error, ConfigError::Decode { .. }), "{error:?}");
    let read = client.get(client.key("counter"), None).await.unwrap();
    assert_eq!(read.kvs()[0].value(), b"garbage");
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    let client = shared_client("config_names").await;
    for name in ["", "limits/", "a\0b"] {
        let error = Config::new(&client, name, 0u64).unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Core(coord_core::Error::InvalidName { .. })
            ),
            "{name:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn clones_share_one_value() {
    let client = shared_client("config_clones").await;
    let config = Config::new(&client, "n", 0u64).unwrap();
    let other = config.clone();
    let written = other.set(7).await.unwrap();
    let snapshot = wait_for(&config, |s| s.revision >= written.revision).await;
    assert!(Arc::ptr_eq(&snapshot.value, &other.get()));
    assert_eq!(*config.get(), 7);
}

#[cfg(feature = "toml")]
#[tokio::test]
async fn toml_values_are_read_and_written() {
    use coord_discovery::config::Format;
    let client = shared_client("config_toml").await;
    client
        .put(client.key("limits"), "max_jobs = 3\n", None)
        .await
        .unwrap();
    let config = Config::builder(&client, "limits", Limits { max_jobs: 8 })
        .format(Format::Toml)
        .start()
        .unwrap();
    assert_eq!(*ready(&config).await.value, Limits { max_jobs: 3 });
    config
        .update(|l| Limits {
            max_jobs: l.max_jobs + 1,
        })
        .await
        .unwrap();
    let read = client.get(client.key("limits"), None).await.unwrap();
    assert_eq!(read.kvs()[0].value(), b"max_jobs = 4\n");
}

#[tokio::test]
async fn a_map_holds_stored_entries_and_defaults_of_absent_ones() {
    let client = shared_client("map_defaults").await;
    let b_at = client
        .put(client.key("quotas/b"), "20", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .put(client.key("quotas/c"), "30", None)
        .await
        .unwrap();
    client.put(client.key("quotasx"), "99", None).await.unwrap(); // outside the prefix
    let map = ConfigMap::builder(&client, "quotas")
        .defaults([("a".to_owned(), 1u32), ("b".to_owned(), 2)])
        .start()
        .unwrap();
    let snapshot = wait_for_map(&map, MapSnapshot::is_ready).await;
    let names: Vec<&str> = snapshot.entries.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(*snapshot.entries["a"].value, 1);
    assert_eq!(snapshot.entries["a"].source, Source::Default);
    assert_eq!(*snapshot.entries["b"].value, 20);
    assert_eq!(snapshot.entries["b"].mod_revision, b_at);
    assert_eq!(*snapshot.entries["c"].value, 30);
    assert!(snapshot.errors.is_empty());
}

#[tokio::test]
async fn a_bad_map_entry_keeps_its_last_good_value_and_spares_the_others() {
    let client = shared_client("map_bad").await;
    let map = ConfigMap::<u32>::builder(&client, "quotas")
        .start()
        .unwrap();
    map.set("a", 1).await.unwrap();
    let b_at = map.set("b", 2).await.unwrap().revision;
    wait_for_map(&map, |s| s.revision >= b_at).await;

    let mut raw = client.etcd().clone();
    let bad_at = raw
        .put(client.key("quotas/a"), "nope", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for_map(&map, |s| s.revision >= bad_at).await;
    assert_eq!(snapshot.get("a").as_deref(), Some(&1));
    assert_eq!(snapshot.get("b").as_deref(), Some(&2));
    assert!(
        matches!(*snapshot.errors["a"], ConfigError::Decode { mod_revision, .. } if mod_revision == bad_at)
    );

    let fixed_at = map.set("a", 3).await.unwrap().revision;
    let snapshot = wait_for_map(&map, |s| s.revision >= fixed_at).await;
    assert_eq!(snapshot.get("a").as_deref(), Some(&3));
    assert!(snapshot.errors.is_empty());
}

#[tokio::test]
async fn a_deleted_map_entry_falls_back_to_its_default_or_leaves() {
    let client = shared_client("map_delete").await;
    let map = ConfigMap::builder(&client, "quotas")
        .defaults([("a".to_owned(), 1u32)])
        .start()
        .unwrap();
    map.set("a", 10).await.unwrap();
    let b_at = map.set("b", 20).await.unwrap().revision;
    wait_for_map(&map, |s| s.revision >= b_at).await;

    let deleted_at = client
        .delete(
            client.key("quotas/"),
            Some(coord_core::etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let snapshot = wait_for_map(&map, |s| s.revision >= deleted_at).await;
    let names: Vec<&str> = snapshot.entries.keys().map(String::as_str).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(*snapshot.entries["a"].value, 1);
    assert_eq!(snapshot.entries["a"].source, Source::Default);
}

#[tokio::test]
async fn a_transaction_writing_several_entries_is_seen_at_once() {
    use coord_core::etcd_client::{Txn, TxnOp};
    let client = shared_client("map_txn").await;
    let map = ConfigMap::<u32>::builder(&client, "quotas")
        .start()
        .unwrap();
    wait_for_map(&map, MapSnapshot::is_ready).await;
    let at = client
        .txn(Txn::new().and_then([
            TxnOp::put(client.key("quotas/a"), "1", None),
            TxnOp::put(client.key("quotas/b"), "2", None),
        ]))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // The first snapshot showing either entry must show both.
    let snapshot = wait_for_map(&map, |s| !s.entries.is_empty()).await;
    assert_eq!(snapshot.revision, at);
    assert_eq!(snapshot.entries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_map_updates_lose_no_increment() {
    let client = shared_client("map_cas").await;
    let map = ConfigMap::<u64>::builder(&client, "counters")
        .start()
        .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let map = map.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    map.update("hits", |n| n.copied().unwrap_or(0) + 1)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("updates in time")
            .unwrap();
    }
    let snapshot = wait_for_map(&map, |s| s.get("hits").is_some_and(|n| *n == 100)).await;
    assert_eq!(snapshot.entries["hits"].source, Source::Stored);
}

#[tokio::test]
async fn a_config_disconnected_across_a_compaction_catches_up_keeping_the_last_good_value() {
    let etcd = coord_testkit::Etcd::start().await.unwrap();
    let proxy = coord_testkit::FaultProxy::start(etcd.client_addr())
        .await
        .unwrap();
    let direct = ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace("config_compaction"))
        .connect()
        .await
        .unwrap();
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let config = Config::new(&via_proxy, "n", 0u64).unwrap();
    let writer = Config::new(&direct, "n", 0u64).unwrap();
    // A delivered event proves the watch is established through the proxy.
    let good_at = writer.set(1).await.unwrap().revision;
    wait_for(&config, |s| s.mod_revision == good_at).await;

    proxy.blackhole();
    proxy.cut();
    writer.set(2).await.unwrap();
    direct.delete(direct.key("n"), None).await.unwrap();
    let bad_at = direct
        .put(direct.key("n"), "oops", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.compact().await.unwrap();
    proxy.heal();

    // The intermediate values were compacted away: the stored value is bad, so the last good
    // value this reader saw stays in use, and the error says why.
    let snapshot = wait_for(&config, |s| s.revision >= bad_at).await;
    assert_eq!(*snapshot.value, 1);
    assert_eq!(snapshot.mod_revision, good_at);
    let error = snapshot.last_error.expect("the decode error is reported");
    assert!(
        matches!(*error, ConfigError::Decode { mod_revision, .. } if mod_revision == bad_at),
        "{error:?}"
    );

    let fixed_at = writer.set(5).await.unwrap().revision;
    let snapshot = wait_for(&config, |s| s.revision >= fixed_at).await;
    assert_eq!(*snapshot.value, 5);
    assert!(snapshot.last_error.is_none());
}
