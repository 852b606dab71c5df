//! Semaphore behaviour against a real etcd (one shared server for this binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::{BOUND, queue_len_becomes, session, shared_client};
use coord_core::Error as CoreError;
use coord_core::etcd_client::GetOptions;
use coord_lock::{Durability, Error, Limit, MAX_LIMIT, Semaphore};

async fn count(client: &coord_core::Client, prefix: &str) -> i64 {
    client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap()
        .count()
}

#[tokio::test]
async fn at_most_limit_holders_are_granted_in_fifo_order() {
    let client = shared_client("sem_fifo").await;
    let (_sessions, sems, prefix) = slots(&client, 4, Limit::Fixed(2)).await;

    let p0 = sems[0].acquire().await.unwrap();
    let p1 = sems[1].acquire().await.unwrap();
    let w2 = tokio::spawn({
        let sem = sems[2].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 3).await;
    let w3 = tokio::spawn({
        let sem = sems[3].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 4).await;
    assert_eq!(sems[0].holders().await.unwrap().len(), 2);

    p0.release().await.unwrap();
    let p2 = tokio::time::timeout(BOUND, w2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        !w3.is_finished(),
        "the fourth must wait: only one slot was freed"
    );
    let holders = sems[0].holders().await.unwrap();
    assert_eq!(
        holders.iter().map(|h| h.token).collect::<Vec<_>>(),
        vec![p1.token(), p2.token()]
    );

    p1.release().await.unwrap();
    let p3 = tokio::time::timeout(BOUND, w3)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    p2.release().await.unwrap();
    p3.release().await.unwrap();
    assert_eq!(count(&client, &prefix).await, 0);
}

/// `n` sessions, each with a handle on the semaphore "slots", and the queue prefix.
async fn slots(
    client: &coord_core::Client,
    n: usize,
    limit: Limit,
) -> (Vec<coord_core::Session>, Vec<Semaphore>, String) {
    let sessions = futures_sessions(client, n).await;
    let sems: Vec<_> = sessions
        .iter()
        .map(|s| Semaphore::new(s, "slots", limit).unwrap())
        .collect();
    let prefix = sems[0].prefix().to_owned();
    (sessions, sems, prefix)
}

async fn futures_sessions(client: &coord_core::Client, n: usize) -> Vec<coord_core::Session> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(session(client).await);
    }
    out
}

#[tokio::test]
async fn try_acquire_on_a_full_semaphore_leaves_nothing_behind() {
    let client = shared_client("sem_try").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let held = Semaphore::new(&a, "slots", Limit::Fixed(1))
        .unwrap()
        .acquire()
        .await
        .unwrap();
    let other = Semaphore::new(&b, "slots", Limit::Fixed(1)).unwrap();

    assert!(matches!(
        other.try_acquire().await,
        Err(Error::WouldBlock { .. })
    ));
    assert_eq!(count(&client, other.prefix()).await, 1);
    held.release().await.unwrap();
    other.try_acquire().await.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn holders_lists_id_token_and_time() {
    let client = shared_client("sem_holders").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "slots", Limit::Fixed(3)).unwrap();
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let permit = sem.acquire().await.unwrap();
    let slot = sem
        .acquire_as("node-7", Durability::UntilReleased)
        .await
        .unwrap();

    let holders = sem.holders().await.unwrap();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0].id, a.lease_id().to_string());
    assert_eq!(holders[0].token, permit.token());
    assert!(!holders[0].durable);
    assert_eq!(holders[1].id, "node-7");
    assert_eq!(holders[1].token, slot.token());
    assert!(holders[1].durable);
    assert_eq!(holders[1].lease, 0);
    assert!(holders.iter().all(|h| h.held && h.since >= before));
}

