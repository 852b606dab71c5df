//! Found by the chaos soak (issue #8.1): a transient read timeout inside
//! `coord_core::watch::wait_changed` ends the wait with an error, although its documentation says
//! transient failures are retried for ever — and `coord-discovery`'s registration treats that
//! error as permanent: it stops watching its key ("cannot watch the registration's key; relying
//! on the session alone", logged 4 times in a 10-minute soak) and no longer notices the key being
//! deleted or taken over until its session ends.
//!
//! Mechanism (`crates/coord-core/src/watch.rs`, `first_event`): when revisions were committed
//! between the wait's start revision and the live watch's creation, a single-key wait reads the
//! key (`changed_since`) and propagates that read's error with `?` instead of passing it through
//! `retry_or_fail` like the watch's own errors. A slow link (here: 400 ms each way through a
//! fault proxy, request timeout 500 ms) makes the read time out while the watch itself is fine.
//! `registration.rs` (`key_taken`) then returns `pending()` for any error but `Compacted`.
//!
//! Fixed in coord-core: the read's retryable errors now start the wait over (new live watch, new
//! read) like a broken watch does; these tests keep it fixed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_core::{ClientConfig, Session};
use coord_discovery::service::{Instance, register};
use coord_testkit::{Etcd, FaultProxy};

const SLOW_LINK: Duration = Duration::from_millis(400);

#[tokio::test]
async fn wait_changed_keeps_waiting_through_a_read_timeout() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = ClientConfig::new(etcd.endpoints()).connect().await.unwrap();
    let slow = ClientConfig::new([proxy.endpoint()])
        .with_request_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();

    let put = direct.put("k", "1", None).await.unwrap();
    let from = put.header().unwrap().revision() + 1;
    slow.get("k", None).await.unwrap(); // connected before the link slows down
    direct.put("other", "x", None).await.unwrap(); // a revision between `from` and the watch
    proxy.delay(SLOW_LINK);

    let mut waiting =
        tokio::spawn(async move { coord_core::watch::wait_changed(&slow, "k", from).await });
    // Long enough for the watch to be created and the read after it to time out (~1.3 s); the
    // key does not change meanwhile, so the wait must still be running.
    if let Ok(ended) = tokio::time::timeout(Duration::from_secs(3), &mut waiting).await {
        panic!(
            "wait_changed ended before the key changed: {:?}",
            ended.unwrap()
        );
    }
    proxy.heal();
    let changed = direct
        .put("k", "2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let result = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the change was not reported")
        .unwrap();
    assert_eq!(result.unwrap(), changed);
}

#[tokio::test]
async fn a_registration_notices_its_key_deleted_after_a_slow_link() {
    let etcd = Etcd::start().await.unwrap();
    let proxy = FaultProxy::start(etcd.client_addr()).await.unwrap();
    let direct = ClientConfig::new(etcd.endpoints()).connect().await.unwrap();
    let slow = ClientConfig::new([proxy.endpoint()])
        .with_request_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let session = Session::new(slow.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let registration = register(&session, "svc", Instance::new("a", "127.0.0.1:1", ()))
        .await
        .unwrap();
    let key = registration.key().to_owned();

    // Break the registration's watch while the link is slow and a revision has passed: the
    // re-created watch's read times out.
    direct.put("other", "x", None).await.unwrap();
    proxy.delay(SLOW_LINK);
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await; // let the re-created watch's read time out
    proxy.heal();

    // An operator deletes the key: the registration must write it again.
    let deleted = direct.delete(key.clone(), None).await.unwrap();
    let from = deleted.header().unwrap().revision() + 1;
    let back = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let read = direct.get(key.clone(), None).await.unwrap();
            if !read.kvs().is_empty() {
                return;
            }
            coord_core::watch::wait_changed(&direct, key.clone(), from)
                .await
                .unwrap();
        }
    })
    .await;
    assert!(
        back.is_ok(),
        "the registration did not notice its key was deleted (state {:?})",
        registration.state()
    );
}
