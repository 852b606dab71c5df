//! etcd's plain-HTTP metrics listener: `/health` for readiness, `/metrics` for tests.
//!
//! Each member always gets a `--listen-metrics-urls http://127.0.0.1:P` listener, even
//! when its client URLs use TLS, so readiness never needs a TLS client.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::Error;

/// One request may not take longer than this (a stuck listener must not stall a poll loop).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` over HTTP/1.0 (the server closes the connection after the body, so no
/// chunked encoding or keep-alive to handle). Returns the status code and body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), Error> {
    let url = format!("http://{addr}{path}");
    let fail = |reason: String| Error::Http {
        url: url.clone(),
        reason,
    };
    let request = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| fail(format!("no response within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("malformed HTTP response".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| fail(format!("malformed status line in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Whether `/health` says `"health":"true"`, i.e. the member has a leader and can serve a
/// linearizable read (a member cut off from its quorum is not healthy).
pub(crate) async fn is_healthy(metrics: SocketAddr) -> bool {
    matches!(get(metrics, "/health").await, Ok((200, body)) if body.contains(r#""health":"true""#))
}

/// The body of `/metrics` (Prometheus text format).
pub(crate) async fn metrics(metrics: SocketAddr) -> Result<String, Error> {
    match get(metrics, "/metrics").await? {
        (200, body) => Ok(body),
        (status, body) => Err(Error::Http {
            url: format!("http://{metrics}/metrics"),
            reason: format!("status {status}: {}", body.trim()),
        }),
    }
}
