//! The registry actor: registers the client as an instance of `svc` (re-registered by the
//! library after session loss), updates its metadata now and then, and increments the `cfg`
//! config value with compare-and-set. Every client also follows `svc`, `cfg` and the election's
//! leader through caches ([`Caches`]), which must equal etcd once the nemesis stops.

use std::time::Duration;

use coord_core::Client;
use coord_discovery::config::Config;
use coord_discovery::service::{Discovery, Instance, Registration, register};
use coord_leader::LeaderInfo;
use tokio::sync::watch;

use super::{Ctx, session};
use crate::Error;
use crate::history::{OpKind, Outcome};

/// The service's name.
pub const SERVICE: &str = "svc";
/// The config key.
pub const CONFIG: &str = "cfg";

/// What one client process caches: the service's instances, the config value, the leader.
#[derive(Debug)]
pub struct Caches {
    /// The live instances of [`SERVICE`].
    pub discovery: Discovery<u64>,
    /// The value of [`CONFIG`] (default 0).
    pub config: Config<u64>,
    /// The election's leader, from the shared observer.
    pub leader: watch::Receiver<Option<LeaderInfo>>,
}

impl Caches {
    /// Starts the caches on `client`.
    ///
    /// # Errors
    ///
    /// When one cannot start (bad names, no runtime, the observer's first read failing).
    pub async fn start(client: &Client) -> Result<Caches, Error> {
        Ok(Caches {
            discovery: Discovery::builder(client, SERVICE)
                .start()
                .map_err(|e| Error::Setup(e.to_string()))?,
            config: Config::new(client, CONFIG, 0u64).map_err(|e| Error::Setup(e.to_string()))?,
            leader: coord_leader::observe(client, super::election::NAME)
                .await
                .map_err(|e| Error::Setup(e.to_string()))?,
        })
    }
}

/// Runs until stopped; returns the registration (to be checked and deregistered).
pub async fn run(mut ctx: Ctx) -> Option<Registration<u64>> {
    let registration = loop {
        let session = session(&mut ctx).await?;
        let instance = Instance::new(
            format!("c{}", ctx.client()),
            format!("127.0.0.1:{}", 10_000 + ctx.client()),
            0u64,
        );
        match register(&session, SERVICE, instance).await {
            Ok(registration) => break registration,
            Err(e) => {
                tracing::debug!(client = ctx.client(), error = %e, "register");
                if !ctx.work(Duration::from_millis(200)).await {
                    return None;
                }
            }
        }
    };
    let config = match Config::new(&ctx.node.client, CONFIG, 0u64) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "config");
            return Some(registration);
        }
    };
    let mut generation = 0u64;
    loop {
        let pace = ctx
            .rng
            .duration(Duration::from_millis(100), Duration::from_millis(700));
        if !ctx.work(pace).await {
            break;
        }
        if ctx.rng.chance(0.5) {
            generation += 1;
            match registration.update(generation).await {
                Ok(()) => {
                    ctx.history
                        .op(ctx.client(), OpKind::RegistrationUpdate, Outcome::Ok, None)
                }
                Err(e) => ctx
                    .history
                    .failed(ctx.client(), OpKind::RegistrationUpdate, None, &e),
            }
        } else {
            match config.update(|n| n + 1).await {
                Ok(_) => ctx
                    .history
                    .op(ctx.client(), OpKind::ConfigUpdate, Outcome::Ok, None),
                Err(e) => ctx
                    .history
                    .failed(ctx.client(), OpKind::ConfigUpdate, None, &e),
            }
        }
    }
    Some(registration)
}
