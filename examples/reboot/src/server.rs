//! The FleetLock HTTP server: an axum [`Router`] over [`RebootGroups`], serveable on any listener.
//!
//! Routes: `POST /v1/pre-reboot`, `POST /v1/steady-state` (FleetLock), `GET /metrics`
//! (Prometheus), `GET /healthz` (the process answers), `GET /readyz` (etcd answers). The server
//! keeps no state of its own beyond its configuration: run as many replicas against one etcd as
//! you like.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use coord_core::Client;
use tokio::net::TcpListener;
use tokio::time::{Instant, timeout_at};
use tower_http::trace::TraceLayer;

use crate::config::{Config, ConfigError, GroupSettings, ServerSettings};
use crate::fleetlock::{self, ErrorKind, FleetLockError, Operation};
use crate::groups::{GroupError, GroupName, RebootGroups};
use crate::metrics::{self, Metrics};

/// Why the server could not start or reload.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid, or a file it names cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// etcd could not be reached.
    #[error("cannot connect to etcd")]
    Connect(#[source] coord_core::Error),
    /// The configured slots of a group could not be written to etcd.
    #[error("cannot apply the slots of group {group}")]
    ApplySlots {
        /// The group.
        group: GroupName,
        /// The failure.
        #[source]
        source: GroupError,
    },
}

/// What one configuration (the latest reload) says the server serves.
#[derive(Debug)]
struct Served {
    groups: BTreeMap<GroupName, GroupSettings>,
    settings: ServerSettings,
}

#[derive(Debug)]
struct Shared {
    groups: RebootGroups,
    served: RwLock<Arc<Served>>,
    metrics: Metrics,
}

