//! Registration: an instance's key, bound to a session's lease, kept in etcd with the latest
//! metadata for as long as the handle lives — across session loss.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex as StdMutex, PoisonError};
use std::time::Duration;

use coord_core::etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use coord_core::{Client, Error, LeaseId, Ownership, RetryPolicy, Session, SessionState};
use serde::Serialize;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::ServiceError;
use super::instance::{Instance, Status, check_addr, instance_key};
use super::wire;

/// A boxed future of a new [`Session`], as a [session factory](RegistrationBuilder::session_factory)
/// returns it.
pub type SessionFuture = Pin<Box<dyn Future<Output = coord_core::Result<Session>> + Send>>;

type SessionFactory = Arc<dyn Fn() -> SessionFuture + Send + Sync>;

/// How many of its past leases a registration remembers as its own (a key still attached to one
/// of them is taken over, not reported as a conflict).
const KNOWN_LEASES: usize = 8;

/// Where a [`Registration`] stands. Observe it with [`Registration::subscribe`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RegistrationState {
    /// The instance's key is in etcd, attached to `lease`, with the latest value set through the
    /// handle (or that value's write is in flight).
    Registered {
        /// The lease the key is attached to.
        lease: LeaseId,
        /// The key and its create revision: a fencing token, and a compare for your own writes.
        ownership: Ownership,
    },
    /// The key is gone (the session was lost, or someone deleted the key) and is being written
    /// again — with a new session if the old one is gone — carrying the latest value.
    Reregistering {
        /// Failed attempts so far.
        attempts: u32,
        /// Why the last attempt failed (for example [`ServiceError::Conflict`] while another
        /// process holds the id, or etcd being unreachable).
        last_error: Option<Arc<ServiceError>>,
    },
    /// The key is gone and will not be written again: re-registration is disabled
    /// ([`RegistrationBuilder::reregister`]) and the session was lost or the key deleted.
    Lost,
    /// Deregistered (explicitly or by dropping the handle), or the session was closed by its
    /// owner. Final.
    Deregistered,
}

impl RegistrationState {
    /// Whether the instance is registered.
    ///
    /// ```
    /// use coord_discovery::service::RegistrationState;
    /// assert!(!RegistrationState::Deregistered.is_registered());
    /// ```
    pub fn is_registered(&self) -> bool {
        matches!(self, RegistrationState::Registered { .. })
    }

    /// Whether the state is final ([`Lost`](Self::Lost) or [`Deregistered`](Self::Deregistered)).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RegistrationState::Lost | RegistrationState::Deregistered
        )
    }
}

/// Registers `instance` under `service`, bound to `session`'s lease, with the default
/// re-registration (a new session like `session` after it is lost). Shorthand for
/// [`Registration::builder`]`(…).register()`.
///
/// # Errors
///
/// As [`RegistrationBuilder::register`].
///
/// # Cancel safety
///
/// As [`RegistrationBuilder::register`].
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
/// use coord_core::Session;
/// use coord_discovery::service::{Instance, Status, register};
/// use std::time::Duration;
///
/// let session = Session::new(client, Duration::from_secs(10)).await?;
/// let registration = register(&session, "api", Instance::new("api-1", "10.0.0.1:8080", ())).await?;
/// // … serve …
/// registration.set_status(Status::Draining).await?;
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
pub async fn register<T>(
    session: &Session,
    service: &str,
    instance: Instance<T>,
) -> Result<Registration<T>, ServiceError>
where
    T: Serialize + Send + 'static,
{
    Registration::builder(session, service, instance)
        .register()
        .await
}

/// Builds a [`Registration`]; from [`Registration::builder`].
#[must_use = "a builder does nothing until `register` is awaited"]
pub struct RegistrationBuilder<T> {
    session: Session,
    service: String,
    instance: Instance<T>,
    factory: Option<SessionFactory>,
}

impl<T> std::fmt::Debug for RegistrationBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrationBuilder")
            .field("service", &self.service)
            .field("id", &self.instance.id)
            .field("reregister", &self.factory.is_some())
            .finish_non_exhaustive()
    }
}

