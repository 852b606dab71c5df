//! Retry policy: which errors to retry and how long to back off, built on `backon`.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::Result;

/// How coord retries transient failures: exponential backoff with jitter between `min_delay` and
/// `max_delay`, giving up after `max_elapsed` of accumulated delay (or `max_times` attempts).
///
/// Only errors for which [`Error::is_retryable`](crate::Error::is_retryable) holds are retried.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// use coord_core::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::new().with_max_elapsed(Some(Duration::from_secs(10)));
/// let resp = policy.retry(|| client.get("config/limits", None)).await?;
/// # let _ = resp; Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    min_delay: Duration,
    max_delay: Duration,
    max_elapsed: Option<Duration>,
    max_times: Option<usize>,
    jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::new()
    }
}

impl RetryPolicy {
    /// 50 ms doubling up to 2 s, with jitter, for up to 30 s of accumulated delay.
    pub const fn new() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_elapsed: Some(Duration::from_secs(30)),
            max_times: None,
            jitter: true,
        }
    }

    /// The first delay.
    #[must_use = "builder methods return the modified policy"]
    pub const fn with_min_delay(mut self, delay: Duration) -> RetryPolicy {
        self.min_delay = delay;
        self
    }

    /// The largest delay between two attempts.
    #[must_use = "builder methods return the modified policy"]
    pub const fn with_max_delay(mut self, delay: Duration) -> RetryPolicy {
        self.max_delay = delay;
        self
    }

    /// Stop once the delays add up to this much; `None` retries for ever.
    #[must_use = "builder methods return the modified policy"]
    pub const fn with_max_elapsed(mut self, total: Option<Duration>) -> RetryPolicy {
        self.max_elapsed = total;
        self
    }

    /// Stop after this many retries; `None` (the default) sets no count limit.
    #[must_use = "builder methods return the modified policy"]
    pub const fn with_max_times(mut self, times: Option<usize>) -> RetryPolicy {
        self.max_times = times;
        self
    }

    /// Use exact delays instead of jittered ones (jitter spreads out clients that failed together).
    #[must_use = "builder methods return the modified policy"]
    pub const fn without_jitter(mut self) -> RetryPolicy {
        self.jitter = false;
        self
    }

    /// The delays as an iterator, for hand-written loops (reconnects, keep-alive).
    pub fn backoff(&self) -> ExponentialBackoff {
        self.builder().build()
    }

    fn builder(&self) -> ExponentialBuilder {
        let mut builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_total_delay(self.max_elapsed);
        builder = match self.max_times {
            Some(times) => builder.with_max_times(times),
            None => builder.without_max_times(),
        };
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or the policy gives up
    /// (then the last error is returned).
    ///
    /// # Errors
    ///
    /// The last error of `op`.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `op`: dropping the future drops the attempt in flight.
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        // backon's schedule, built only once an attempt failed: most calls succeed at once, and
        // they are on the path of every lock and release (building it seeds a jitter source).
        let mut backoff: Option<ExponentialBackoff> = None;
        loop {
            let error = match op().await {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error) => error,
            };
            let Some(delay) = backoff.get_or_insert_with(|| self.backoff()).next() else {
                return Err(error);
            };
            tracing::debug!(%error, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_are_retried_until_success() {
        let calls = AtomicUsize::new(0);
        let result = RetryPolicy::new()
            .retry(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::Timeout {
                        operation: "get",
                        after: Duration::from_secs(1),
                    })
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicUsize::new(0);
        let result: Result<()> = RetryPolicy::new()
            .retry(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::InvalidConfig {
                    field: "ttl",
                    reason: "zero".into(),
                })
            })
            .await;
        assert!(matches!(result, Err(Error::InvalidConfig { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_gives_up_after_max_times() {
        let calls = AtomicUsize::new(0);
        let result: Result<()> = RetryPolicy::new()
            .with_max_times(Some(2))
            .retry(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Timeout {
                    operation: "get",
                    after: Duration::from_secs(1),
                })
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn backoff_delays_stay_within_bounds() {
        let policy = RetryPolicy::new()
            .with_max_delay(Duration::from_millis(400))
            .with_max_elapsed(None);
        for delay in policy.backoff().take(50) {
            // Jitter adds up to one more delay on top.
            assert!(delay <= Duration::from_millis(800), "{delay:?}");
        }
    }
}
