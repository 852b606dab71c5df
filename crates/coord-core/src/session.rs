//! Sessions: one etcd lease per process, kept alive, with a loss signal that fires before the
//! server can expire the lease.
//!
//! # Timing model
//!
//! The server expires a lease `ttl` after it *processed* the last keep-alive. That instant is never
//! earlier than the moment the client *sent* that keep-alive. So the session's local deadline is
//! `send time of the last successful keep-alive + ttl − loss margin`: when it passes without a newer
//! successful keep-alive, the session declares itself [`SessionState::Lost`] while the server still
//! holds the lease (for at least the margin). Go's client counts from the *receipt* of the reply and
//! so may believe it is alive up to a round trip (plus its 1 s polling) after the server expired it.
//!
//! The deadline is a fact of the clock, not an event someone has to deliver: [`Session::state`]
//! (and so `is_alive`, `check_alive` and `ended`) reports the loss from the instant the deadline
//! passes, even if the keep-alive task has not run since — after a `SIGSTOP`, a frozen VM or a
//! blocked runtime, the first look at the session already says `Lost`.
//!
//! Keep-alives are sent every `ttl / 3`. A failed keep-alive (stream broken, member down, timeout) is
//! retried at once on a fresh stream with a short jittered backoff, across reconnects and member
//! failures, until the deadline. A keep-alive with no reply within `ttl / 3` also gives up on its
//! connection (a member that keeps the connection open but answers nothing): the fresh stream goes
//! to the next member.
//!
//! A reply saying the lease no longer exists ends the session at once ([`LossReason::Expired`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::{Client, Error, LeaseId, Result, RetryPolicy};

/// The largest TTL etcd accepts (`ErrLeaseTTLTooLarge` above it).
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000_000);

/// The state of a [`Session`]. It only ever moves from `Alive` to one of the two end states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionState {
    /// The lease is being kept alive and the local deadline has not passed.
    Alive,
    /// The lease is gone, or could not be proven alive before the local deadline. Everything bound
    /// to the session must be considered lost.
    Lost(LossReason),
    /// The session was closed or detached by its owner.
    Closed,
}

impl SessionState {
    /// Whether the session is alive.
    pub fn is_alive(self) -> bool {
        self == SessionState::Alive
    }
}

/// Why a session was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The server said the lease no longer exists (expired, or revoked by someone else).
    Expired,
    /// No keep-alive succeeded before the local deadline (network partition, etcd unavailable).
    /// The server may still hold the lease for up to the loss margin; the session revokes it in the
    /// background if it can reach etcd.
    Unconfirmed,
}

/// Builds a [`Session`]; from [`Session::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct SessionBuilder {
    client: Client,
    ttl: Duration,
    exact_ttl: bool,
    loss_margin: Option<Duration>,
    resume: Option<LeaseId>,
}

impl SessionBuilder {
    /// Default TTL: 60 s, as Go's `concurrency.NewSession`.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

    /// The lease TTL. Must be a whole number of seconds, at least 1 s and at most [`MAX_TTL`].
    /// etcd raises TTLs under its minimum (2 s by default); [`Session::ttl`] reports what was granted.
    pub fn ttl(mut self, ttl: Duration) -> SessionBuilder {
        self.ttl = ttl;
        self
    }

    /// Fail with [`Error::TtlNotGranted`] (and revoke the lease) when the server grants a different
    /// TTL than requested, instead of accepting it.
    pub fn require_exact_ttl(mut self, exact: bool) -> SessionBuilder {
        self.exact_ttl = exact;
        self
    }

    /// How long before the server could expire the lease the session declares itself lost.
    ///
    /// Defaults to `ttl / 6`, clamped to 100 ms … 2 s. Must be below `2/3 × ttl` so that at least
    /// one keep-alive interval fits before the deadline.
    pub fn loss_margin(mut self, margin: Duration) -> SessionBuilder {
        self.loss_margin = Some(margin);
        self
    }

