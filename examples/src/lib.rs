//! Shared bits of coord's runnable examples.
//!
//! The library crates never read the environment; the examples do, here.

/// Endpoints from `COORD_ENDPOINTS`, falling back to `ETCDCTL_ENDPOINTS` (comma-separated, as
/// etcdctl takes them). `None` when neither is set or both are empty.
///
/// ```
/// assert_eq!(
///     coord_examples::parse_endpoints("http://a:2379, http://b:2379"),
///     vec!["http://a:2379".to_string(), "http://b:2379".to_string()]
/// );
/// ```
pub fn endpoints_from_env() -> Option<Vec<String>> {
    ["COORD_ENDPOINTS", "ETCDCTL_ENDPOINTS"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .map(|value| parse_endpoints(&value))
        .find(|endpoints| !endpoints.is_empty())
}

/// The etcd to use: the endpoints from the environment ([`endpoints_from_env`]), or else an
/// embedded etcd started for the example. Keep the returned server alive as long as the example
/// runs: it is killed when dropped.
///
/// # Errors
///
/// When the embedded etcd cannot start.
pub async fn etcd_from_env_or_embedded()
-> anyhow::Result<(Option<coord_testkit::Etcd>, Vec<String>)> {
    if let Some(endpoints) = endpoints_from_env() {
        return Ok((None, endpoints));
    }
    println!("starting an embedded etcd…");
    let etcd = coord_testkit::Etcd::start()
        .await
        .map_err(|e| anyhow::anyhow!(e).context("starting the embedded etcd"))?;
    let endpoints = etcd.endpoints();
    Ok((Some(etcd), endpoints))
}

/// Splits a comma-separated endpoint list, dropping empty entries.
pub fn parse_endpoints(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
