//! `coordctl services`: instances registered through coord-discovery's `register`, listed and
//! followed through their insertions, updates and removals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

mod common;

use std::time::Duration;

use common::Ctl;
use coord_core::Session;
use coord_discovery::service::{Instance, Status, register};
use rustix::process::Signal;
use serde_json::json;

#[tokio::test]
async fn registered_instances_are_listed_with_their_metadata_and_filtered_by_status() {
    let ctl = Ctl::new("services_list").await;
    let session = Session::new(ctl.client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let a = register(
        &session,
        "api",
        Instance::new("api-1", "10.0.0.1:8080", json!({"grpc": true}))
            .with_zone("eu-1")
            .with_weight(200),
    )
    .await
    .unwrap();
    let b = register(
        &session,
        "api",
        Instance::new("api-2", "10.0.0.2:8080", json!(null)).with_status(Status::Draining),
    )
    .await
    .unwrap();

    let list = ctl.run(&["services", "list", "api", "-o", "json"]).await;
    assert_eq!(list.code, 0, "{}", list.stderr);
    let list = list.json();
    let instances = list["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[0]["id"], "api-1");
    assert_eq!(instances[0]["addr"], "10.0.0.1:8080");
    assert_eq!(instances[0]["zone"], "eu-1");
    assert_eq!(instances[0]["weight"], 200);
    assert_eq!(instances[0]["metadata"], json!({"grpc": true}));
    assert_eq!(instances[1]["status"], "draining");

    let healthy = ctl
        .run(&[
            "services", "list", "api", "--status", "healthy", "-o", "json",
        ])
        .await
        .json();
    assert_eq!(healthy["instances"].as_array().unwrap().len(), 1);

    let human = ctl.run(&["services", "list", "api"]).await;
    assert!(
        human.stdout.contains("service api: 2 instance(s)"),
        "{}",
        human.stdout
    );
    assert!(human.stdout.contains("10.0.0.2:8080"), "{}", human.stdout);
    a.deregister().await.unwrap();
    b.deregister().await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn watch_prints_insertions_updates_and_removals() {
    let ctl = Ctl::new("services_watch").await;
    let session = Session::new(ctl.client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let a = register(
        &session,
        "api",
        Instance::new("api-1", "10.0.0.1:8080", json!({})),
    )
    .await
    .unwrap();
    let mut watch = ctl.spawn(&["services", "watch", "api", "-o", "json"]);
    let first = watch.json().await;
    assert_eq!(
        (&first["change"], &first["instance"]["id"]),
        (&json!("insert"), &json!("api-1"))
    );

    let b = register(
        &session,
        "api",
        Instance::new("api-2", "10.0.0.2:8080", json!({})),
    )
    .await
    .unwrap();
    let inserted = watch.json().await;
    assert_eq!(
        (&inserted["change"], &inserted["instance"]["id"]),
        (&json!("insert"), &json!("api-2"))
    );

    a.set_status(Status::Draining).await.unwrap();
    let updated = watch.json().await;
    assert_eq!(updated["change"], "update");
    assert_eq!(updated["instance"]["status"], "draining");

    b.deregister().await.unwrap();
    let removed = watch.json().await;
    assert_eq!(
        (&removed["change"], &removed["instance"]["id"]),
        (&json!("remove"), &json!("api-2"))
    );

    watch.signal(Signal::TERM);
    assert_eq!(watch.exit_code().await, 0);
    a.deregister().await.unwrap();
    session.close().await.unwrap();
}

#[tokio::test]
async fn the_human_watch_marks_changes_with_signs() {
    let ctl = Ctl::new("services_watch_human").await;
    let session = Session::new(ctl.client.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let mut watch = ctl.spawn(&["services", "watch", "api"]);
    // The watch has read the (empty) service once its own process is up; registering now
    // is seen either in that first read or as a change: both print an insertion.
    let a = register(
        &session,
        "api",
        Instance::new("api-1", "10.0.0.1:8080", json!({})),
    )
    .await
    .unwrap();
    assert_eq!(watch.line().await, "+ api-1 10.0.0.1:8080 healthy");
    a.deregister().await.unwrap();
    assert_eq!(watch.line().await, "- api-1 10.0.0.1:8080 healthy");
    watch.signal(Signal::INT);
    assert_eq!(watch.exit_code().await, 0);
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_bad_service_name_is_a_usage_error() {
    let ctl = Ctl::new("services_bad").await;
    let run = ctl.run(&["services", "list", "api/"]).await;
    assert_eq!(run.code, 2, "{}", run.stderr);
}
