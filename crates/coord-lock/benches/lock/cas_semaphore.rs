//! The semaphore baselines: all state in one JSON key, `{"total_slots":10,"holders":["id",…]}`
//! (holders sorted), updated by compare-and-swap on the key's version — how airlock (FleetLock)
//! keeps its semaphore (`internal/lock/lock.go` and `semaphore.go` at airlock `a3585ed`) — with a
//! watch instead of polling while the semaphore is full.
//!
//! Every attempt is one airlock operation:
//! - [`Flavour::Airlock`], as airlock runs each `RecursiveLock` / `UnlockIfHeld`: first its
//!   `ensureInit` transaction (`if version(key) == 0 then put(empty semaphore)`; a transaction with
//!   a put is a raft proposal even when its compare fails), then a read, then the CAS transaction
//!   (`if version(key) == read then put`);
//! - [`Flavour::Lean`]: the read and the CAS only — a leaner CAS semaphore than airlock's, kept as
//!   a second, stronger baseline.
//!
//! Acquire: if the read shows this id among the holders, it holds (recursive lock, no write); if
//! there is room, CAS-put the list with the id added; when full, watch the key from the read's
//! revision + 1 until it changes. A lost CAS or a change starts the next attempt at once (airlock
//! answers a conflict or a full semaphore with an error, and Zincati asks again five minutes later:
//! retrying at once favours the baseline). Release: CAS-put the list without the id (airlock writes
//! even when the id held nothing), again until a CAS wins.
//!
//! Left out, also in the baseline's favour: airlock dials a new etcd client for every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coord_core::etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// airlock's semaphore value.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    total_slots: usize,
    holders: Vec<String>,
}

/// Which requests one attempt makes (module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Flavour {
    /// Init transaction, read, CAS: airlock's requests.
    Airlock,
    /// Read and CAS only.
    Lean,
}

/// One contender's handle on the JSON-key semaphore.
#[derive(Clone)]
pub(crate) struct CasSemaphore {
    client: Client,
    key: String,
    id: String,
    slots: usize,
    flavour: Flavour,
    /// CAS puts that lost the race, shared by all contenders of one flavour.
    conflicts: Arc<AtomicU64>,
}

impl CasSemaphore {
    /// Writes the empty semaphore with room for `slots` holders (the lean flavour has no init
    /// transaction of its own).
    pub(crate) async fn create(client: &Client, key: &str, slots: usize) {
        let state = State {
            total_slots: slots,
            holders: Vec::new(),
        };
        let json = serde_json::to_vec(&state).expect("JSON");
        client.clone().put(key, json, None).await.expect("put");
    }

    pub(crate) fn new(
        client: Client,
        key: &str,
        id: String,
        slots: usize,
        flavour: Flavour,
        conflicts: Arc<AtomicU64>,
    ) -> Self {
        CasSemaphore {
            client,
            key: key.to_owned(),
            id,
            slots,
            flavour,
            conflicts,
        }
    }

    /// Takes a place, or returns `false` once `stop` is set. Stops only between requests, never
    /// with a CAS in flight, so an abandoned attempt can never leave its id behind.
    pub(crate) async fn acquire(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            if *stop.borrow() {
                return false;
            }
            let (mut state, version, read_revision) = self.begin().await;
            if let Err(at) = state.holders.binary_search(&self.id) {
                if state.holders.len() < state.total_slots {
                    state.holders.insert(at, self.id.clone());
                    if self.swap(&state, version).await {
                        return true;
                    }
                    continue;
                }
            } else {
                return true;
            }
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => return false,
                () = self.changed_after(read_revision) => {}
            }
        }
    }

    pub(crate) async fn release(&mut self) {
        loop {
            let (mut state, version, _) = self.begin().await;
            state.holders.retain(|holder| *holder != self.id);
            if self.swap(&state, version).await {
                return;
            }
        }
    }

    /// The start of an operation: airlock's init transaction (for that flavour), then the read.
    async fn begin(&mut self) -> (State, i64, i64) {
        if let Flavour::Airlock = self.flavour {
            let empty = State {
                total_slots: self.slots,
                holders: Vec::new(),
            };
            let json = serde_json::to_vec(&empty).expect("JSON");
            let init = Txn::new()
                .when([Compare::version(self.key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(self.key.clone(), json, None)]);
            self.client.txn(init).await.expect("init txn");
        }
        self.read().await
    }

    /// The current state, the key's version and the read's revision.
    async fn read(&mut self) -> (State, i64, i64) {
        let read = self.client.get(self.key.clone(), None).await.expect("get");
        let kv = read.kvs().first().expect("the semaphore key exists");
        let state: State = serde_json::from_slice(kv.value()).expect("semaphore JSON");
        let revision = read.header().expect("header").revision();
        (state, kv.version(), revision)
    }

    /// Writes `state` if the key is still at `version`; counts a conflict otherwise.
    async fn swap(&mut self, state: &State, version: i64) -> bool {
        let json = serde_json::to_vec(state).expect("JSON");
        let txn = Txn::new()
            .when([Compare::version(
                self.key.clone(),
                CompareOp::Equal,
                version,
            )])
            .and_then([TxnOp::put(self.key.clone(), json, None)]);
        let swapped = self.client.txn(txn).await.expect("CAS txn").succeeded();
        if !swapped {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        swapped
    }

    /// Waits for the first change of the key after `read_revision` (the watch starts at the next
    /// revision: a watch at the current one is served by etcd's slow unsynced loop).
    async fn changed_after(&mut self, read_revision: i64) {
        let options = WatchOptions::new().with_start_revision(read_revision + 1);
        let mut stream = self
            .client
            .watch(self.key.clone(), Some(options))
            .await
            .expect("watch");
        loop {
            let response = stream
                .message()
                .await
                .expect("watch")
                .expect("watch stream open");
            assert!(!response.canceled(), "watch cancelled");
            if !response.events().is_empty() {
                return;
            }
        }
    }

    /// The holders now (for the check that every round ends empty).
    pub(crate) async fn holders(&mut self) -> Vec<String> {
        self.read().await.0.holders
    }
}
