//! Sessions under faults: partitions, reset connections, member failures. Each test owns its servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::client_of;
use coord_core::{ClientConfig, LossReason, Session, SessionState};
use coord_testkit::{Etcd, EtcdCluster, FaultProxy};
use etcd_client::{EventType, PutOptions, WatchOptions};
use tokio::time::Instant;

#[tokio::test]
async fn loss_is_signalled_within_the_ttl_and_before_the_server_deletes_the_keys() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = client_of(&etcd, "partition").await;
    let via_proxy = ClientConfig::new([proxy.endpoint()])
        .with_namespace(direct.namespace())
        .connect()
        .await
        .unwrap();

    let session = Session::new(via_proxy.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let key = direct.key("member");
    let put = via_proxy
        .put(
            key.clone(),
            "up",
            Some(PutOptions::new().with_lease(session.lease_id().get())),
        )
        .await
        .unwrap();

    // The server's view: a watch on the key, over a direct connection.
    let mut watch = direct.etcd().watch_client();
    let mut events = watch
        .watch(
            key.clone(),
            Some(WatchOptions::new().with_start_revision(put.header().unwrap().revision() + 1)),
        )
        .await
        .unwrap();

    let partitioned_at = Instant::now();
    proxy.blackhole();

    let mut state = session.subscribe();
    let lost = async {
        let end = *state.wait_for(|s| !s.is_alive()).await.unwrap();
        let lost_at = Instant::now();
        // At the moment the client declares loss the server must still hold the lease
        // (time-to-live answers -1 for a lease it no longer has; whole seconds, so 0 may mean < 1 s).
        let server_ttl = direct
            .lease_time_to_live(session.lease_id(), false)
            .await
            .unwrap()
            .ttl();
        (end, lost_at, server_ttl)
    };
    let deleted = async {
        loop {
            let resp = events.message().await.unwrap().expect("watch ended");
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Instant::now();
            }
        }
    };
    let bound = Duration::from_secs(30); // failure bound only
    let ((end, lost_at, server_ttl), deleted_at) =
        tokio::time::timeout(bound, async { tokio::join!(lost, deleted) })
            .await
            .expect("neither loss nor expiry");

    assert_eq!(end, SessionState::Lost(LossReason::Unconfirmed));
    assert!(
        lost_at - partitioned_at < session.ttl(),
        "loss took {:?}",
        lost_at - partitioned_at
    );
    assert!(
        server_ttl >= 0,
        "the server had already expired the lease when loss was signalled"
    );
    assert!(
        lost_at < deleted_at,
        "the server deleted the keys before the client declared loss"
    );
}

#[tokio::test]
async fn session_survives_reset_connections() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let client = ClientConfig::new([proxy.endpoint()])
        .connect()
        .await
        .unwrap();
    let session = Session::new(client.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    let mut state = session.subscribe();

    for _ in 0..3 {
        proxy.cut();
        // Without a keep-alive on a new connection the session would be lost within one TTL.
        let changed = tokio::time::timeout(session.ttl(), state.changed()).await;
        assert!(
            changed.is_err(),
            "session ended after a reset: {:?}",
            session.state()
        );
    }
    assert_lease_held(&etcd, &session).await;
}

#[tokio::test]
async fn session_survives_the_loss_of_each_member_in_turn() {
    let mut cluster = EtcdCluster::start(3).await.unwrap();
    let client = ClientConfig::new(cluster.endpoints())
        .connect()
        .await
        .unwrap();
    let session = Session::new(client.clone(), Duration::from_secs(6))
        .await
        .unwrap();
    let key = client.key(&coord_testkit::unique_namespace("cluster"));
    client
        .put(
            key.clone(),
            "v",
            Some(PutOptions::new().with_lease(session.lease_id().get())),
        )
        .await
        .unwrap();
    let mut state = session.subscribe();

    // Whichever member the client's connections use, one of these kills hits it; the leader is
    // killed first, so the lease also moves to a new leader.
    let leader = cluster.leader().await.unwrap();
    let order: Vec<usize> = std::iter::once(leader)
        .chain((0..3).filter(|&i| i != leader))
        .collect();
    for i in order {
        cluster.kill(i).unwrap();
        // Stay down for a full TTL: the session must keep the lease through the survivors.
        let changed = tokio::time::timeout(session.ttl(), state.changed()).await;
        assert!(
            changed.is_err(),
            "session ended with member {i} down: {:?}",
            session.state()
        );
        cluster.restart(i).await.unwrap();
    }
    assert_eq!(session.state(), SessionState::Alive);
    assert_eq!(
        client.get(key, None).await.unwrap().kvs().len(),
        1,
        "the lease's key is gone"
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn requests_move_to_the_next_member_when_one_stops_answering() {
    let (_etcd, first, second) = two_ways_in().await;
    let client = ClientConfig::new([first.endpoint(), second.endpoint()])
        .with_namespace(coord_testkit::unique_namespace("blackholed"))
        .with_request_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    client.put("k", "v", None).await.unwrap();
    assert_eq!(first.connections(), 1, "the first member is used first");
    assert_eq!(second.connections(), 0, "one member at a time");

    // The connection stays open but nothing comes back: only the request timeout can tell.
    first.blackhole();
    let err = client.get("k", None).await.unwrap_err();
    assert!(matches!(err, coord_core::Error::Timeout { .. }), "{err:?}");

    // The timed-out connection is suspect: the next request goes to the other member.
    let resp = client.get("k", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"v");
    assert_eq!(second.connections(), 1);
}

#[tokio::test]
async fn session_moves_to_the_next_member_when_one_stops_answering() {
    let (etcd, first, second) = two_ways_in().await;
    let client = ClientConfig::new([first.endpoint(), second.endpoint()])
        .connect()
        .await
        .unwrap();
    let session = Session::new(client.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(second.connections(), 0, "one member at a time");
    let mut state = session.subscribe();

    // The keep-alive stream's connection stays open but answers nothing; its HTTP/2 ping would
    // notice only after 15 s, far beyond the TTL. The keep-alive must give up on it sooner.
    first.blackhole();
    for _ in 0..2 {
        let changed = tokio::time::timeout(session.ttl(), state.changed()).await;
        assert!(
            changed.is_err(),
            "session ended with one member blackholed: {:?}",
            session.state()
        );
    }
    assert_eq!(second.connections(), 1);
    assert_lease_held(&etcd, &session).await;
}

/// The server still holds `session`'s lease (asked over a direct connection).
async fn assert_lease_held(etcd: &Etcd, session: &Session) {
    let direct = client_of(etcd, "lease_held").await;
    let ttl = direct
        .lease_time_to_live(session.lease_id(), false)
        .await
        .unwrap()
        .ttl();
    assert!(ttl > 0, "the server no longer holds the lease (ttl {ttl})");
}

/// One etcd behind two fault proxies: to the client, two members that can fail one at a time.
async fn two_ways_in() -> (Etcd, FaultProxy, FaultProxy) {
    let etcd = Etcd::start().await.unwrap();
    let first = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let second = FaultProxy::start(etcd.client_addr()).await.unwrap();
    (etcd, first, second)
}
