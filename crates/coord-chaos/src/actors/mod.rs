//! The workload: per client, one actor per primitive, all running at once on the client's
//! session. Holders do fenced writes that leave a log key in etcd, so the checkers can compare
//! what clients were told with what etcd applied.
//!
//! | actor | holds | fenced write (one txn, `when([owns()])`) |
//! |---|---|---|
//! | [`mutex`] | the Mutex `mutex` | read `counter` (not fenced), then `counter = read + 1` and `mutex-log/<client>-<seq>` |
//! | [`semaphore`] | a permit of `sem` (fixed limit) | `sem-log/<client>-<seq>`, two or three per permit |
//! | [`election`] | the leadership of `leader` | `leader-log/<client>-<seq>`, one to four per term |
//! | [`registry`] | a registration in `svc` | none: metadata updates, and `cfg` increments with compare-and-set |
//!
//! A pause requested by the nemesis is taken by the next actor about to do a fenced write
//! ([`Ctx::fenced_write`]): it partitions the client, waits until its own key is gone (seen by
//! the observer, bounded), resumes and writes: the write must be rejected.

pub mod election;
pub mod mutex;
pub mod registry;
pub mod semaphore;

use std::sync::Arc;
use std::time::Duration;

use coord_core::etcd_client::{Txn, TxnOp};
use coord_core::{Client, Ownership};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::history::{FaultKind, History, OpKind, Outcome};
use crate::lab::Node;
use crate::rng::Rng;

/// The value of every log key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRecord {
    /// The writing client.
    pub client: usize,
    /// The fencing token the write was guarded by.
    pub token: i64,
    /// For the mutex: the counter value written in the same transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
}

/// What an actor needs.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Its client process.
    pub node: Arc<Node>,
    /// Where it records what it does.
    pub history: History,
    /// The unfaulted client (for the pause's view of etcd).
    pub observer: Client,
    /// Ends the actor (it releases what it holds first).
    pub stop: CancellationToken,
    /// Its randomness.
    pub rng: Rng,
    /// The session TTL (bounds the pause).
    pub ttl: Duration,
    /// Whether writes carry the ownership compare (false only as a negative control).
    pub fencing: bool,
}

/// How a fenced write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Applied.
    Accepted,
    /// The compare failed: the holder no longer holds.
    Rejected,
    /// An error: unknown whether applied.
    Failed,
}

impl Ctx {
    /// The client's index.
    pub fn client(&self) -> usize {
        self.node.index
    }

    /// Sleeps `d` of simulated work or pacing; false if the actor was stopped meanwhile.
    pub async fn work(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }

    /// A holder's work: `writes` fenced writes of `log` + `<client>-<seq>` (recorded as `kind`),
    /// up to `max_gap` apart, until one is not accepted or the actor is stopped.
    pub async fn log_writes(
        &mut self,
        kind: OpKind,
        ownership: &Ownership,
        log: &str,
        writes: u64,
        seq: &mut u64,
        max_gap: Duration,
    ) {
        for i in 0..writes {
            *seq += 1;
            let log_key = format!("{log}c{}-{:07}", self.client(), *seq);
            let record = LogRecord {
                client: self.client(),
                token: ownership.token().revision(),
                value: None,
            };
            let written = self
                .fenced_write(kind, ownership, log_key, &record, Vec::new())
                .await;
            if written != Written::Accepted || i + 1 == writes {
                break;
            }
            let gap = self.rng.duration(Duration::from_millis(10), max_gap);
            if !self.work(gap).await {
                break;
            }
        }
    }

