//! Service registration and discovery under faults: partitions, compaction while disconnected,
//! etcd restarts. Each test owns its server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::collections::BTreeSet;
use std::time::Duration;

use coord_core::etcd_client::{GetOptions, PutOptions};
use coord_core::{Client, ClientConfig, Session};
use coord_discovery::service::{
    Change, Changes, Discovery, Instance, RegistrationState, ServiceError, ServiceSet, register,
};
use coord_testkit::{Etcd, FaultProxy};
use serde::{Deserialize, Serialize};

const BOUND: Duration = Duration::from_secs(60); // failure bound only

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    generation: u32,
}

async fn client_of(endpoint: String, namespace: &str) -> Client {
    ClientConfig::new([endpoint])
        .with_namespace(namespace)
        .connect()
        .await
        .unwrap()
}

async fn next_change<T>(changes: &mut Changes<T>) -> Change<T> {
    tokio::time::timeout(BOUND, changes.next())
        .await
        .expect("no change in time")
        .expect("discovery gone")
}

fn describe<T>(change: &Change<T>) -> String {
    match change {
        Change::Insert(e) => format!("+{}", e.id),
        Change::Update { new, .. } => format!("~{}", new.id),
        Change::Remove(e) => format!("-{}", e.id),
        _ => "?".to_owned(),
    }
}

/// The instance ids etcd holds for `service` right now.
async fn stored_ids(client: &Client, service: &str) -> BTreeSet<String> {
    let prefix = client.key(&format!("{service}/"));
    client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap()[prefix.len()..].to_owned())
        .collect()
}

fn ids<T>(set: &ServiceSet<T>) -> BTreeSet<String> {
    set.endpoints.keys().cloned().collect()
}

#[tokio::test]
async fn a_partitioned_instance_disappears_once_its_lease_expires() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let namespace = coord_testkit::unique_namespace("svc_partition");
    let direct = client_of(etcd.endpoint(), &namespace).await;
    let partitioned = client_of(proxy.endpoint(), &namespace).await;

    let session = Session::new(partitioned, Duration::from_secs(3))
        .await
        .unwrap();
    let registration = register(&session, "api", Instance::new("api-1", "h:1", ()))
        .await
        .unwrap();
    let discovery = Discovery::<()>::builder(&direct, "api").start().unwrap();
    let mut changes = discovery.changes();
    assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));

    proxy.blackhole();
    let Change::Remove(gone) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
    assert_eq!(gone.id, "api-1");
    // Removed because the server expired the lease (nobody could revoke it).
    let ttl = direct
        .lease_time_to_live(session.lease_id(), false)
        .await
        .unwrap();
    assert_eq!(ttl.ttl(), -1, "the lease is gone on the server");
    // The registration noticed the loss (before the server expired the lease) and keeps trying.
    let mut state = registration.subscribe();
    tokio::time::timeout(
        BOUND,
        state.wait_for(|s| matches!(s, RegistrationState::Reregistering { .. })),
    )
    .await
    .unwrap()
    .unwrap();
}

