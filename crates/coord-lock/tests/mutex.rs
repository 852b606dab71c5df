//! Mutex behaviour against a real etcd (one shared server for this binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue, queue_len_becomes, session, shared_client};
use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::keys::lease_key;
use coord_core::{Error as CoreError, NameError};
use coord_lock::{Error, Mutex};

#[tokio::test]
async fn lock_writes_the_go_key_and_unlock_removes_it() {
    let client = shared_client("mutex_basic").await;
    let s = session(&client).await;
    let mutex = Mutex::new(&s, "jobs").unwrap();
    let guard = mutex.lock().await.unwrap();

    let expected = lease_key(client.namespace(), "jobs", s.lease_id());
    assert_eq!(guard.key(), expected);
    let kv = client.get(expected.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.value(), b"");
    assert_eq!(kv.lease(), s.lease_id().get());
    assert_eq!(guard.token().revision(), kv.create_revision());

    guard.unlock().await.unwrap();
    assert!(client.get(expected, None).await.unwrap().kvs().is_empty());
}

/// A lock whose queue keeps being empty is taken with the empty-queue transaction; one whose
/// queue is busy falls back to Go's transaction and waits. The same mutex, back and forth, must
/// behave identically on both paths.
#[tokio::test]
async fn one_mutex_alternates_between_an_empty_and_a_busy_queue() {
    let client = shared_client("mutex_alternate").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let mutex = Mutex::new(&a, "l").unwrap();
    let other = Mutex::new(&b, "l").unwrap();
    let prefix = mutex.prefix().to_owned();
    let mut last = 0;
    for round in 0..3 {
        // Empty queue.
        let guard = mutex.lock().await.unwrap();
        assert_eq!(queue(&client, &prefix).await, vec![mutex.key().to_owned()]);
        assert!(guard.token().revision() > last);
        last = guard.token().revision();
        guard.unlock().await.unwrap();

        // Busy queue: a waiter behind another session's holder.
        let held = other.lock().await.unwrap();
        let waiting = tokio::spawn({
            let mutex = mutex.clone();
            async move { mutex.lock().await }
        });
        queue_len_becomes(&client, &prefix, 2).await;
        assert!(
            !waiting.is_finished(),
            "round {round}: let in past a holder"
        );
        held.unlock().await.unwrap();
        let guard = tokio::time::timeout(BOUND, waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(queue(&client, &prefix).await, vec![mutex.key().to_owned()]);
        assert!(guard.token().revision() > last);
        last = guard.token().revision();
        guard.unlock().await.unwrap();
        queue_len_becomes(&client, &prefix, 0).await;
    }
}

#[tokio::test]
async fn waiters_are_served_in_fifo_order() {
    let client = shared_client("mutex_fifo").await;
    let (a, b, c) = (
        session(&client).await,
        session(&client).await,
        session(&client).await,
    );
    let prefix = Mutex::new(&a, "l").unwrap().prefix().to_owned();

    let held = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let b_wait = tokio::spawn({
        let m = Mutex::new(&b, "l").unwrap();
        async move { m.lock().await }
    });
    queue_len_becomes(&client, &prefix, 2).await;
    let c_wait = tokio::spawn({
        let m = Mutex::new(&c, "l").unwrap();
        async move { m.lock().await }
    });
    queue_len_becomes(&client, &prefix, 3).await;

    held.unlock().await.unwrap();
    let b_guard = tokio::time::timeout(BOUND, b_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b_guard.session().lease_id(), b.lease_id());
    assert!(!c_wait.is_finished(), "c must wait for b");
    assert_eq!(queue(&client, &prefix).await.len(), 2);

    let b_token = b_guard.token();
    b_guard.unlock().await.unwrap();
    let c_guard = tokio::time::timeout(BOUND, c_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(c_guard.session().lease_id(), c.lease_id());
    assert!(c_guard.token() > b_token);
    c_guard.unlock().await.unwrap();
}

#[tokio::test]
async fn try_lock_fails_fast_when_held_and_leaves_no_key() {
    let client = shared_client("mutex_try").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let other = Mutex::new(&b, "l").unwrap();

    let err = other.try_lock().await.unwrap_err();
    assert!(matches!(err, Error::WouldBlock { .. }), "{err:?}");
    assert_eq!(
        queue(&client, other.prefix()).await,
        vec![held.key().to_owned()]
    );

    held.unlock().await.unwrap();
    other.try_lock().await.unwrap().unlock().await.unwrap();
}

#[tokio::test]
async fn a_timed_out_waiter_removes_its_key() {
    let client = shared_client("mutex_timeout").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let other = Mutex::new(&b, "l").unwrap();

    let err = other
        .lock_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    queue_len_becomes(&client, other.prefix(), 1).await;
    assert_eq!(
        queue(&client, other.prefix()).await,
        vec![held.key().to_owned()]
    );
}

#[tokio::test]
async fn a_dropped_lock_future_removes_its_waiter_key() {
    let client = shared_client("mutex_cancel").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let prefix = held.key().rsplit_once('/').unwrap().0.to_owned() + "/";

    let waiter = tokio::spawn({
        let m = Mutex::new(&b, "l").unwrap();
        async move { m.lock().await }
    });
    queue_len_becomes(&client, &prefix, 2).await;
    waiter.abort();
    queue_len_becomes(&client, &prefix, 1).await;
    assert_eq!(queue(&client, &prefix).await, vec![held.key().to_owned()]);
    assert!(b.is_alive());
}

#[tokio::test]
async fn two_holders_on_one_session_exclude_each_other() {
    let client = shared_client("mutex_local").await;
    let s = session(&client).await;
    let first = Mutex::new(&s, "l").unwrap();
    let second = Mutex::new(&s, "l").unwrap();

    let guard = first.lock().await.unwrap();
    assert!(matches!(
        second.try_lock().await,
        Err(Error::WouldBlock { .. })
    ));
    let waiting = tokio::spawn(async move { second.lock().await });
    // The behaviour under test is that it does *not* complete while the first guard is held.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !waiting.is_finished() {
                tokio::task::yield_now().await
            }
        })
        .await
        .is_err()
    );

    let first_token = guard.token();
    guard.unlock().await.unwrap();
    let second_guard = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(second_guard.token() > first_token);
    second_guard.unlock().await.unwrap();
}