    /// Writes `log_key` (a [`LogRecord`]) and `extra` in one transaction guarded by `ownership`,
    /// after a simulated pause if one was requested; records the outcome as `kind` (or as
    /// [`OpKind::StaleWrite`] after a pause that outlived the holder's key).
    pub async fn fenced_write(
        &mut self,
        kind: OpKind,
        ownership: &Ownership,
        log_key: String,
        record: &LogRecord,
        extra: Vec<TxnOp>,
    ) -> Written {
        let paused = if self.node.take_pause() {
            Some(self.pause(ownership).await)
        } else {
            None
        };
        let client = &self.node.client;
        let full_key = client.key(&log_key);
        let value = serde_json::to_vec(record).unwrap_or_default();
        let mut ops = vec![TxnOp::put(full_key, value, None)];
        ops.extend(extra);
        let txn = if self.fencing {
            Txn::new().when([ownership.compare()]).and_then(ops)
        } else {
            Txn::new().and_then(ops)
        };
        let result = client.txn(txn).await;
        let (kind, key) = match paused {
            Some(true) => (OpKind::StaleWrite, Some(log_key)),
            Some(false) => {
                self.history
                    .op(self.client(), OpKind::PauseLeaseSurvived, Outcome::Ok, None);
                (kind, Some(log_key))
            }
            None => (kind, Some(log_key)),
        };
        match result {
            Ok(resp) if resp.succeeded() => {
                self.history.op(self.client(), kind, Outcome::Ok, key);
                Written::Accepted
            }
            Ok(_) => {
                self.history.op(self.client(), kind, Outcome::Rejected, key);
                Written::Rejected
            }
            Err(e) => {
                self.history.failed(self.client(), kind, key, &e);
                Written::Failed
            }
        }
    }

    /// A GC pause: the process stops talking (its proxies blackholed) and resumes only after its
    /// key is gone — it still believes it holds. Returns whether the key was seen gone (bounded
    /// by 3 × TTL + 2 s: etcd restarts the TTL of every lease when its raft leader changes).
    async fn pause(&mut self, ownership: &Ownership) -> bool {
        let fault = self
            .history
            .fault(FaultKind::PauseClient, Some(self.client()), None);
        self.node.partition();
        let bound = self.ttl * 3 + Duration::from_secs(2);
        let gone = tokio::time::timeout(bound, key_gone(&self.observer, ownership))
            .await
            .unwrap_or(false);
        self.node.end_partition();
        self.history.healed(fault);
        gone
    }
}

/// Resolves once `ownership`'s key no longer exists with its create revision (event-driven: a
/// read, then a watch for its delete).
pub async fn key_gone(observer: &Client, ownership: &Ownership) -> bool {
    let retry = Duration::from_millis(100);
    loop {
        let read = match observer.get(ownership.key().to_vec(), None).await {
            Ok(read) => read,
            Err(e) => {
                tracing::debug!(error = %e, "pause: reading the holder's key");
                tokio::time::sleep(retry).await; // backoff of a retry, not a synchronisation
                continue;
            }
        };
        let token = ownership.token().revision();
        if read
            .kvs()
            .first()
            .is_none_or(|kv| kv.create_revision() != token)
        {
            return true;
        }
        let from = read.header().map_or(0, |h| h.revision()) + 1;
        match coord_core::watch::wait_deleted(observer, ownership.key().to_vec(), from).await {
            Ok(_) => return true,
            Err(coord_core::Error::Compacted { .. }) => {}
            Err(e) => {
                tracing::debug!(error = %e, "pause: watching the holder's key");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// The client's session, retried with a short backoff until it is granted or the actor stops.
pub async fn session(ctx: &mut Ctx) -> Option<coord_core::Session> {
    loop {
        if ctx.stop.is_cancelled() {
            return None;
        }
        match ctx.node.session().await {
            Ok(session) => return Some(session),
            Err(e) => {
                tracing::debug!(client = ctx.client(), error = %e, "no session");
                let backoff = ctx
                    .rng
                    .duration(Duration::from_millis(50), Duration::from_millis(300));
                if !ctx.work(backoff).await {
                    return None;
                }
            }
        }
    }
}

/// A bounded wait for some acquisitions (so waiters get cancelled mid-queue), none for others.
pub fn maybe_timeout(rng: &mut Rng) -> Option<Duration> {
    rng.chance(0.25)
        .then(|| rng.duration(Duration::from_millis(20), Duration::from_millis(1500)))
}
