//! Elections under etcd's auth and RBAC (a server of its own): a user whose role covers one
//! prefix campaigns and observes within it, gets a typed `PermissionDenied` outside it, and never
//! reads through an observer another user opened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_core::{Client, ClientConfig, Error as CoreError, Session};
use coord_leader::{Election, Error};
use coord_testkit::{Etcd, User, enable_auth};

/// Failure bound only: a denial must come back long before this.
const BOUND: Duration = Duration::from_secs(20);

/// etcd with auth on: root; `svc`, whose role may read and write `app/`; `guest`, with no role.
async fn etcd_with_a_prefix_role() -> Etcd {
    let etcd = Etcd::start().await.unwrap();
    enable_auth(
        &etcd,
        "rootpw",
        &[
            User {
                name: "svc",
                password: "svcpw",
                prefix: Some("app/"),
            },
            User {
                name: "guest",
                password: "guestpw",
                prefix: None,
            },
        ],
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
async fn elections_work_within_the_role_prefix_and_are_denied_clearly_outside_it() {
    let etcd = etcd_with_a_prefix_role().await;

    let svc = client(&etcd, "app/", "svc", "svcpw").await;
    let session = Session::new(svc.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let election = Election::new(&session, "scheduler").unwrap();
    let leadership = election.campaign("node-1").await.unwrap();
    let observed = coord_leader::observe(&svc, "scheduler").await.unwrap();
    assert_eq!(
        observed.borrow().as_ref().and_then(|l| l.value_str()),
        Some("node-1")
    );

    // A user without the role, same endpoints and namespace: denied, even though an observer of
    // the same election is running in this process for `svc`.
    let guest = client(&etcd, "app/", "guest", "guestpw").await;
    let err = tokio::time::timeout(BOUND, coord_leader::observe(&guest, "scheduler"))
        .await
        .expect("a denied observe must not wait")
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    let err = coord_leader::leader(&guest, "scheduler").await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");

    // `svc` outside its prefix: campaign denied at once, nothing written.
    let outside = client(&etcd, "other/", "svc", "svcpw").await;
    let other_session = Session::new(outside.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let err = tokio::time::timeout(
        BOUND,
        Election::new(&other_session, "scheduler")
            .unwrap()
            .campaign("node-1"),
    )
    .await
    .expect("a denied campaign must not wait")
    .map(drop)
    .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");

    leadership.resign().await.unwrap();
}
