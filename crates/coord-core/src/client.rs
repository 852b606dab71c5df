//! The shared etcd client: one connection pool, a key namespace, per-request timeouts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    DeleteOptions, DeleteResponse, GetOptions, GetResponse, LeaseGrantResponse,
    LeaseTimeToLiveOptions, LeaseTimeToLiveResponse, PutOptions, PutResponse, Txn, TxnResponse,
};

use tokio::time::Instant;

use crate::transport::Transport;
use crate::{ClientConfig, Error, LeaseId, Result, RetryPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Only when the connection failed before the request could be sent.
    IfNeverSent,
    /// On any transient unavailability (the request is safe to repeat).
    IfUnavailable,
}

/// Runs one request attempt, in place, and if the returned future is dropped before the attempt
/// ends, moves the attempt to a task of its own to run to its end: a request is never cancelled on
/// the wire (etcd 3.5.0–3.5.4 crash on a cancelled read-only txn, etcd-io/etcd#14110). Polling in
/// place keeps the common path free of a task hand-over per request.
fn detached<T: Send + 'static>(
    attempt: impl Future<Output = std::result::Result<T, etcd_client::Error>> + Send + 'static,
) -> impl Future<Output = std::result::Result<T, etcd_client::Error>> {
    Detached {
        attempt: Some(Box::pin(attempt)),
    }
}

/// See [`detached`].
struct Detached<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    attempt: Option<std::pin::Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Future for Detached<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(attempt) = self.attempt.as_mut() else {
            // Polled after completion: never ready again.
            return std::task::Poll::Pending;
        };
        let output = std::task::ready!(attempt.as_mut().poll(cx));
        self.attempt = None;
        std::task::Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = attempt.await;
                });
            }
        }
    }
}

/// Whether the request never reached a server: coord's transport could not connect to any member
/// (or, for a client made with [`Client::from_etcd`], tonic failed to connect).
fn is_connect_failure(error: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return matches!(error, etcd_client::Error::TransportError(_));
    };
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<tonic::ConnectError>().is_some()
            || e.downcast_ref::<crate::transport::NotConnected>().is_some()
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// A connection to an etcd cluster, shared by every session and primitive of a process.
///
/// Cheap to clone (clones share the connections). It carries:
/// - the **namespace** prepended to the names of every primitive ([`Client::key`]); keys you pass to
///   the request methods below are used as given, so keys returned by coord (guards' keys, fencing
///   compares) work unchanged with the raw etcd-client ([`Client::etcd`]);
/// - a **per-request timeout** applied to unary requests (get, put, delete, txn, lease grant/revoke…).
///   It never applies to blocking waits: watches and the session's keep-alive stream have no timeout
///   of their own.
///
/// ```no_run
/// # async fn demo() -> coord_core::Result<()> {
/// use coord_core::ClientConfig;
///
/// let client = ClientConfig::new(["http://127.0.0.1:2379"]).with_namespace("myapp/").connect().await?;
/// client.put(client.key("greeting"), "hello", None).await?;
/// let resp = client.get(client.key("greeting"), None).await?;
/// assert_eq!(resp.kvs()[0].value(), b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    /// Everything behind one `Arc`: cloning an `etcd_client::Client` clones each of its gRPC
    /// sub-clients (~5 µs), and queue entries and background tasks clone the client often.
    shared: Arc<Shared>,
}

struct Shared {
    etcd: etcd_client::Client,
    /// KV sub-clients for requests, reused (see [`KvPool`]).
    kv: Arc<KvPool>,
    /// coord's transport under `etcd` (none for a client made with [`Client::from_etcd`]).
    transport: Option<Transport>,
    /// The multiplexed watch stream of this client (and its clones).
    hub: crate::hub::Hub,
    namespace: String,
    endpoints: Vec<String>,
    /// Who the client authenticates as (see [`Client::identity`]).
    identity: String,
    request_timeout: Duration,
}

/// Idle KV sub-clients. A request takes one (or clones a fresh one when none is idle) and gives it
/// back when its attempt ends. Cloning a sub-client per request costs several allocations (the
/// channel's buffer sender, its reservation future, the gRPC client's origin), and its first
/// request allocates again: a reused one, like the client a caller of etcd-client keeps, does not.
struct KvPool {
    base: etcd_client::KvClient,
    idle: std::sync::Mutex<Vec<etcd_client::KvClient>>,
}

