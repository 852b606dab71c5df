//! [`FaultProxy`]: a TCP proxy in front of an etcd endpoint that can partition, delay and reset.
//!
//! Each proxied connection is two directions; each direction is a reader that moves
//! bytes from one socket into a queue and a writer that moves them from the queue
//! to the other socket. Both consult the proxy's [`Mode`] through a
//! `watch` channel: a reader stops reading while blackholed (so bytes wait in the
//! kernel, as during a partition), a writer holds each chunk until the mode releases
//! it (delay, blackhole). [`FaultProxy::cut`] bumps an epoch every connection
//! watches; on a change the connection resets both of its sockets.

use std::{
    collections::BTreeSet,
    fmt, io,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

use crate::Error;

/// How many chunks a direction buffers between reading and writing (backpressure beyond that).
const QUEUED_CHUNKS: usize = 64;
const CHUNK_SIZE: usize = 16 * 1024;
/// [`FaultProxy::cut`] waits at most this long for the connections to be reset.
const CUT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Nothing moves in either direction; new connections wait before connecting upstream.
    Blackhole,
    /// Every chunk is forwarded this long after it was read.
    Delay(Duration),
}

/// An in-process TCP proxy in front of an etcd endpoint, with fault injection.
///
/// Clients connect to [`endpoint`](Self::endpoint) instead of the server; the proxy
/// forwards bytes both ways until told to [`blackhole`](Self::blackhole) (a network
/// partition), [`delay`](Self::delay) (latency), or [`cut`](Self::cut) (connection
/// resets). [`heal`](Self::heal) restores normal forwarding.
///
/// The proxy runs on its own thread with its own tokio runtime, so it works under
/// any test runtime (current-thread or multi-thread) and keeps running while a test
/// runtime is blocked. Dropping it stops the thread and closes all its connections.
///
/// It forwards raw TCP, so it works for TLS servers too: connect to
/// `format!("https://{}", proxy.addr())` (the test certificates are valid for
/// `127.0.0.1`).
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use coord_testkit::{Etcd, FaultProxy};
///
/// let etcd = Etcd::start().await?;
/// let proxy = FaultProxy::start(etcd.client_addr()).await?;
/// let mut client = etcd_client::Client::connect([proxy.endpoint()], None).await?;
/// client.put("k", "v", None).await?;
///
/// proxy.blackhole();
/// let get = client.get("k", None);
/// tokio::pin!(get);
/// assert!(tokio::time::timeout(Duration::from_millis(200), &mut get).await.is_err());
/// proxy.heal();
/// assert_eq!(get.await?.kvs()[0].value(), b"v");
/// # Ok(()) }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// State shared by the handle and the proxy thread.
struct Shared {
    mode: watch::Sender<Mode>,
    /// Bumped by every `cut()`.
    cuts: watch::Sender<u64>,
    /// Ids of the open connections. Registration and `cut()` both hold this lock, so a
    /// connection either existed before a cut (and sees the epoch change) or after.
    open: Mutex<BTreeSet<u64>>,
    closed: Condvar,
    next_id: AtomicU64,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port, forwarding to `upstream`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the port cannot be bound or the proxy thread cannot start.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (nothing is awaited).
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy, Error> {
        let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .map_err(|e| Error::io("cannot bind the fault proxy on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the fault proxy's address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("cannot make the fault proxy's listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot build the fault proxy's runtime", e))?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(listener)
                .map_err(|e| Error::io("cannot register the fault proxy's listener", e))?
        };
        let shared = Arc::new(Shared {
            mode: watch::Sender::new(Mode::Normal),
            cuts: watch::Sender::new(0),
            open: Mutex::new(BTreeSet::new()),
            closed: Condvar::new(),
            next_id: AtomicU64::new(0),
        });
        let (shutdown, shutdown_requested) = oneshot::channel();
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("coord-testkit-proxy-{}", addr.port()))
                .spawn(move || {
                    runtime.block_on(accept(listener, upstream, shared, shutdown_requested));
                    // Dropping the runtime drops every connection task, closing its sockets.
                })
                .map_err(|e| Error::io("cannot start the fault proxy thread", e))?
        };
        tracing::debug!(%addr, %upstream, "fault proxy started");
        Ok(FaultProxy {
            addr,
            upstream,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `etcd_client::Client::connect`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Partitions: no byte moves in either direction on any connection. Bytes are not
    /// dropped; they stay queued (in the kernel or the proxy) like TCP retransmissions
    /// and are delivered on [`heal`](Self::heal). New connections are accepted but not
    /// connected upstream until then.
    pub fn blackhole(&self) {
        tracing::debug!(addr = %self.addr, "fault proxy: blackhole");
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Forwards every chunk `d` after it was read, in both directions, order preserved.
    /// A request/response round trip therefore takes at least `2 * d` longer.
    pub fn delay(&self, d: Duration) {
        tracing::debug!(addr = %self.addr, delay = ?d, "fault proxy: delay");
        self.shared.mode.send_replace(Mode::Delay(d));
    }

    /// Back to normal forwarding: blackholed connections resume with their queued bytes
    /// intact, delayed chunks are forwarded at once.
    pub fn heal(&self) {
        tracing::debug!(addr = %self.addr, "fault proxy: heal");
        self.shared.mode.send_replace(Mode::Normal);
    }

    /// Resets (TCP RST) every current connection, on both sides, and returns once they
    /// are closed, so the next request surely sees the reset. That takes the proxy
    /// thread a moment (well under a millisecond per connection), during which this
    /// call blocks. The proxy keeps accepting new connections in the current mode.
    pub fn cut(&self) {
        let open = self.shared.lock_open();
        let cut: Vec<u64> = open.iter().copied().collect();
        tracing::debug!(addr = %self.addr, connections = cut.len(), "fault proxy: cut");
        self.shared.cuts.send_modify(|epoch| *epoch += 1);
        let result = self
            .shared
            .closed
            .wait_timeout_while(open, CUT_TIMEOUT, |open| {
                cut.iter().any(|id| open.contains(id))
            });
        if result.is_ok_and(|(_, timeout)| timeout.timed_out()) {
            tracing::warn!(addr = %self.addr, "fault proxy: connections still open {CUT_TIMEOUT:?} after cut");
        }
    }

    /// How many client connections are open (including ones waiting out a blackhole
    /// before connecting upstream).
    pub fn connections(&self) -> usize {
        self.shared.lock_open().len()
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("mode", &*self.shared.mode.borrow())
            .field("connections", &self.connections())
            .finish()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            // Quick: the accept loop ends at once and dropping the runtime drops the connections.
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock_open(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(self: &Arc<Self>) -> Registration {
        let mut open = self.lock_open();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.insert(id);
        Registration {
            id,
            cuts: self.cuts.subscribe(),
            shared: Arc::clone(self),
        }
    }
}

/// One open client connection; dropping it unregisters the connection.
struct Registration {
    id: u64,
    /// Subscribed under the registry lock; see [`Shared::open`].
    cuts: watch::Receiver<u64>,
    shared: Arc<Shared>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.lock_open().remove(&self.id);
        self.shared.closed.notify_all();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown_requested: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown_requested => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let registration = shared.register();
                    tokio::spawn(proxy_connection(client, upstream, registration));
                }
                Err(e) => {
                    // E.g. out of file descriptors; back off instead of spinning.
                    tracing::warn!(error = %e, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn proxy_connection(client: TcpStream, upstream: SocketAddr, mut registration: Registration) {
    let mut mode = registration.shared.mode.subscribe();
    let connected = tokio::select! {
        _ = registration.cuts.changed() => {
            reset(&client);
            return;
        }
        connected = async {
            // A partition also stops new connections from reaching the server.
            let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
            TcpStream::connect(upstream).await
        } => connected,
    };
    let server = match connected {
        Ok(server) => server,
        Err(e) => {
            tracing::debug!(error = %e, %upstream, "fault proxy: cannot connect upstream");
            reset(&client);
            return;
        }
    };
    // Forward small gRPC frames at once; the proxy must not add latency of its own.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let (mut client, mut server) = (client, server);
    let forwarded = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let shared = &registration.shared;
        tokio::select! {
            forwarded = async {
                let (to_server, from_client) = mpsc::channel(QUEUED_CHUNKS);
                let (to_client, from_server) = mpsc::channel(QUEUED_CHUNKS);
                tokio::try_join!(
                    read_into(client_read, to_server, shared.mode.subscribe()),
                    write_from(from_client, server_write, shared.mode.subscribe()),
                    read_into(server_read, to_client, shared.mode.subscribe()),
                    write_from(from_server, client_write, shared.mode.subscribe()),
                )
                .map(|_| ())
            } => forwarded,
            _ = registration.cuts.changed() => Err(io::Error::from(io::ErrorKind::ConnectionReset)),
        }
    };
    if forwarded.is_err() {
        // A cut, or one side failed: make the other side see an abrupt end too.
        reset(&client);
        reset(&server);
    }
}

/// Makes dropping `stream` send RST instead of FIN.
fn reset(stream: &TcpStream) {
    // SO_LINGER 0 only blocks on close with a non-zero timeout, which tokio deprecates it for.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

struct Chunk {
    bytes: Vec<u8>,
    read_at: Instant,
}

/// Reads chunks into `queue` until EOF; reads nothing while blackholed.
async fn read_into(
    mut from: impl AsyncRead + Unpin,
    queue: mpsc::Sender<Chunk>,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK_SIZE];
    loop {
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return Ok(());
        }
        tokio::select! {
            // Re-check the mode; a cancelled read loses no bytes.
            _ = mode.changed() => continue,
            read = from.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = Chunk { bytes: buf[..n].to_vec(), read_at: Instant::now() };
                if queue.send(chunk).await.is_err() {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                }
            }
        }
    }
}

/// Writes queued chunks when the mode releases them; on EOF (queue closed) shuts the write side.
async fn write_from(
    mut queue: mpsc::Receiver<Chunk>,
    mut to: impl AsyncWrite + Unpin,
    mut mode: watch::Receiver<Mode>,
) -> io::Result<()> {
    while let Some(chunk) = queue.recv().await {
        released(&chunk, &mut mode).await?;
        to.write_all(&chunk.bytes).await?;
    }
    to.shutdown().await
}

/// Returns when the current mode lets `chunk` through: at once when normal, `d` after it
/// was read when delayed, never while blackholed. Re-evaluated on every mode change.
async fn released(chunk: &Chunk, mode: &mut watch::Receiver<Mode>) -> io::Result<()> {
    loop {
        let current = *mode.borrow_and_update();
        let release_at = match current {
            Mode::Normal => return Ok(()),
            Mode::Delay(d) => Some(chunk.read_at + d),
            Mode::Blackhole => None,
        };
        let changed = async {
            mode.changed()
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
        };
        match release_at {
            Some(at) if at <= Instant::now() => return Ok(()),
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(at) => return Ok(()),
                changed = changed => changed?,
            },
            None => changed.await?,
        }
    }
}
