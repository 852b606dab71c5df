//! A [`tower::discover::Discover`] of a service's instances, for `tower::balance` and anything
//! else that takes one.

use std::collections::HashSet;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tower::discover::Change as TowerChange;

use crate::service::{Change, Discovery, Endpoint, ServiceError};

type MakeService<T, S> = Box<dyn FnMut(&Endpoint<T>) -> Option<S> + Send>;

/// The instances of a [`Discovery`] as a stream of [`tower::discover::Change`]s keyed by
/// instance id, which makes it a [`tower::discover::Discover`]: each instance that appears (or
/// changes) is turned into a service by your function, each one that goes is removed.
///
/// - An instance whose value changes (status, metadata, address) is inserted again under the same
///   id: tower's balancers replace the old service.
/// - When your function returns `None` (an address it cannot use), the instance is left out —
///   and removed, if an earlier value of it was inserted.
/// - It follows the discovery's filters: an instance that stops passing them is removed.
/// - The stream yields [`ServiceError::Shutdown`] once and ends if the discovery's task is gone.
///
/// ```no_run
/// # async fn demo(client: coord_core::Client) -> Result<(), coord_discovery::service::ServiceError> {
/// use coord_discovery::integrations::tower::ServiceDiscover;
/// use coord_discovery::service::{Discovery, Status};
///
/// let api = Discovery::<serde_json::Value>::builder(&client, "api")
///     .statuses([Status::Healthy])
///     .start()?;
/// // A service per instance: here one that just answers with the address.
/// let discover = ServiceDiscover::new(&api, |endpoint| {
///     let addr = endpoint.addr.clone();
///     Some(tower::service_fn(move |_: ()| {
///         let addr = addr.clone();
///         async move { Ok::<_, std::convert::Infallible>(addr) }
///     }))
/// });
/// // e.g. tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
/// //     discover, tower::load::CompleteOnResponse::default()))
/// # let _ = discover; Ok(()) }
/// ```
pub struct ServiceDiscover<T, S> {
    changes: Pin<Box<dyn Stream<Item = Change<T>> + Send>>,
    make: MakeService<T, S>,
    inserted: HashSet<String>,
    ended: bool,
}

impl<T, S> fmt::Debug for ServiceDiscover<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDiscover")
            .field("inserted", &self.inserted.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl<T, S> ServiceDiscover<T, S>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    /// Follows `discovery` from its current set (every instance in it comes first as an
    /// insert), making a service of each instance with `make`.
    pub fn new(
        discovery: &Discovery<T>,
        make: impl FnMut(&Endpoint<T>) -> Option<S> + Send + 'static,
    ) -> ServiceDiscover<T, S> {
        ServiceDiscover {
            changes: Box::pin(discovery.changes().into_stream()),
            make: Box::new(make),
            inserted: HashSet::new(),
            ended: false,
        }
    }
}

impl<T, S> ServiceDiscover<T, S> {
    /// The tower change for one of ours, if any.
    fn translate(&mut self, change: Change<T>) -> Option<TowerChange<String, S>> {
        let (endpoint, gone) = match change {
            Change::Insert(endpoint) | Change::Update { new: endpoint, .. } => (endpoint, false),
            Change::Remove(endpoint) => (endpoint, true),
        };
        if !gone {
            if let Some(service) = (self.make)(&endpoint) {
                self.inserted.insert(endpoint.id.clone());
                return Some(TowerChange::Insert(endpoint.id.clone(), service));
            }
        }
        self.inserted
            .remove(&endpoint.id)
            .then(|| TowerChange::Remove(endpoint.id.clone()))
    }
}

impl<T, S> Stream for ServiceDiscover<T, S> {
    type Item = Result<TowerChange<String, S>, ServiceError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.changes.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ServiceError::Shutdown)));
                }
                Poll::Ready(Some(change)) => {
                    if let Some(change) = this.translate(change) {
                        return Poll::Ready(Some(Ok(change)));
                    }
                }
            }
        }
    }
}