/// At most this many idle sub-clients are kept (the number of requests usually in flight at once
/// is small; beyond it, clones are dropped after their request).
const KV_POOL_IDLE: usize = 16;

impl KvPool {
    fn new(base: etcd_client::KvClient) -> Arc<KvPool> {
        Arc::new(KvPool {
            base,
            idle: std::sync::Mutex::new(Vec::new()),
        })
    }

    fn take(self: &Arc<Self>) -> PooledKv {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        PooledKv {
            kv: Some(idle.unwrap_or_else(|| self.base.clone())),
            pool: Arc::clone(self),
        }
    }
}

/// A KV sub-client on loan from a [`KvPool`]; returned when dropped.
struct PooledKv {
    kv: Option<etcd_client::KvClient>,
    pool: Arc<KvPool>,
}

impl std::ops::Deref for PooledKv {
    type Target = etcd_client::KvClient;

    fn deref(&self) -> &etcd_client::KvClient {
        self.kv.as_ref().unwrap_or(&self.pool.base)
    }
}

impl std::ops::DerefMut for PooledKv {
    fn deref_mut(&mut self) -> &mut etcd_client::KvClient {
        self.kv.get_or_insert_with(|| self.pool.base.clone())
    }
}

impl Drop for PooledKv {
    fn drop(&mut self) {
        if let Some(kv) = self.kv.take() {
            let mut idle = self
                .pool
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < KV_POOL_IDLE {
                idle.push(kv);
            }
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.shared.endpoints)
            .field("namespace", &self.shared.namespace)
            .field("request_timeout", &self.shared.request_timeout)
            .finish_non_exhaustive()
    }
}

/// What [`Client::check`] learned about the member that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The etcd version of the member, e.g. `"3.7.0"`.
    pub version: String,
    /// The current revision of the key space.
    pub revision: i64,
    /// The member's id.
    pub member_id: u64,
    /// The raft leader's member id (0 when there is none).
    pub leader_id: u64,
}

