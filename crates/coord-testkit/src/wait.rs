//! Waiting on etcd's state from tests, by watching rather than polling.

use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};

use crate::Error;

/// Waits until exactly `n` keys are under `prefix` (a full key prefix): counts them, and while
/// the count is not `n`, watches the prefix from the count's revision + 1 and counts again on
/// the next put or delete. `within` bounds the wait (a failure bound, not a timing assertion).
///
/// # Errors
///
/// [`Error::Timeout`] when the count is not reached within `within`; [`Error::Client`] when etcd
/// fails a read or the watch.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = coord_testkit::Etcd::start().await?;
/// let client = etcd.client().await?;
/// // … start two waiters on a lock under "locks/jobs/" …
/// coord_testkit::wait_for_key_count(&client, "locks/jobs/", 2, std::time::Duration::from_secs(20)).await?;
/// # Ok(()) }
/// ```
pub async fn wait_for_key_count(
    client: &Client,
    prefix: &str,
    n: usize,
    within: Duration,
) -> Result<(), Error> {
    let failed = |what: &str| {
        let context = format!("{what} {prefix}");
        move |source| Error::Client { context, source }
    };
    let wait = async {
        let mut client = client.clone();
        loop {
            let read = client
                .get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(failed("cannot count the keys under"))?;
            if usize::try_from(read.count()).is_ok_and(|count| count == n) {
                return Ok(());
            }
            let from = read.header().map_or(0, |h| h.revision()) + 1;
            let mut stream = client
                .watch(
                    prefix,
                    Some(WatchOptions::new().with_prefix().with_start_revision(from)),
                )
                .await
                .map_err(failed("cannot watch"))?;
            // Any put or delete: count again.
            loop {
                let Some(resp) = stream
                    .message()
                    .await
                    .map_err(failed("lost the watch on"))?
                else {
                    break; // the stream ended: count and watch again
                };
                if resp
                    .events()
                    .iter()
                    .any(|e| matches!(e.event_type(), EventType::Put | EventType::Delete))
                {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .map_err(|_| Error::Timeout {
            what: format!("{n} keys under {prefix}"),
            after: within,
        })?
}
