//! Adapters from a [`Discovery`](crate::service::Discovery) to the load balancers of the tower
//! ecosystem: [`tower::Discover`](self::tower) (feature `tower`) and
//! [`tonic`'s `balance_channel`](self::tonic) (feature `tonic`).

#[cfg(feature = "tonic")]
pub mod tonic;
#[cfg(feature = "tower")]
pub mod tower;