impl<T> RegistrationBuilder<T> {
    /// Whether to register again after the session is lost or the key deleted (default: yes).
    /// Without, the registration ends in [`RegistrationState::Lost`].
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::{Instance, Registration};
    /// let registration = Registration::builder(&session, "api", Instance::new("api-1", "h:1", ()))
    ///     .reregister(false)
    ///     .register()
    ///     .await?;
    /// # let _ = registration; Ok(()) }
    /// ```
    pub fn reregister(mut self, enabled: bool) -> RegistrationBuilder<T> {
        self.factory = enabled.then(|| like(&self.session));
        self
    }

    /// Where re-registration gets a new session when the current one is lost (default: a session
    /// on the same client with the same TTL and loss margin, owned by the registration). Use it
    /// to share one replacement session between the primitives of a process.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_core::Session;
    /// use coord_discovery::service::{Instance, Registration};
    /// use std::time::Duration;
    ///
    /// let client = session.client().clone();
    /// let registration = Registration::builder(&session, "api", Instance::new("api-1", "h:1", ()))
    ///     .session_factory(move || {
    ///         let client = client.clone();
    ///         async move { Session::new(client, Duration::from_secs(5)).await }
    ///     })
    ///     .register()
    ///     .await?;
    /// # let _ = registration; Ok(()) }
    /// ```
    pub fn session_factory<F, Fut>(mut self, factory: F) -> RegistrationBuilder<T>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = coord_core::Result<Session>> + Send + 'static,
    {
        self.factory = Some(Arc::new(move || Box::pin(factory()) as SessionFuture));
        self
    }
}

/// A factory of sessions like `session`: same client, TTL and loss margin.
fn like(session: &Session) -> SessionFactory {
    let (client, ttl, margin) = (
        session.client().clone(),
        session.ttl(),
        session.loss_margin(),
    );
    Arc::new(move || {
        let builder = Session::builder(client.clone())
            .ttl(ttl)
            .loss_margin(margin);
        Box::pin(builder.start()) as SessionFuture
    })
}

impl<T: Serialize + Send + 'static> RegistrationBuilder<T> {
    /// Writes the instance's key (`namespace + service + "/" + id`) with the session's lease, and
    /// starts keeping it registered.
    ///
    /// The write is guarded: it creates the key only if it does not exist. An existing key is
    /// taken over only when it is attached to the session's own lease (a previous write of this
    /// process whose reply was lost); otherwise the id belongs to someone else.
    ///
    /// # Errors
    ///
    /// Nothing is written for:
    /// - [`ServiceError::InvalidService`], [`ServiceError::InvalidInstanceId`],
    ///   [`ServiceError::InvalidAddr`], [`ServiceError::Encode`]: bad input;
    /// - [`ServiceError::Conflict`]: the key exists with another lease (another process
    ///   registered this id);
    /// - [`ServiceError::AlreadyRegistered`]: this process has a live registration of this id;
    /// - [`ServiceError::Core`] with [`coord_core::Error::SessionLost`] /
    ///   [`SessionClosed`](coord_core::Error::SessionClosed) for a session that already ended.
    ///
    /// Transport and timeout errors ([`ServiceError::Core`]) leave the outcome unknown: a key
    /// written then is attached to the session's lease, so it goes with the session, and a
    /// retried `register` on the same session takes it over.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a cancelled call may leave the key written, attached to the session's
    /// lease (see above); it goes with the session, and a retry takes it over.
    pub async fn register(self) -> Result<Registration<T>, ServiceError> {
        let client = self.session.client().clone();
        let key = instance_key(client.namespace(), &self.service, &self.instance.id)?;
        check_addr(&self.instance.addr)?;
        let encoded = wire::encode(&self.instance, &self.instance.metadata).map_err(|source| {
            ServiceError::Encode {
                key: key.clone(),
                source,
            }
        })?;
        let claim = LocalClaim::take(&client, &key)?;
        self.session.check_alive()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServiceError::Shutdown)?;
        let (state, _) = watch::channel(RegistrationState::Reregistering {
            attempts: 0,
            last_error: None,
        });
        let shared = Arc::new(Shared {
            client,
            key,
            service: self.service,
            id: self.instance.id.clone(),
            current: Mutex::new(Current {
                instance: self.instance,
                encoded,
                bound: None,
            }),
            state,
            stop: CancellationToken::new(),
            _claim: claim,
        });
        let leases = vec![self.session.lease_id()];
        let (_, written) = shared.claim(&self.session, &leases).await?;
        tracing::debug!(key = %shared.key, lease = %self.session.lease_id(), "registered");
        let task = Task {
            shared: shared.clone(),
            session: self.session,
            factory: self.factory,
            leases,
        };
        let task = runtime.spawn(task.run(written));
        Ok(Registration {
            shared,
            task: Some(task),
        })
    }
}

