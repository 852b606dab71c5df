//! Discovery and config under etcd's auth and RBAC (a server of its own): within a prefix role
//! everything works; outside it, writes fail with a typed `PermissionDenied` and readers report
//! the denial instead of waiting for ever.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_core::{Client, ClientConfig, Error as CoreError, Session};
use coord_discovery::config::{Config, ConfigError, ConfigMap};
use coord_discovery::service::{Discovery, Instance, ServiceError, register};
use coord_testkit::{Etcd, User, enable_auth};

/// Failure bound only: a denial must be reported long before this.
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

async fn client(etcd: &Etcd, namespace: &str) -> Client {
    ClientConfig::new(etcd.endpoints())
        .with_namespace(namespace)
        .with_user("svc", "svcpw")
        .connect()
        .await
        .unwrap()
}

fn denied(err: &CoreError) -> bool {
    matches!(err, CoreError::PermissionDenied { .. })
}

#[tokio::test]
async fn discovery_works_within_the_role_prefix_and_reports_denial_outside_it() {
    let etcd = etcd_with_a_prefix_role().await;

    let inside = client(&etcd, "app/").await;
    let session = Session::new(inside.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let registration = register(&session, "api", Instance::new("api-1", "10.0.0.1:80", ()))
        .await
        .unwrap();
    let mut api = Discovery::<()>::builder(&inside, "api").start().unwrap();
    let set = tokio::time::timeout(BOUND, api.wait_ready())
        .await
        .unwrap()
        .unwrap();
    assert!(set.get("api-1").is_some() && set.error.is_none());
    registration.deregister().await.unwrap();

    let outside = client(&etcd, "other/").await;
    let session = Session::new(outside.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let err = register(&session, "api", Instance::new("api-1", "10.0.0.1:80", ()))
        .await
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::Core(e) if denied(e)),
        "{err:?}"
    );

    let mut forbidden = Discovery::<()>::builder(&outside, "api").start().unwrap();
    let err = tokio::time::timeout(BOUND, forbidden.wait_ready())
        .await
        .expect("a denied discovery must say so, not wait for ever")
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::Follow { source, .. } if denied(source)),
        "{err:?}"
    );
    let snapshot = forbidden.snapshot();
    assert!(!snapshot.is_ready());
    assert!(snapshot.error.as_deref().is_some_and(denied));
    // A consumer of changes hears of the refusal too, instead of waiting for ever.
    let err = tokio::time::timeout(BOUND, forbidden.changes().next())
        .await
        .expect("a denied change stream must say so, not wait for ever")
        .unwrap_err();
    assert!(
        matches!(&err, ServiceError::Follow { source, .. } if denied(source)),
        "{err:?}"
    );
}

#[tokio::test]
async fn config_works_within_the_role_prefix_and_reports_denial_outside_it() {
    let etcd = etcd_with_a_prefix_role().await;

    let inside = client(&etcd, "app/").await;
    let mut limits = Config::new(&inside, "limits", 4u32).unwrap();
    limits.set(8).await.unwrap();
    let value = *tokio::time::timeout(BOUND, limits.wait_ready())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert!(value == 4 || value == 8, "{value}");

    let outside = client(&etcd, "other/").await;
    let mut forbidden = Config::new(&outside, "limits", 4u32).unwrap();
    let err = forbidden.set(8).await.unwrap_err();
    assert!(matches!(&err, ConfigError::Core(e) if denied(e)), "{err:?}");
    let err = tokio::time::timeout(BOUND, forbidden.wait_ready())
        .await
        .expect("a denied config must say so, not wait for ever")
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Follow { source, .. } if denied(source)),
        "{err:?}"
    );

    let mut map = ConfigMap::<u32>::builder(&outside, "quotas")
        .start()
        .unwrap();
    let err = tokio::time::timeout(BOUND, map.wait_ready())
        .await
        .expect("a denied config map must say so, not wait for ever")
        .map(drop)
        .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Follow { source, .. } if denied(source)),
        "{err:?}"
    );
}
