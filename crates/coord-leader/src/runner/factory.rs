//! Where a runner's sessions come from.

use std::future::Future;

use coord_core::{Session, SessionBuilder};

/// Starts the sessions a [`Runner`](crate::Runner) campaigns with: one before the first campaign
/// and a fresh one after every loss.
///
/// Implemented for [`SessionBuilder`] (each call starts a new session with its settings) and for
/// any `Fn() -> impl Future<Output = coord_core::Result<Session>>`:
///
/// ```no_run
/// # fn demo(client: coord_core::Client) {
/// use coord_core::Session;
/// use std::time::Duration;
///
/// // A builder…
/// let from_builder = Session::builder(client.clone()).ttl(Duration::from_secs(10));
/// // …or a closure, e.g. to pick a client or log each new session.
/// let from_closure = move || {
///     let client = client.clone();
///     async move { Session::new(client, Duration::from_secs(10)).await }
/// };
/// # let _ = (from_builder, from_closure);
/// # }
/// ```
pub trait SessionFactory: Send + Sync {
    /// Starts a new session.
    ///
    /// Errors for which [`coord_core::Error::is_retryable`] holds are retried by the runner with
    /// its backoff; any other error ends [`Runner::run`](crate::Runner::run).
    fn session(&self) -> impl Future<Output = coord_core::Result<Session>> + Send;
}

impl SessionFactory for SessionBuilder {
    fn session(&self) -> impl Future<Output = coord_core::Result<Session>> + Send {
        self.clone().start()
    }
}

impl<F, Fut> SessionFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = coord_core::Result<Session>> + Send,
{
    fn session(&self) -> impl Future<Output = coord_core::Result<Session>> + Send {
        self()
    }
}