#[tokio::test]
async fn re_registration_after_a_partition_carries_the_metadata_set_during_it() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let namespace = coord_testkit::unique_namespace("svc_rereg");
    let direct = client_of(etcd.endpoint(), &namespace).await;
    let partitioned = client_of(proxy.endpoint(), &namespace).await;

    let session = Session::new(partitioned, Duration::from_secs(3))
        .await
        .unwrap();
    let registration = register(
        &session,
        "api",
        Instance::new("api-1", "h:1", Meta { generation: 1 }),
    )
    .await
    .unwrap();
    registration.update(Meta { generation: 2 }).await.unwrap();
    let discovery = Discovery::<Meta>::builder(&direct, "api").start().unwrap();
    let mut changes = discovery.changes();
    let Change::Insert(before) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(before.metadata, Some(Meta { generation: 2 }));

    proxy.blackhole();
    let mut state = registration.subscribe();
    tokio::time::timeout(
        BOUND,
        state.wait_for(|s| matches!(s, RegistrationState::Reregistering { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    // Set while not registered: kept for the re-registration.
    let error = registration
        .update(Meta { generation: 3 })
        .await
        .unwrap_err();
    assert!(
        matches!(error, ServiceError::NotRegistered { .. }),
        "{error:?}"
    );
    assert!(matches!(next_change(&mut changes).await, Change::Remove(_)));

    proxy.heal();
    let Change::Insert(after) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(
        after.metadata,
        Some(Meta { generation: 3 }),
        "never a stale value"
    );
    assert_ne!(after.lease, before.lease);
    tokio::time::timeout(BOUND, state.wait_for(RegistrationState::is_registered))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored_ids(&direct, "api").await,
        BTreeSet::from(["api-1".to_owned()])
    );
}

#[tokio::test]
async fn a_compaction_while_disconnected_leaves_no_phantom_and_misses_no_remove() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let namespace = coord_testkit::unique_namespace("svc_compact");
    let direct = client_of(etcd.endpoint(), &namespace).await;
    let watching = client_of(proxy.endpoint(), &namespace).await;

    let session = Session::new(direct.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let a = register(&session, "api", Instance::new("a", "h:1", ()))
        .await
        .unwrap();
    let b = register(&session, "api", Instance::new("b", "h:2", ()))
        .await
        .unwrap();
    let discovery = Discovery::<()>::builder(&watching, "api").start().unwrap();
    let mut changes = discovery.changes();
    for _ in 0..2 {
        assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));
    }

    // The watcher misses everything from here on: the connection is partitioned, then reset.
    proxy.blackhole();
    a.deregister().await.unwrap();
    let c = register(&session, "api", Instance::new("c", "h:3", ()))
        .await
        .unwrap();
    b.set_status(coord_discovery::service::Status::Draining)
        .await
        .unwrap();
    etcd.compact().await.unwrap();
    proxy.cut();
    proxy.heal();

    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        seen.insert(describe(&next_change(&mut changes).await));
    }
    assert_eq!(
        seen,
        BTreeSet::from(["-a".to_owned(), "+c".to_owned(), "~b".to_owned()])
    );
    let set = changes.current().clone();
    assert_eq!(ids(&set), stored_ids(&direct, "api").await);
    assert_eq!(ids(&discovery.snapshot()), ids(&set));
    drop(c);
}

#[tokio::test]
async fn an_etcd_restart_leaves_no_phantom() {
    let mut etcd = Etcd::start().await.unwrap();
    let namespace = coord_testkit::unique_namespace("svc_restart");
    let client = client_of(etcd.endpoint(), &namespace).await;

    // A live registration, and a dead process's entry (Go-style, on a lease nobody renews).
    let session = Session::new(client.clone(), Duration::from_secs(20))
        .await
        .unwrap();
    let _alive = register(&session, "api", Instance::new("alive", "h:1", ()))
        .await
        .unwrap();
    let dead_lease = client.lease_grant(3).await.unwrap().id();
    client
        .put(
            client.key("api/dead"),
            r#"{"Op":0,"Addr":"h:2","Metadata":null}"#,
            Some(PutOptions::new().with_lease(dead_lease)),
        )
        .await
        .unwrap();
    let discovery = Discovery::<()>::builder(&client, "api").start().unwrap();
    let mut changes = discovery.changes();
    for _ in 0..2 {
        assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));
    }

    etcd.kill();
    etcd.restart().await.unwrap();
    let _new = register(&session, "api", Instance::new("new", "h:3", ()))
        .await
        .unwrap();

    // The dead entry goes when its lease expires (etcd extends leases on restart); the live one
    // never flaps.
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        let change = describe(&next_change(&mut changes).await);
        assert!(change != "-alive", "the live instance was removed");
        seen.insert(change);
    }
    assert_eq!(
        seen,
        BTreeSet::from(["+new".to_owned(), "-dead".to_owned()])
    );
    assert_eq!(
        ids(changes.current()),
        BTreeSet::from(["alive".to_owned(), "new".to_owned()])
    );
    assert_eq!(ids(changes.current()), stored_ids(&client, "api").await);
}
