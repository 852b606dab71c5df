//! A FleetLock client, as Zincati speaks it: `POST <base>v1/pre-reboot` and
//! `POST <base>v1/steady-state` with `fleet-lock-protocol: true` and
//! `{"client_params":{"id","group"}}`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use url::Url;

use crate::fleetlock::{ErrorKind, Operation, PROTOCOL_HEADER};
use crate::groups::{GroupName, HolderId};

/// What a FleetLock call can end with, other than success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL cannot be used (not http(s), or cannot be a base), or TLS settings came
    /// with an `http://` URL.
    #[error("invalid FleetLock URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A CA certificate or client identity that cannot be used (not PEM, no certificate, a key
    /// that does not match).
    #[error("FleetLock TLS settings: {reason}")]
    Tls {
        /// What is wrong.
        reason: String,
    },
    /// The server answered with a FleetLock error `{kind, value}`.
    #[error("FleetLock server refused ({status}, {kind}): {value}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The error's `kind`.
        kind: String,
        /// The error's `value`.
        value: String,
    },
    /// The server answered with a status and no FleetLock error body.
    #[error("FleetLock server answered {status}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
    },
    /// No answer: connection refused, a TLS handshake that failed, a timeout, a reset.
    #[error("FleetLock server unreachable")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ClientError {
    /// Whether the group is full (`failed_lock_semaphore_full`): try later.
    pub fn is_full(&self) -> bool {
        matches!(self, ClientError::Refused { kind, .. } if kind == ErrorKind::SemaphoreFull.as_str())
    }

    /// Whether trying again later may succeed: full, the server or etcd unavailable, a timeout,
    /// any 5xx, or no answer at all. Anything else (a 4xx other than full: unknown group, bad id,
    /// wrong URL) needs a person.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Url { .. } | ClientError::Tls { .. } => false,
            ClientError::Transport(_) => true,
            ClientError::Refused { status, .. } | ClientError::Status { status } => {
                self.is_full()
                    || status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    kind: String,
    value: String,
}

/// TLS settings of a [`FleetLockClient`] for an `https://` server, all PEM: CA certificates to
/// trust besides the system's, and a client certificate with its key for servers (or proxies)
/// that ask for one. The default trusts the system's CAs only.
///
/// ```
/// # fn demo() -> std::io::Result<()> {
/// let tls = coord_reboot::agent::FleetLockTls::new()
///     .with_ca_pem(std::fs::read("/etc/coord-reboot/ca.pem")?);
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct FleetLockTls {
    ca_pem: Option<Vec<u8>>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for FleetLockTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLockTls")
            .field("ca", &self.ca_pem.is_some())
            .field("identity", &self.identity_pem.is_some())
            .finish()
    }
}

impl FleetLockTls {
    /// Trust the system's CAs only, no client certificate.
    pub fn new() -> FleetLockTls {
        FleetLockTls::default()
    }

    /// Also trust the CA certificate(s) of this PEM.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> FleetLockTls {
        self.ca_pem = Some(pem);
        self
    }

    /// Present this client certificate (PEM, with any chain) and its key (PEM).
    pub fn with_identity_pem(mut self, cert: Vec<u8>, key: Vec<u8>) -> FleetLockTls {
        self.identity_pem = Some((cert, key));
        self
    }

    fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.identity_pem.is_none()
    }

    /// The rustls configuration: the system's CAs and this CA, this identity; the *ring*
    /// provider, chosen here rather than taken from a process-wide default.
    fn client_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let bad = |reason: String| ClientError::Tls { reason };
        let mut roots = rustls::RootCertStore::empty();
        // Unreadable system certificates are skipped, as every TLS client does; a CA given here
        // must be usable.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(pem) = &self.ca_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("CA certificates: {e}")))?;
            if certs.is_empty() {
                return Err(bad("CA certificates: no certificate in the PEM".to_owned()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| bad(format!("CA certificate: {e}")))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_root_certificates(roots);
        match &self.identity_pem {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| bad(format!("client certificate: {e}")))?;
                if chain.is_empty() {
                    return Err(bad(
                        "client certificate: no certificate in the PEM".to_owned()
                    ));
                }
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| bad(format!("client key: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| bad(format!("client certificate and key: {e}")))
            }
        }
    }
}

