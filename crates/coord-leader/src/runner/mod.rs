//! The embedded leadership runner: campaign, run the work while leading, hand over on shutdown.

mod factory;
mod health;
mod term;

use std::future::Future;
use std::time::Duration;

use coord_core::keys::validate_name;
use coord_core::{RetryPolicy, Session};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use factory::SessionFactory;
pub use health::{Health, Role, RunnerStatus};
pub use term::Term;

use crate::election::{check_value, max_value_len};
use crate::{Election, Error, Leadership, Result};

/// Runs work only while this process leads an election, and hands leadership over quickly.
///
/// [`run`](Self::run) loops until its shutdown token fires:
///
/// 1. start a session from the [`SessionFactory`] and campaign with the identity as proposal;
/// 2. once elected, call the work closure with a [`Term`] and run the future it returns in its own
///    task;
/// 3. when the leadership is **lost** (the session ends — declared before the server can expire
///    the lease — or the key is deleted), cancel the term at once, wait for the work (at most the
///    [shutdown grace](RunnerBuilder::shutdown_grace), then abort it), and go back to 1 with a
///    fresh session;
/// 4. when the **work returns** by itself, resign (a standby leads at once) and campaign again on
///    the same session — at the back of the queue;
/// 5. on **shutdown**, cancel the term, wait for the work (bounded by the grace, then aborted),
///    resign so that a standby takes over at once, close the session, and return.
///
/// Failures (etcd unreachable, a campaign error) are retried with the runner's backoff and counted
/// in [`Health`]; only errors that retrying cannot fix (bad name, permission denied, an invalid
/// session configuration…) end `run` with an error.
///
/// The cancellation is the early warning; the guarantee against a paused leader is to fence every
/// leader-only write with [`Term::owns`]. The timing model — how long a crashed leader blocks
/// failover, how fast a hand-over is — is in `docs/design/election.md`.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_leader::Result<()> {
/// use coord_core::Session;
/// use coord_core::etcd_client::{Txn, TxnOp};
/// use coord_leader::{CancellationToken, Runner, Term};
/// use std::time::Duration;
///
/// let sessions = Session::builder(client).ttl(Duration::from_secs(10));
/// let runner = Runner::builder(sessions, "scheduler", "node-1").build()?;
/// let health = runner.health(); // for /healthz and metrics
///
/// let shutdown = CancellationToken::new(); // cancel it on SIGTERM
/// runner
///     .run(shutdown.clone(), |term: Term| async move {
///         while !term.is_cancelled() {
///             let tick = Txn::new()
///                 .when([term.owns()])
///                 .and_then([TxnOp::put("scheduler/tick", term.number().to_string(), None)]);
///             if !term.client().txn(tick).await.is_ok_and(|r| r.succeeded()) {
///                 break;
///             }
///             tokio::select! {
///                 () = term.cancelled() => break,
///                 () = tokio::time::sleep(Duration::from_secs(1)) => {}
///             }
///         }
///     })
///     .await?;
/// # let _ = health; Ok(()) }
/// ```
#[must_use = "a runner does nothing until `run` is awaited"]
pub struct Runner<S> {
    factory: S,
    name: String,
    identity: Vec<u8>,
    grace: Duration,
    retry: RetryPolicy,
    health: Health,
}

impl<S> std::fmt::Debug for Runner<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("name", &self.name)
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// Configures a [`Runner`]; from [`Runner::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct RunnerBuilder<S> {
    factory: S,
    name: String,
    identity: Vec<u8>,
    grace: Duration,
    retry: RetryPolicy,
}

impl<S> std::fmt::Debug for RunnerBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerBuilder")
            .field("name", &self.name)
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("grace", &self.grace)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl<S: SessionFactory> RunnerBuilder<S> {
    /// How long the runner waits for the work to stop after cancelling its term (on shutdown or
    /// loss) before aborting its task. Default: [`Runner::DEFAULT_SHUTDOWN_GRACE`].
    ///
    /// An aborted task stops at its next `.await`; work that blocks a thread is not stopped.
    pub fn shutdown_grace(mut self, grace: Duration) -> RunnerBuilder<S> {
        self.grace = grace;
        self
    }

    /// The backoff between failed attempts (starting a session, campaigning). Its total-time limit
    /// is ignored: the runner retries until shut down. Default: 50 ms doubling up to 2 s, jittered.
    pub fn retry(mut self, policy: RetryPolicy) -> RunnerBuilder<S> {
        self.retry = policy.with_max_elapsed(None);
        self
    }

    /// Checks the name and identity and builds the runner.
    ///
    /// # Errors
    ///
    /// - [`coord_core::Error::InvalidName`] for an empty name, a NUL byte, a trailing `/` or an
    ///   over-long name;
    /// - [`Error::EmptyIdentity`] for an empty identity;
    /// - [`Error::ValueTooLarge`] for an identity that cannot fit into a campaign request.
    ///
    /// ```no_run
    /// # fn demo(client: coord_core::Client) {
    /// use coord_core::Session;
    /// use coord_leader::{Error, Runner};
    ///
    /// let built = Runner::builder(Session::builder(client), "scheduler", "").build();
    /// assert!(matches!(built, Err(Error::EmptyIdentity)));
    /// # }
    /// ```
    pub fn build(self) -> Result<Runner<S>> {
        validate_name("", &self.name)?;
        if self.identity.is_empty() {
            return Err(Error::EmptyIdentity);
        }
        // The namespace is known only with the first session; the campaign checks again then.
        let key_len = self.name.len() + 1 + 16;
        check_value(&"x".repeat(key_len), &self.identity).map_err(|_| Error::ValueTooLarge {
            len: self.identity.len(),
            max: max_value_len(key_len),
        })?;
        Ok(Runner {
            factory: self.factory,
            name: self.name,
            identity: self.identity,
            grace: self.grace,
            retry: self.retry,
            health: Health::new(),
        })
    }
}