    /// Takes over an existing lease (for example one handed over by [`Session::detach`] in another
    /// process) instead of granting a new one. Its TTL is read from the server.
    pub fn resume(mut self, lease: LeaseId) -> SessionBuilder {
        self.resume = Some(lease);
        self
    }

    /// Grants (or resumes) the lease and starts keeping it alive.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidConfig`] for a zero, fractional or too large TTL or a too large margin
    ///   (nothing is sent to etcd);
    /// - [`Error::TtlNotGranted`] with [`require_exact_ttl`](Self::require_exact_ttl);
    /// - [`Error::SessionLost`] when resuming a lease that no longer exists;
    /// - transport, auth and timeout errors of the grant request.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future after the grant succeeded leaves a lease that nobody
    /// keeps alive; it expires after its TTL and holds no keys.
    pub async fn start(self) -> Result<Session> {
        let requested = validate_ttl(self.ttl)?;
        if let Some(margin) = self.loss_margin {
            validate_margin(margin, self.ttl)?;
        }
        let sent = Instant::now();
        let (lease, granted, remaining) = match self.resume {
            None => {
                let resp = self.client.lease_grant(requested).await?;
                (LeaseId::new(resp.id()), resp.ttl(), resp.ttl())
            }
            Some(lease) => {
                let resp = self.client.lease_time_to_live(lease, false).await?;
                if resp.ttl() <= 0 {
                    return Err(Error::SessionLost { lease_id: lease });
                }
                (lease, resp.granted_ttl(), resp.ttl())
            }
        };
        let granted = Duration::from_secs(granted.unsigned_abs());
        let remaining = Duration::from_secs(remaining.unsigned_abs()).min(granted);
        if granted != self.ttl {
            if self.exact_ttl && self.resume.is_none() {
                // Best effort: the caller refused this lease; don't leave it for its whole TTL.
                let _ = self.client.lease_revoke(lease).await;
                return Err(Error::TtlNotGranted {
                    requested: self.ttl,
                    granted,
                });
            }
            tracing::warn!(%lease, requested = ?self.ttl, ?granted, "etcd granted a different TTL than requested");
        }
        let margin = self.loss_margin.unwrap_or_else(|| default_margin(granted));
        validate_margin(margin, granted)?;
        // A resumed lease has only `remaining` left: place the virtual last renewal so that the
        // deadline honours it, and renew at once.
        let (last_ok, first_renewal) = match self.resume {
            None => (sent, sent + granted / 3),
            Some(_) => (sent.checked_sub(granted - remaining).unwrap_or(sent), sent),
        };
        Ok(Session::spawn(
            self.client,
            lease,
            granted,
            margin,
            last_ok,
            first_renewal,
        ))
    }
}

fn validate_ttl(ttl: Duration) -> Result<i64> {
    let invalid = |reason: &str| Error::InvalidConfig {
        field: "ttl",
        reason: format!("{ttl:?}: {reason}"),
    };
    if ttl.is_zero() {
        return Err(invalid("a session TTL must be at least 1 s"));
    }
    if ttl.subsec_nanos() != 0 {
        return Err(invalid("etcd leases have whole-second TTLs"));
    }
    if ttl > MAX_TTL {
        return Err(invalid("over etcd's maximum of 9e9 s"));
    }
    i64::try_from(ttl.as_secs()).map_err(|_| invalid("too large"))
}

fn validate_margin(margin: Duration, ttl: Duration) -> Result<()> {
    if margin >= ttl * 2 / 3 {
        return Err(Error::InvalidConfig {
            field: "loss_margin",
            reason: format!("{margin:?} must be below 2/3 of the TTL ({ttl:?})"),
        });
    }
    Ok(())
}

