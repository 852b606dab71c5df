//! Proof of leading an election.

use std::fmt;

use coord_core::etcd_client::Compare;
use coord_core::queue::{self, key_lost, release_in_background};
use coord_core::{FencingToken, Ownership, Session};
use tokio::sync::OwnedMutexGuard;

use crate::election::proclaim;
use crate::{Error, Result};

/// Proof of leading an [`Election`](crate::Election), from
/// [`campaign`](crate::Election::campaign).
///
/// Dropping it resigns in the background; prefer [`resign`](Self::resign), which reports errors.
///
/// Leadership is a lease: a process that pauses (GC, swap, a stopped VM) can wake up after its
/// session expired and a standby took over. [`lost`](Self::lost) is the early warning; the
/// guarantee is to make every write that only the leader may do conditional on
/// [`owns`](Self::owns), in the same transaction:
///
/// ```no_run
/// # async fn demo(election: coord_leader::Election) -> coord_leader::Result<()> {
/// use coord_core::etcd_client::{Txn, TxnOp};
///
/// let leadership = election.campaign("node-1").await?;
/// let txn = Txn::new()
///     .when([leadership.owns()])
///     .and_then([TxnOp::put("jobs/schedule", "…", None)]);
/// if !leadership.session().client().txn(txn).await?.succeeded() {
///     println!("no longer leader: nothing was written");
/// }
/// # Ok(()) }
/// ```
#[must_use = "dropping a Leadership resigns at once"]
pub struct Leadership {
    session: Session,
    name: String,
    ownership: Ownership,
    local: Option<OwnedMutexGuard<()>>,
    resigned: bool,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &self.key())
            .field("token", &self.ownership.token())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    pub(crate) fn new(
        session: Session,
        name: String,
        ownership: Ownership,
        local: Option<OwnedMutexGuard<()>>,
    ) -> Leadership {
        Leadership {
            session,
            name,
            ownership,
            local,
            resigned: false,
        }
    }

    /// The leader's key.
    pub fn key(&self) -> &str {
        self.ownership.key_str().unwrap_or_default()
    }

    /// The election's name (without the namespace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token: the key's create revision. Every later leader of this election (in any
    /// process, Go ones included) has a larger one.
    pub fn token(&self) -> FencingToken {
        self.ownership.token()
    }

    /// `create_revision(key) == token`: put it in the `when` of any transaction that must only
    /// apply while this leadership lasts.
    pub fn owns(&self) -> Compare {
        self.ownership.compare()
    }

    /// The ownership proof (key and token).
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The session the leadership is bound to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Resolves when the leadership is lost: the session ended (it declares loss before the
    /// server can expire the lease), or the key was deleted or replaced. An early warning only —
    /// a paused process learns of it late; fence writes with [`owns`](Self::owns).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(leadership: coord_leader::Leadership) {
    /// tokio::select! {
    ///     () = leadership.lost() => eprintln!("lost the leadership; stopping"),
    ///     () = std::future::pending::<()>() => {} // the leader's work
    /// }
    /// # }
    /// ```
    pub async fn lost(&self) {
        key_lost(&self.session, &self.ownership).await;
    }

    /// Announces a new value without a new election (Go's `Proclaim`):
    /// `if create_revision(key) == token then put(key, value, lease)`. Observers report it.
    ///
    /// # Errors
    ///
    /// - [`Error::ValueTooLarge`] for an over-long value (nothing is sent);
    /// - [`Error::NotLeader`] when the key was gone or replaced, or
    ///   [`coord_core::Error::SessionLost`] when the session expired: the leadership had been lost;
    /// - transport errors (the value may or may not have been written).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the value may or may not have been written.
    ///
    /// ```no_run
    /// # async fn demo(leadership: coord_leader::Leadership) -> coord_leader::Result<()> {
    /// leadership.proclaim("node-1 (draining)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        proclaim(&self.session, &self.ownership, value.into()).await
    }

    /// Gives the leadership up: deletes the key, but only if it is still this leader's (a stale
    /// resign never deletes a newer key of the same session). The next candidate leads as soon as
    /// it sees the delete.
    ///
    /// # Errors
    ///
    /// - [`Error::NotLeader`] when the key was already gone or replaced: the leadership had been
    ///   lost before;
    /// - transport errors; the resign is then retried in the background (Go forgets it, #22123).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the resign continues in the background.
    ///
    /// ```no_run
    /// # async fn demo(leadership: coord_leader::Leadership) -> coord_leader::Result<()> {
    /// leadership.resign().await?; // a standby takes over now, not after the TTL
    /// # Ok(()) }
    /// ```
    pub async fn resign(mut self) -> Result<()> {
        let deleted = queue::release(self.session.client(), &self.ownership).await?;
        self.resigned = true;
        self.local.take();
        if deleted {
            tracing::debug!(key = %self.key(), "resigned");
            Ok(())
        } else {
            Err(Error::NotLeader {
                key: self.key().to_owned(),
            })
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if !self.resigned {
            release_in_background(&self.session, self.ownership.clone(), self.local.take());
        }
    }
}
