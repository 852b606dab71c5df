//! Service registration and discovery (`coord_discovery::service`) against a real etcd.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::sync::Arc;
use std::time::Duration;

use coord_core::etcd_client::{GetOptions, PutOptions};
use coord_core::{Client, ClientConfig, Session};
use coord_discovery::service::{
    Change, Changes, Discovery, Instance, Origin, Registration, RegistrationState, ServiceError,
    ServiceSet, Status, register,
};
use serde::{Deserialize, Serialize};

const BOUND: Duration = Duration::from_secs(30); // failure bound only
const TTL: Duration = Duration::from_secs(5);

async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    shard: u32,
}

async fn next_change<T>(changes: &mut Changes<T>) -> Change<T> {
    tokio::time::timeout(BOUND, changes.next())
        .await
        .expect("no change in time")
        .expect("discovery gone")
}

async fn set_where<T>(
    discovery: &Discovery<T>,
    mut done: impl FnMut(&ServiceSet<T>) -> bool,
) -> Arc<ServiceSet<T>> {
    let mut sets = discovery.receiver();
    let set = tokio::time::timeout(BOUND, sets.wait_for(|set| done(set)))
        .await
        .expect("no such set in time")
        .expect("discovery gone");
    set.clone()
}

/// Every key under the client's namespace.
async fn namespace_keys(client: &Client) -> Vec<String> {
    client
        .get(client.key(""), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_registration_is_the_next_change_a_watcher_sees() {
    let client = shared_client("svc_visible").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let mut discovery = Discovery::<Meta>::builder(&client, "api").start().unwrap();
    assert!(discovery.wait_ready().await.unwrap().is_empty());
    let mut changes = discovery.changes();

    let registration = register(
        &session,
        "api",
        Instance::new("api-1", "10.0.0.1:8080", Meta { shard: 1 }).with_zone("z1"),
    )
    .await
    .unwrap();
    let ownership = registration.ownership().unwrap();

    let Change::Insert(endpoint) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(endpoint.id, "api-1");
    assert_eq!(endpoint.key, registration.key());
    assert_eq!(endpoint.addr, "10.0.0.1:8080");
    assert_eq!(endpoint.origin, Origin::Coord);
    assert_eq!(endpoint.status, Status::Healthy);
    assert_eq!(endpoint.zone.as_deref(), Some("z1"));
    assert_eq!(endpoint.metadata, Some(Meta { shard: 1 }));
    assert_eq!(endpoint.lease, session.lease_id());
    assert_eq!(endpoint.create_revision, ownership.token().revision());
    // The first set at the registration's revision already holds it.
    let set = discovery.snapshot();
    assert_eq!(set.revision, ownership.token().revision());
    assert!(set.get("api-1").is_some());
}

#[tokio::test]
async fn status_and_metadata_updates_are_updates_of_the_same_instance() {
    let client = shared_client("svc_update").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = register(
        &session,
        "api",
        Instance::new("api-1", "h:1", Meta { shard: 1 }),
    )
    .await
    .unwrap();
    let discovery = Discovery::<Meta>::builder(&client, "api").start().unwrap();
    let mut changes = discovery.changes();
    assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));

    registration.set_status(Status::Draining).await.unwrap();
    let Change::Update { old, new } = next_change(&mut changes).await else {
        panic!("not an update")
    };
    assert_eq!(
        (old.status, new.status),
        (Status::Healthy, Status::Draining)
    );
    assert_eq!(old.create_revision, new.create_revision);

    registration.update(Meta { shard: 2 }).await.unwrap();
    let Change::Update { new, .. } = next_change(&mut changes).await else {
        panic!("not an update")
    };
    assert_eq!(new.metadata, Some(Meta { shard: 2 }));
    assert_eq!(new.status, Status::Draining, "the status is kept");
    assert_eq!(registration.instance().await.metadata, Meta { shard: 2 });
}

