//! coord's gRPC transport: one HTTP/2 connection (hyper) to one etcd member at a time, handed to
//! etcd-client as its channel.
//!
//! etcd-client's own channel is tonic's balanced channel: every request passes through a tower
//! buffer, i.e. a hop to the buffer's worker task and back, before it reaches the HTTP/2
//! connection. Measured on a 2-core VM against etcd on loopback (BENCHMARKS.md), that hop and the
//! balancer cost a create + delete cycle 1–5 % of its time, 20–50 µs of client CPU and ~2 wake-ups
//! of the client's threads. Here a request goes from the caller's task straight to hyper's
//! connection.
//!
//! Behaviour:
//! - **Lazy connect**, to the members in the configured order: a member that refuses or does not
//!   answer within the connect timeout is skipped for the next one. When none answers, the request
//!   fails as unavailable and marked [never sent](NotConnected), so callers may retry it safely.
//! - **One member at a time** (like etcd's Go client before 3.4 pinned one endpoint). A closed
//!   connection (member down, etcd restarted, the HTTP/2 keep-alive ping unanswered) is replaced
//!   at the next request, first by the same member, then by the next ones. A request that hyper
//!   hands back unsent because its connection had just closed is sent once more on a new one.
//! - **Suspicion**: [`Transport::suspect`] drops the current connection when a request on it timed
//!   out (a blackholed member, where the connection stays open), so that later requests go to the
//!   next member. Streams already open on it (watches, lease keep-alives) stay on it until they
//!   end.
//! - **TLS** with rustls (ring), the CA and client certificate of [`TlsConfig`], ALPN `h2`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::body::Body;

use crate::config::TlsConfig;
use crate::{ClientConfig, Error};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("coord/", env!("CARGO_PKG_VERSION")));

/// The source of an unavailable status for a request that never reached any member: no
/// connection could be made. Such a request can be repeated without risk.
#[derive(Debug)]
pub(crate) struct NotConnected {
    endpoints: String,
    last: String,
}

impl fmt::Display for NotConnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not connect to {}: {}", self.endpoints, self.last)
    }
}

impl std::error::Error for NotConnected {}

