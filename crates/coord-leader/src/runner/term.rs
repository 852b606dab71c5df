//! What the leader's work gets for one term.

use coord_core::etcd_client::Compare;
use coord_core::{Client, FencingToken, Ownership, Session};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::Result;
use crate::election::proclaim;

/// One term of leadership, handed to the work closure of a [`Runner`](crate::Runner).
///
/// The term ends when its [cancellation token](Self::cancellation_token) fires: the leadership was
/// lost (the session ended — which it declares before the server can expire the lease — or the
/// key was deleted), or the runner shuts down. The work must then stop; the runner waits for it
/// (bounded by its shutdown grace) before resigning or campaigning again.
///
/// Cancellation is an early warning; writes that only the leader may do must be fenced with
/// [`owns`](Self::owns) in the same transaction, because a paused process learns of its loss late.
///
/// ```no_run
/// # async fn work(term: coord_leader::Term) {
/// use coord_core::etcd_client::{Txn, TxnOp};
/// use std::time::Duration;
///
/// while !term.is_cancelled() {
///     let write = Txn::new()
///         .when([term.owns()])
///         .and_then([TxnOp::put("jobs/heartbeat", format!("term {}", term.number()), None)]);
///     match term.client().txn(write).await {
///         Ok(resp) if resp.succeeded() => {}
///         _ => break, // not leader any more (or etcd unreachable): stop
///     }
///     tokio::select! {
///         () = term.cancelled() => break,
///         () = tokio::time::sleep(Duration::from_secs(1)) => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Term {
    number: u64,
    ownership: Ownership,
    session: Session,
    cancel: CancellationToken,
}

impl Term {
    pub(crate) fn new(
        number: u64,
        ownership: Ownership,
        session: Session,
        cancel: CancellationToken,
    ) -> Term {
        Term {
            number,
            ownership,
            session,
            cancel,
        }
    }

    /// The number of this term among the terms this runner won (1 for the first).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The fencing token: the leader key's create revision, larger for every later term of any
    /// leader of this election.
    pub fn token(&self) -> FencingToken {
        self.ownership.token()
    }

    /// `create_revision(key) == token`: put it in the `when` of every transaction that must only
    /// apply during this term.
    pub fn owns(&self) -> Compare {
        self.ownership.compare()
    }

    /// The ownership proof (key and token).
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// The session the term is bound to.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session's client, for the work's own requests.
    pub fn client(&self) -> &Client {
        self.session.client()
    }

    /// Resolves when the term ends (loss or shutdown).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether the term has ended. Past the session's local deadline it has, even before the
    /// runner has noticed (a process that was stopped or a runtime that was blocked learns it on
    /// its first look, see [`Session::state`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled() || !self.session.is_alive()
    }

    /// The term's cancellation token, for tasks the work spawns. Cancelling it yourself does not
    /// end the term.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    /// Announces a new value for this leader (fenced, like
    /// [`Leadership::proclaim`](crate::Leadership::proclaim)).
    ///
    /// # Errors
    ///
    /// As [`Leadership::proclaim`](crate::Leadership::proclaim).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the value may or may not have been written.
    ///
    /// ```no_run
    /// # async fn work(term: coord_leader::Term) -> coord_leader::Result<()> {
    /// term.proclaim("node-1 (catching up)").await?;
    /// # Ok(()) }
    /// ```
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        proclaim(&self.session, &self.ownership, value.into()).await
    }
}
