//! The FleetLock protocol (coreos/zincati `docs/development/fleetlock/protocol.md`): the request
//! a client sends and the errors a server answers with.
//!
//! A request is `POST <base>/v1/pre-reboot` (lock) or `POST <base>/v1/steady-state` (unlock) with
//! the header `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": "<machine id>", "group": "<group>"}}`. Success is `200` with an empty
//! body; a failure is a 4xx or 5xx status with the body `{"kind": "<ErrorKind>", "value": "<text>"}`.
//! The kinds are the fixed set of [`ErrorKind`] (docs/reboot-coordinator.md lists them with their
//! status codes).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::groups::{GroupName, HolderId};

/// The header every FleetLock request carries, with the value `true`.
pub const PROTOCOL_HEADER: &str = "fleet-lock-protocol";

/// The two FleetLock operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /v1/pre-reboot`: take a reboot slot (recursive: a holder gets its slot again).
    PreReboot,
    /// `POST /v1/steady-state`: give the slot back (succeeds when none is held).
    SteadyState,
}

impl Operation {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Operation::PreReboot => "/v1/pre-reboot",
            Operation::SteadyState => "/v1/steady-state",
        }
    }

    /// The name used in metrics and logs: `pre_reboot` or `steady_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::PreReboot => "pre_reboot",
            Operation::SteadyState => "steady_state",
        }
    }
}

/// Every way a FleetLock request can fail, each with its `kind` string and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// `method_not_allowed`, 405: only `POST` is accepted.
    MethodNotAllowed,
    /// `not_found`, 404: no such path (check that the base URL ends with `/`).
    NotFound,
    /// `invalid_protocol_header`, 400: the `fleet-lock-protocol: true` header is missing or has
    /// another value.
    InvalidProtocolHeader,
    /// `payload_too_large`, 413: the body exceeds `server.max_body_bytes`.
    PayloadTooLarge,
    /// `request_timeout`, 408: the body did not arrive within `server.request_timeout`.
    RequestTimeout,
    /// `invalid_body`, 400: not JSON, or no `client_params` with string `id` and `group`.
    InvalidBody,
    /// `invalid_client_id`, 400: empty id, longer than 253 bytes, or with `/` or control
    /// characters.
    InvalidClientId,
    /// `invalid_group`, 400: the group does not match `^[a-zA-Z0-9.-]+$`.
    InvalidGroup,
    /// `unknown_group`, 422: a well-formed group this server is not configured for.
    UnknownGroup,
    /// `failed_lock_semaphore_full`, 409: every slot of the group is held by other ids; retry
    /// later.
    SemaphoreFull,
    /// `etcd_unavailable`, 503: etcd did not answer in time; retry later.
    EtcdUnavailable,
    /// `etcd_error`, 500: etcd refused the operation (permissions, auth, TLS set-up).
    EtcdError,
}

impl ErrorKind {
    /// Every kind, for documentation and tests.
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::MethodNotAllowed,
        ErrorKind::NotFound,
        ErrorKind::InvalidProtocolHeader,
        ErrorKind::PayloadTooLarge,
        ErrorKind::RequestTimeout,
        ErrorKind::InvalidBody,
        ErrorKind::InvalidClientId,
        ErrorKind::InvalidGroup,
        ErrorKind::UnknownGroup,
        ErrorKind::SemaphoreFull,
        ErrorKind::EtcdUnavailable,
        ErrorKind::EtcdError,
    ];

    /// The `kind` string of the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::NotFound => "not_found",
            ErrorKind::InvalidProtocolHeader => "invalid_protocol_header",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::InvalidBody => "invalid_body",
            ErrorKind::InvalidClientId => "invalid_client_id",
            ErrorKind::InvalidGroup => "invalid_group",
            ErrorKind::UnknownGroup => "unknown_group",
            ErrorKind::SemaphoreFull => "failed_lock_semaphore_full",
            ErrorKind::EtcdUnavailable => "etcd_unavailable",
            ErrorKind::EtcdError => "etcd_error",
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::InvalidProtocolHeader
            | ErrorKind::InvalidBody
            | ErrorKind::InvalidClientId
            | ErrorKind::InvalidGroup => StatusCode::BAD_REQUEST,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::UnknownGroup => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::SemaphoreFull => StatusCode::CONFLICT,
            ErrorKind::EtcdUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::EtcdError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A FleetLock error answer: `{"kind", "value"}` with the kind's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLockError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// A human-readable explanation (the error body's `value`).
    pub value: String,
}

