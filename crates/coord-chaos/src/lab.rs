//! The system under test: a 3-member etcd cluster, and per client "process" its own fault
//! proxies (one per member), `Client` and sessions; plus an observer client that talks to the
//! members directly and is never faulted (the checkers' and the pause's view of etcd).
//!
//! Each client process runs on a runtime of its own, with one thread: its connections, watch
//! stream, keep-alive tasks, caches and actors all live there, so [`Node::freeze`] can stop the
//! whole process at once, as `SIGSTOP` would (the proxies, which play the network, run on the
//! harness's runtime and keep going).

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coord_core::{Client, ClientConfig, Session};
use coord_testkit::{EtcdCluster, FaultProxy};
use tokio::runtime::Handle;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;

use crate::Error;

/// The key namespace of every client.
pub const NAMESPACE: &str = "chaos/";

/// The etcd cluster (behind an async lock: only the nemesis kills and restarts members) and the
/// observer client.
#[derive(Debug)]
pub struct Lab {
    /// The cluster.
    pub cluster: Mutex<EtcdCluster>,
    /// A client connected to every member directly, never faulted.
    pub observer: Client,
    /// The client "processes".
    pub nodes: Vec<Arc<Node>>,
}

impl Lab {
    /// Starts a 3-member cluster and `clients` client nodes.
    ///
    /// # Errors
    ///
    /// When etcd, a proxy or a client cannot start.
    pub async fn start(clients: usize, ttl: Duration) -> Result<Lab, Error> {
        let cluster = EtcdCluster::start(3).await?;
        let observer = ClientConfig::new(cluster.endpoints())
            .with_namespace(NAMESPACE)
            .with_request_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        // The observer's shared watch stream lives on the runtime of its first watch: open it
        // here, so that it never runs on (and freezes with) a client process's runtime. The key
        // does not exist, so the wait ends at once; the stream stays.
        coord_core::watch::wait_changed(&observer, "observer-watch-stream", 1).await?;
        let mut nodes = Vec::with_capacity(clients);
        for index in 0..clients {
            let mut proxies = Vec::new();
            for member in 0..cluster.len() {
                let addr = cluster
                    .client_addr(member)
                    .ok_or_else(|| Error::Setup(format!("no member {member}")))?;
                proxies.push(FaultProxy::start(addr).await?);
            }
            // Member order differs per client, so their first connections spread over members.
            let mut endpoints: Vec<String> = proxies.iter().map(FaultProxy::endpoint).collect();
            endpoints.rotate_left(index % proxies.len());
            let process = Process::start(index).await?;
            let connect = ClientConfig::new(endpoints)
                .with_namespace(NAMESPACE)
                // Below the TTL, so a request stuck on a dead connection fails while it matters.
                .with_request_timeout(Duration::from_secs(2))
                .with_connect_timeout(Duration::from_secs(1))
                .connect();
            let client = process
                .runtime
                .spawn(connect)
                .await
                .map_err(|e| Error::Setup(format!("connecting client {index}: {e}")))??;
            nodes.push(Arc::new(Node {
                index,
                proxies,
                client,
                ttl,
                session: Mutex::new(None),
                pause_requested: AtomicBool::new(false),
                partitions: StdMutex::new(0),
                thawed: Arc::new(AtomicBool::new(true)),
                process,
            }));
        }
        Ok(Lab {
            cluster: Mutex::new(cluster),
            observer,
            nodes,
        })
    }
}

/// A client process's runtime: one thread, which ends when this is dropped.
#[derive(Debug)]
struct Process {
    runtime: Handle,
    /// Dropping it ends the thread's `block_on`, and the runtime with its tasks.
    _stop: oneshot::Sender<()>,
}