#[tokio::test]
async fn a_waiter_aborts_when_its_own_session_expires() {
    let client = shared_client("mutex_waiter_lost").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let other = Mutex::new(&b, "l").unwrap();
    let prefix = other.prefix().to_owned();

    let waiter = tokio::spawn(async move { other.lock().await });
    queue_len_becomes(&client, &prefix, 2).await;
    // Expire the waiter's lease behind its back; the holder keeps the lock all along.
    client.lease_revoke(b.lease_id()).await.unwrap();

    let err = tokio::time::timeout(BOUND, waiter)
        .await
        .expect("waiter did not notice")
        .unwrap()
        .unwrap_err();
    assert!(err.is_session_lost(), "{err:?}");
    assert_eq!(queue(&client, &prefix).await, vec![held.key().to_owned()]);
}

#[tokio::test]
async fn lost_resolves_when_the_key_is_deleted_by_an_operator() {
    let client = shared_client("mutex_lost").await;
    let s = session(&client).await;
    let guard = Mutex::new(&s, "l").unwrap().lock().await.unwrap();
    {
        let lost = guard.lost();
        tokio::pin!(lost);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut lost)
                .await
                .is_err()
        );
        client.delete(guard.key(), None).await.unwrap();
        tokio::time::timeout(BOUND, lost)
            .await
            .expect("loss not reported");
    }
    assert!(matches!(guard.unlock().await, Err(Error::NotHeld { .. })));
}

#[tokio::test]
async fn a_stale_unlock_never_deletes_a_newer_key_of_the_same_session() {
    let client = shared_client("mutex_stale_unlock").await;
    let s = session(&client).await;
    let guard = Mutex::new(&s, "l").unwrap().lock().await.unwrap();
    let key = guard.key().to_owned();

    // The key vanishes and the same session's lease takes the lock again from Go (the server's
    // Lock RPC), re-creating the very same key with a newer revision.
    client.delete(key.clone(), None).await.unwrap();
    let mut go = client.etcd().lock_client();
    let go_lock = go
        .lock(
            client.key("l"),
            Some(coord_core::etcd_client::LockOptions::new().with_lease(s.lease_id().get())),
        )
        .await
        .unwrap();
    assert_eq!(go_lock.key(), key.as_bytes());

    assert!(matches!(guard.unlock().await, Err(Error::NotHeld { .. })));
    assert_eq!(
        client.get(key, None).await.unwrap().kvs().len(),
        1,
        "the newer key was deleted"
    );
}

