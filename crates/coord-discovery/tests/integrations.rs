//! The tower and tonic integrations balance real requests across the live instances only.
#![cfg(all(feature = "tower", feature = "tonic"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coord_core::{Client, ClientConfig, Session};
use coord_discovery::integrations::tonic::{balance_channel, http_endpoint};
use coord_discovery::integrations::tower::ServiceDiscover;
use coord_discovery::service::{Discovery, Instance, Registration, ServiceSet, register};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceExt};

const BOUND: Duration = Duration::from_secs(30); // failure bound only

async fn shared_client(label: &str) -> Client {
    let etcd = coord_testkit::shared().await.expect("shared etcd");
    ClientConfig::new(etcd.endpoints())
        .with_namespace(coord_testkit::unique_namespace(label))
        .connect()
        .await
        .expect("connect")
}

async fn set_where(
    discovery: &Discovery<()>,
    mut done: impl FnMut(&ServiceSet<()>) -> bool,
) -> Arc<ServiceSet<()>> {
    let mut sets = discovery.receiver();
    let set = tokio::time::timeout(BOUND, sets.wait_for(|set| done(set)))
        .await
        .expect("no such set in time")
        .expect("discovery gone");
    set.clone()
}

/// A TCP server that answers every connection with its name, then closes it.
async fn name_server(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = socket.write_all(name.as_bytes()).await;
            });
        }
    });
    addr
}

/// Asks the server at `addr` its name, over a real connection.
async fn ask(addr: String) -> std::io::Result<String> {
    let mut socket = TcpStream::connect(addr).await?;
    let mut name = String::new();
    socket.read_to_string(&mut name).await?;
    Ok(name)
}

async fn register_all(
    session: &Session,
    service: &str,
    instances: &[(&'static str, String)],
) -> Vec<Registration<()>> {
    let mut registrations = Vec::new();
    for (id, addr) in instances {
        registrations.push(
            register(session, service, Instance::new(*id, addr.clone(), ()))
                .await
                .unwrap(),
        );
    }
    registrations
}

#[tokio::test]
async fn a_tower_balancer_spreads_requests_over_the_registered_instances_only() {
    let client = shared_client("tower").await;
    let session = Session::new(client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push((name, name_server(name).await));
    }
    let mut registrations = register_all(&session, "names", &instances).await;

    let discovery = Discovery::<()>::builder(&client, "names").start().unwrap();
    set_where(&discovery, |set| set.len() == 3).await;
    let discover = ServiceDiscover::new(&discovery, |endpoint| {
        let addr = endpoint.addr.clone();
        Some(tower::service_fn(move |()| ask(addr.clone())))
    });
    let mut balance = tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
        discover,
        tower::load::CompleteOnResponse::default(),
    ));

    let mut served = BTreeMap::<String, usize>::new();
    for _ in 0..90 {
        let name = balance.ready().await.unwrap().call(()).await.unwrap();
        *served.entry(name).or_default() += 1;
    }
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "{served:?}"
    );

    // "b" deregisters (its server keeps running: only discovery can keep requests away from it).
    registrations.remove(1).deregister().await.unwrap();
    set_where(&discovery, |set| set.get("b").is_none()).await;
    let mut served = BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        let name = balance.ready().await.unwrap().call(()).await.unwrap();
        *served.entry(name).or_default() += 1;
    }
    assert_eq!(served.keys().collect::<Vec<_>>(), ["a", "c"], "{served:?}");

    // A new instance is picked up.
    instances.push(("d", name_server("d").await));
    registrations.extend(register_all(&session, "names", &instances[3..]).await);
    set_where(&discovery, |set| set.get("d").is_some()).await;
    let mut seen_d = false;
    for _ in 0..200 {
        if balance.ready().await.unwrap().call(()).await.unwrap() == "d" {
            seen_d = true;
            break;
        }
    }
    assert!(seen_d, "the new instance never served");
}

/// A gRPC health server that reports only `name` as serving.
async fn health_server(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(name, ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _reporter = reporter;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    addr
}

#[tokio::test]
async fn a_tonic_channel_follows_the_registered_instances() {
    let client = shared_client("tonic").await;
    let session = Session::new(client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push((name, health_server(name).await));
    }
    let mut registrations = register_all(&session, "grpc", &instances).await;
    let discovery = Discovery::<()>::builder(&client, "grpc").start().unwrap();
    set_where(&discovery, |set| set.len() == 3).await;
    let (channel, feeder) = balance_channel(&discovery, http_endpoint);
    let mut health = HealthClient::new(channel);

    // Only server "a" knows service "a": a call served elsewhere answers NotFound.
    let mut check = async || {
        tokio::time::timeout(
            BOUND,
            health.check(HealthCheckRequest {
                service: "a".to_owned(),
            }),
        )
        .await
        .expect("call stuck")
    };
    let (mut by_a, mut elsewhere) = (0, 0);
    for _ in 0..90 {
        match check().await {
            Ok(_) => by_a += 1,
            Err(status) if status.code() == tonic::Code::NotFound => elsewhere += 1,
            Err(status) => panic!("{status:?}"),
        }
    }
    assert!(
        by_a > 0 && elsewhere > 0,
        "a: {by_a}, elsewhere: {elsewhere}"
    );

    // "b" and "c" deregister; their servers keep running. Once the channel has the removals, every
    // call goes to "a". The feeder forwards changes asynchronously, so allow a bounded number of
    // calls for them to arrive, then require a long run served by "a" alone.
    for registration in registrations.drain(1..) {
        registration.deregister().await.unwrap();
    }
    set_where(&discovery, |set| set.len() == 1).await;
    let mut run = 0;
    for _ in 0..2000 {
        match check().await {
            Ok(_) => run += 1,
            Err(status) if status.code() == tonic::Code::NotFound => run = 0,
            Err(status) => panic!("{status:?}"),
        }
        if run == 100 {
            break;
        }
    }
    assert_eq!(run, 100, "calls still reach deregistered instances");
    feeder.abort();
}