/// One member to connect to.
#[derive(Debug, Clone)]
struct Target {
    /// `http://host:port` or `https://host:port`, for messages.
    shown: String,
    scheme: Scheme,
    authority: Authority,
    /// The name the server's certificate must carry (TLS only).
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

/// An open connection to one member.
#[derive(Clone)]
struct Conn {
    send: SendRequest<Body>,
    target: usize,
    generation: u64,
}

struct State {
    conn: Option<Conn>,
    /// The member the next connect tries first.
    next: usize,
}

struct Inner {
    targets: Vec<Target>,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    keep_alive: Option<(Duration, Duration)>,
    tcp_keepalive: Option<Duration>,
    state: Mutex<State>,
    /// The generation of the current connection (0: none yet); read without the lock.
    generation: AtomicU64,
    /// One connect at a time: requests that find no connection wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// See the module documentation. Cheap to clone (one `Arc`).
#[derive(Clone)]
pub(crate) struct Transport {
    inner: Arc<Inner>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field(
                "targets",
                &self
                    .inner
                    .targets
                    .iter()
                    .map(|t| &t.shown)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport for a validated configuration; nothing is connected yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for an endpoint that is not a URI, or TLS material that holds no
    /// certificate or key rustls can use.
    pub(crate) fn new(config: &ClientConfig) -> crate::Result<Transport> {
        let tls = config.tls.as_ref().map(tls_connector).transpose()?;
        let targets = config
            .endpoints
            .iter()
            .map(|endpoint| target(endpoint, config.tls.as_ref()))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Transport {
            inner: Arc::new(Inner {
                targets,
                tls,
                connect_timeout: config.connect_timeout,
                keep_alive: config.keep_alive,
                tcp_keepalive: config.tcp_keepalive,
                state: Mutex::new(State {
                    conn: None,
                    next: 0,
                }),
                generation: AtomicU64::new(0),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The current connection's generation, to pass to [`suspect`](Self::suspect) if a request
    /// started now times out.
    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// A request started on connection `generation` timed out: unless that connection was
    /// replaced already, drop it and let the next request connect to the next member.
    pub(crate) fn suspect(&self, generation: u64) {
        let mut state = self.inner.lock();
        if let Some(conn) = state.conn.as_ref().filter(|c| c.generation == generation) {
            let target = conn.target;
            tracing::debug!(
                endpoint = %self.inner.targets[target].shown,
                "a request timed out on this connection; trying the next member"
            );
            state.conn = None;
            state.next = (target + 1) % self.inner.targets.len();
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection, if it is open.
    fn current(&self) -> Option<Conn> {
        let state = self.lock();
        state.conn.as_ref().filter(|c| !c.send.is_closed()).cloned()
    }

    /// Forgets connection `generation` (closed); the next connect starts with the same member.
    fn closed(&self, generation: u64) {
        let mut state = self.lock();
        if let Some(target) = state
            .conn
            .as_ref()
            .filter(|c| c.generation == generation)
            .map(|c| c.target)
        {
            state.conn = None;
            state.next = target;
        }
    }

    /// An open connection: the current one, or a new one to the first member that answers.
    async fn connection(&self) -> Result<Conn, BoxError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let first = self.lock().next;
        let mut last = String::new();
        for k in 0..self.targets.len() {
            let index = (first + k) % self.targets.len();
            let target = &self.targets[index];
            match tokio::time::timeout(self.connect_timeout, self.connect(target)).await {
                Ok(Ok(send)) => {
                    let mut state = self.lock();
                    let generation = self.generation.load(Ordering::Acquire) + 1;
                    let conn = Conn {
                        send,
                        target: index,
                        generation,
                    };
                    state.conn = Some(conn.clone());
                    state.next = index;
                    self.generation.store(generation, Ordering::Release);
                    return Ok(conn);
                }
                Ok(Err(error)) => {
                    tracing::debug!(endpoint = %target.shown, %error, "connect failed");
                    last = format!("{}: {}", target.shown, chain(&*error));
                }
                Err(_) => {
                    tracing::debug!(endpoint = %target.shown, "connect timed out");
                    last = format!(
                        "{}: no connection within {:?}",
                        target.shown, self.connect_timeout
                    );
                }
            }
        }
        let source = NotConnected {
            endpoints: self
                .targets
                .iter()
                .map(|t| t.shown.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            last,
        };
        let mut status = tonic::Status::unavailable(source.to_string());
        status.set_source(Arc::new(source));
        Err(Box::new(status))
    }

    /// A TCP (and TLS) connection and the HTTP/2 handshake on it; its driver runs in a task.
    async fn connect(&self, target: &Target) -> Result<SendRequest<Body>, BoxError> {
        let stream = TcpStream::connect(target.authority.as_str()).await?;
        stream.set_nodelay(true)?;
        if let Some(time) = self.tcp_keepalive {
            socket2::SockRef::from(&stream)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(time))?;
        }
        match (&self.tls, &target.server_name) {
            (Some(tls), Some(name)) => {
                let stream = tls.connect(name.clone(), stream).await.map_err(|e| {
                    Box::new(std::io::Error::other(format!("TLS handshake failed: {e}")))
                })?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(
                        "TLS handshake: the server did not agree to HTTP/2 (ALPN h2)".into(),
                    );
                }
                self.handshake(stream).await
            }
            _ => self.handshake(stream).await,
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Body>, BoxError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        if let Some((interval, timeout)) = self.keep_alive {
            // Pings only while streams are open: etcd counts idle pings as strikes (GOAWAY).
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(false);
        }
        let (send, connection) = builder.handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "etcd connection closed");
            }
        });
        Ok(send)
    }

    async fn send(self: Arc<Self>, mut request: Request<Body>) -> Result<Response<Body>, BoxError> {
        request
            .headers_mut()
            .insert(http::header::USER_AGENT, USER_AGENT.clone());
        // A second try only for a request the first connection handed back unsent.
        let mut retried = false;
        loop {
            let mut conn = self.connection().await?;
            let target = &self.targets[conn.target];
            let mut parts = std::mem::take(request.uri_mut()).into_parts();
            parts.scheme = Some(target.scheme.clone());
            parts.authority = Some(target.authority.clone());
            *request.uri_mut() = Uri::from_parts(parts)?;
            match conn.send.try_send_request(request).await {
                Ok(response) => return Ok(response.map(Body::new)),
                Err(mut error) => {
                    let unsent = error.take_message();
                    let error = error.into_error();
                    if error.is_closed() || error.is_canceled() {
                        self.closed(conn.generation);
                    }
                    match unsent {
                        Some(unsent) if !retried => {
                            retried = true;
                            request = unsent;
                        }
                        _ => return Err(unavailable(&self.targets[conn.target], error)),
                    }
                }
            }
        }
    }
}

/// A request that failed on its connection: unavailable (it may have reached the member).
fn unavailable(target: &Target, error: hyper::Error) -> BoxError {
    let mut status = tonic::Status::unavailable(format!("{}: {}", target.shown, chain(&error)));
    status.set_source(Arc::new(error));
    Box::new(status)
}

/// An error and its sources, joined by ": ".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

impl tower::Service<Request<Body>> for Transport {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Connections are made (and waited for) by the request itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> ResponseFuture {
        Box::pin(Arc::clone(&self.inner).send(request))
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidConfig {
        field,
        reason: reason.into(),
    }
}

/// A configured endpoint (`http://h:p`, `https://h:p` or `h:p`, already validated) as a target.
fn target(endpoint: &str, tls: Option<&TlsConfig>) -> crate::Result<Target> {
    let endpoint = endpoint.trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (Scheme::HTTPS, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (Scheme::HTTP, rest)
    } else if tls.is_some() {
        (Scheme::HTTPS, endpoint)
    } else {
        (Scheme::HTTP, endpoint)
    };
    let authority: Authority = rest
        .parse()
        .map_err(|e| invalid("endpoints", format!("endpoint {endpoint:?}: {e}")))?;
    let server_name = if scheme == Scheme::HTTPS {
        let name = tls
            .and_then(|tls| tls.domain.clone())
            .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_owned());
        Some(
            rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| invalid("tls", format!("server name {name:?}: {e}")))?,
        )
    } else {
        None
    };
    Ok(Target {
        shown: format!("{scheme}://{authority}"),
        scheme,
        authority,
        server_name,
    })
}

/// rustls with the ring provider, the configured CA and client certificate, ALPN `h2`.
fn tls_connector(tls: &TlsConfig) -> crate::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = &tls.ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("tls", format!("the CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(invalid("tls", "the CA PEM holds no certificate"));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid("tls", format!("a CA certificate: {e}")))?;
        }
    }
    let builder = builder.with_root_certificates(roots);
    let mut config = match &tls.identity {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("tls", format!("the client certificate PEM: {e}")))?;
            if certs.is_empty() {
                return Err(invalid(
                    "tls",
                    "the client certificate PEM holds no certificate",
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| invalid("tls", format!("the client key PEM: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid("tls", format!("the client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_become_targets_with_the_right_scheme_and_server_name() {
        let plain = target("127.0.0.1:2379", None).unwrap();
        assert_eq!(plain.shown, "http://127.0.0.1:2379");
        assert!(plain.server_name.is_none());

        let tls = TlsConfig::new();
        let secure = target("etcd-0.local:2379/", Some(&tls)).unwrap();
        assert_eq!(secure.shown, "https://etcd-0.local:2379");
        assert_eq!(
            secure.server_name.map(|n| n.to_str().into_owned()),
            Some("etcd-0.local".to_owned())
        );

        let renamed = TlsConfig::new().with_domain("etcd.internal");
        let explicit = target("https://10.0.0.1:2379", Some(&renamed)).unwrap();
        assert_eq!(
            explicit.server_name.map(|n| n.to_str().into_owned()),
            Some("etcd.internal".to_owned())
        );
    }

    #[test]
    fn tls_material_without_certificates_is_an_invalid_config() {
        for tls in [
            TlsConfig::new().with_ca_pem(b"not a pem".to_vec()),
            TlsConfig::new().with_identity_pem(b"".to_vec(), b"".to_vec()),
        ] {
            match tls_connector(&tls).err() {
                Some(Error::InvalidConfig { field: "tls", .. }) => {}
                other => panic!("expected an invalid tls config, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_chains_do_not_repeat_themselves() {
        let inner = std::io::Error::other("refused");
        assert_eq!(chain(&inner), "refused");
    }
}