fn default_margin(ttl: Duration) -> Duration {
    (ttl / 6).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// A live etcd lease, kept alive in the background, shared by every lock, permit, leadership and
/// registration of a process.
///
/// Cheap to clone; clones share the lease. The lease is revoked when [`close`](Self::close) is
/// awaited, or in the background when the last clone is dropped (if a Tokio runtime is still
/// running; otherwise it expires after its TTL).
///
/// Observe it with [`state`](Self::state), [`subscribe`](Self::subscribe) (a
/// [`watch::Receiver`]), [`ended`](Self::ended) (a future) or [`cancellation_token`](Self::cancellation_token).
/// See the module docs for the timing model.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
/// use coord_core::Session;
/// use std::time::Duration;
///
/// let session = Session::builder(client).ttl(Duration::from_secs(10)).start().await?;
/// println!("lease {} granted for {:?}", session.lease_id(), session.ttl());
///
/// let work = session.cancellation_token();
/// tokio::select! {
///     _ = work.cancelled() => eprintln!("session ended: {:?}", session.state()),
///     _ = tokio::time::sleep(Duration::from_secs(1)) => {}
/// }
/// session.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease_id", &self.handle.lease)
            .field("ttl", &self.handle.ttl)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Owned by the session handles; its drop stops the keep-alive task.
struct Handle {
    client: Client,
    lease: LeaseId,
    ttl: Duration,
    margin: Duration,
    shared: Arc<Shared>,
    task: StdMutex<Option<JoinHandle<()>>>,
}

/// Shared between the handles and the keep-alive task.
struct Shared {
    state: watch::Sender<SessionState>,
    ended: CancellationToken,
    stop: CancellationToken,
    /// When set, stopping the task does not revoke (close revokes itself; detach hands over).
    no_revoke: AtomicBool,
    deadline: StdMutex<Instant>,
}

impl Shared {
    /// Moves the state out of `Alive` (first end state wins) and fires the cancellation token.
    fn end(&self, state: SessionState) -> bool {
        let changed = self.state.send_if_modified(|current| {
            if current.is_alive() {
                *current = state;
                true
            } else {
                false
            }
        });
        self.ended.cancel();
        changed
    }

    fn set_deadline(&self, deadline: Instant) {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The task revokes the lease unless close/detach told it not to.
        self.shared.stop.cancel();
    }
}

impl Session {
    /// Starts building a session on `client` (TTL 60 s unless set).
    pub fn builder(client: Client) -> SessionBuilder {
        SessionBuilder {
            client,
            ttl: SessionBuilder::DEFAULT_TTL,
            exact_ttl: false,
            loss_margin: None,
            resume: None,
        }
    }

    /// A session with the given TTL and default settings.
    ///
    /// # Errors
    ///
    /// As [`SessionBuilder::start`].
    ///
    /// # Cancel safety
    ///
    /// As [`SessionBuilder::start`].
    pub async fn new(client: Client, ttl: Duration) -> Result<Session> {
        Session::builder(client).ttl(ttl).start().await
    }

    fn spawn(
        client: Client,
        lease: LeaseId,
        ttl: Duration,
        margin: Duration,
        last_ok: Instant,
        next: Instant,
    ) -> Session {
        let (state, _) = watch::channel(SessionState::Alive);
        let shared = Arc::new(Shared {
            state,
            ended: CancellationToken::new(),
            stop: CancellationToken::new(),
            no_revoke: AtomicBool::new(false),
            deadline: StdMutex::new(last_ok + ttl - margin),
        });
        let keeper = KeepAlive {
            client: client.clone(),
            lease,
            ttl,
            margin,
            shared: shared.clone(),
            last_ok,
            next,
        };
        let task = tokio::spawn(keeper.run());
        tracing::debug!(%lease, ?ttl, ?margin, "session started");
        Session {
            handle: Arc::new(Handle {
                client,
                lease,
                ttl,
                margin,
                shared,
                task: StdMutex::new(Some(task)),
            }),
        }
    }

    /// The client the session was made with.
    pub fn client(&self) -> &Client {
        &self.handle.client
    }

    /// The lease id. Session-bound keys are named after it (lowercase hex).
    pub fn lease_id(&self) -> LeaseId {
        self.handle.lease
    }

    /// The TTL the server granted (which may exceed the requested one).
    pub fn ttl(&self) -> Duration {
        self.handle.ttl
    }

    /// The loss margin in use.
    pub fn loss_margin(&self) -> Duration {
        self.handle.margin
    }

    /// The current state.
    ///
    /// It reads the clock as well as the keep-alive task's last word: once the local
    /// [`deadline`](Self::deadline) has passed without a confirmed keep-alive, the session is
    /// `Lost(Unconfirmed)` from that instant, even when the keep-alive task has not run since — a
    /// process that was stopped (`SIGSTOP`, a frozen VM) or a runtime whose threads were blocked
    /// sees the loss the moment it looks, before it acts on a lease the server may be about to
    /// expire. That call declares the loss for everyone: the state channel, the
    /// [`cancellation_token`](Self::cancellation_token) and [`ended`](Self::ended) fire with it.
    pub fn state(&self) -> SessionState {
        let shared = &self.handle.shared;
        let state = *shared.state.borrow();
        if state.is_alive() && Instant::now() >= self.deadline() {
            // The keep-alive task would declare the same loss the next time it runs (a renewal
            // it handles after the deadline does not count either).
            shared.end(SessionState::Lost(LossReason::Unconfirmed));
            return *shared.state.borrow();
        }
        state
    }

    /// Whether the session is alive (see [`state`](Self::state): past the local deadline it is
    /// not, whether or not the keep-alive task has run).
    pub fn is_alive(&self) -> bool {
        self.state().is_alive()
    }

    /// `Ok` while alive, otherwise the matching error ([`Error::SessionLost`] or
    /// [`Error::SessionClosed`]). Primitives call this before and after waits.
    ///
    /// # Errors
    ///
    /// As described.
    pub fn check_alive(&self) -> Result<()> {
        match self.state() {
            SessionState::Alive => Ok(()),
            SessionState::Lost(_) => Err(Error::SessionLost {
                lease_id: self.handle.lease,
            }),
            SessionState::Closed => Err(Error::SessionClosed {
                lease_id: self.handle.lease,
            }),
        }
    }

    /// The local deadline: the instant at which the session declares itself lost unless a keep-alive
    /// succeeds first. The server holds the lease at least until `deadline + loss_margin`.
    pub fn deadline(&self) -> Instant {
        *self
            .handle
            .shared
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver of state changes, as a [`tokio::sync::watch`] channel.
    ///
    /// The channel (like [`cancellation_token`](Self::cancellation_token)) changes when a loss is
    /// declared: by the keep-alive task, or by the first [`state`](Self::state) call after the
    /// deadline. After a stall, ask [`state`](Self::state) or [`is_alive`](Self::is_alive) before
    /// acting: they read the clock.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// use coord_core::{Session, SessionState};
    /// use std::time::Duration;
    ///
    /// let session = Session::new(client, Duration::from_secs(10)).await?;
    /// let mut state = session.subscribe();
    /// tokio::spawn(async move {
    ///     if let Ok(end) = state.wait_for(|s| !s.is_alive()).await {
    ///         eprintln!("session ended: {:?}", *end);
    ///     }
    /// });
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.handle.shared.state.subscribe()
    }

    /// A token cancelled when the session ends (lost or closed). Cancelling it yourself does not
    /// affect the session.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.handle.shared.ended.child_token()
    }

    /// Resolves when the session is no longer alive, with the end state. Like
    /// [`state`](Self::state), it resolves at once when the local deadline has already passed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// use coord_core::Session;
    /// use std::time::Duration;
    ///
    /// let session = Session::new(client, Duration::from_secs(10)).await?;
    /// tokio::select! {
    ///     end = session.ended() => eprintln!("stopping: session {end:?}"),
    ///     _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ended(&self) -> SessionState {
        let state = self.state();
        if !state.is_alive() {
            return state;
        }
        self.handle.shared.ended.cancelled().await;
        self.state()
    }

    /// Revokes the lease (deleting every key attached to it) and stops keeping it alive.
    ///
    /// Closing a session whose lease is already gone succeeds. Other clones of this session see
    /// [`SessionState::Closed`].
    ///
    /// # Errors
    ///
    /// Transport or timeout errors of the revoke; the lease then expires after its TTL.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped, the lease may stay until its TTL expires.
    pub async fn close(self) -> Result<()> {
        let task = self.stop_task(true);
        if let Some(task) = task {
            let _ = task.await;
        }
        let result = match self.handle.client.lease_revoke(self.handle.lease).await {
            Err(e) if is_lease_not_found(&e) => Ok(()),
            other => other,
        };
        self.handle.shared.end(SessionState::Closed);
        tracing::debug!(lease = %self.handle.lease, ok = result.is_ok(), "session closed");
        result
    }

    /// Stops keeping the lease alive **without** revoking it, and returns its id so that another
    /// session (in this or another process) can take it over with [`SessionBuilder::resume`] before
    /// the TTL runs out. The keys attached to it stay. This session (and its clones) becomes
    /// [`SessionState::Closed`]; guards bound to it report loss.
    ///
    /// This is Go's `Session.Orphan()`.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// use coord_core::Session;
    /// use std::time::Duration;
    ///
    /// // The old process hands its lease (and every key bound to it) over …
    /// let old = Session::new(client.clone(), Duration::from_secs(30)).await?;
    /// let lease = old.detach().await;
    /// // … and the new one (here: the same process) keeps it alive from now on.
    /// let new = Session::builder(client).resume(lease).start().await?;
    /// assert_eq!(new.lease_id(), lease);
    /// # Ok(()) }
    /// ```
    pub async fn detach(self) -> LeaseId {
        if let Some(task) = self.stop_task(true) {
            let _ = task.await;
        }
        self.handle.shared.end(SessionState::Closed);
        self.handle.lease
    }

    fn stop_task(&self, no_revoke: bool) -> Option<JoinHandle<()>> {
        self.handle
            .shared
            .no_revoke
            .store(no_revoke, Ordering::SeqCst);
        self.handle.shared.stop.cancel();
        self.handle
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

fn is_lease_not_found(e: &Error) -> bool {
    matches!(e, Error::Etcd { source, .. } if source.to_string().contains("lease not found"))
}

/// The keep-alive task.
struct KeepAlive {
    client: Client,
    lease: LeaseId,
    ttl: Duration,
    margin: Duration,
    shared: Arc<Shared>,
    /// Send time of the last keep-alive (or grant) that the server confirmed.
    last_ok: Instant,
    next: Instant,
}

enum Renewal {
    /// Renewed; the server's TTL when the reply carried it.
    Alive(Option<Duration>),
    Expired,
}

impl KeepAlive {
    async fn run(mut self) {
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        // The connection the stream was opened on.
        let mut connection = None;
        let mut backoff = self.backoff();
        loop {
            let deadline = self.last_ok + self.ttl - self.margin;
            self.shared.set_deadline(deadline);
            tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => return self.stopped().await,
                // Declared lost by a reader of the state that saw the deadline pass first.
                () = self.shared.ended.cancelled() => return self.lost(LossReason::Unconfirmed).await,
                () = sleep_until(deadline) => return self.lost(LossReason::Unconfirmed).await,
                () = sleep_until(self.next) => {}
            }
            let sent = Instant::now();
            // One attempt may not take longer than a renewal interval: a stream stuck on a dead
            // connection is replaced rather than waited for.
            let attempt_deadline = (sent + self.ttl / 3).min(deadline);
            if stream.is_none() {
                connection = self.client.connection();
            }
            let outcome = tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => return self.stopped().await,
                () = self.shared.ended.cancelled() => return self.lost(LossReason::Unconfirmed).await,
                () = sleep_until(deadline) => return self.lost(LossReason::Unconfirmed).await,
                outcome = timeout_at(attempt_deadline, renew(&self.client, self.lease, &mut stream)) => outcome,
            };
            match outcome {
                // The timer may not have fired yet although the deadline has passed (the task ran
                // late): a renewal handled after the deadline does not count, as for `state()`.
                Ok(Ok(Renewal::Alive(_))) if Instant::now() >= deadline => {
                    return self.lost(LossReason::Unconfirmed).await;
                }
                Ok(Ok(Renewal::Alive(ttl))) => {
                    self.last_ok = sent;
                    self.ttl = ttl.unwrap_or(self.ttl);
                    self.next = sent + self.ttl / 3;
                    backoff = self.backoff();
                }
                Ok(Ok(Renewal::Expired)) => return self.lost(LossReason::Expired).await,
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => {
                            // An open connection that does not answer (a blackholed member): the
                            // next stream goes to the next member.
                            self.client.suspect(connection);
                            "no reply in time".to_owned()
                        }
                    };
                    stream = None;
                    let delay = backoff.next().unwrap_or(self.ttl / 6);
                    tracing::debug!(lease = %self.lease, %error, ?delay, "keep-alive failed; retrying");
                    self.next = Instant::now() + delay;
                }
            }
        }
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        RetryPolicy::new()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay((self.ttl / 6).max(Duration::from_millis(50)))
            .with_max_elapsed(None)
            .backoff()
    }

    async fn stopped(self) {
        if !self.shared.no_revoke.load(Ordering::SeqCst) {
            // Dropped without close(): revoke in the background so waiters need not wait a TTL.
            match self.client.lease_revoke(self.lease).await {
                Ok(()) => tracing::debug!(lease = %self.lease, "session dropped; lease revoked"),
                Err(error) => {
                    tracing::debug!(lease = %self.lease, %error, "session dropped; revoke failed")
                }
            }
            self.shared.end(SessionState::Closed);
        }
    }

    async fn lost(self, reason: LossReason) {
        self.shared.end(SessionState::Lost(reason));
        tracing::warn!(lease = %self.lease, ?reason, "session lost");
        if reason == LossReason::Unconfirmed {
            // We gave up the lease locally; free it on the server too if it is reachable, so the
            // next holder need not wait for the margin.
            let _ = self.client.lease_revoke(self.lease).await;
        }
    }
}