/// A registered service instance: its key stays in etcd, attached to a session's lease, while
/// this handle lives.
///
/// - **Updates:** [`set_status`](Self::set_status) and [`update`](Self::update) rewrite the
///   value (guarded: only while the key is still this registration's).
/// - **Session loss:** a background task notices the loss (or a deleted key), gets a new session
///   (by default one like the lost one) and writes the key again with the **latest** value set
///   through this handle — never an older one (Curator's ServiceDiscovery re-registered stale
///   instances: curator#702/#667). Progress is observable as [`RegistrationState`]. A session
///   *closed* by its owner is a deregistration, not a loss.
/// - **Conflicts:** an id held by another process is refused at registration
///   ([`ServiceError::Conflict`]); while re-registering, the registration waits (retrying with
///   backoff) until the other holder's key is gone, and never overwrites it.
/// - **End:** [`deregister`](Self::deregister) deletes the key and reports errors; dropping the
///   handle deletes it in the background (best effort: if etcd cannot be reached it goes with the
///   lease). The delete is guarded by the lease, so it never removes another holder's key.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
/// use coord_core::Session;
/// use coord_discovery::service::{Instance, Registration, RegistrationState};
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, Clone)]
/// struct Shard { range: (u32, u32) }
///
/// let session = Session::new(client, Duration::from_secs(10)).await?;
/// let registration = Registration::builder(&session, "index", Instance::new("ix-3", "10.0.0.3:7000", Shard { range: (0, 99) }))
///     .register()
///     .await?;
/// registration.update(Shard { range: (0, 49) }).await?;
///
/// let mut state = registration.subscribe();
/// tokio::spawn(async move {
///     while state.changed().await.is_ok() {
///         if let RegistrationState::Reregistering { last_error: Some(error), .. } = &*state.borrow() {
///             eprintln!("not registered: {error}");
///         }
///     }
/// });
/// # Ok(()) }
/// ```
#[must_use = "dropping a Registration deregisters the instance"]
pub struct Registration<T> {
    shared: Arc<Shared<T>>,
    task: Option<JoinHandle<Result<(), ServiceError>>>,
}

impl<T> std::fmt::Debug for Registration<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.shared.key)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl<T> Registration<T> {
    /// Starts building the registration of `instance` under `service`, bound to `session`.
    ///
    /// ```no_run
    /// # async fn demo(session: coord_core::Session) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::{Instance, Registration};
    /// let registration = Registration::builder(&session, "api", Instance::new("api-1", "h:1", ())).register().await?;
    /// # let _ = registration; Ok(()) }
    /// ```
    pub fn builder(
        session: &Session,
        service: &str,
        instance: Instance<T>,
    ) -> RegistrationBuilder<T> {
        RegistrationBuilder {
            session: session.clone(),
            service: service.to_owned(),
            factory: Some(like(session)),
            instance,
        }
    }

    /// The full key (`namespace + service + "/" + id`).
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.shared.service
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The current state.
    pub fn state(&self) -> RegistrationState {
        self.shared.state.borrow().clone()
    }

