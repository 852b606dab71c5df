//! The watch engine (`coord_core::stream::Watcher`) against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{client_of, shared_client};
use coord_core::stream::{Event, Watcher};
use coord_core::{Client, ClientConfig, RetryPolicy};
use coord_testkit::{Etcd, EtcdCluster, FaultProxy};
use futures_util::StreamExt;

const BOUND: Duration = Duration::from_secs(30); // failure bound only

async fn next(watcher: &mut Watcher) -> Event {
    tokio::time::timeout(BOUND, watcher.next())
        .await
        .expect("no event in time")
        .expect("watcher error")
}

async fn put(client: &Client, key: &str, value: &str) -> i64 {
    RetryPolicy::new()
        .retry(|| client.put(key.to_owned(), value.to_owned(), None))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

async fn delete(client: &Client, key: &str) -> i64 {
    client
        .delete(key.to_owned(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

fn key_of(event: &Event) -> String {
    match event {
        Event::Put { entry } => entry.key_str().unwrap().to_owned(),
        Event::Delete { key, .. } => String::from_utf8(key.clone()).unwrap(),
        other => panic!("expected a put or delete, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_event_is_the_current_state_as_a_resync() {
    let client = shared_client("stream_initial").await;
    let prefix = client.key("p/");
    put(&client, &format!("{prefix}a"), "1").await;
    let at = put(&client, &format!("{prefix}b"), "2").await;
    put(&client, &client.key("outside"), "x").await;

    let mut watcher = Watcher::prefix(&client, prefix.clone());
    let Event::Resync {
        revision,
        puts,
        deletes,
    } = next(&mut watcher).await
    else {
        panic!("expected a resync first");
    };
    assert!(revision >= at);
    assert!(deletes.is_empty());
    let got: Vec<(String, Vec<u8>)> = puts
        .iter()
        .map(|e| (e.key_str().unwrap().to_owned(), e.value.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (format!("{prefix}a"), b"1".to_vec()),
            (format!("{prefix}b"), b"2".to_vec())
        ]
    );
}

#[tokio::test]
async fn compaction_while_disconnected_yields_a_resync_with_the_exact_diff() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "stream_compaction").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let prefix = direct.key("p/");
    let k = |name: &str| format!("{prefix}{name}");
    for name in ["same", "changed", "deleted", "recreated"] {
        put(&direct, &k(name), "1").await;
    }

    let mut watcher = Watcher::prefix(&via_proxy, prefix.clone());
    assert!(matches!(next(&mut watcher).await, Event::Resync { .. }));
    // A delivered event proves the watch is established through the proxy.
    put(&direct, &k("seen"), "1").await;
    assert_eq!(key_of(&next(&mut watcher).await), k("seen"));

    proxy.blackhole();
    proxy.cut();
    put(&direct, &k("changed"), "2").await;
    delete(&direct, &k("deleted")).await;
    delete(&direct, &k("seen")).await;
    delete(&direct, &k("recreated")).await;
    put(&direct, &k("recreated"), "2").await;
    put(&direct, &k("new"), "1").await;
    put(&direct, &k("new"), "2").await;
    put(&direct, &k("transient"), "1").await;
    let last = delete(&direct, &k("transient")).await;
    etcd.compact().await.unwrap();
    proxy.heal();

    let Event::Resync {
        revision,
        puts,
        deletes,
    } = next(&mut watcher).await
    else {
        panic!("expected a resync after the compaction");
    };
    assert!(revision >= last);
    let puts: Vec<(String, Vec<u8>)> = puts
        .iter()
        .map(|e| (e.key_str().unwrap().to_owned(), e.value.clone()))
        .collect();
    assert_eq!(
        puts,
        vec![
            (k("changed"), b"2".to_vec()),
            (k("new"), b"2".to_vec()),
            (k("recreated"), b"2".to_vec()),
        ]
    );
    let deletes: Vec<String> = deletes
        .into_iter()
        .map(|key| String::from_utf8(key).unwrap())
        .collect();
    assert_eq!(deletes, vec![k("deleted"), k("seen")]);

    // And it goes on from the read.
    let after = put(&direct, &k("after"), "1").await;
    let event = next(&mut watcher).await;
    assert_eq!((key_of(&event), event.revision()), (k("after"), after));
}

#[tokio::test]
async fn an_etcd_restart_loses_and_repeats_nothing() {
    let mut etcd = Etcd::start().await.unwrap();
    let client = client_of(&etcd, "stream_restart").await;
    let prefix = client.key("p/");
    let mut watcher = Watcher::prefix(&client, prefix.clone());
    assert!(matches!(next(&mut watcher).await, Event::Resync { .. }));

    let mut written = Vec::new();
    for i in 0..5 {
        let key = format!("{prefix}{i}");
        written.push((key.clone(), put(&client, &key, "v").await));
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let event = next(&mut watcher).await;
        seen.push((key_of(&event), event.revision()));
    }

    etcd.kill();
    etcd.restart().await.unwrap();
    for i in 5..10 {
        let key = format!("{prefix}{i}");
        written.push((key.clone(), put(&client, &key, "v").await));
    }
    for _ in 5..10 {
        let event = next(&mut watcher).await;
        seen.push((key_of(&event), event.revision()));
    }
    assert_eq!(seen, written);
    // Nothing more (no duplicate) before the next write.
    let marker = put(&client, &format!("{prefix}marker"), "v").await;
    assert_eq!(next(&mut watcher).await.revision(), marker);
}

#[tokio::test]
async fn rapid_updates_arrive_in_order_ending_with_the_last() {
    let client = shared_client("stream_rapid").await;
    let key = client.key("k");
    let mut events = std::pin::pin!(Watcher::key(&client, key.clone()).into_stream());
    let first = tokio::time::timeout(BOUND, events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, Event::Resync { .. }));

    let writer = tokio::spawn({
        let (client, key) = (client.clone(), key.clone());
        async move {
            for i in 0..1000 {
                put(&client, &key, &i.to_string()).await;
            }
        }
    });
    let mut revisions = Vec::new();
    let mut values = Vec::new();
    while values.last().map(String::as_str) != Some("999") {
        let event = tokio::time::timeout(BOUND, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Event::Put { entry } = event else {
            panic!("expected puts only, got {event:?}");
        };
        revisions.push(entry.mod_revision);
        values.push(String::from_utf8(entry.value).unwrap());
    }
    writer.await.unwrap();
    assert_eq!(values, (0..1000).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(revisions.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn failing_over_between_members_loses_and_repeats_nothing() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let client = ClientConfig::new(cluster.endpoints())
        .with_namespace(coord_testkit::unique_namespace("stream_failover"))
        .connect()
        .await
        .unwrap();
    let prefix = client.key("p/");
    let mut watcher = Watcher::prefix(&client, prefix.clone());
    assert!(matches!(next(&mut watcher).await, Event::Resync { .. }));
    let end = format!("{prefix}end");
    let reader = tokio::spawn({
        let end = end.clone();
        async move {
            let mut seen = Vec::new();
            loop {
                let event = next(&mut watcher).await;
                let key = key_of(&event);
                seen.push((key.clone(), event.revision()));
                if key == end {
                    return seen;
                }
            }
        }
    });

    // Every member goes down once (one of them serves the watch stream), with writes meanwhile.
    let mut written = Vec::new();
    for member in 0..3 {
        cluster.kill(member).unwrap();
        for i in 0..3 {
            let key = format!("{prefix}{member}-{i}");
            written.push((key.clone(), put(&client, &key, "v").await));
        }
        cluster.restart(member).await.unwrap();
    }
    written.push((end.clone(), put(&client, &end, "v").await));

    let seen = tokio::time::timeout(BOUND, reader).await.unwrap().unwrap();
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{seen:?}");
    // A put retried after an ambiguous failure may have been applied twice; every acknowledged
    // write is there, and nothing else but such repeats.
    for write in &written {
        assert!(seen.contains(write), "{write:?} missing from {seen:?}");
    }
    for (key, _) in &seen {
        assert!(written.iter().any(|(k, _)| k == key), "{key} never written");
    }
}

#[tokio::test]
async fn a_stalled_watch_is_recreated_and_loses_and_repeats_nothing() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "stream_stall").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let prefix = direct.key("p/");
    let mut watcher =
        Watcher::prefix(&via_proxy, prefix.clone()).stall_after(Duration::from_millis(200));
    assert!(matches!(next(&mut watcher).await, Event::Resync { .. }));
    let mut written = vec![(
        format!("{prefix}before"),
        put(&direct, &format!("{prefix}before"), "v").await,
    )];
    let event = next(&mut watcher).await;
    let mut seen = vec![(key_of(&event), event.revision())];

    // Silence without a reset: the stall bound fires (several times) while writes go on.
    proxy.blackhole();
    let stalled = async {
        loop {
            let event = watcher.next().await.unwrap();
            seen.push((key_of(&event), event.revision()));
        }
    };
    let writes = async {
        for i in 0..5 {
            let key = format!("{prefix}{i}");
            written.push((key.clone(), put(&direct, &key, "v").await));
            tokio::time::sleep(Duration::from_millis(150)).await; // let the bound elapse
        }
    };
    tokio::select! {
        () = stalled => unreachable!(),
        () = writes => {}
    }
    proxy.heal();
    while seen.len() < written.len() {
        let event = next(&mut watcher).await;
        seen.push((key_of(&event), event.revision()));
    }
    assert_eq!(seen, written);
    let marker = put(&direct, &format!("{prefix}marker"), "v").await;
    assert_eq!(next(&mut watcher).await.revision(), marker);
}

#[tokio::test]
async fn a_catch_up_larger_than_tonics_default_message_limit_is_delivered() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "stream_oversized").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();
    let prefix = direct.key("p/");
    let mut watcher = Watcher::prefix(&via_proxy, prefix.clone());
    assert!(matches!(next(&mut watcher).await, Event::Resync { .. }));
    put(&direct, &format!("{prefix}seen"), "v").await;
    next(&mut watcher).await;

    // 6 MiB of events to catch up on: more than tonic's default 4 MiB per message.
    proxy.blackhole();
    proxy.cut();
    let big = "x".repeat(1024 * 1024);
    let mut last = 0;
    for i in 0..6 {
        last = put(&direct, &format!("{prefix}{i}"), &big).await;
    }
    proxy.heal();

    // Every key arrives (as events, or as a resync if the engine had to re-read), none twice.
    let mut seen = std::collections::BTreeSet::new();
    let mut revision = 0;
    while revision < last {
        let event = next(&mut watcher).await;
        revision = event.revision();
        match event {
            Event::Put { entry, .. } => assert!(seen.insert(entry.key_str().unwrap().to_owned())),
            Event::Resync { puts, deletes, .. } => {
                assert!(deletes.is_empty());
                for entry in puts {
                    assert!(seen.insert(entry.key_str().unwrap().to_owned()));
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (0..6).map(|i| format!("{prefix}{i}")).collect());
    let after = put(&direct, &format!("{prefix}after"), "v").await;
    assert_eq!(next(&mut watcher).await.revision(), after);
}