/// A FleetLock server: the configured groups over one etcd client. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use coord_reboot::{Config, Server};
///
/// let config = Config::load("/etc/coord-reboot/config.toml".as_ref())?;
/// let server = Server::start(&config).await?; // connects, writes the configured slots
/// let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// Connects to the configured etcd and [`start_with_client`](Self::start_with_client)s.
    ///
    /// # Errors
    ///
    /// [`ServerError::Config`] for unreadable TLS or password files, [`ServerError::Connect`],
    /// or as [`start_with_client`](Self::start_with_client).
    pub async fn start(config: &Config) -> Result<Server, ServerError> {
        let client = config
            .etcd
            .client_config()?
            .connect()
            .await
            .map_err(ServerError::Connect)?;
        Server::start_with_client(client, config).await
    }

    /// A server over `client` (whose namespace is used; `config.etcd` is ignored) that writes
    /// the configured slots to etcd before returning.
    ///
    /// # Errors
    ///
    /// [`ServerError::ApplySlots`] when a group's slots cannot be written.
    pub async fn start_with_client(client: Client, config: &Config) -> Result<Server, ServerError> {
        let server = Server {
            shared: Arc::new(Shared {
                groups: RebootGroups::new(client),
                served: RwLock::new(Arc::new(Served {
                    groups: BTreeMap::new(),
                    settings: config.server.clone(),
                })),
                metrics: Metrics::new(),
            }),
        };
        server.reload(config).await?;
        Ok(server)
    }

    /// Switches to `config`'s groups and limits after writing its slots to etcd (only those that
    /// differ are written). `server.listen` and `[etcd]` are not changed by a reload (restart for
    /// those). On error the previous configuration stays in force.
    ///
    /// # Errors
    ///
    /// [`ServerError::ApplySlots`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: some groups' slots may have been written, the switch not made.
    pub async fn reload(&self, config: &Config) -> Result<(), ServerError> {
        let groups = config.group_names()?;
        for (group, settings) in &groups {
            if let Some(slots) = settings.slots {
                let wrote = self
                    .shared
                    .groups
                    .set_slots(group, slots)
                    .await
                    .map_err(|source| ServerError::ApplySlots {
                        group: group.clone(),
                        source,
                    })?;
                if wrote {
                    tracing::info!(%group, slots, "stored the configured slots in etcd");
                }
            }
        }
        let served = Arc::new(Served {
            groups,
            settings: config.server.clone(),
        });
        *self
            .shared
            .served
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = served;
        Ok(())
    }

    /// The etcd side, for reads such as [`RebootGroups::status`].
    pub fn groups(&self) -> &RebootGroups {
        &self.shared.groups
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The routes, ready for `axum::serve` or any tower-compatible server.
    pub fn router(&self) -> Router {
        Router::new()
            .route(
                Operation::PreReboot.path(),
                post(pre_reboot).fallback(pre_reboot_other_method),
            )
            .route(
                Operation::SteadyState.path(),
                post(steady_state).fallback(steady_state_other_method),
            )
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .fallback(not_found)
            .layer(TraceLayer::new_for_http())
            .with_state(self.clone())
    }

    /// Serves the routes on `listener` (HTTP/1.1) until `shutdown` completes, then finishes the
    /// requests in flight. A client that has not sent a request's complete headers within the
    /// request timeout (`server.request_timeout`) is disconnected, so slow or stalled clients
    /// cannot hold connections open for ever.
    ///
    /// # Errors
    ///
    /// None at present: failures to accept a connection are logged and the loop goes on.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let service = hyper_util::service::TowerToHyperService::new(self.router());
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.served().settings.request_timeout);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => {
                    // Small request/answer exchanges: no Nagle delays.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment and go on, as axum::serve does.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let connection =
                http.serve_connection(hyper_util::rt::TokioIo::new(stream), service.clone());
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }

    fn served(&self) -> Arc<Served> {
        self.shared
            .served
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn fleetlock(&self, operation: Operation, request: Request) -> Response {
        let result = self.answer(operation, request).await;
        let outcome = match &result {
            Ok(()) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.shared.metrics.request(operation.as_str(), outcome);
        match result {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => {
                if e.kind.status().is_server_error() {
                    tracing::warn!(operation = operation.as_str(), kind = outcome, error = %e.value, "request failed");
                } else {
                    tracing::debug!(operation = operation.as_str(), kind = outcome, error = %e.value, "request refused");
                }
                e.into_response()
            }
        }
    }

    /// Checks in order: header, size, JSON, id, group, configured group; only then talks to
    /// etcd, so a refused request writes nothing.
    async fn answer(&self, operation: Operation, request: Request) -> Result<(), FleetLockError> {
        let served = self.served();
        let deadline = Instant::now() + served.settings.request_timeout;
        let limit = served.settings.max_body_bytes;
        fleetlock::check_header(request.headers())?;
        let body = read_body(request.into_body(), limit, deadline).await?;
        let params = fleetlock::parse_body(&body)?;
        let Some(settings) = served.groups.get(&params.group) else {
            return Err(FleetLockError::new(
                ErrorKind::UnknownGroup,
                format!("group {} is not configured on this server", params.group),
            ));
        };
        let groups = &self.shared.groups;
        let done = match operation {
            Operation::PreReboot => {
                let locked = groups.lock(&params.group, &params.id, settings.holder_ttl);
                timeout_at(deadline, locked).await.map(|r| {
                    r.map(|slot| {
                        tracing::info!(group = %slot.group, id = %slot.id, token = slot.token, "slot held");
                    })
                })
            }
            Operation::SteadyState => {
                let unlocked = groups.unlock(&params.group, &params.id);
                timeout_at(deadline, unlocked).await.map(|r| {
                    r.map(|()| {
                        tracing::info!(group = %params.group, id = %params.id, "slot released (if held)");
                    })
                })
            }
        };
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(group_error(e)),
            Err(_elapsed) => Err(FleetLockError::new(
                ErrorKind::EtcdUnavailable,
                format!(
                    "etcd did not answer within {:?}",
                    served.settings.request_timeout
                ),
            )),
        }
    }

    async fn ready(&self) -> Response {
        let wait = self
            .served()
            .settings
            .request_timeout
            .min(Duration::from_secs(5));
        match tokio::time::timeout(wait, self.shared.groups.client().check()).await {
            Ok(Ok(_)) => "ok\n".into_response(),
            Ok(Err(e)) => {
                FleetLockError::new(ErrorKind::EtcdUnavailable, e.to_string()).into_response()
            }
            Err(_) => FleetLockError::new(
                ErrorKind::EtcdUnavailable,
                format!("etcd did not answer within {wait:?}"),
            )
            .into_response(),
        }
    }

    async fn metrics_text(&self) -> Response {
        let served = self.served();
        let wait = served.settings.request_timeout;
        let read = async {
            let mut readings = Vec::with_capacity(served.groups.len());
            for group in served.groups.keys() {
                let (holders, slots) = self.shared.groups.holders_and_slots(group).await?;
                readings.push((group.to_string(), holders, slots));
            }
            Ok::<_, GroupError>(readings)
        };
        match tokio::time::timeout(wait, read).await {
            Ok(Ok(readings)) => self.shared.metrics.set_groups(Some(&readings)),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "metrics: cannot read the groups from etcd");
                self.shared.metrics.set_groups(None);
            }
            Err(_) => self.shared.metrics.set_groups(None),
        }
        let mut response = self.shared.metrics.render().into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        response
    }
}