    /// The state as a [`watch::Receiver`].
    ///
    /// ```no_run
    /// # async fn demo(registration: coord_discovery::service::Registration<()>) {
    /// let mut state = registration.subscribe();
    /// let _ = state.wait_for(|s| s.is_registered()).await;
    /// # }
    /// ```
    pub fn subscribe(&self) -> watch::Receiver<RegistrationState> {
        self.shared.state.subscribe()
    }

    /// The key and create revision while registered: a fencing token for your own writes
    /// (`txn.when([ownership.compare()])`). A re-registration that had to create the key anew
    /// has a new one.
    pub fn ownership(&self) -> Option<Ownership> {
        match &*self.shared.state.borrow() {
            RegistrationState::Registered { ownership, .. } => Some(ownership.clone()),
            _ => None,
        }
    }
}

impl<T: Serialize + Send + 'static> Registration<T> {
    /// Sets the announced status (e.g. [`Status::Draining`] before a shutdown) and writes it.
    ///
    /// # Errors
    ///
    /// - [`ServiceError::NotRegistered`]: the registration is being re-made; the status was
    ///   kept and the re-registration writes it.
    /// - [`ServiceError::Deregistered`]: nothing more can be written through this handle.
    /// - [`ServiceError::Core`]: etcd trouble; the status was kept and is written by the next
    ///   successful write (retry the call to write it now).
    ///
    /// # Cancel safety
    ///
    /// The new status is kept once the call has started waiting for etcd; a cancelled write
    /// may or may not have reached etcd.
    ///
    /// ```no_run
    /// # async fn demo(registration: coord_discovery::service::Registration<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// use coord_discovery::service::Status;
    /// registration.set_status(Status::Draining).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_status(&self, status: Status) -> Result<(), ServiceError> {
        let mut current = self.shared.current.lock().await;
        self.shared.check_not_ended()?;
        let old = std::mem::replace(&mut current.instance.status, status);
        match wire::encode(&current.instance, &current.instance.metadata) {
            Ok(encoded) => current.encoded = encoded,
            Err(source) => {
                current.instance.status = old;
                return Err(self.shared.encode_error(source));
            }
        }
        self.shared.write(&current).await
    }

    /// Replaces the user metadata and writes it.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Encode`] (nothing changed), otherwise as [`set_status`](Self::set_status).
    ///
    /// # Cancel safety
    ///
    /// As [`set_status`](Self::set_status).
    ///
    /// ```no_run
    /// # async fn demo(registration: coord_discovery::service::Registration<u32>) -> Result<(), coord_discovery::service::ServiceError> {
    /// registration.update(42).await?;
    /// # Ok(()) }
    /// ```
    pub async fn update(&self, metadata: T) -> Result<(), ServiceError> {
        let mut current = self.shared.current.lock().await;
        self.shared.check_not_ended()?;
        let encoded = wire::encode(&current.instance, &metadata)
            .map_err(|source| self.shared.encode_error(source))?;
        current.instance.metadata = metadata;
        current.encoded = encoded;
        self.shared.write(&current).await
    }

    /// The instance as last set through this handle (what etcd holds, or will hold after the
    /// pending write or re-registration).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    ///
    /// ```no_run
    /// # async fn demo(registration: coord_discovery::service::Registration<u32>) {
    /// println!("status {}", registration.instance().await.status);
    /// # }
    /// ```
    pub async fn instance(&self) -> Instance<T>
    where
        T: Clone,
    {
        self.shared.current.lock().await.instance.clone()
    }

    /// Deletes the key (guarded by the lease: never another holder's) and stops the
    /// re-registration.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Core`] when the delete failed after retries; the key then goes with its
    /// session. [`ServiceError::Shutdown`] when the runtime is shutting down.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in what it reports: a cancelled call still deregisters, in the background.
    ///
    /// ```no_run
    /// # async fn demo(registration: coord_discovery::service::Registration<()>) -> Result<(), coord_discovery::service::ServiceError> {
    /// registration.deregister().await?;
    /// # Ok(()) }
    /// ```
    pub async fn deregister(mut self) -> Result<(), ServiceError> {
        self.shared.stop.cancel();
        match self.task.take() {
            Some(task) => task.await.map_err(|_| ServiceError::Shutdown)?,
            None => Ok(()),
        }
    }
}