impl Process {
    async fn start(index: usize) -> Result<Process, Error> {
        let (started_tx, started) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("chaos-client-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::Setup(format!("client {index}'s thread: {e}")))?;
        let runtime = started
            .await
            .map_err(|_| Error::Setup(format!("client {index}'s thread died")))?
            .map_err(|e| Error::Setup(format!("client {index}'s runtime: {e}")))?;
        Ok(Process {
            runtime,
            _stop: stop,
        })
    }
}

/// One client "process": its runtime, its proxies, its client, its current session.
#[derive(Debug)]
pub struct Node {
    /// Its number.
    pub index: usize,
    /// One proxy per member; the client connects through all of them.
    pub proxies: Vec<FaultProxy>,
    /// The client.
    pub client: Client,
    ttl: Duration,
    session: Mutex<Option<Session>>,
    /// Set by the nemesis: the next actor about to do a fenced write pauses first.
    pause_requested: AtomicBool,
    /// How many partitions (nemesis blackholes, pauses) are in force; the proxies forward again
    /// when the last one ends.
    partitions: StdMutex<u32>,
    /// Cleared while frozen; setting it ends the freeze early.
    thawed: Arc<AtomicBool>,
    process: Process,
}

impl Node {
    /// Runs `task` in this client process (on its runtime).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.process.runtime.spawn(task)
    }

    /// Freezes the whole process for `d`, as `SIGSTOP` would: a task on its runtime blocks the
    /// runtime's only thread, so nothing of the client runs — keep-alives, watches, actors —
    /// while its connections stay open. Ends early on [`thaw`](Self::thaw).
    pub fn freeze(&self, d: Duration) {
        self.thawed.store(false, Ordering::SeqCst);
        let thawed = Arc::clone(&self.thawed);
        let until = Instant::now() + d;
        drop(self.spawn(async move {
            // Blocking the runtime is the fault itself.
            while !thawed.load(Ordering::SeqCst) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(20)));
            }
        }));
    }

    /// Ends a freeze in progress.
    pub fn thaw(&self) {
        self.thawed.store(true, Ordering::SeqCst);
    }

    /// The process's session: the current one while it is alive, otherwise a new one (one
    /// session serves every primitive of the process, as in production).
    ///
    /// # Errors
    ///
    /// When a new session cannot be granted.
    pub async fn session(&self) -> coord_core::Result<Session> {
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_ref().filter(|s| s.is_alive()) {
            return Ok(session.clone());
        }
        let session = Session::builder(self.client.clone())
            .ttl(self.ttl)
            .start()
            .await?;
        *current = Some(session.clone());
        Ok(session)
    }

    /// Closes the current session (revoking its lease), if any.
    pub async fn close_session(&self) {
        if let Some(session) = self.session.lock().await.take() {
            if let Err(e) = session.close().await {
                tracing::debug!(client = self.index, error = %e, "closing the session");
            }
        }
    }

    /// Asks the next actor that is about to do a fenced write to pause first.
    pub fn request_pause(&self) {
        self.pause_requested.store(true, Ordering::SeqCst);
    }

    /// Takes a pending pause request.
    pub fn take_pause(&self) -> bool {
        self.pause_requested.swap(false, Ordering::SeqCst)
    }

    /// Starts a partition: nothing moves between this client and any member.
    pub fn partition(&self) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *partitions += 1;
        for proxy in &self.proxies {
            proxy.blackhole();
        }
    }

    /// Ends one partition; the proxies forward again when none is left.
    pub fn end_partition(&self) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *partitions = partitions.saturating_sub(1);
        if *partitions == 0 {
            for proxy in &self.proxies {
                proxy.heal();
            }
        }
    }

    /// Delays every byte by `d` (unless partitioned).
    pub fn delay(&self, d: Duration) {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *partitions == 0 {
            for proxy in &self.proxies {
                proxy.delay(d);
            }
        }
    }

    /// Ends a delay (unless partitioned).
    pub fn end_delay(&self) {
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *partitions == 0 {
            for proxy in &self.proxies {
                proxy.heal();
            }
        }
    }

    /// Resets every connection of this client (blocks briefly: see `FaultProxy::cut`).
    pub fn cut(&self) {
        for proxy in &self.proxies {
            proxy.cut();
        }
    }

    /// Forwards normally again and runs again, whatever was in force.
    pub fn heal_all(&self) {
        self.thaw();
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *partitions = 0;
        for proxy in &self.proxies {
            proxy.heal();
        }
    }
}
