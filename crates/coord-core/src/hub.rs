//! One multiplexed etcd watch stream per client.
//!
//! etcd-client opens a new gRPC stream for every `watch()`; the server runs two goroutines per
//! stream. Waits in coord are short-lived and frequent (every queue wake-up creates one or two
//! watches), so they share one stream per [`Client`](crate::Client) instead: a background task owns
//! the stream, creates and cancels watches on it, and routes each response to its watcher by watch
//! id. etcd answers create requests on a stream in order, which is how a created watch id is matched
//! to its request (Go's client relies on the same).
//!
//! If the stream breaks, every watcher receives the error and re-creates its watch (from its own
//! resume revision); the next create opens a new stream. A watcher dropped by its owner is
//! cancelled on the server.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use etcd_client::{
    WatchClient, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use tokio::sync::mpsc;

use crate::{Error, Result};

type Events = mpsc::UnboundedSender<Result<WatchResponse>>;

enum Command {
    Create {
        handle: u64,
        key: Vec<u8>,
        options: WatchOptions,
        events: Events,
    },
    Cancel {
        handle: u64,
    },
}

/// A client's handle to its hub task, started on first use (and again if its runtime went away).
#[derive(Default)]
pub(crate) struct Hub {
    inner: StdMutex<Option<HubHandle>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

#[derive(Clone)]
struct HubHandle {
    commands: mpsc::UnboundedSender<Command>,
    next_handle: Arc<std::sync::atomic::AtomicU64>,
}

/// One watch on the shared stream; dropping it cancels the watch.
pub(crate) struct HubWatch {
    handle: u64,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Result<WatchResponse>>,
}

impl HubWatch {
    /// The next response for this watch (its creation reply first); an error when the shared
    /// stream broke — create the watch again.
    pub(crate) async fn next(&mut self) -> Result<WatchResponse> {
        match self.events.recv().await {
            Some(response) => response,
            None => Err(Error::Shutdown),
        }
    }
}

impl Drop for HubWatch {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Cancel {
            handle: self.handle,
        });
    }
}

impl Hub {
    /// Creates a watch on the shared stream.
    pub(crate) fn watch(
        &self,
        client: &WatchClient,
        key: Vec<u8>,
        options: WatchOptions,
    ) -> HubWatch {
        let handle = self.handle(client);
        let id = handle
            .next_handle
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (events, receiver) = mpsc::unbounded_channel();
        let create = Command::Create {
            handle: id,
            key,
            options,
            events,
        };
        if let Err(mpsc::error::SendError(Command::Create { events, .. })) =
            handle.commands.send(create)
        {
            let _ = events.send(Err(Error::Shutdown));
        }
        HubWatch {
            handle: id,
            commands: handle.commands,
            events: receiver,
        }
    }

    fn handle(&self, client: &WatchClient) -> HubHandle {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = inner.as_ref().filter(|h| !h.commands.is_closed()) {
            return handle.clone();
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        let handle = HubHandle {
            commands,
            next_handle: Arc::default(),
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(client.clone(), receiver));
        }
        *inner = Some(handle.clone());
        handle
    }
}

struct Slot {
    events: Events,
    watch_id: Option<i64>,
    cancelled: bool,
}

#[derive(Default)]
struct State {
    /// Handles whose create request awaits its reply, in request order.
    pending: VecDeque<u64>,
    slots: HashMap<u64, Slot>,
    by_id: HashMap<i64, u64>,
}

async fn run(mut client: WatchClient, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut stream: Option<(WatchRequestSender, WatchResponseStream)> = None;
    let mut state = State::default();
    loop {
        let response = async {
            match stream.as_mut() {
                Some((_, responses)) => responses.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { return };
                match command {
                    Command::Create { handle, key, options, events } => {
                        state.slots.insert(handle, Slot { events, watch_id: None, cancelled: false });
                        state.pending.push_back(handle);
                        let sent = match stream.as_mut() {
                            Some((sender, _)) => sender.watch(key, Some(options)).await,
                            None => match client.watch(key, Some(options)).await {
                                Ok(opened) => {
                                    stream = Some(opened.split());
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            },
                        };
                        if let Err(e) = sent {
                            stream = None;
                            state.fail_all(e);
                        }
                    }
                    Command::Cancel { handle } => {
                        if let Some(id) = state.cancel(handle) {
                            if let Some((sender, _)) = stream.as_mut() {
                                let _ = sender.cancel(id).await;
                            }
                        }
                    }
                }
            }
            response = response => match response {
                Ok(Some(response)) => {
                    if let Some(id) = state.route(response) {
                        if let Some((sender, _)) = stream.as_mut() {
                            let _ = sender.cancel(id).await;
                        }
                    }
                }
                Ok(None) => {
                    stream = None;
                    state.fail_all(etcd_client::Error::WatchError("watch stream closed by the server".into()));
                }
                Err(e) => {
                    stream = None;
                    state.fail_all(e);
                }
            },
        }
    }
}

impl State {
    /// Forgets a watch; returns its watch id if the server must be told to cancel it.
    fn cancel(&mut self, handle: u64) -> Option<i64> {
        let slot = self.slots.get_mut(&handle)?;
        match slot.watch_id {
            Some(id) => {
                self.slots.remove(&handle);
                self.by_id.remove(&id);
                Some(id)
            }
            // Still being created: cancel it when its reply arrives.
            None => {
                slot.cancelled = true;
                None
            }
        }
    }

    /// Delivers a response; returns a watch id to cancel (its watcher is gone).
    fn route(&mut self, response: WatchResponse) -> Option<i64> {
        let id = response.watch_id();
        if response.created() {
            let handle = self.pending.pop_front()?;
            let slot = self.slots.get_mut(&handle)?;
            if slot.cancelled {
                self.slots.remove(&handle);
                return (!response.canceled()).then_some(id);
            }
            slot.watch_id = Some(id);
            let ended = response.canceled();
            let delivered = slot.events.send(Ok(response)).is_ok();
            if ended || !delivered {
                self.slots.remove(&handle);
                return (!ended).then_some(id);
            }
            self.by_id.insert(id, handle);
            return None;
        }
        let handle = *self.by_id.get(&id)?;
        let ended = response.canceled();
        let delivered = self
            .slots
            .get(&handle)
            .is_some_and(|slot| slot.events.send(Ok(response)).is_ok());
        if ended || !delivered {
            self.slots.remove(&handle);
            self.by_id.remove(&id);
            return (!ended).then_some(id);
        }
        None
    }

    /// The stream broke (or could not be opened): every watcher gets the error and starts over.
    fn fail_all(&mut self, error: etcd_client::Error) {
        let message = error.to_string();
        let mut first = Some(error);
        for (_, slot) in self.slots.drain() {
            let error = first
                .take()
                .unwrap_or_else(|| etcd_client::Error::WatchError(message.clone()));
            let _ = slot.events.send(Err(stream_error(error)));
        }
        self.pending.clear();
        self.by_id.clear();
    }
}

/// A broken stream is transient unless the cause needs the caller (auth, permissions, TLS).
fn stream_error(error: etcd_client::Error) -> Error {
    match Error::from_etcd("watch", error) {
        Error::Etcd { operation, source } => Error::Unavailable { operation, source },
        other => other,
    }
}