/// How a term ended.
enum TermEnd {
    Lost,
    Shutdown,
    Returned,
}

/// How serving on one session ended.
enum SessionEnd {
    /// Shut down; the leadership (if any) was resigned.
    Shutdown,
    /// The session ended or a term was lost: start over with a fresh session.
    Renew,
    /// A failure; retried after a backoff unless it is final.
    Failed(Error),
}

impl<S: SessionFactory> Runner<S> {
    /// Default for [`RunnerBuilder::shutdown_grace`]: 5 s.
    pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// Starts configuring a runner for election `name` (under the namespace of the sessions'
    /// client), campaigning with `identity` as proposal (observers report it as the leader's
    /// value).
    pub fn builder(factory: S, name: &str, identity: impl Into<Vec<u8>>) -> RunnerBuilder<S> {
        RunnerBuilder {
            factory,
            name: name.to_owned(),
            identity: identity.into(),
            grace: Self::DEFAULT_SHUTDOWN_GRACE,
            retry: RetryPolicy::new().with_max_elapsed(None),
        }
    }

    /// The runner's state and counters; clones stay valid after [`run`](Self::run) has consumed
    /// the runner.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Campaigns, runs `work` during each term, and hands over on shutdown (see the type's docs).
    ///
    /// `work` is called once per term won, with that [`Term`]; the future it returns runs in its own
    /// task and should end soon after [`Term::cancelled`] fires.
    ///
    /// # Errors
    ///
    /// Only errors that retrying cannot fix: [`coord_core::Error::InvalidName`] when the name
    /// does not fit under the sessions' namespace, [`Error::ValueTooLarge`], a session factory or
    /// campaign error that is not retryable (permission denied, authentication, invalid session
    /// settings). Everything else is retried until shutdown.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future drops the work's term without waiting for the work
    /// (its task keeps running until its next `.await` sees nothing — cancel the `shutdown` token
    /// instead), the leadership is resigned in the background, and the session revoked in the
    /// background.
    pub async fn run<F, Fut>(self, shutdown: CancellationToken, mut work: F) -> Result<()>
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let outcome = self.run_sessions(&shutdown, &mut work).await;
        self.health.set_observer(None);
        self.health.set_role(Role::Stopped);
        if let Err(error) = &outcome {
            tracing::error!(election = %self.name, %error, "leadership runner stopped");
        }
        outcome
    }

    async fn run_sessions<F, Fut>(&self, shutdown: &CancellationToken, work: &mut F) -> Result<()>
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut backoff = self.retry.backoff();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            self.health.set_role(Role::Starting);
            let session = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                session = self.factory.session() => session,
            };
            let session = match session {
                Ok(session) => session,
                Err(error) if error.is_retryable() => {
                    self.health.failed();
                    tracing::warn!(election = %self.name, %error, "cannot start a session; retrying");
                    if !self.pause(&mut backoff, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            self.observe_leader(&session).await;
            let end = self.serve(&session, shutdown, work).await;
            match end {
                SessionEnd::Shutdown => {
                    if let Err(error) = session.close().await {
                        tracing::debug!(election = %self.name, %error, "closing the session failed; its lease expires after the TTL");
                    }
                    return Ok(());
                }
                SessionEnd::Renew => {
                    backoff = self.retry.backoff();
                    close_in_background(session);
                }
                SessionEnd::Failed(error) => {
                    close_in_background(session);
                    if !(error.is_retryable() || error.is_session_lost()) {
                        return Err(error);
                    }
                    self.health.failed();
                    tracing::warn!(election = %self.name, %error, "campaign failed; retrying");
                    if !self.pause(&mut backoff, shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Campaigns and leads on one session until it ends, a term is lost, or shutdown.
    async fn serve<F, Fut>(
        &self,
        session: &Session,
        shutdown: &CancellationToken,
        work: &mut F,
    ) -> SessionEnd
    where
        F: FnMut(Term) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let election = match Election::new(session, &self.name) {
            Ok(election) => election,
            Err(error) => return SessionEnd::Failed(error),
        };
        loop {
            self.health.set_role(Role::Campaigning);
            let campaign = tokio::select! {
                biased;
                () = shutdown.cancelled() => return SessionEnd::Shutdown,
                campaign = election.campaign(self.identity.clone()) => campaign,
            };
            let leadership = match campaign {
                Ok(leadership) => leadership,
                // The session ended while campaigning: not a lost term, just start over.
                Err(error) if error.is_session_lost() || !session.is_alive() => {
                    tracing::info!(election = %self.name, %error, "session ended while campaigning");
                    return SessionEnd::Renew;
                }
                // Someone deleted the candidate's key while it waited: queue again.
                Err(error @ Error::NotLeader { .. }) => {
                    tracing::warn!(election = %self.name, %error, "candidate removed while campaigning; campaigning again");
                    self.health.failed();
                    continue;
                }
                Err(error) => return SessionEnd::Failed(error),
            };
            let number = self.health.won(leadership.token());
            tracing::info!(election = %self.name, term = number, token = %leadership.token(), "leading");
            let cancel = CancellationToken::new();
            let term = Term::new(
                number,
                leadership.ownership().clone(),
                session.clone(),
                cancel.clone(),
            );
            let mut task = tokio::spawn(work(term));
            let end = tokio::select! {
                biased;
                () = leadership.lost() => TermEnd::Lost,
                () = shutdown.cancelled() => TermEnd::Shutdown,
                finished = &mut task => {
                    if let Err(error) = finished {
                        tracing::error!(election = %self.name, term = number, %error, "the leader's work failed");
                    }
                    TermEnd::Returned
                }
            };
            // Cancel before anything else: the loss signal fires before the server can expire
            // the lease, and the work must stop before a standby can lead.
            cancel.cancel();
            match end {
                TermEnd::Lost => {
                    self.health.lost();
                    tracing::warn!(election = %self.name, term = number, "leadership lost; the work was cancelled");
                    self.wait_for(task, number).await;
                    // Its key is gone, or its session is: drop it (a background resign is a no-op).
                    drop(leadership);
                    return SessionEnd::Renew;
                }
                TermEnd::Shutdown => {
                    self.health.set_role(Role::Stopping);
                    self.wait_for(task, number).await;
                    self.resign(leadership, Role::Stopping).await;
                    return SessionEnd::Shutdown;
                }
                TermEnd::Returned => {
                    tracing::info!(election = %self.name, term = number, "the leader's work returned; resigning");
                    self.resign(leadership, Role::Campaigning).await;
                    if !session.is_alive() {
                        return SessionEnd::Renew;
                    }
                }
            }
        }
    }

    /// Waits for the cancelled work, at most the grace, then aborts it.
    async fn wait_for(&self, mut task: JoinHandle<()>, term: u64) {
        match tokio::time::timeout(self.grace, &mut task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(election = %self.name, term, %error, "the leader's work failed")
            }
            Err(_) => {
                tracing::warn!(election = %self.name, term, grace = ?self.grace, "the leader's work did not stop within the grace; aborting it");
                task.abort();
            }
        }
    }

    async fn resign(&self, leadership: Leadership, then: Role) {
        match leadership.resign().await {
            Ok(()) => self.health.resigned(then),
            Err(error) if error.is_retryable() => {
                // Retried in the background by the dropped leadership.
                tracing::warn!(election = %self.name, %error, "resign failed; retrying in the background");
                self.health.resigned(then);
            }
            Err(error) => {
                tracing::info!(election = %self.name, %error, "the leadership was already lost when resigning");
                self.health.lost();
                self.health.set_role(then);
            }
        }
    }

    /// Sleeps for the next backoff delay; `false` when shut down meanwhile.
    async fn pause(
        &self,
        backoff: &mut (impl Iterator<Item = Duration> + Send),
        shutdown: &CancellationToken,
    ) -> bool {
        let delay = backoff.next().unwrap_or(Duration::from_secs(2));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Starts following the election for [`Health::leader`] (once; errors are only logged).
    async fn observe_leader(&self, session: &Session) {
        if self.health.has_observer() {
            return;
        }
        match crate::observe(session.client(), &self.name).await {
            Ok(observed) => self.health.set_observer(Some(observed)),
            Err(error) => {
                tracing::debug!(election = %self.name, %error, "cannot observe the election yet")
            }
        }
    }
}

/// Revokes a session that is no longer used without holding up the next campaign (its lease may
/// be unreachable during a partition).
fn close_in_background(session: Session) {
    tokio::spawn(async move {
        let lease = session.lease_id();
        if let Err(error) = session.close().await {
            tracing::debug!(%lease, %error, "closing an ended session failed");
        }
    });
}
