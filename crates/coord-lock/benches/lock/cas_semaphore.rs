//! The semaphore baseline: all state in one JSON key, `{"max":10,"holders":["id",…]}`, updated by
//! compare-and-swap on its mod revision — how airlock (FleetLock) keeps its semaphore — with a
//! watch instead of polling while the semaphore is full.
//!
//! - acquire: read; if there is room, CAS-put the list with this id added, and retry on a conflict;
//!   when full, watch the key from the read's revision + 1 until it changes, then start over;
//! - release: read, CAS-put the list without this id, retry on a conflict.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coord_core::etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Serialize, Deserialize)]
struct State {
    max: usize,
    holders: Vec<String>,
}

/// One contender's handle on the JSON-key semaphore.
#[derive(Clone)]
pub(crate) struct CasSemaphore {
    client: Client,
    key: String,
    id: String,
    /// CAS puts that lost the race, shared by all contenders.
    conflicts: Arc<AtomicU64>,
}

impl CasSemaphore {
    /// Writes the empty semaphore with room for `max` holders.
    pub(crate) async fn create(client: &Client, key: &str, max: usize) {
        let state = State {
            max,
            holders: Vec::new(),
        };
        let json = serde_json::to_vec(&state).expect("JSON");
        client.clone().put(key, json, None).await.expect("put");
    }

    pub(crate) fn new(client: Client, key: &str, id: String, conflicts: Arc<AtomicU64>) -> Self {
        CasSemaphore {
            client,
            key: key.to_owned(),
            id,
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
            let (mut state, mod_revision, read_revision) = self.read().await;
            if state.holders.len() < state.max {
                state.holders.push(self.id.clone());
                if self.swap(&state, mod_revision).await {
                    return true;
                }
                continue;
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
            let (mut state, mod_revision, _) = self.read().await;
            state.holders.retain(|holder| *holder != self.id);
            if self.swap(&state, mod_revision).await {
                return;
            }
        }
    }

    /// The current state, its mod revision and the read's revision.
    async fn read(&mut self) -> (State, i64, i64) {
        let read = self.client.get(self.key.clone(), None).await.expect("get");
        let kv = read.kvs().first().expect("the semaphore key exists");
        let state: State = serde_json::from_slice(kv.value()).expect("semaphore JSON");
        let revision = read.header().expect("header").revision();
        (state, kv.mod_revision(), revision)
    }

    /// Writes `state` if the key is still at `mod_revision`; counts a conflict otherwise.
    async fn swap(&mut self, state: &State, mod_revision: i64) -> bool {
        let json = serde_json::to_vec(state).expect("JSON");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key.clone(),
                CompareOp::Equal,
                mod_revision,
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