#[tokio::test]
async fn a_paused_holders_fenced_write_is_rejected_while_the_new_holders_succeeds() {
    let client = shared_client("mutex_fencing").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let target = client.key("protected");
    let fenced_put = |guard: &coord_lock::MutexGuard, value: &'static str| {
        Txn::new()
            .when([guard.owns()])
            .and_then([TxnOp::put(target.clone(), value, None)])
    };

    let paused = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let b_mutex = Mutex::new(&b, "l").unwrap();
    let b_wait = tokio::spawn(async move { b_mutex.lock().await });

    // "a" stalls long enough for its lease to expire (simulated by revoking it) …
    client.lease_revoke(a.lease_id()).await.unwrap();
    let b_guard = tokio::time::timeout(BOUND, b_wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(b_guard.token() > paused.token());

    // … then wakes up, still "holding" its guard, and writes: rejected.
    assert!(
        !client
            .txn(fenced_put(&paused, "from a"))
            .await
            .unwrap()
            .succeeded()
    );
    assert!(
        client
            .txn(fenced_put(&b_guard, "from b"))
            .await
            .unwrap()
            .succeeded()
    );
    assert_eq!(
        client.get(target, None).await.unwrap().kvs()[0].value(),
        b"from b"
    );
}

/// A holder whose process stalls past its session's deadline (SIGSTOP, a frozen VM, a blocked
/// runtime; here the only thread of the test's runtime sleeps) knows it lost the lock the moment
/// it runs again, before its keep-alive task has run: `lost()` is ready on its first poll and a new
/// acquisition on that session fails at once, writing nothing. The waiter of another session gets
/// the lock once the lease is gone, and the stalled holder's fenced write is rejected.
#[tokio::test(flavor = "current_thread")]
async fn a_holder_stalled_past_its_deadline_knows_it_lost_before_anything_runs() {
    use futures_util::FutureExt;

    let client = shared_client("mutex_stalled").await;
    let a = coord_core::Session::new(client.clone(), Duration::from_secs(2))
        .await
        .unwrap();
    let b = session(&client).await;
    let stalled = Mutex::new(&a, "l").unwrap().lock().await.unwrap();
    let again = Mutex::new(&a, "m").unwrap();
    let b_mutex = Mutex::new(&b, "l").unwrap();
    let prefix = b_mutex.prefix().to_owned();
    let b_wait = tokio::spawn(async move { b_mutex.lock().await });
    queue_len_becomes(&client, &prefix, 2).await;

    // The fault: the whole runtime stalls until a's local deadline has passed.
    let deadline = a.deadline().into_std();
    std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));

    assert!(
        stalled.lost().now_or_never().is_some(),
        "lost() was not ready after the stall"
    );
    let err = again
        .lock()
        .now_or_never()
        .expect("an acquisition on a lost session waited")
        .unwrap_err();
    assert!(err.is_session_lost(), "{err:?}");

    let b_guard = tokio::time::timeout(BOUND, b_wait)
        .await
        .expect("the other session's waiter never got the lock")
        .unwrap()
        .unwrap();
    let target = client.key("protected");
    let fenced_put = |owns, value: &'static str| {
        Txn::new()
            .when([owns])
            .and_then([TxnOp::put(target.clone(), value, None)])
    };
    let from_stalled = client.txn(fenced_put(stalled.owns(), "stalled")).await;
    assert!(!from_stalled.unwrap().succeeded());
    let from_b = client.txn(fenced_put(b_guard.owns(), "b")).await;
    assert!(from_b.unwrap().succeeded());
    assert!(queue(&client, again.prefix()).await.is_empty());
}

#[tokio::test]
async fn invalid_names_are_rejected_before_anything_is_written() {
    let client = shared_client("mutex_names").await;
    let s = session(&client).await;
    for (name, expected) in [
        ("", NameError::Empty),
        ("a\0b", NameError::NulByte { offset: 1 }),
        ("jobs/", NameError::TrailingSlash),
    ] {
        match Mutex::new(&s, name) {
            Err(Error::Core(CoreError::InvalidName { reason, .. })) => assert_eq!(reason, expected),
            other => panic!("{name:?}: expected InvalidName, got {other:?}"),
        }
    }
    let everything = client
        .get(
            client.namespace(),
            Some(
                coord_core::etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(everything.count(), 0);
}