impl Client {
    pub(crate) async fn connect(config: ClientConfig) -> Result<Client> {
        let transport = Transport::new(&config)?;
        let channel =
            etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(transport.clone()));
        let connect = etcd_client::Client::from_channel(channel, Some(config.connect_options()));
        // With credentials etcd-client authenticates here; bound that like any request.
        let etcd = tokio::time::timeout(config.connect_timeout + config.request_timeout, connect)
            .await
            .map_err(|_| Error::Timeout {
                operation: "connect",
                after: config.connect_timeout + config.request_timeout,
            })?
            .map_err(|e| Error::from_etcd("connect", e))?;
        Ok(Client {
            shared: Arc::new(Shared {
                kv: KvPool::new(etcd.kv_client()),
                etcd,
                transport: Some(transport),
                hub: crate::hub::Hub::default(),
                identity: config.identity(),
                namespace: config.namespace,
                endpoints: config.endpoints,
                request_timeout: config.request_timeout,
            }),
        })
    }

    /// Wraps an etcd-client connection made elsewhere (no namespace, default request timeout).
    pub fn from_etcd(etcd: etcd_client::Client) -> Client {
        Client {
            shared: Arc::new(Shared {
                kv: KvPool::new(etcd.kv_client()),
                etcd,
                transport: None,
                hub: crate::hub::Hub::default(),
                namespace: String::new(),
                endpoints: Vec::new(),
                identity: String::new(),
                request_timeout: ClientConfig::DEFAULT_REQUEST_TIMEOUT,
            }),
        }
    }

    /// The underlying etcd-client, for requests coord does not wrap. Its keys are not namespaced.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> Result<(), etcd_client::Error> {
    /// let mut raw = client.etcd().clone();
    /// raw.put("plain-key", "v", None).await?;
    /// # Ok(()) }
    /// ```
    pub fn etcd(&self) -> &etcd_client::Client {
        &self.shared.etcd
    }

    /// The key namespace (may be empty).
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// The endpoints this client was configured with.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    /// A watch on this client's shared watch stream.
    pub(crate) fn hub_watch(
        &self,
        key: Vec<u8>,
        options: etcd_client::WatchOptions,
    ) -> crate::hub::HubWatch {
        // A catch-up after a long disconnect can be one large response: allow what a range read may
        // return rather than tonic's 4 MiB default.
        let watch = self
            .shared
            .etcd
            .watch_client()
            .max_decoding_message_size(256 * 1024 * 1024);
        self.shared.hub.watch(&watch, key, options)
    }

    /// Who the client authenticates as: the user name and a fingerprint of the TLS client
    /// certificate (empty parts when not used), never a secret. Readers that share one watch per
    /// process (caches, election observers) share only between clients with the same endpoints
    /// *and* identity, so a client never reads through a watch opened with other credentials.
    ///
    /// ```
    /// # async fn demo(client: coord_core::Client) {
    /// println!("connected as {:?}", client.identity());
    /// # }
    /// ```
    pub fn identity(&self) -> &str {
        &self.shared.identity
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.shared.request_timeout
    }

    /// `namespace + name`: the full key for a name.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.shared.namespace)
    }

    /// Runs one unary etcd request under the per-request timeout and classifies its error.
    ///
    /// `operation` names the request in errors. Use it for requests this type does not wrap. Within
    /// the timeout, the request is retried when the connection could not even be made (so the
    /// request was never sent): tonic may route a call to an endpoint that just went down.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the timeout expires; otherwise the classified etcd error
    /// (see [`Error::from_etcd`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the server may or may not have applied it. Send
    /// transactions through [`Client::txn`] instead: etcd 3.5.0–3.5.4 crash when a read-only
    /// transaction is cancelled while they run it, and `txn` never cancels one on the wire.
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// let status = client.request("status", |mut etcd| async move { etcd.status().await }).await?;
    /// println!("etcd {}", status.version());
    /// # Ok(()) }
    /// ```
    pub async fn request<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call(
            || self.shared.etcd.clone(),
            operation,
            Replay::IfNeverSent,
            f,
        )
        .await
    }

    /// Like [`Client::request`] for requests that are safe to repeat (reads): also retried, within
    /// the timeout, on any [`Error::Unavailable`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe if the request is a read.
    pub async fn idempotent_request<T, F, Fut>(&self, operation: &'static str, f: F) -> Result<T>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call(
            || self.shared.etcd.clone(),
            operation,
            Replay::IfUnavailable,
            f,
        )
        .await
    }

    /// [`call`](Self::call) with a KV sub-client from the pool.
    async fn kv_call<T, F, Fut>(&self, operation: &'static str, replay: Replay, f: F) -> Result<T>
    where
        F: FnMut(PooledKv) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.call(|| self.shared.kv.take(), operation, replay, f)
            .await
    }

    /// The transport's current connection, to hand to [`suspect`](Self::suspect) when a request
    /// or stream started now gets no answer in time (`None` for [`Client::from_etcd`]).
    pub(crate) fn connection(&self) -> Option<u64> {
        self.shared.transport.as_ref().map(Transport::generation)
    }

    /// Nothing came back in time on `connection` (from [`connection`](Self::connection)):
    /// unless it was replaced already, later requests and streams go to the next member.
    pub(crate) fn suspect(&self, connection: Option<u64>) {
        if let (Some(transport), Some(generation)) = (&self.shared.transport, connection) {
            transport.suspect(generation);
        }
    }

    /// Runs `f` on a handle from `checkout` per attempt, within the request timeout.
    async fn call<C, T, F, Fut>(
        &self,
        checkout: impl Fn() -> C,
        operation: &'static str,
        replay: Replay,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(C) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let after = self.shared.request_timeout;
        let deadline = Instant::now() + after;
        // Built at the first failure: most requests succeed at once.
        let mut backoff = None;
        loop {
            let connection = self.connection();
            let source = match tokio::time::timeout_at(deadline, f(checkout())).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(source)) => source,
                Err(_) => {
                    // A connection that stays open but does not answer (a blackholed member):
                    // later requests go to the next member.
                    self.suspect(connection);
                    return Err(Error::Timeout { operation, after });
                }
            };
            let never_sent = is_connect_failure(&source);
            let error = Error::from_etcd(operation, source);
            let replayable = matches!(error, Error::Unavailable { .. })
                && (never_sent || replay == Replay::IfUnavailable);
            let delay = backoff
                .get_or_insert_with(|| {
                    RetryPolicy::new()
                        .with_min_delay(Duration::from_millis(20))
                        .with_max_delay(Duration::from_millis(500))
                        .with_max_elapsed(None)
                        .backoff()
                })
                .next()
                .unwrap_or(Duration::from_millis(500));
            if !replayable || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%error, ?delay, "request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Reads a key or range (linearizable unless `options` says otherwise).
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        let key = key.into();
        self.kv_call("get", Replay::IfUnavailable, |mut etcd| {
            let (key, options) = (key.clone(), options.clone());
            async move { etcd.get(key, options).await }
        })
        .await
    }

    /// Writes a key.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the write may or may not have happened.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let (key, value) = (key.into(), value.into());
        self.kv_call("put", Replay::IfNeverSent, |mut etcd| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { etcd.put(key, value, options).await }
        })
        .await
    }

    /// Deletes a key or range.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the delete may or may not have happened.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse> {
        let key = key.into();
        self.kv_call("delete", Replay::IfNeverSent, |mut etcd| {
            let (key, options) = (key.clone(), options.clone());
            async move { etcd.delete(key, options).await }
        })
        .await
    }

    /// Runs a transaction. Guard writes with an ownership compare ([`crate::Ownership::compare`]).
    ///
    /// # Errors
    ///
    /// As [`Client::request`]. A transaction whose compares fail is not an error: check
    /// [`TxnResponse::succeeded`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (or running out of time) abandons the wait for the answer, not the
    /// request: each attempt runs to its end on a task of its own, so the transaction may or may
    /// not have been applied. The request is never cancelled on the wire because etcd 3.5.0–3.5.4
    /// crash when a read-only transaction is cancelled while they run it (etcd-io/etcd#14110).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.txn_with(|| txn.clone()).await
    }

    /// [`Client::txn`] with the transaction built by `build` for each attempt. Inside a retry
    /// loop of your own, `txn_with(|| txn.clone())` copies the transaction once per attempt,
    /// where `txn(txn.clone())` copies it twice (`txn` keeps its argument to send again if the
    /// connection fails before the request leaves).
    ///
    /// ```no_run
    /// # async fn demo(client: coord_core::Client) -> coord_core::Result<()> {
    /// use coord_core::RetryPolicy;
    /// use coord_core::etcd_client::{Compare, CompareOp, Txn, TxnOp};
    ///
    /// let key = client.key("config/mode");
    /// let txn = Txn::new()
    ///     .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
    ///     .and_then([TxnOp::put(key.clone(), "safe", None)]);
    /// let resp = RetryPolicy::new().retry(|| client.txn_with(|| txn.clone())).await?;
    /// println!("created: {}", resp.succeeded());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Client::txn`].
    ///
    /// # Cancel safety
    ///
    /// As [`Client::txn`]: dropping the future abandons the wait, not the request.
    pub async fn txn_with(&self, build: impl Fn() -> Txn) -> Result<TxnResponse> {
        self.kv_call("txn", Replay::IfNeverSent, |mut etcd| {
            let txn = build();
            detached(async move { etcd.txn(txn).await })
        })
        .await
    }

    /// Grants a lease of `ttl_secs` seconds. Prefer [`crate::Session`], which keeps it alive.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave a granted lease behind; it expires after its TTL.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<LeaseGrantResponse> {
        self.request("lease grant", |mut etcd| async move {
            etcd.lease_grant(ttl_secs, None).await
        })
        .await
    }

    /// Revokes a lease, deleting every key attached to it.
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; an unknown (already expired) lease is [`Error::Etcd`] with
    /// "requested lease not found".
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the request; the lease may or may not be revoked.
    pub async fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        self.request("lease revoke", |mut etcd| async move {
            etcd.lease_revoke(lease.get()).await
        })
        .await
        .map(drop)
    }

    /// Asks the server how long a lease has left (`ttl() == -1` when it does not exist).
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn lease_time_to_live(
        &self,
        lease: LeaseId,
        with_keys: bool,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.idempotent_request("lease time-to-live", |mut etcd| async move {
            let options = with_keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
            etcd.lease_time_to_live(lease.get(), options).await
        })
        .await
    }

    /// Asks one member for its status: a cheap way to verify reachability, TLS and credentials.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (a read).
    pub async fn check(&self) -> Result<ServerInfo> {
        let status = self
            .idempotent_request("status", |mut etcd| async move { etcd.status().await })
            .await?;
        let header = status.header();
        Ok(ServerInfo {
            version: status.version().to_owned(),
            revision: header.map_or(0, |h| h.revision()),
            member_id: header.map_or(0, |h| h.member_id()),
            leader_id: status.leader(),
        })
    }
}
