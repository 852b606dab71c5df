//! Session behaviour against a real etcd (one shared server for this binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{shared_client, wait_deleted};
use coord_core::{ClientConfig, Error, LossReason, Session, SessionState};
use etcd_client::PutOptions;

async fn put_with_lease(session: &Session, name: &str) -> (String, i64) {
    let client = session.client();
    let key = client.key(name);
    let resp = client
        .put(
            key.clone(),
            "v",
            Some(PutOptions::new().with_lease(session.lease_id().get())),
        )
        .await
        .unwrap();
    (key, resp.header().unwrap().revision())
}

#[tokio::test]
async fn session_stays_alive_for_three_ttls() {
    let client = shared_client("stays_alive").await;
    let session = Session::new(client.clone(), Duration::from_secs(2))
        .await
        .unwrap();
    let (key, _) = put_with_lease(&session, "k").await;
    let mut state = session.subscribe();

    // The behaviour under test is the passage of time: nothing may change for 3 × TTL.
    let changed = tokio::time::timeout(session.ttl() * 3, state.changed()).await;
    assert!(changed.is_err(), "state changed: {:?}", session.state());
    assert_eq!(session.state(), SessionState::Alive);

    let ttl = client
        .lease_time_to_live(session.lease_id(), false)
        .await
        .unwrap();
    assert!(ttl.ttl() > 0, "server no longer holds the lease");
    assert_eq!(client.get(key, None).await.unwrap().kvs().len(), 1);
    session.close().await.unwrap();
}

#[tokio::test]
async fn ttl_below_the_server_minimum_is_reported_as_granted() {
    let client = shared_client("ttl_raised").await;
    let session = Session::new(client, Duration::from_secs(1)).await.unwrap();
    // etcd's minimum TTL is ceil(1.5 × election timeout) = 2 s with default settings.
    assert_eq!(session.ttl(), Duration::from_secs(2));
    session.close().await.unwrap();
}

#[tokio::test]
async fn exact_ttl_refuses_a_raised_ttl() {
    let client = shared_client("ttl_exact").await;
    let err = Session::builder(client)
        .ttl(Duration::from_secs(1))
        .require_exact_ttl(true)
        .start()
        .await
        .unwrap_err();
    match err {
        Error::TtlNotGranted { requested, granted } => {
            assert_eq!(requested, Duration::from_secs(1));
            assert_eq!(granted, Duration::from_secs(2));
        }
        other => panic!("expected TtlNotGranted, got {other:?}"),
    }
}

#[tokio::test]
async fn zero_ttl_is_rejected_without_contacting_etcd() {
    // Nothing listens on port 1: any request would fail with a transport error instead.
    let client = ClientConfig::new(["http://127.0.0.1:1"])
        .connect()
        .await
        .unwrap();
    let err = Session::new(client, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidConfig { field: "ttl", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn close_revokes_the_lease_and_its_keys_at_once() {
    let client = shared_client("close").await;
    let session = Session::new(client.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let token = session.cancellation_token();
    let observer = session.clone();
    let (key, _) = put_with_lease(&session, "k").await;

    session.close().await.unwrap();

    assert!(
        client.get(key, None).await.unwrap().kvs().is_empty(),
        "key survived close"
    );
    assert_eq!(observer.state(), SessionState::Closed);
    assert!(token.is_cancelled());
    assert!(matches!(
        observer.check_alive(),
        Err(Error::SessionClosed { .. })
    ));
}

#[tokio::test]
async fn dropping_the_last_handle_revokes_in_the_background() {
    let client = shared_client("drop").await;
    let session = Session::new(client.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let (key, rev) = put_with_lease(&session, "k").await;
    drop(session);
    // Far below the 30 s TTL: only a revoke can delete the key this fast.
    wait_deleted(&client, &key, rev, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_revoked_lease_is_reported_as_expired() {
    let client = shared_client("revoked").await;
    let session = Session::new(client.clone(), Duration::from_secs(3))
        .await
        .unwrap();
    client.lease_revoke(session.lease_id()).await.unwrap();

    let mut state = session.subscribe();
    let end = tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| !s.is_alive()))
        .await
        .expect("loss not detected")
        .map(|s| *s)
        .unwrap();
    assert_eq!(end, SessionState::Lost(LossReason::Expired));
    assert!(matches!(
        session.check_alive(),
        Err(Error::SessionLost { .. })
    ));
    // Closing a session whose lease is gone succeeds.
    session.close().await.unwrap();
}

#[tokio::test]
async fn detach_hands_the_lease_over_to_a_resumed_session() {
    let client = shared_client("detach").await;
    let session = Session::new(client.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let (key, _) = put_with_lease(&session, "k").await;

    let lease = session.detach().await;
    assert_eq!(
        client.get(key.clone(), None).await.unwrap().kvs().len(),
        1,
        "detach must not revoke"
    );

    let resumed = Session::builder(client.clone())
        .resume(lease)
        .start()
        .await
        .unwrap();
    assert_eq!(resumed.lease_id(), lease);
    assert_eq!(resumed.ttl(), Duration::from_secs(5));
    // Kept alive by the new owner past the original TTL.
    let mut state = resumed.subscribe();
    assert!(
        tokio::time::timeout(Duration::from_secs(7), state.changed())
            .await
            .is_err()
    );
    assert_eq!(client.get(key.clone(), None).await.unwrap().kvs().len(), 1);

    resumed.close().await.unwrap();
    assert!(client.get(key, None).await.unwrap().kvs().is_empty());
}

#[tokio::test]
async fn resuming_a_lease_that_is_gone_fails_with_session_lost() {
    let client = shared_client("resume_gone").await;
    let session = Session::new(client.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let lease = session.lease_id();
    session.close().await.unwrap();
    let err = Session::builder(client)
        .resume(lease)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SessionLost { lease_id } if lease_id == lease),
        "{err:?}"
    );
}

/// A process that stops running (SIGSTOP, a frozen VM, a runtime whose only thread is blocked) must
/// see its session lost the moment it runs again, before the keep-alive task has had a chance to
/// notice: the deadline is read from the clock. On this single-threaded runtime nothing else runs
/// while the test's thread is blocked.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_process_sees_the_loss_before_the_keep_alive_task_runs() {
    use futures_util::FutureExt;

    let client = shared_client("stalled").await;
    let session = Session::new(client.clone(), Duration::from_secs(2))
        .await
        .unwrap();
    let (key, rev) = put_with_lease(&session, "k").await;
    let token = session.cancellation_token();
    let state = session.subscribe();
    assert_eq!(session.state(), SessionState::Alive);

    // The fault: the whole runtime stalls until the local deadline has passed.
    let deadline = session.deadline().into_std();
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
    assert!(std::time::Instant::now() >= deadline);

    // No await since the stall: the keep-alive task has not run, yet every view agrees.
    assert!(!session.is_alive());
    assert_eq!(session.state(), SessionState::Lost(LossReason::Unconfirmed));
    assert!(matches!(
        session.check_alive(),
        Err(Error::SessionLost { .. })
    ));
    assert!(token.is_cancelled(), "the cancellation token did not fire");
    assert_eq!(*state.borrow(), SessionState::Lost(LossReason::Unconfirmed));
    assert_eq!(
        session.ended().now_or_never(),
        Some(SessionState::Lost(LossReason::Unconfirmed))
    );

    // The loss is final: when the keep-alive task runs again it gives the lease up rather than
    // renewing it, so its key goes (a renewed lease would keep it for good).
    wait_deleted(&client, &key, rev, Duration::from_secs(20)).await;
    assert_eq!(session.state(), SessionState::Lost(LossReason::Unconfirmed));
}
