//! A FleetLock client, as Zincati speaks it: `POST <base>v1/pre-reboot` and
//! `POST <base>v1/steady-state` with `fleet-lock-protocol: true` and
//! `{"client_params":{"id","group"}}`.

use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::fleetlock::{ErrorKind, Operation, PROTOCOL_HEADER};
use crate::groups::{GroupName, HolderId};

/// What a FleetLock call can end with, other than success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL cannot be used (not http(s), or cannot be a base).
    #[error("invalid FleetLock URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
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
    /// No answer: connection refused, timeout, reset.
    #[error("FleetLock server unreachable")]
    Transport(#[source] reqwest::Error),
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
            ClientError::Url { .. } => false,
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

/// A FleetLock client for one base URL.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    base: Url,
    http: reqwest::Client,
}

impl FleetLockClient {
    /// A client of the server at `base` (`http://host:9090/`; a missing trailing `/` is added,
    /// so `http://host/fleetlock` means `http://host/fleetlock/v1/…`, unlike Zincati, which
    /// would drop `fleetlock`). Each request gives up after `timeout`.
    ///
    /// Only `http` URLs work: this build has no TLS for FleetLock; put the server behind a
    /// local TLS-terminating proxy, or use the etcd backend (which has TLS).
    ///
    /// # Errors
    ///
    /// [`ClientError::Url`] for a URL that is not `http`, or cannot be a base.
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
        let bad = |reason: &str| ClientError::Url {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(base).map_err(|e| bad(&e.to_string()))?;
        if url.scheme() != "http" {
            return Err(bad(
                "only http:// is supported (no TLS for FleetLock in this build)",
            ));
        }
        if url.cannot_be_a_base() {
            return Err(bad("cannot be a base URL"));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(FleetLockClient { base: url, http })
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
        let body = serde_json::json!({
            "client_params": { "id": id.as_str(), "group": group.as_str() }
        })
        .to_string();
        let response = self
            .http
            .post(url)
            .header(PROTOCOL_HEADER, "true")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(ClientError::Transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&text) {
            Ok(error) => Err(ClientError::Refused {
                status,
                kind: error.kind,
                value: error.value,
            }),
            Err(_) => Err(ClientError::Status { status }),
        }
    }
}
