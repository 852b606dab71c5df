//! Authentication and permissions against a real etcd with auth enabled (a server of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use coord_core::{ClientConfig, Error};
use coord_testkit::Etcd;
use etcd_client::{Permission, PermissionType};

async fn etcd_with_users() -> Etcd {
    let etcd = Etcd::start().await.unwrap();
    let mut admin = etcd.client().await.unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("readers").await.unwrap();
    admin
        .role_grant_permission(
            "readers",
            Permission::new(PermissionType::Read, "public/").with_prefix(),
        )
        .await
        .unwrap();
    admin.user_add("alice", "alicepw", None).await.unwrap();
    admin.user_grant_role("alice", "readers").await.unwrap();
    admin.auth_enable().await.unwrap();
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