impl<T> Drop for Registration<T> {
    fn drop(&mut self) {
        // The task deletes the key in the background (if the runtime still runs).
        self.shared.stop.cancel();
    }
}

/// State shared by the handle and the task.
struct Shared<T> {
    client: Client,
    key: String,
    service: String,
    id: String,
    /// The latest value and where it is written; writers (updates, re-registration) hold it for
    /// the whole write, so a re-registration always writes the latest value.
    current: Mutex<Current<T>>,
    state: watch::Sender<RegistrationState>,
    stop: CancellationToken,
    _claim: LocalClaim,
}

struct Current<T> {
    instance: Instance<T>,
    encoded: Vec<u8>,
    /// The lease and ownership the key was last written with; `None` while not registered.
    bound: Option<(LeaseId, Ownership)>,
}

impl<T> Shared<T> {
    fn check_not_ended(&self) -> Result<(), ServiceError> {
        if self.state.borrow().is_final() {
            return Err(ServiceError::Deregistered {
                key: self.key.clone(),
            });
        }
        Ok(())
    }

    fn encode_error(&self, source: serde_json::Error) -> ServiceError {
        ServiceError::Encode {
            key: self.key.clone(),
            source,
        }
    }

    /// Rewrites the value, guarded by the lease and the create revision.
    async fn write(&self, current: &Current<T>) -> Result<(), ServiceError> {
        let not_registered = || ServiceError::NotRegistered {
            key: self.key.clone(),
        };
        let Some((lease, ownership)) = &current.bound else {
            return Err(not_registered());
        };
        let txn = Txn::new()
            .when([
                ownership.compare(),
                Compare::lease(self.key.clone(), CompareOp::Equal, lease.get()),
            ])
            .and_then([put(&self.key, &current.encoded, *lease)]);
        if self.client.txn(txn).await?.succeeded() {
            Ok(())
        } else {
            // The key is gone or changed hands: the task notices and re-registers.
            Err(not_registered())
        }
    }

    /// Writes the key with `session`'s lease if it does not exist, or if it is attached to one of
    /// `leases` (ours); returns the ownership and the revision of the write.
    async fn claim(
        &self,
        session: &Session,
        leases: &[LeaseId],
    ) -> Result<(Ownership, i64), ServiceError> {
        let mut current = self.current.lock().await;
        session.check_alive()?;
        let lease = session.lease_id();
        loop {
            let key = self.key.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([put(&key, &current.encoded, lease)])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = self.client.txn(txn).await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            if resp.succeeded() {
                let ownership = Ownership::new(key, revision);
                current.bound = Some((lease, ownership.clone()));
                self.publish_registered(lease, &ownership);
                return Ok((ownership, revision));
            }
            let existing = resp.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            // The read is in the same transaction as the failed compare: the key must be there.
            let Some(existing) = existing else {
                return Err(Error::UnexpectedResponse {
                    operation: "register",
                }
                .into());
            };
            let holder = LeaseId::new(existing.lease());
            if !leases.contains(&holder) {
                return Err(ServiceError::Conflict { key, lease: holder });
            }
            // Ours (a write whose reply was lost, or the key of our previous session that has not
            // expired yet): take it over, keeping its create revision.
            let txn = Txn::new()
                .when([
                    Compare::lease(key.clone(), CompareOp::Equal, holder.get()),
                    Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        existing.create_revision(),
                    ),
                ])
                .and_then([put(&key, &current.encoded, lease)]);
            let resp = self.client.txn(txn).await?;
            if resp.succeeded() {
                let ownership = Ownership::new(key, existing.create_revision());
                current.bound = Some((lease, ownership.clone()));
                self.publish_registered(lease, &ownership);
                return Ok((ownership, resp.header().map_or(0, |h| h.revision())));
            }
        }
    }

    fn publish_registered(&self, lease: LeaseId, ownership: &Ownership) {
        self.state.send_replace(RegistrationState::Registered {
            lease,
            ownership: ownership.clone(),
        });
    }

    async fn unbind(&self) {
        self.current.lock().await.bound = None;
    }

    /// Deletes the key if it is attached to `session`'s lease (retrying transient failures while
    /// the session lives), and ends the registration.
    async fn remove(&self, session: &Session) -> Result<(), ServiceError> {
        let mut current = self.current.lock().await;
        current.bound = None;
        let mut result = Ok(());
        if session.is_alive() {
            let lease = session.lease_id();
            let delete = || {
                let txn = Txn::new()
                    .when([Compare::lease(
                        self.key.clone(),
                        CompareOp::Equal,
                        lease.get(),
                    )])
                    .and_then([TxnOp::delete(self.key.clone(), None)]);
                self.client.txn(txn)
            };
            let policy = RetryPolicy::new().with_max_elapsed(Some(session.ttl()));
            tokio::select! {
                outcome = policy.retry(delete) => result = outcome.map(drop).map_err(ServiceError::from),
                _ = session.ended() => {}
            }
        }
        self.state.send_replace(RegistrationState::Deregistered);
        tracing::debug!(key = %self.key, ok = result.is_ok(), "deregistered");
        result
    }
}