fn group_error(error: GroupError) -> FleetLockError {
    let kind = match &error {
        GroupError::Full { .. } => ErrorKind::SemaphoreFull,
        GroupError::Unavailable(_) => ErrorKind::EtcdUnavailable,
        _ => ErrorKind::EtcdError,
    };
    let mut value = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        value.push_str(": ");
        value.push_str(&cause.to_string());
        source = cause.source();
    }
    FleetLockError::new(kind, value)
}

/// Reads at most `limit` bytes of body by `deadline`; a declared length over the limit is refused
/// without reading.
async fn read_body(body: Body, limit: usize, deadline: Instant) -> Result<Vec<u8>, FleetLockError> {
    let too_large = || {
        FleetLockError::new(
            ErrorKind::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = axum::body::HttpBody::size_hint(&body).lower();
    if usize::try_from(declared).map_or(true, |n| n > limit) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, limit);
    match timeout_at(deadline, http_body_util::BodyExt::collect(limited)).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(FleetLockError::new(
            ErrorKind::InvalidBody,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => Err(FleetLockError::new(
            ErrorKind::RequestTimeout,
            "the body did not arrive in time",
        )),
    }
}

async fn pre_reboot(State(server): State<Server>, request: Request) -> Response {
    server.fleetlock(Operation::PreReboot, request).await
}

async fn steady_state(State(server): State<Server>, request: Request) -> Response {
    server.fleetlock(Operation::SteadyState, request).await
}

fn other_method(server: &Server, operation: Operation, request: &Request) -> Response {
    server
        .shared
        .metrics
        .request(operation.as_str(), ErrorKind::MethodNotAllowed.as_str());
    FleetLockError::new(
        ErrorKind::MethodNotAllowed,
        format!(
            "{} accepts POST only, not {}",
            operation.path(),
            request.method()
        ),
    )
    .into_response()
}

async fn pre_reboot_other_method(State(server): State<Server>, request: Request) -> Response {
    other_method(&server, Operation::PreReboot, &request)
}

async fn steady_state_other_method(State(server): State<Server>, request: Request) -> Response {
    other_method(&server, Operation::SteadyState, &request)
}

async fn not_found(request: Request) -> Response {
    FleetLockError::new(
        ErrorKind::NotFound,
        format!(
            "no route {} (FleetLock paths are /v1/pre-reboot and /v1/steady-state; a base URL must end with '/')",
            request.uri().path()
        ),
    )
    .into_response()
}

async fn ready(State(server): State<Server>) -> Response {
    server.ready().await
}

async fn metrics_text(State(server): State<Server>) -> Response {
    server.metrics_text().await
}