#[tokio::test]
async fn deregistering_removes_the_instance_and_so_does_dropping_the_handle() {
    let client = shared_client("svc_deregister").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let discovery = Discovery::<()>::builder(&client, "api").start().unwrap();
    let mut changes = discovery.changes();

    let a = register(&session, "api", Instance::new("a", "h:1", ()))
        .await
        .unwrap();
    let b = register(&session, "api", Instance::new("b", "h:2", ()))
        .await
        .unwrap();
    let mut b_state = b.subscribe();
    for _ in 0..2 {
        assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));
    }

    a.deregister().await.unwrap();
    let Change::Remove(gone) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
    assert_eq!(gone.id, "a");

    drop(b);
    let Change::Remove(gone) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
    assert_eq!(gone.id, "b");
    b_state
        .wait_for(|s| matches!(s, RegistrationState::Deregistered))
        .await
        .unwrap();
    assert!(namespace_keys(&client).await.is_empty());
    assert!(session.is_alive(), "the shared session is not affected");
}

#[tokio::test]
async fn an_id_held_by_another_process_is_a_conflict_and_is_not_overwritten() {
    let client = shared_client("svc_conflict").await;
    // The other process: its own client (another endpoint list) and session.
    let etcd = coord_testkit::shared().await.unwrap();
    let proxy = coord_testkit::FaultProxy::start(etcd.client_addr())
        .await
        .unwrap();
    let other = ClientConfig::new([proxy.endpoint()])
        .with_namespace(client.namespace())
        .connect()
        .await
        .unwrap();
    let theirs = Session::new(other, TTL).await.unwrap();
    let _held = register(
        &theirs,
        "api",
        Instance::new("api-1", "them:1", Meta { shard: 1 }),
    )
    .await
    .unwrap();

    let ours = Session::new(client.clone(), TTL).await.unwrap();
    let error = register(
        &ours,
        "api",
        Instance::new("api-1", "us:1", Meta { shard: 2 }),
    )
    .await
    .unwrap_err();
    match &error {
        ServiceError::Conflict { key, lease } => {
            assert_eq!(key, &client.key("api/api-1"));
            assert_eq!(*lease, theirs.lease_id());
        }
        other => panic!("not a conflict: {other:?}"),
    }
    let read = client.get(client.key("api/api-1"), None).await.unwrap();
    assert!(
        std::str::from_utf8(read.kvs()[0].value())
            .unwrap()
            .contains("them:1")
    );
}

#[tokio::test]
async fn the_same_id_twice_in_one_process_is_refused() {
    let client = shared_client("svc_twice").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let first = register(&session, "api", Instance::new("api-1", "h:1", ()))
        .await
        .unwrap();
    let error = register(&session, "api", Instance::new("api-1", "h:2", ()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ServiceError::AlreadyRegistered { .. }),
        "{error:?}"
    );
    // Once the first is gone, the id is free again.
    first.deregister().await.unwrap();
    let again = register(&session, "api", Instance::new("api-1", "h:2", ()))
        .await
        .unwrap();
    assert!(again.state().is_registered());
}

