//! Feeding a service's instances to [`tonic::transport::Channel::balance_channel`]: a gRPC
//! channel that balances over whatever instances are registered now.

use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tower::discover::Change as TowerChange;

use super::tower::ServiceDiscover;
use crate::service::{Discovery, Endpoint};

/// How many changes may wait for the channel's balancer.
const CAPACITY: usize = 64;

/// A tonic [`Channel`] balancing over the instances of `discovery`, and the task that feeds it
/// (it ends when the channel or the discovery is gone; aborting it freezes the channel's set).
/// `make` turns an instance into a tonic endpoint (timeouts, TLS, …); [`http_endpoint`] is the
/// plain one. Instances come and go as in [`ServiceDiscover`].
///
/// Must be called within a Tokio runtime.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
/// use coord_discovery::integrations::tonic::{balance_channel, http_endpoint};
/// use coord_discovery::service::{Discovery, Status};
///
/// let api = Discovery::<serde_json::Value>::builder(&client, "greeter")
///     .statuses([Status::Healthy])
///     .start()?;
/// let (channel, _feeder) = balance_channel(&api, |e| {
///     http_endpoint(e).map(|ep| ep.timeout(std::time::Duration::from_secs(5)))
/// });
/// // let mut greeter = GreeterClient::new(channel);
/// # let _ = channel; Ok(()) }
/// ```
pub fn balance_channel<T>(
    discovery: &Discovery<T>,
    make: impl FnMut(&Endpoint<T>) -> Option<TonicEndpoint> + Send + 'static,
) -> (Channel, JoinHandle<()>)
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    let (channel, sender) = Channel::balance_channel::<String>(CAPACITY);
    let mut discover = ServiceDiscover::new(discovery, make);
    let feeder = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(Ok(change)) = discover.next().await {
            let change = match change {
                TowerChange::Insert(id, endpoint) => TonicChange::Insert(id, endpoint),
                TowerChange::Remove(id) => TonicChange::Remove(id),
            };
            if sender.send(change).await.is_err() {
                break; // the channel is gone
            }
        }
    });
    (channel, feeder)
}

/// `http://` + the instance's address (kept as it is if it already has a scheme), or `None` if
/// that is not a valid URI.
///
/// ```
/// # fn demo(endpoint: &coord_discovery::service::Endpoint<()>) {
/// let grpc = coord_discovery::integrations::tonic::http_endpoint(endpoint);
/// # let _ = grpc; }
/// ```
pub fn http_endpoint<T>(endpoint: &Endpoint<T>) -> Option<TonicEndpoint> {
    let uri = if endpoint.addr.contains("://") {
        endpoint.addr.clone()
    } else {
        format!("http://{}", endpoint.addr)
    };
    TonicEndpoint::from_shared(uri).ok()
}
