//! Authentication and permissions against a real etcd with auth enabled (a server of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use coord_core::{ClientConfig, Error};
use coord_testkit::{Etcd, User, enable_auth};

/// Failure bound only.
const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// etcd with auth on: root, and `alice`, whose role covers `public/` only.
async fn etcd_with_users() -> Etcd {
    let etcd = Etcd::start().await.unwrap();
    let alice = User {
        name: "alice",
        password: "alicepw",
        prefix: Some("public/"),
    };
    enable_auth(&etcd, "rootpw", &[alice]).await.unwrap();
    etcd
}

#[tokio::test]
async fn credentials_and_permissions_are_enforced_with_typed_errors() {
    let etcd = etcd_with_users().await;

    // A user may do what its role allows…
    let alice = ClientConfig::new(etcd.endpoints())
        .with_user("alice", "alicepw")
        .connect()
        .await
        .unwrap();
    alice.get("public/x", None).await.unwrap();

    // …and gets PermissionDenied for the rest.
    let err = alice.put("private/x", "v", None).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::PermissionDenied {
                operation: "put",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A wrong password fails at connect time, as AuthFailed.
    let err = ClientConfig::new(etcd.endpoints())
        .with_user("alice", "wrong")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
    assert!(!err.is_retryable());

    // Root can still write.
    let root = ClientConfig::new(etcd.endpoints())
        .with_user("root", "rootpw")
        .connect()
        .await
        .unwrap();
    root.put("private/x", "v", None).await.unwrap();
}

/// A cache follows a prefix with the credentials of the client that opened it: another user's
/// cache of the same prefix in the same process is its own, and a denied one says so.
#[tokio::test]
async fn caches_never_share_a_watch_across_users_and_report_denial() {
    let etcd = etcd_with_users().await;
    let root = ClientConfig::new(etcd.endpoints())
        .with_user("root", "rootpw")
        .connect()
        .await
        .unwrap();
    root.put("private/a", "1", None).await.unwrap();
    let mut allowed = coord_core::cache::Cache::<u32>::new(&root, "private/").unwrap();
    let snapshot = tokio::time::timeout(BOUND, allowed.wait_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snapshot.entries.get("a"), Some(&1));
    drop(snapshot);

    // alice may read `public/` only: same endpoints, same prefix, other credentials.
    let alice = ClientConfig::new(etcd.endpoints())
        .with_user("alice", "alicepw")
        .connect()
        .await
        .unwrap();
    assert_ne!(alice.identity(), root.identity());
    assert!(
        !alice.identity().contains("alicepw"),
        "{}",
        alice.identity()
    );
    let mut denied = coord_core::cache::Cache::<u32>::new(&alice, "private/").unwrap();
    let err = tokio::time::timeout(BOUND, denied.wait_ready())
        .await
        .expect("a denied cache must say so, not wait for ever")
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Follow { source, .. } if matches!(**source, Error::PermissionDenied { .. })),
        "{err:?}"
    );
    assert!(denied.borrow().entries.is_empty());
}