#[tokio::test]
async fn invalid_names_ids_and_addresses_are_rejected_and_nothing_is_written() {
    let client = shared_client("svc_invalid").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    for service in ["", "api/", "a\0b"] {
        let error = register(&session, service, Instance::new("i", "h:1", ()))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServiceError::InvalidService { .. }),
            "{service:?}: {error:?}"
        );
        assert!(matches!(
            Discovery::<()>::builder(&client, service).start(),
            Err(ServiceError::InvalidService { .. })
        ));
    }
    for id in ["", "a/b", "x\0"] {
        let error = register(&session, "api", Instance::new(id, "h:1", ()))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServiceError::InvalidInstanceId { .. }),
            "{id:?}: {error:?}"
        );
    }
    for addr in ["", "h :1"] {
        let error = register(&session, "api", Instance::new("i", addr, ()))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServiceError::InvalidAddr { .. }),
            "{addr:?}: {error:?}"
        );
    }
    // Metadata that cannot be JSON (a map with non-string keys).
    let bad = std::collections::HashMap::from([((1, 2), 3)]);
    let error = register(&session, "api", Instance::new("i", "h:1", bad))
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::Encode { .. }), "{error:?}");
    // A NaN or infinite float: JSON would store `null`, which no reader could decode.
    for bad in [f64::NAN, f64::INFINITY] {
        let error = register(&session, "api", Instance::new("i", "h:1", vec![1.0, bad]))
            .await
            .unwrap_err();
        assert!(
            matches!(error, ServiceError::Encode { .. }),
            "{bad}: {error:?}"
        );
    }
    assert!(namespace_keys(&client).await.is_empty());
    // Nor can an update bring one in: refused, and the stored metadata stays as it was.
    let registration = register(&session, "api", Instance::new("i", "h:1", vec![1.0]))
        .await
        .unwrap();
    let error = registration.update(vec![f64::NAN]).await.unwrap_err();
    assert!(matches!(error, ServiceError::Encode { .. }), "{error:?}");
    assert_eq!(registration.instance().await.metadata, vec![1.0]);
    let stored = client.get(client.key("api/i"), None).await.unwrap();
    let value = stored.kvs()[0].value_str().unwrap();
    assert!(value.contains(r#""payload":[1.0]"#), "{value}");
}

#[tokio::test]
async fn malformed_entries_are_skipped_and_reported() {
    let client = shared_client("svc_malformed").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let _good = register(
        &session,
        "api",
        Instance::new("good", "h:1", Meta { shard: 1 }),
    )
    .await
    .unwrap();
    for (id, value) in [
        ("not-json", "hello"),
        ("no-addr", r#"{"Op":0,"Metadata":null}"#),
        ("bad-addr", r#"{"Op":0,"Addr":42}"#),
        (
            "bad-payload",
            r#"{"Op":0,"Addr":"h:2","Metadata":{"coord":1,"status":"healthy","payload":{"shard":"x"}}}"#,
        ),
    ] {
        client
            .put(client.key(&format!("api/{id}")), value, None)
            .await
            .unwrap();
    }
    // A nested service's instance is not one of ours, and not an error either.
    client
        .put(client.key("api/v2/x"), r#"{"Addr":"h:3"}"#, None)
        .await
        .unwrap();

    let mut discovery = Discovery::<Meta>::builder(&client, "api").start().unwrap();
    let set = discovery.wait_ready().await.unwrap();
    assert_eq!(set.endpoints.keys().collect::<Vec<_>>(), ["good"]);
    let mut skipped: Vec<_> = set
        .malformed
        .iter()
        .map(|m| m.key.trim_start_matches(&client.key("api/")).to_owned())
        .collect();
    skipped.sort();
    assert_eq!(skipped, ["bad-addr", "bad-payload", "no-addr", "not-json"]);

    // A fixed entry replaces its error; a deleted one clears it.
    client
        .put(client.key("api/not-json"), r#"{"Op":0,"Addr":"h:9"}"#, None)
        .await
        .unwrap();
    client
        .delete(client.key("api/no-addr"), None)
        .await
        .unwrap();
    let set = set_where(&discovery, |s| s.malformed.len() == 2).await;
    assert!(set.get("not-json").is_some());
    assert_eq!(set.len(), 2);
}

/// Go's `endpoints.Update` as `encoding/json` decodes it into Go's types (`Op uint8`,
/// `Addr string`, `Metadata any`); `Key` is not part of the stored value.
#[derive(Debug, Deserialize)]
#[allow(non_snake_case, dead_code)]
struct GoUpdate {
    Op: u8,
    Addr: String,
    Metadata: serde_json::Value,
}

#[tokio::test]
async fn entries_written_like_gos_endpoints_manager_are_discovered() {
    let client = shared_client("svc_go_in").await;
    let etcd = coord_testkit::shared().await.unwrap();
    let mut go = etcd.client().await.unwrap();
    let lease = go.lease_grant(30, None).await.unwrap().id();
    // endpoints.Manager.AddEndpoint(ctx, target+"/"+id, Endpoint{Addr, Metadata}, WithLease):
    // json.Marshal(internal.Update{Op: Add, Addr, Metadata}).
    for (id, value) in [
        (
            "go-1",
            r#"{"Op":0,"Addr":"10.1.0.1:50051","Metadata":null}"#,
        ),
        (
            "go-2",
            r#"{"Op":0,"Addr":"10.1.0.2:50051","Metadata":{"region":"eu"}}"#,
        ),
    ] {
        go.put(
            client.key(&format!("grpc/echo/{id}")),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    let mut discovery = Discovery::<Meta>::builder(&client, "grpc/echo")
        .start()
        .unwrap();
    let set = discovery.wait_ready().await.unwrap();
    assert!(set.malformed.is_empty(), "{:?}", set.malformed);
    let go1 = set.get("go-1").unwrap();
    assert_eq!(go1.addr, "10.1.0.1:50051");
    assert_eq!(go1.origin, Origin::Foreign);
    assert_eq!(go1.status, Status::Healthy);
    assert_eq!(go1.metadata, None);
    assert_eq!(go1.raw_metadata, None);
    assert_eq!(go1.lease.get(), lease);
    let go2 = set.get("go-2").unwrap();
    assert_eq!(go2.raw_metadata, Some(serde_json::json!({"region": "eu"})));

    // Go's DeleteEndpoint (or the lease's expiry) removes them.
    go.lease_revoke(lease).await.unwrap();
    set_where(&discovery, |s| s.is_empty()).await;
}

#[tokio::test]
async fn what_we_write_decodes_as_gos_endpoints_update() {
    let client = shared_client("svc_go_out").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = register(
        &session,
        "grpc/echo",
        Instance::new("rs-1", "10.2.0.1:50051", Meta { shard: 4 })
            .with_status(Status::Starting)
            .with_weight(10),
    )
    .await
    .unwrap();
    // What Go's endpoints.Manager.List / NewWatchChannel read: the keys under target + "/".
    let read = client
        .get(
            client.key("grpc/echo/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(read.kvs().len(), 1);
    let kv = &read.kvs()[0];
    assert_eq!(kv.key_str().unwrap(), client.key("grpc/echo/rs-1"));
    assert_eq!(kv.lease(), session.lease_id().get());
    let update: GoUpdate = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(update.Op, 0, "endpoints.Add");
    assert_eq!(update.Addr, "10.2.0.1:50051");
    assert_eq!(
        update.Metadata,
        serde_json::json!({"coord": 1, "status": "starting", "weight": 10, "payload": {"shard": 4}})
    );
    registration.deregister().await.unwrap();
}

#[tokio::test]
async fn filters_keep_instances_by_status_and_metadata() {
    let client = shared_client("svc_filters").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let healthy = Discovery::<Meta>::builder(&client, "api")
        .statuses([Status::Healthy])
        .filter(|e| e.metadata.as_ref().is_some_and(|m| m.shard < 10))
        .start()
        .unwrap();
    let mut changes = healthy.changes();
    let low = register(
        &session,
        "api",
        Instance::new("low", "h:1", Meta { shard: 1 }),
    )
    .await
    .unwrap();
    let _high = register(
        &session,
        "api",
        Instance::new("high", "h:2", Meta { shard: 20 }),
    )
    .await
    .unwrap();
    let _starting = register(
        &session,
        "api",
        Instance::new("starting", "h:3", Meta { shard: 2 }).with_status(Status::Starting),
    )
    .await
    .unwrap();
    let Change::Insert(first) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(first.id, "low");

    // Draining no longer passes: a remove; the unfiltered view still has it.
    low.set_status(Status::Draining).await.unwrap();
    let Change::Remove(gone) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
    assert_eq!(gone.id, "low");
    let all = Discovery::<Meta>::builder(&client, "api").start().unwrap();
    let set = set_where(&all, |s| s.len() == 3).await;
    assert_eq!(set.get("low").unwrap().status, Status::Draining);
    assert!(healthy.snapshot().is_empty());
}

#[tokio::test]
async fn after_its_lease_is_revoked_the_instance_registers_again_with_the_latest_metadata() {
    let client = shared_client("svc_revoked").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = register(
        &session,
        "api",
        Instance::new("api-1", "h:1", Meta { shard: 1 }),
    )
    .await
    .unwrap();
    registration.update(Meta { shard: 2 }).await.unwrap();
    let discovery = Discovery::<Meta>::builder(&client, "api").start().unwrap();
    let mut changes = discovery.changes();
    let Change::Insert(before) = next_change(&mut changes).await else {
        panic!("not an insert")
    };

    // Another party revokes the lease: the key is deleted at once; the session notices at its
    // next keep-alive.
    client.lease_revoke(session.lease_id()).await.unwrap();
    let Change::Remove(_) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
    let Change::Insert(after) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(after.metadata, Some(Meta { shard: 2 }));
    assert_ne!(after.lease, before.lease, "a new session");
    assert!(after.create_revision > before.create_revision);
    let mut state = registration.subscribe();
    let state = tokio::time::timeout(BOUND, state.wait_for(RegistrationState::is_registered))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let RegistrationState::Registered { lease, .. } = state else {
        unreachable!()
    };
    assert_eq!(lease, after.lease);

    // Updates go to the new registration.
    registration.update(Meta { shard: 3 }).await.unwrap();
    let Change::Update { new, .. } = next_change(&mut changes).await else {
        panic!("not an update")
    };
    assert_eq!(new.metadata, Some(Meta { shard: 3 }));
    // Deregistering removes it and ends the registration's own session (its key is gone).
    registration.deregister().await.unwrap();
    let Change::Remove(_) = next_change(&mut changes).await else {
        panic!("not a remove")
    };
}

#[tokio::test]
async fn a_deleted_key_is_written_again_on_the_same_session() {
    let client = shared_client("svc_deleted").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = register(&session, "api", Instance::new("api-1", "h:1", ()))
        .await
        .unwrap();
    let discovery = Discovery::<()>::builder(&client, "api").start().unwrap();
    let mut changes = discovery.changes();
    assert!(matches!(next_change(&mut changes).await, Change::Insert(_)));

    client.delete(registration.key(), None).await.unwrap();
    assert!(matches!(next_change(&mut changes).await, Change::Remove(_)));
    let Change::Insert(again) = next_change(&mut changes).await else {
        panic!("not an insert")
    };
    assert_eq!(again.lease, session.lease_id());
}

#[tokio::test]
async fn closing_the_session_deregisters_without_coming_back() {
    let client = shared_client("svc_closed").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = register(&session, "api", Instance::new("api-1", "h:1", ()))
        .await
        .unwrap();
    let mut state = registration.subscribe();
    session.close().await.unwrap();
    tokio::time::timeout(BOUND, state.wait_for(|s| s.is_final()))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        registration.state(),
        RegistrationState::Deregistered
    ));
    assert!(matches!(
        registration.update(()).await,
        Err(ServiceError::Deregistered { .. })
    ));
    assert!(namespace_keys(&client).await.is_empty());
}

#[tokio::test]
async fn without_re_registration_a_lost_session_ends_the_registration() {
    let client = shared_client("svc_no_rereg").await;
    let session = Session::new(client.clone(), TTL).await.unwrap();
    let registration = Registration::builder(&session, "api", Instance::new("api-1", "h:1", ()))
        .reregister(false)
        .register()
        .await
        .unwrap();
    let mut state = registration.subscribe();
    client.lease_revoke(session.lease_id()).await.unwrap();
    tokio::time::timeout(BOUND, state.wait_for(|s| s.is_final()))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(registration.state(), RegistrationState::Lost));
    assert!(matches!(
        registration.update(()).await,
        Err(ServiceError::Deregistered { .. })
    ));
    registration.deregister().await.unwrap();
    assert!(namespace_keys(&client).await.is_empty());
}