impl FleetLockError {
    /// An error of `kind` explained by `value`.
    pub fn new(kind: ErrorKind, value: impl Into<String>) -> FleetLockError {
        FleetLockError {
            kind,
            value: value.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: &'a str,
    value: &'a str,
}

impl IntoResponse for FleetLockError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            kind: self.kind.as_str(),
            value: &self.value,
        })
        .unwrap_or_default();
        let mut response = (self.kind.status(), body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.kind == ErrorKind::MethodNotAllowed {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// A valid request: who (`id`) asks for which group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientParams {
    /// The client id (`client_params.id`).
    pub id: HolderId,
    /// The reboot group (`client_params.group`).
    pub group: GroupName,
}

#[derive(Deserialize)]
struct RequestBody {
    client_params: RawClientParams,
}

#[derive(Deserialize)]
struct RawClientParams {
    id: String,
    group: String,
}

/// Checks the protocol header.
///
/// # Errors
///
/// [`ErrorKind::InvalidProtocolHeader`] unless the header is present with the value `true`
/// (ASCII case and surrounding blanks ignored).
pub fn check_header(headers: &HeaderMap) -> Result<(), FleetLockError> {
    let value = headers
        .get(PROTOCOL_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match value {
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(()),
        Some(_) => Err(FleetLockError::new(
            ErrorKind::InvalidProtocolHeader,
            "header fleet-lock-protocol must be 'true'",
        )),
        None => Err(FleetLockError::new(
            ErrorKind::InvalidProtocolHeader,
            "missing header fleet-lock-protocol: true",
        )),
    }
}

/// Parses and checks a request body. Fields other than `client_params.id` and
/// `client_params.group` are ignored.
///
/// # Errors
///
/// [`ErrorKind::InvalidBody`], [`ErrorKind::InvalidClientId`] or [`ErrorKind::InvalidGroup`].
///
/// ```
/// use coord_reboot::fleetlock::{parse_body, ErrorKind};
///
/// let params = parse_body(br#"{"client_params":{"id":"node-1","group":"default"}}"#).unwrap();
/// assert_eq!((params.id.as_str(), params.group.as_str()), ("node-1", "default"));
///
/// let err = parse_body(br#"{"client_params":{"id":"","group":"default"}}"#).unwrap_err();
/// assert_eq!(err.kind, ErrorKind::InvalidClientId);
/// ```
pub fn parse_body(body: &[u8]) -> Result<ClientParams, FleetLockError> {
    let raw: RequestBody = serde_json::from_slice(body).map_err(|e| {
        FleetLockError::new(
            ErrorKind::InvalidBody,
            format!("expected {{\"client_params\":{{\"id\":…,\"group\":…}}}}: {e}"),
        )
    })?;
    let id = HolderId::new(&raw.client_params.id)
        .map_err(|e| FleetLockError::new(ErrorKind::InvalidClientId, e.to_string()))?;
    let group = GroupName::new(&raw.client_params.group)
        .map_err(|e| FleetLockError::new(ErrorKind::InvalidGroup, e.to_string()))?;
    Ok(ClientParams { id, group })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kinds_are_distinct_and_client_errors_are_4xx() {
        let mut names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            let server_side = matches!(kind, ErrorKind::EtcdUnavailable | ErrorKind::EtcdError);
            assert_eq!(kind.status().is_server_error(), server_side, "{kind:?}");
            assert!(kind.status().is_client_error() || server_side, "{kind:?}");
        }
    }

    #[test]
    fn zincatis_pretty_printed_body_parses() {
        let body = b"{\n  \"client_params\": {\n    \"id\": \"e0f3745b108f471cbd4883c6fbed8cdd\",\n    \"group\": \"default\"\n  }\n}";
        let params = parse_body(body).unwrap();
        assert_eq!(params.group.as_str(), "default");
    }

    #[test]
    fn bad_bodies_get_their_kind() {
        let cases: [(&[u8], ErrorKind); 7] = [
            (b"", ErrorKind::InvalidBody),
            (b"{", ErrorKind::InvalidBody),
            (b"{}", ErrorKind::InvalidBody),
            (
                br#"{"client_params":{"id":1,"group":"a"}}"#,
                ErrorKind::InvalidBody,
            ),
            (
                br#"{"client_params":{"group":"a"}}"#,
                ErrorKind::InvalidBody,
            ),
            (
                br#"{"client_params":{"id":"","group":"a"}}"#,
                ErrorKind::InvalidClientId,
            ),
            (
                br#"{"client_params":{"id":"x","group":"a_b"}}"#,
                ErrorKind::InvalidGroup,
            ),
        ];
        for (body, kind) in cases {
            assert_eq!(
                parse_body(body).unwrap_err().kind,
                kind,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_header_must_say_true() {
        let mut headers = HeaderMap::new();
        assert!(check_header(&headers).is_err());
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static("false"));
        assert!(check_header(&headers).is_err());
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static("true"));
        assert!(check_header(&headers).is_ok());
    }
}
