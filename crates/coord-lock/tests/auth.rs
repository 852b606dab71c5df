//! The lock primitives under etcd's auth and RBAC (a server of its own): a user whose role covers
//! one prefix uses Mutex and Semaphore within it, and gets a typed `PermissionDenied` — promptly,
//! with nothing written — outside it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_core::etcd_client::GetOptions;
use coord_core::{Client, ClientConfig, Error as CoreError, Session};
use coord_lock::{Durability, Error, Limit, Mutex, Semaphore};
use coord_testkit::{Etcd, User, enable_auth};

/// Failure bound only: a denied request must come back long before this.
const BOUND: Duration = Duration::from_secs(20);

/// etcd with auth on: root, and `svc` whose role may read and write `app/` only.
async fn etcd_with_a_prefix_role() -> Etcd {
    let etcd = Etcd::start().await.unwrap();
    enable_auth(
        &etcd,
        "rootpw",
        &[User {
            name: "svc",
            password: "svcpw",
            prefix: Some("app/"),
        }],
    )
    .await
    .unwrap();
    etcd
}

async fn client(etcd: &Etcd, namespace: &str, user: &str, password: &str) -> Client {
    ClientConfig::new(etcd.endpoints())
        .with_namespace(namespace)
        .with_user(user, password)
        .connect()
        .await
        .unwrap()
}

fn is_denied(err: &Error) -> bool {
    matches!(err, Error::Core(CoreError::PermissionDenied { .. }))
}

#[tokio::test]
async fn locks_work_within_the_role_prefix_and_are_denied_clearly_outside_it() {
    let etcd = etcd_with_a_prefix_role().await;

    // Within `app/`: everything works.
    let inside = client(&etcd, "app/", "svc", "svcpw").await;
    let session = Session::new(inside.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let guard = Mutex::new(&session, "jobs").unwrap().lock().await.unwrap();
    guard.unlock().await.unwrap();
    let slots = Semaphore::new(&session, "slots", Limit::Stored { default: 2 }).unwrap();
    let permit = slots.acquire().await.unwrap();
    let slot = slots
        .acquire_as("node-1", Durability::UntilReleased)
        .await
        .unwrap();
    assert_eq!(slots.holders().await.unwrap().len(), 2);
    slots.set_limit(3).await.unwrap();
    permit.release().await.unwrap();
    slots.release_as(slot.id()).await.unwrap();

    // Outside it (namespace `other/`): each operation fails at once with PermissionDenied.
    let outside = client(&etcd, "other/", "svc", "svcpw").await;
    let session = Session::new(outside.clone(), Duration::from_secs(10))
        .await
        .unwrap(); // leases need no key permission
    let mutex = Mutex::new(&session, "jobs").unwrap();
    let err = tokio::time::timeout(BOUND, mutex.lock())
        .await
        .expect("a denied lock must not wait")
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    let err = mutex.try_lock().await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");

    let sem = Semaphore::new(&session, "slots", Limit::Stored { default: 2 }).unwrap();
    for err in [
        tokio::time::timeout(BOUND, sem.acquire())
            .await
            .expect("a denied acquire must not wait")
            .map(drop)
            .unwrap_err(),
        tokio::time::timeout(BOUND, sem.acquire_as("node-1", Durability::UntilReleased))
            .await
            .expect("a denied acquire must not wait")
            .map(drop)
            .unwrap_err(),
        sem.set_limit(3).await.unwrap_err(),
        sem.holders().await.map(drop).unwrap_err(),
    ] {
        assert!(is_denied(&err), "{err:?}");
    }

    // The session is still fine, and nothing was written anywhere outside `app/`.
    assert!(session.is_alive());
    session.close().await.unwrap();
    let root = client(&etcd, "", "root", "rootpw").await;
    let all = root
        .get(b"\0".to_vec(), Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let outside_app: Vec<_> = all
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .filter(|k| !k.starts_with("app/"))
        .collect();
    assert!(outside_app.is_empty(), "{outside_app:?}");
}