fn put(key: &str, value: &[u8], lease: LeaseId) -> TxnOp {
    TxnOp::put(
        key.to_owned(),
        value.to_vec(),
        Some(PutOptions::new().with_lease(lease.get())),
    )
}

/// The background task of a registration.
struct Task<T> {
    shared: Arc<Shared<T>>,
    session: Session,
    factory: Option<SessionFactory>,
    leases: Vec<LeaseId>,
}

impl<T: Send + 'static> Task<T> {
    async fn run(mut self, mut written_at: i64) -> Result<(), ServiceError> {
        loop {
            // Registered: wait for the end of it.
            let lease = self.session.lease_id();
            tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => return self.shared.remove(&self.session).await,
                _ = self.session.ended() => {}
                () = key_taken(&self.shared.client, &self.shared.key, lease, written_at + 1) => {}
            }
            self.shared.unbind().await;
            if self.session.state() == SessionState::Closed {
                // Closed (or detached) by its owner: that is a deregistration, not a loss.
                self.shared
                    .state
                    .send_replace(RegistrationState::Deregistered);
                return Ok(());
            }
            if self.factory.is_none() {
                tracing::warn!(key = %self.shared.key, "registration lost; re-registration disabled");
                self.shared.state.send_replace(RegistrationState::Lost);
                // Wait for deregister/drop, then clean up whatever may be left.
                self.shared.stop.cancelled().await;
                let result = self.shared.remove(&self.session).await;
                self.shared.state.send_replace(RegistrationState::Lost);
                return result;
            }
            tracing::info!(key = %self.shared.key, session = ?self.session.state(), "registration lost; registering again");
            match self.reregister().await {
                Again::Registered(at) => written_at = at,
                Again::Stopped => return self.shared.remove(&self.session).await,
                Again::Closed => {
                    self.shared
                        .state
                        .send_replace(RegistrationState::Deregistered);
                    return Ok(());
                }
            }
        }
    }

    /// Registers again with the latest value, retrying until it works.
    async fn reregister(&mut self) -> Again {
        let stop = self.shared.stop.clone();
        let mut backoff = RetryPolicy::new()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_elapsed(None)
            .backoff();
        let mut attempts = 0;
        let mut last_error = None;
        loop {
            self.shared
                .state
                .send_replace(RegistrationState::Reregistering {
                    attempts,
                    last_error: last_error.clone(),
                });
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => return Again::Stopped,
                outcome = self.attempt() => outcome,
            };
            match outcome {
                Ok(Some((ownership, at))) => {
                    tracing::info!(key = %self.shared.key, lease = %self.session.lease_id(), create_revision = ownership.token().revision(), "registered again");
                    return Again::Registered(at);
                }
                Ok(None) => return Again::Closed,
                Err(error) => {
                    attempts += 1;
                    tracing::debug!(key = %self.shared.key, %error, attempts, "re-registration failed; retrying");
                    last_error = Some(Arc::new(error));
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(2));
            tokio::select! {
                biased;
                () = stop.cancelled() => return Again::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One attempt: a live session (the current one, or a new one once it has ended), then the
    /// guarded write. `None` when the session turned out to be closed by its owner.
    async fn attempt(&mut self) -> Result<Option<(Ownership, i64)>, ServiceError> {
        if self.session.is_alive() && lease_gone(&self.session).await {
            // Revoked or expired before the session noticed; or its owner is closing it (the
            // revoke comes before the closed state). The session says which within a
            // keep-alive interval.
            self.session.ended().await;
        }
        match self.session.state() {
            SessionState::Alive => {}
            SessionState::Closed => return Ok(None),
            _ => {
                let factory = self.factory.as_ref().ok_or(ServiceError::Shutdown)?;
                self.session = factory().await?;
                self.leases.push(self.session.lease_id());
                if self.leases.len() > KNOWN_LEASES {
                    self.leases.remove(0);
                }
            }
        }
        self.shared
            .claim(&self.session, &self.leases)
            .await
            .map(Some)
    }
}

/// How a re-registration ended.
enum Again {
    /// Registered; the revision of the write.
    Registered(i64),
    /// Deregistered or dropped meanwhile.
    Stopped,
    /// The session was closed by its owner: no re-registration.
    Closed,
}

/// Whether the session's lease is unknown to the server (expired or revoked before the
/// keep-alive task noticed). A failed read counts as "not known to be gone".
async fn lease_gone(session: &Session) -> bool {
    matches!(session.client().lease_time_to_live(session.lease_id(), false).await, Ok(ttl) if ttl.ttl() < 0)
}

/// Resolves when `key` is no longer ours: deleted, or attached to another lease (another writer
/// overwrote it). Watches from `from`; a compaction leads to a read. If the key cannot be watched
/// at all (permissions), it never resolves and only the session signal remains.
async fn key_taken(client: &Client, key: &str, lease: LeaseId, mut from: i64) {
    let mut backoff = RetryPolicy::new()
        .with_max_delay(Duration::from_secs(1))
        .with_max_elapsed(None)
        .backoff();
    loop {
        match coord_core::watch::wait_changed(client, key, from).await {
            Ok(_) | Err(Error::Compacted { .. }) => {}
            Err(error) => {
                tracing::warn!(%key, %error, "cannot watch the registration's key; relying on the session alone");
                return std::future::pending().await;
            }
        }
        loop {
            match client.get(key, None).await {
                Ok(read) => {
                    match read.kvs().first() {
                        Some(kv) if kv.lease() == lease.get() => {
                            from = read.header().map_or(from, |h| h.revision() + 1);
                        }
                        _ => return,
                    }
                    break;
                }
                Err(error) => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tracing::debug!(%key, %error, ?delay, "cannot read the registration's key; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// (endpoints, full key) of a registration.
type ClaimKey = (Vec<String>, String);

/// Every live registration in this process.
static CLAIMS: LazyLock<StdMutex<HashSet<ClaimKey>>> =
    LazyLock::new(|| StdMutex::new(HashSet::new()));

/// This process's claim on an instance key, released on drop (when the registration's task has
/// finished with the key).
struct LocalClaim {
    entry: ClaimKey,
}

impl LocalClaim {
    fn take(client: &Client, key: &str) -> Result<LocalClaim, ServiceError> {
        let entry = (client.endpoints().to_vec(), key.to_owned());
        let mut claims = CLAIMS.lock().unwrap_or_else(PoisonError::into_inner);
        if !claims.insert(entry.clone()) {
            return Err(ServiceError::AlreadyRegistered {
                key: key.to_owned(),
            });
        }
        Ok(LocalClaim { entry })
    }
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        CLAIMS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.entry);
    }
}