/// One keep-alive round trip, opening a new stream when there is none.
async fn renew(
    client: &Client,
    lease: LeaseId,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> std::result::Result<Renewal, etcd_client::Error> {
    let Some((keeper, replies)) = stream else {
        // Opening the stream sends the first keep-alive and waits for its reply.
        return match client.etcd().lease_client().keep_alive(lease.get()).await {
            Ok(pair) => {
                *stream = Some(pair);
                // etcd-client consumes the first reply (checking that its TTL is positive).
                Ok(Renewal::Alive(None))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(msg))
                if msg.contains("lease not found") =>
            {
                Ok(Renewal::Expired)
            }
            Err(e) => Err(e),
        };
    };
    keeper.keep_alive().await?;
    match replies.message().await? {
        Some(reply) if reply.ttl() <= 0 => Ok(Renewal::Expired),
        Some(reply) => Ok(Renewal::Alive(Some(Duration::from_secs(
            reply.ttl().unsigned_abs(),
        )))),
        None => Err(etcd_client::Error::LeaseKeepAliveError(
            "keep-alive stream closed by the server".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_zero_is_rejected() {
        assert!(matches!(
            validate_ttl(Duration::ZERO),
            Err(Error::InvalidConfig { field: "ttl", .. })
        ));
    }

    #[test]
    fn fractional_ttl_is_rejected() {
        assert!(validate_ttl(Duration::from_millis(1500)).is_err());
    }

    #[test]
    fn ttl_over_the_server_maximum_is_rejected() {
        assert!(validate_ttl(MAX_TTL + Duration::from_secs(1)).is_err());
        assert_eq!(validate_ttl(MAX_TTL).unwrap(), 9_000_000_000);
    }

    #[test]
    fn default_margin_is_a_sixth_clamped() {
        assert_eq!(
            default_margin(Duration::from_secs(6)),
            Duration::from_secs(1)
        );
        assert_eq!(
            default_margin(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
        assert_eq!(
            default_margin(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn margin_must_leave_a_renewal_window() {
        assert!(validate_margin(Duration::from_secs(4), Duration::from_secs(6)).is_err());
        assert!(validate_margin(Duration::from_secs(3), Duration::from_secs(6)).is_ok());
    }
}
