//! One etcd server per test process, shared by all its tests.

use tokio::sync::OnceCell;

use crate::{Error, Etcd};

/// The process-wide server, started on first use.
///
/// Every test of a test binary that calls `shared()` talks to the same single-member
/// server, so a binary pays for one etcd start (about 0.7 s) instead of one per
/// test. Tests must keep out of each other's way by putting their keys under a
/// [`unique_namespace`](crate::unique_namespace) and must not do server-wide things
/// (compaction, auth, killing); start an own [`Etcd`] for those.
///
/// Safe to call concurrently from many `#[tokio::test]`s, each with its own runtime:
/// the first caller starts the server and the others wait for it. The server holds
/// nothing tied to a runtime. If starting fails, the caller that tried gets the
/// error and the next caller (including one already waiting) tries again.
///
/// The server is never dropped. It dies with the test process (Linux kills it when
/// the process exits, even by SIGKILL), and the next test run removes its directory.
///
/// # Errors
///
/// See [`EtcdBuilder::start`](crate::EtcdBuilder::start).
///
/// # Cancel safety
///
/// Cancel safe: a cancelled first call leaves the start to the next caller.
///
/// # Examples
///
/// ```no_run
/// #[tokio::test]
/// async fn puts_are_visible_to_gets() {
///     let etcd = coord_testkit::shared().await.unwrap();
///     let ns = coord_testkit::unique_namespace("puts_are_visible_to_gets");
///     let mut client = etcd.client().await.unwrap();
///     client.put(format!("{ns}k"), "v", None).await.unwrap();
///     let reply = client.get(format!("{ns}k"), None).await.unwrap();
///     assert_eq!(reply.kvs()[0].value(), b"v");
/// }
/// ```
pub async fn shared() -> Result<&'static Etcd, Error> {
    static SHARED: OnceCell<Etcd> = OnceCell::const_new();
    SHARED.get_or_try_init(Etcd::start).await
}