#[tokio::test]
async fn raising_the_stored_limit_wakes_waiters_and_lowering_never_evicts() {
    let client = shared_client("sem_set_limit").await;
    let (_sessions, sems, prefix) = slots(&client, 4, Limit::Stored { default: 1 }).await;
    assert_eq!(sems[0].limit().await.unwrap(), 1);

    let p0 = sems[0].acquire().await.unwrap();
    let w1 = tokio::spawn({
        let sem = sems[1].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 2).await;
    let w2 = tokio::spawn({
        let sem = sems[2].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 3).await;

    sems[3].set_limit(3).await.unwrap();
    let p1 = tokio::time::timeout(BOUND, w1)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let p2 = tokio::time::timeout(BOUND, w2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    sems[3].set_limit(1).await.unwrap();
    assert_eq!(
        sems[0].holders().await.unwrap().len(),
        3,
        "lowering the limit evicted a holder"
    );
    let w3 = tokio::spawn({
        let sem = sems[3].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 4).await;
    p0.release().await.unwrap();
    p1.release().await.unwrap();
    queue_len_becomes(&client, &prefix, 2).await;
    assert!(!w3.is_finished(), "one holder is left and the limit is 1");
    p2.release().await.unwrap();
    tokio::time::timeout(BOUND, w3)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_fixed_limit_cannot_be_set() {
    let client = shared_client("sem_fixed").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "slots", Limit::Fixed(2)).unwrap();
    assert!(matches!(
        sem.set_limit(3).await,
        Err(Error::Core(CoreError::InvalidConfig { field: "limit", .. }))
    ));
}

#[tokio::test]
async fn durable_holders_are_idempotent_and_outlive_the_session() {
    let client = shared_client("sem_durable").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "reboot", Limit::Fixed(1)).unwrap();

    let first = sem
        .acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();
    let again = sem
        .try_acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();
    assert_eq!(
        first.token(),
        again.token(),
        "a second acquire must not take a second slot"
    );
    assert!(matches!(
        sem.try_acquire_as("node-2", Durability::UntilReleased)
            .await,
        Err(Error::WouldBlock { .. })
    ));
    assert_eq!(count(&client, sem.prefix()).await, 1);

    a.close().await.unwrap();
    let b = session(&client).await;
    let sem = Semaphore::new(&b, "reboot", Limit::Fixed(1)).unwrap();
    assert_eq!(
        sem.holders().await.unwrap()[0].id,
        "node-1",
        "the slot died with the session"
    );

    sem.release_as("node-1").await.unwrap();
    sem.release_as("node-1").await.unwrap(); // releasing a non-held id succeeds
    sem.try_acquire_as("node-2", Durability::UntilReleased)
        .await
        .unwrap();
}

#[tokio::test]
async fn durable_holders_with_an_expiry_go_away_on_their_own() {
    let client = shared_client("sem_expiry").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "reboot", Limit::Fixed(1)).unwrap();
    let slot = sem
        .try_acquire_as("node-1", Durability::Expires(Duration::from_secs(2)))
        .await
        .unwrap();
    let lease = client.get(slot.key(), None).await.unwrap().kvs()[0].lease();
    assert_ne!(lease, 0);
    assert_ne!(
        lease,
        a.lease_id().get(),
        "a durable slot must not be bound to the caller's session"
    );

    let rev = client
        .get(slot.key(), None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    tokio::time::timeout(
        BOUND,
        coord_core::watch::wait_deleted(&client, slot.key(), rev + 1),
    )
    .await
    .unwrap()
    .unwrap();
    sem.try_acquire_as("node-2", Durability::UntilReleased)
        .await
        .unwrap();
}

#[tokio::test]
async fn session_and_durable_holders_share_the_limit() {
    let client = shared_client("sem_mixed").await;
    let (a, b) = (session(&client).await, session(&client).await);
    let ops = Semaphore::new(&a, "reboot", Limit::Fixed(1)).unwrap();
    ops.acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();

    let sem = Semaphore::new(&b, "reboot", Limit::Fixed(1)).unwrap();
    let waiting = tokio::spawn(async move { sem.acquire().await });
    queue_len_becomes(&client, ops.prefix(), 2).await;
    ops.release_as("node-1").await.unwrap();
    let permit = tokio::time::timeout(BOUND, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    permit.release().await.unwrap();
}

#[tokio::test]
async fn force_release_removes_a_session_holder_and_its_permit_reports_loss() {
    let client = shared_client("sem_force").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "slots", Limit::Fixed(1)).unwrap();
    let permit = sem.acquire().await.unwrap();

    assert!(sem.force_release(&a.lease_id().to_string()).await.unwrap());
    tokio::time::timeout(BOUND, permit.lost())
        .await
        .expect("loss not reported");
    assert!(matches!(permit.release().await, Err(Error::NotHeld { .. })));
    assert!(!sem.force_release("nobody").await.unwrap());
}

#[tokio::test]
async fn a_waiter_behind_one_that_leaves_is_still_woken() {
    let client = shared_client("sem_leave").await;
    let (s, sems, prefix) = slots(&client, 4, Limit::Fixed(1)).await;

    let held = sems[0].acquire().await.unwrap();
    let cancelled = tokio::spawn({
        let sem = sems[1].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 2).await;
    let expiring = tokio::spawn({
        let sem = sems[2].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 3).await;
    let last = tokio::spawn({
        let sem = sems[3].clone();
        async move { sem.acquire().await }
    });
    queue_len_becomes(&client, &prefix, 4).await;

    // The two waiters ahead of the last one leave: one cancels, one's session expires.
    cancelled.abort();
    client.lease_revoke(s[2].lease_id()).await.unwrap();
    queue_len_becomes(&client, &prefix, 2).await;
    assert!(
        tokio::time::timeout(BOUND, expiring)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err()
            .is_session_lost()
    );

    held.release().await.unwrap();
    let permit = tokio::time::timeout(BOUND, last)
        .await
        .expect("missed wake-up")
        .unwrap()
        .unwrap();
    permit.release().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_rejected_and_nothing_is_written() {
    let client = shared_client("sem_bad_input").await;
    let a = session(&client).await;
    let invalid_config = |r: Result<Semaphore, Error>| {
        matches!(r, Err(Error::Core(CoreError::InvalidConfig { .. })))
    };
    assert!(invalid_config(Semaphore::new(&a, "s", Limit::Fixed(0))));
    assert!(invalid_config(Semaphore::new(
        &a,
        "s",
        Limit::Fixed(MAX_LIMIT + 1)
    )));
    assert!(invalid_config(Semaphore::new(
        &a,
        "s",
        Limit::Stored { default: 0 }
    )));
    assert!(matches!(
        Semaphore::new(&a, "s/", Limit::Fixed(1)),
        Err(Error::Core(CoreError::InvalidName { .. }))
    ));

    let sem = Semaphore::new(&a, "s", Limit::Stored { default: 1 }).unwrap();
    for id in ["", "a/b", "a\0b"] {
        let err = sem
            .acquire_as(id, Durability::UntilReleased)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Core(CoreError::InvalidName { .. })),
            "{id:?}: {err:?}"
        );
    }
    let err = sem
        .acquire_as("node", Durability::Expires(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Core(CoreError::InvalidConfig {
                field: "expiry",
                ..
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        sem.set_limit(0).await,
        Err(Error::Core(CoreError::InvalidConfig { .. }))
    ));
    assert!(matches!(
        sem.release_as("a/b").await,
        Err(Error::Core(CoreError::InvalidName { .. }))
    ));

    let everything = client
        .get(
            client.namespace(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(everything.count(), 0);
}

#[tokio::test]
async fn holders_record_who_took_them_when_the_handle_says() {
    let client = shared_client("sem_taken_by").await;
    let a = session(&client).await;
    let plain = Semaphore::new(&a, "slots", Limit::Stored { default: 2 }).unwrap();
    let gateway = plain.clone().with_taken_by("fleetlock@gw-2").unwrap();
    let slot = gateway
        .acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();
    let b = session(&client).await;
    let permit = Semaphore::new(&b, "slots", Limit::Stored { default: 2 })
        .unwrap()
        .acquire()
        .await
        .unwrap();

    let holders = plain.holders().await.unwrap();
    assert_eq!(holders.len(), 2);
    assert_eq!(holders[0].id, "node-1");
    assert_eq!(holders[0].taken_by.as_deref(), Some("fleetlock@gw-2"));
    assert_eq!(holders[1].token, permit.token());
    assert_eq!(holders[1].taken_by, None);

    // A note that is too long or holds control characters is refused.
    for bad in ["x".repeat(coord_lock::MAX_TAKEN_BY + 1), "a\nb".to_owned()] {
        let err = plain.clone().with_taken_by(&bad).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Core(CoreError::InvalidConfig {
                    field: "taken_by",
                    ..
                })
            ),
            "{err:?}"
        );
    }
    gateway.release_as(slot.id()).await.unwrap();
}

/// The admin handle needs no session (it takes a client): it reads and administers what sessions
/// hold.
#[tokio::test]
async fn the_admin_handle_administers_without_a_session() {
    let client = shared_client("sem_admin").await;
    let a = session(&client).await;
    let sem = Semaphore::new(&a, "slots", Limit::Stored { default: 1 }).unwrap();
    let slot = sem
        .acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();

    let admin =
        coord_lock::SemaphoreAdmin::new(&client, "slots", Limit::Stored { default: 1 }).unwrap();
    assert_eq!(admin.prefix(), sem.prefix());
    assert_eq!(admin.limit().await.unwrap(), 1);
    let holders = admin.holders().await.unwrap();
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].token, slot.token());
    admin.set_limit(2).await.unwrap();
    assert_eq!(sem.limit().await.unwrap(), 2);
    assert!(admin.force_release("node-1").await.unwrap());
    assert!(!admin.force_release("node-1").await.unwrap());
    admin.release_as("node-2").await.unwrap(); // holds nothing: fine
    assert!(admin.queue().await.unwrap().is_empty());

    // Bad input, as for a Semaphore.
    assert!(coord_lock::SemaphoreAdmin::new(&client, "", Limit::Fixed(1)).is_err());
    assert!(coord_lock::SemaphoreAdmin::new(&client, "s", Limit::Fixed(0)).is_err());
    let fixed = coord_lock::SemaphoreAdmin::new(&client, "fixed", Limit::Fixed(3)).unwrap();
    assert!(fixed.set_limit(4).await.is_err());
    assert!(admin.force_release("a/b").await.is_err());
}

/// Waits for a spawned acquisition, which must succeed within [`BOUND`].
async fn granted(
    waiter: tokio::task::JoinHandle<coord_lock::Result<coord_lock::Permit>>,
) -> coord_lock::Permit {
    tokio::time::timeout(BOUND, waiter)
        .await
        .expect("missed wake-up")
        .unwrap()
        .unwrap()
}

fn spawn_acquire(
    sem: &Semaphore,
) -> tokio::task::JoinHandle<coord_lock::Result<coord_lock::Permit>> {
    let sem = sem.clone();
    tokio::spawn(async move { sem.acquire().await })
}

/// Releases hand their permits to the waiters they make eligible — several at once, each to a
/// different waiter — and the listing shows the waiters holding.
#[tokio::test]
async fn concurrent_releases_hand_off_to_distinct_waiters() {
    let client = shared_client("sem_handoff").await;
    let (_sessions, sems, prefix) = slots(&client, 6, Limit::Fixed(3)).await;
    let mut held = Vec::new();
    for sem in &sems[..3] {
        held.push(sem.acquire().await.unwrap());
    }
    let mut waiters = Vec::new();
    for (i, sem) in sems[3..].iter().enumerate() {
        waiters.push(spawn_acquire(sem));
        queue_len_becomes(&client, &prefix, 4 + i).await;
    }
    let releases: Vec<_> = held
        .into_iter()
        .map(|permit| tokio::spawn(permit.release()))
        .collect();
    for release in releases {
        release.await.unwrap().unwrap();
    }
    let mut permits = Vec::new();
    for waiter in waiters {
        permits.push(granted(waiter).await);
    }
    let holders = sems[0].holders().await.unwrap();
    assert_eq!(
        holders.iter().map(|h| h.token).collect::<Vec<_>>(),
        permits.iter().map(|p| p.token()).collect::<Vec<_>>(),
        "the three waiters hold, in queue order"
    );
    for permit in permits {
        permit.release().await.unwrap();
    }
    assert_eq!(count(&client, &prefix).await, 0);
}

/// Permits freed by deletes nobody hands off — another tool deleting a holder's key, a holder's
/// session expiring — still reach the waiters (their own fallback), never more than the limit;
/// and a normal release after that hands off again.
#[tokio::test]
async fn permits_freed_without_a_hand_off_still_reach_the_waiters() {
    let client = shared_client("sem_no_handoff").await;
    let (s, sems, prefix) = slots(&client, 5, Limit::Fixed(2)).await;
    let p0 = sems[0].acquire().await.unwrap();
    let p1 = sems[1].acquire().await.unwrap();
    let w2 = spawn_acquire(&sems[2]);
    queue_len_becomes(&client, &prefix, 3).await;
    let w3 = spawn_acquire(&sems[3]);
    queue_len_becomes(&client, &prefix, 4).await;
    let w4 = spawn_acquire(&sems[4]);
    queue_len_becomes(&client, &prefix, 5).await;

    // Another tool deletes the first holder's key; the second holder's session expires.
    client.etcd().clone().delete(p0.key(), None).await.unwrap();
    client.lease_revoke(s[1].lease_id()).await.unwrap();
    let p2 = granted(w2).await;
    let p3 = granted(w3).await;
    assert!(!w4.is_finished(), "two slots were freed, not three");
    assert_eq!(sems[4].holders().await.unwrap().len(), 2);
    drop((p0, p1));

    p2.release().await.unwrap();
    let p4 = granted(w4).await;
    let holders = sems[4].holders().await.unwrap();
    assert_eq!(
        holders.iter().map(|h| h.token).collect::<Vec<_>>(),
        vec![p3.token(), p4.token()]
    );
    p3.release().await.unwrap();
    p4.release().await.unwrap();
}

/// A stored limit raised by another tool (a plain put of the limit key, no hand-off) still
/// grants the waiters it makes room for.
#[tokio::test]
async fn a_limit_raised_by_another_tool_grants_waiters() {
    let client = shared_client("sem_foreign_limit").await;
    let (_sessions, sems, prefix) = slots(&client, 3, Limit::Stored { default: 1 }).await;
    let p0 = sems[0].acquire().await.unwrap();
    let w1 = spawn_acquire(&sems[1]);
    queue_len_becomes(&client, &prefix, 2).await;
    let w2 = spawn_acquire(&sems[2]);
    queue_len_becomes(&client, &prefix, 3).await;

    client
        .etcd()
        .clone()
        .put(sems[0].limit_key(), "3", None)
        .await
        .unwrap();
    let p1 = granted(w1).await;
    let p2 = granted(w2).await;
    assert_eq!(sems[0].holders().await.unwrap().len(), 3);
    for permit in [p0, p1, p2] {
        permit.release().await.unwrap();
    }
}