/// The most of a response body read; FleetLock's are empty or a small JSON error.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Redirects followed per request, as many as Zincati's HTTP client (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// The base URL of a FleetLock client, checked (http or https, https only with TLS settings, usable
/// as a base) and ending with `/`.
pub(crate) fn base_url(base: &str, tls_default: bool) -> Result<Url, ClientError> {
    let bad = |reason: &str| ClientError::Url {
        url: base.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(base).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if tls_default => {}
        "http" => return Err(bad("TLS settings need an https:// URL")),
        _ => return Err(bad("only http:// and https:// are supported")),
    }
    if url.cannot_be_a_base() {
        return Err(bad("cannot be a base URL"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// A FleetLock client for one base URL.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    base: Url,
    http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl FleetLockClient {
    /// A client of the server at `base` (`http://host:9090/`; a missing trailing `/` is added,
    /// so `http://host/fleetlock` means `http://host/fleetlock/v1/…`, unlike Zincati, which
    /// would drop `fleetlock`). Each request gives up after `timeout`.
    ///
    /// `https://` URLs are checked against the system's CAs; [`with_tls`](Self::with_tls) adds
    /// a CA or a client certificate.
    ///
    /// # Errors
    ///
    /// [`ClientError::Url`] for a URL that is not `http` or `https`, or cannot be a base.
    ///
    /// ```
    /// use std::time::Duration;
    /// use coord_reboot::agent::FleetLockClient;
    ///
    /// let client = FleetLockClient::new("http://coordinator:9090/fleetlock", Duration::from_secs(30)).unwrap();
    /// assert_eq!(client.base().as_str(), "http://coordinator:9090/fleetlock/");
    /// assert!(FleetLockClient::new("ftp://coordinator/", Duration::from_secs(30)).is_err());
    /// ```
    pub fn new(base: &str, timeout: Duration) -> Result<FleetLockClient, ClientError> {
        FleetLockClient::with_tls(base, timeout, &FleetLockTls::new())
    }

    /// A client as [`new`](Self::new), with TLS settings for an `https://` server.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new); [`ClientError::Url`] for TLS settings with an `http://` URL;
    /// [`ClientError::Tls`] for a CA or identity that cannot be used.
    ///
    /// ```
    /// use std::time::Duration;
    /// use coord_reboot::agent::{FleetLockClient, FleetLockTls};
    ///
    /// let tls = FleetLockTls::new().with_ca_pem(b"not PEM".to_vec());
    /// let err = FleetLockClient::with_tls("https://coordinator/", Duration::from_secs(30), &tls);
    /// assert!(err.is_err());
    /// ```
    pub fn with_tls(
        base: &str,
        timeout: Duration,
        tls: &FleetLockTls,
    ) -> Result<FleetLockClient, ClientError> {
        let url = base_url(base, tls.is_default())?;
        let tls = if url.scheme() == "https" {
            tls.client_config()?
        } else {
            // The system's CAs, for a redirect from http:// to https://.
            FleetLockTls::new().client_config()?
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(FleetLockClient {
            base: url,
            http,
            timeout,
        })
    }

    /// The base URL (ending with `/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `pre-reboot`: takes a slot of `group` for `id` (or confirms the one it holds).
    ///
    /// # Errors
    ///
    /// [`ClientError`]; [`ClientError::is_full`] when every slot is taken.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as the server's lock is: a slot may have been taken; locking again returns it.
    pub async fn pre_reboot(&self, group: &GroupName, id: &HolderId) -> Result<(), ClientError> {
        self.call(Operation::PreReboot, group, id).await
    }

    /// `steady-state`: gives back `id`'s slot of `group` (succeeds when none is held).
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: call again.
    pub async fn steady_state(&self, group: &GroupName, id: &HolderId) -> Result<(), ClientError> {
        self.call(Operation::SteadyState, group, id).await
    }

    async fn call(
        &self,
        operation: Operation,
        group: &GroupName,
        id: &HolderId,
    ) -> Result<(), ClientError> {
        // Relative join, as Zincati does: the base keeps its path.
        let relative = operation.path().trim_start_matches('/');
        let url = self.base.join(relative).map_err(|e| ClientError::Url {
            url: self.base.to_string(),
            reason: e.to_string(),
        })?;
        let body = Bytes::from(
            serde_json::json!({
                "client_params": { "id": id.as_str(), "group": group.as_str() }
            })
            .to_string(),
        );
        let (status, text) = tokio::time::timeout(self.timeout, self.follow(url, body))
            .await
            .map_err(|elapsed| ClientError::Transport(Box::new(elapsed)))??;
        if status.is_success() {
            return Ok(());
        }
        match serde_json::from_slice::<ErrorBody>(&text) {
            Ok(error) => Err(ClientError::Refused {
                status,
                kind: error.kind,
                value: error.value,
            }),
            Err(_) => Err(ClientError::Status { status }),
        }
    }

    /// Posts `body` to `url`, following up to [`MAX_REDIRECTS`] 307/308 redirects with the same
    /// method and body, as Zincati's HTTP client does (a 301/302/303 would turn the POST into a
    /// GET, which no FleetLock server serves: it is returned as it is). A redirect from https to
    /// http is not followed.
    async fn follow(&self, mut url: Url, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let mut hops = 0;
        loop {
            let (status, location, text) = self.exchange(&url, body.clone()).await?;
            let redirect = matches!(
                status,
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            );
            let next = location
                .filter(|_| redirect && hops < MAX_REDIRECTS)
                .and_then(|location| url.join(&location).ok())
                .filter(|next| {
                    next.scheme() == "https" || (next.scheme() == "http" && url.scheme() == "http")
                });
            match next {
                Some(next) => {
                    url = next;
                    hops += 1;
                }
                None => return Ok((status, text)),
            }
        }
    }

    /// One POST: the status, the `Location` header and the body (read to the end, up to a bound,
    /// so that the connection can be reused: FleetLock answers are an empty body or a small
    /// `{kind, value}`).
    async fn exchange(
        &self,
        url: &Url,
        body: Bytes,
    ) -> Result<(StatusCode, Option<String>, Bytes), ClientError> {
        let request = hyper::Request::post(url.as_str())
            .header(PROTOCOL_HEADER, "true")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| ClientError::Url {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| ClientError::Transport(e.into()))?;
        let status = response.status();
        let location = response
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .unwrap_or_default();
        Ok((status, location, text))
    }
}
