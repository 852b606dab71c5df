//! The FleetLock contract end to end: real HTTP to the server, real etcd behind it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::time::Duration;

use coord_core::etcd_client::GetOptions;
use coord_core::{Client, ClientConfig};
use coord_reboot::{Config, GroupName, Server};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Failure bound for waits on events; never a timing assertion.
const BOUND: Duration = Duration::from_secs(20);

/// A server serving on a loopback port, and what a test needs around it.
struct Running {
    server: Server,
    /// The base URL as Zincati takes it: with a trailing '/'.
    base: Url,
    /// A client of the same etcd namespace, for looking behind the server's back.
    etcd: Client,
    http: reqwest::Client,
}

fn config_text(endpoints: &[String], namespace: &str, rest: &str) -> String {
    format!(
        "[server]\nrequest_timeout = \"3s\"\nmax_body_bytes = 1024\n\
         [etcd]\nendpoints = {endpoints:?}\nnamespace = {namespace:?}\n{rest}"
    )
}

async fn serve(server: Server) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server.serve(listener, std::future::pending()));
    Url::parse(&format!("http://{addr}/")).unwrap()
}

async fn start_on(endpoints: &[String], namespace: &str, groups: &str) -> Running {
    let config = Config::from_toml(&config_text(endpoints, namespace, groups)).unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = serve(server.clone()).await;
    let etcd = ClientConfig::new(endpoints.to_vec())
        .with_namespace(namespace)
        .connect()
        .await
        .unwrap();
    Running {
        server,
        base,
        etcd,
        http: reqwest::Client::new(),
    }
}

/// A server on the shared etcd, in a namespace of its own.
async fn start(label: &str, groups: &str) -> Running {
    let etcd = coord_testkit::shared().await.unwrap();
    start_on(
        &etcd.endpoints(),
        &coord_testkit::unique_namespace(label),
        groups,
    )
    .await
}

/// The body Zincati sends: pretty-printed, no Content-Type.
fn body(id: &str, group: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "client_params": { "id": id, "group": group }
    }))
    .unwrap()
}

impl Running {
    /// A FleetLock request the way Zincati makes it: `base.join("v1/…")`, POST, the header.
    async fn call(&self, path: &str, id: &str, group: &str) -> (StatusCode, String) {
        let response = self
            .http
            .post(self.base.join(path).unwrap())
            .header("fleet-lock-protocol", "true")
            .body(body(id, group))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn lock(&self, id: &str, group: &str) -> (StatusCode, String) {
        self.call("v1/pre-reboot", id, group).await
    }

    async fn unlock(&self, id: &str, group: &str) -> (StatusCode, String) {
        self.call("v1/steady-state", id, group).await
    }

    async fn holders(&self, group: &str) -> Vec<String> {
        let group = GroupName::new(group).unwrap();
        let status = self.server.groups().status(&group).await.unwrap();
        status.holders.into_iter().map(|h| h.id).collect()
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(self.base.join(path).unwrap())
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

/// The `kind` of an error body, checking that it is the `{kind, value}` object.
fn kind(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let kind = value["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no kind: {body}"));
    let text = value["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no value: {body}"));
    assert!(!kind.is_empty() && !text.is_empty(), "{body}");
    kind.to_owned()
}

#[tokio::test]
async fn pre_reboot_takes_a_slot_and_steady_state_gives_it_back() {
    let fleet = start("fl_basic", "[groups.default]\nslots = 1\n").await;

    assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);
    assert_eq!(fleet.holders("default").await, ["node-a"]);

    let (status, body) = fleet.lock("node-b", "default").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(kind(&body), "failed_lock_semaphore_full");
    assert_eq!(fleet.holders("default").await, ["node-a"]);

    assert_eq!(fleet.unlock("node-a", "default").await.0, StatusCode::OK);
    assert!(fleet.holders("default").await.is_empty());
    assert_eq!(fleet.lock("node-b", "default").await.0, StatusCode::OK);
    assert_eq!(fleet.holders("default").await, ["node-b"]);
}

#[tokio::test]
async fn lock_and_unlock_are_recursive_and_idempotent() {
    let fleet = start("fl_idempotent", "[groups.default]\nslots = 2\n").await;
    let group = GroupName::new("default").unwrap();

    assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);
    let token = fleet.server.groups().status(&group).await.unwrap().holders[0].token;
    // Zincati retries pre-reboot until it reboots: a holder gets its own slot again.
    for _ in 0..3 {
        assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);
    }
    let status = fleet.server.groups().status(&group).await.unwrap();
    assert_eq!(status.holders.len(), 1, "one id, one slot");
    assert_eq!(
        status.holders[0].token, token,
        "the same slot, not a new one"
    );

    // A holder re-locking a full group still succeeds.
    assert_eq!(fleet.lock("node-b", "default").await.0, StatusCode::OK);
    assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);

    // Steady-state on every boot: unlocking what is not held succeeds.
    for _ in 0..2 {
        assert_eq!(fleet.unlock("node-a", "default").await.0, StatusCode::OK);
    }
    assert_eq!(
        fleet.unlock("never-locked", "default").await.0,
        StatusCode::OK
    );
    assert_eq!(fleet.holders("default").await, ["node-b"]);
}

#[tokio::test]
async fn holders_record_when_they_took_the_slot_and_their_token() {
    let fleet = start("fl_record", "[groups.default]\nslots = 2\n").await;
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    fleet.lock("node-a", "default").await;
    let status = fleet
        .server
        .groups()
        .status(&GroupName::new("default").unwrap())
        .await
        .unwrap();
    assert_eq!(status.slots, 2);
    let holder = &status.holders[0];
    assert_eq!(holder.id, "node-a");
    assert!(holder.since >= before, "{:?}", holder.since);
    assert!(holder.token > 0);
    assert!(holder.durable);
    assert_eq!(holder.expires_in, None);
}

#[tokio::test]
async fn a_base_url_with_a_trailing_slash_works_as_zincati_joins_it() {
    let fleet = start("fl_zincati", "[groups.default]\nslots = 1\n").await;
    // Zincati: `base_url.join("v1/pre-reboot")`. With the trailing '/', the path is kept.
    assert_eq!(
        fleet.base.join("v1/pre-reboot").unwrap().path(),
        "/v1/pre-reboot"
    );
    assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);

    // Without it, a path segment of the base is dropped: the server says where to look.
    let mut base = fleet.base.clone();
    base.set_path("/fleetlock");
    let response = fleet
        .http
        .post(base.join("v1/pre-reboot").unwrap())
        .header("fleet-lock-protocol", "true")
        .body(body("node-a", "default"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "/fleetlock + v1/… = /v1/…"
    );
    let (status, body) = {
        let response = fleet
            .http
            .post(fleet.base.join("fleetlock/v1/pre-reboot").unwrap())
            .header("fleet-lock-protocol", "true")
            .body(self::body("node-a", "default"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(kind(&body), "not_found");
}

#[tokio::test]
async fn a_stale_holder_with_a_ttl_expires() {
    let fleet = start(
        "fl_ttl",
        "[groups.default]\nslots = 1\nholder_ttl = \"2s\"\n",
    )
    .await;
    assert_eq!(fleet.lock("node-gone", "default").await.0, StatusCode::OK);
    let status = fleet
        .server
        .groups()
        .status(&GroupName::new("default").unwrap())
        .await
        .unwrap();
    let expires_in = status.holders[0].expires_in.expect("a TTL");
    assert!(expires_in <= Duration::from_secs(2), "{expires_in:?}");
    assert_eq!(
        fleet.lock("node-b", "default").await.0,
        StatusCode::CONFLICT
    );

    // node-gone never comes back: its slot's lease runs out and etcd deletes the key.
    let prefix = fleet.etcd.key("reboot/default/");
    let read = fleet
        .etcd
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(read.kvs().len(), 1);
    let key = read.kvs()[0].key().to_vec();
    let from = read.header().unwrap().revision() + 1;
    tokio::time::timeout(
        BOUND,
        coord_core::watch::wait_deleted(&fleet.etcd, key, from),
    )
    .await
    .expect("the stale holder never expired")
    .unwrap();

    assert_eq!(fleet.lock("node-b", "default").await.0, StatusCode::OK);
    assert_eq!(fleet.holders("default").await, ["node-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_racing_for_the_last_slot_exactly_one_wins() {
    let etcd = coord_testkit::shared().await.unwrap();
    let namespace = coord_testkit::unique_namespace("fl_replicas");
    let groups = "[groups.default]\nslots = 2\n";
    // Two servers, each with its own etcd connection: nothing shared but etcd.
    let a = start_on(&etcd.endpoints(), &namespace, groups).await;
    let b = start_on(&etcd.endpoints(), &namespace, groups).await;

    assert_eq!(a.lock("node-0", "default").await.0, StatusCode::OK);
    for round in 0..10 {
        let (x, y) = (format!("x-{round}"), format!("y-{round}"));
        let (on_a, on_b) = tokio::join!(a.lock(&x, "default"), b.lock(&y, "default"));
        let mut statuses = [on_a.0, on_b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {on_a:?} {on_b:?}"
        );
        let winner = if on_a.0 == StatusCode::OK { &x } else { &y };
        let mut holders = a.holders("default").await;
        holders.sort();
        assert_eq!(holders, ["node-0", winner.as_str()], "round {round}");
        // Released through the other replica: they share everything through etcd.
        assert_eq!(b.unlock(winner, "default").await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn configured_slots_are_applied_at_start_and_on_reload() {
    let etcd = coord_testkit::shared().await.unwrap();
    let namespace = coord_testkit::unique_namespace("fl_slots");
    let group = GroupName::new("default").unwrap();
    let fleet = start_on(
        &etcd.endpoints(),
        &namespace,
        "[groups.default]\nslots = 2\n",
    )
    .await;
    assert_eq!(fleet.server.groups().slots(&group).await.unwrap(), 2);

    // Someone stores another value; a restart with the same file puts the configured one back.
    fleet.server.groups().set_slots(&group, 7).await.unwrap();
    let again = start_on(
        &etcd.endpoints(),
        &namespace,
        "[groups.default]\nslots = 2\n",
    )
    .await;
    assert_eq!(again.server.groups().slots(&group).await.unwrap(), 2);

    // A reload writes the new slots and serves the new groups.
    let (status, body) = fleet.lock("node-a", "new").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(kind(&body), "unknown_group");
    let reloaded = Config::from_toml(&config_text(
        &etcd.endpoints(),
        &namespace,
        "[groups.default]\nslots = 3\n[groups.new]\nslots = 1\n",
    ))
    .unwrap();
    fleet.server.reload(&reloaded).await.unwrap();
    assert_eq!(fleet.server.groups().slots(&group).await.unwrap(), 3);
    assert_eq!(fleet.lock("node-a", "new").await.0, StatusCode::OK);

    // A group without `slots` leaves the stored value to the operator.
    fleet.server.groups().set_slots(&group, 5).await.unwrap();
    let unmanaged = Config::from_toml(&config_text(
        &etcd.endpoints(),
        &namespace,
        "[groups.default]\n",
    ))
    .unwrap();
    fleet.server.reload(&unmanaged).await.unwrap();
    assert_eq!(fleet.server.groups().slots(&group).await.unwrap(), 5);
}

#[tokio::test]
async fn metrics_report_holders_slots_and_requests_by_kind() {
    let fleet = start(
        "fl_metrics",
        "[groups.default]\nslots = 1\n[groups.big]\nslots = 4\n",
    )
    .await;
    fleet.lock("node-a", "default").await;
    fleet.lock("node-b", "default").await;
    fleet.unlock("node-c", "default").await;

    let (status, text) = fleet.get("metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "coord_reboot_group_holders{group=\"default\"} 1",
        "coord_reboot_group_slots{group=\"default\"} 1",
        "coord_reboot_group_holders{group=\"big\"} 0",
        "coord_reboot_group_slots{group=\"big\"} 4",
        "coord_reboot_etcd_up 1",
        "coord_reboot_requests_total{operation=\"pre_reboot\",outcome=\"ok\"} 1",
        "coord_reboot_requests_total{operation=\"pre_reboot\",outcome=\"failed_lock_semaphore_full\"} 1",
        "coord_reboot_requests_total{operation=\"steady_state\",outcome=\"ok\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }

    assert_eq!(fleet.get("healthz").await.0, StatusCode::OK);
    assert_eq!(fleet.get("readyz").await.0, StatusCode::OK);
}

/// Sends raw bytes and returns the status code and body of the answer (the connection is closed
/// by the request's `Connection: close`).
async fn raw(base: &Url, request: &[u8]) -> (u16, String) {
    let addr = format!(
        "{}:{}",
        base.host_str().unwrap(),
        base.port_or_known_default().unwrap()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {answer}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn bad_input_gets_a_specific_4xx_with_a_json_kind_and_writes_nothing() {
    // A server of its own: "nothing written" is checked on etcd's revision.
    let etcd = coord_testkit::Etcd::start().await.unwrap();
    let fleet = start_on(&etcd.endpoints(), "ns/", "[groups.default]\nslots = 1\n").await;
    let revision = || async {
        fleet
            .etcd
            .get("any", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    };
    let before = revision().await;
    let url = |path: &str| fleet.base.join(path).unwrap();
    let good = body("node-a", "default");

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body("{\"client_params\":"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "no client_params",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body("{\"id\":\"a\",\"group\":\"default\"}"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "missing header",
            fleet.http.post(url("v1/pre-reboot")).body(good.clone()),
            StatusCode::BAD_REQUEST,
            "invalid_protocol_header",
        ),
        (
            "header not true",
            fleet
                .http
                .post(url("v1/steady-state"))
                .header("fleet-lock-protocol", "yes")
                .body(good.clone()),
            StatusCode::BAD_REQUEST,
            "invalid_protocol_header",
        ),
        (
            "GET",
            fleet
                .http
                .get(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "PUT",
            fleet
                .http
                .request(Method::PUT, url("v1/steady-state"))
                .header("fleet-lock-protocol", "true")
                .body(good.clone()),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "oversized body",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body(body(&"x".repeat(2000), "default")),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "empty id",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body(body("", "default")),
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
        ),
        (
            "id with a slash",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body(body("a/b", "default")),
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
        ),
        (
            "bad group",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body(body("node-a", "work_ers")),
            StatusCode::BAD_REQUEST,
            "invalid_group",
        ),
        (
            "empty group",
            fleet
                .http
                .post(url("v1/steady-state"))
                .header("fleet-lock-protocol", "true")
                .body(body("node-a", "")),
            StatusCode::BAD_REQUEST,
            "invalid_group",
        ),
        (
            "unknown group",
            fleet
                .http
                .post(url("v1/pre-reboot"))
                .header("fleet-lock-protocol", "true")
                .body(body("node-a", "elsewhere")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_group",
        ),
        (
            "unknown path",
            fleet
                .http
                .post(url("v1/reboot"))
                .header("fleet-lock-protocol", "true")
                .body(good.clone()),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (what, request, status, expected) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{what}"
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert_eq!(response.headers()["allow"], "POST", "{what}");
        }
        assert_eq!(kind(&response.text().await.unwrap()), expected, "{what}");
    }

    // A declared length over the limit is refused before the body is read.
    let (status, body) = raw(
        &fleet.base,
        b"POST /v1/pre-reboot HTTP/1.1\r\nhost: x\r\nfleet-lock-protocol: true\r\n\
          content-length: 1000000\r\nconnection: close\r\n\r\n{",
    )
    .await;
    assert_eq!((status, kind(&body).as_str()), (413, "payload_too_large"));

    assert_eq!(revision().await, before, "a refused request wrote to etcd");
    assert!(fleet.holders("default").await.is_empty());
}

/// A server with `request_timeout = "1s"` and one group of one slot, in a namespace of its own.
async fn serve_with_one_second_timeout(label: &str) -> Url {
    let etcd = coord_testkit::shared().await.unwrap();
    let namespace = coord_testkit::unique_namespace(label);
    let config = Config::from_toml(&format!(
        "[server]\nrequest_timeout = \"1s\"\n[etcd]\nendpoints = {:?}\nnamespace = {namespace:?}\n\
         [groups.default]\nslots = 1\n",
        etcd.endpoints()
    ))
    .unwrap();
    serve(Server::start(&config).await.unwrap()).await
}

#[tokio::test]
async fn a_body_that_never_arrives_times_out_with_408() {
    let base = serve_with_one_second_timeout("fl_slow_body").await;
    // 100 bytes announced, 1 sent, the connection kept open.
    let (status, body) = raw(
        &base,
        b"POST /v1/pre-reboot HTTP/1.1\r\nhost: x\r\nfleet-lock-protocol: true\r\n\
          content-length: 100\r\nconnection: close\r\n\r\n{",
    )
    .await;
    assert_eq!((status, kind(&body).as_str()), (408, "request_timeout"));
}

/// A client that never finishes its headers (a slow-headers attack, or a stalled peer) is
/// disconnected after the request timeout instead of holding the connection for ever; the server
/// goes on answering others.
#[tokio::test]
async fn headers_that_never_end_get_the_connection_closed() {
    let base = serve_with_one_second_timeout("fl_slow_headers").await;
    let addr = format!("{}:{}", base.host_str().unwrap(), base.port().unwrap());
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(b"POST /v1/pre-reboot HTTP/1.1\r\nhost: x\r\nfleet-lock-protocol: true\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled connection was never closed")
        .ok();
    let (status, _) = raw(
        &base,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn etcd_down_is_a_503_and_not_ready() {
    let mut etcd = coord_testkit::Etcd::start().await.unwrap();
    let fleet = start_on(&etcd.endpoints(), "ns/", "[groups.default]\nslots = 1\n").await;
    assert_eq!(fleet.lock("node-a", "default").await.0, StatusCode::OK);

    etcd.kill();
    for path in ["v1/pre-reboot", "v1/steady-state"] {
        let (status, body) = fleet.call(path, "node-b", "default").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(kind(&body), "etcd_unavailable");
    }
    let (status, body) = fleet.get("readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(kind(&body), "etcd_unavailable");
    let (status, text) = fleet.get("metrics").await;
    assert_eq!(status, StatusCode::OK, "metrics are served without etcd");
    assert!(
        text.lines().any(|l| l == "coord_reboot_etcd_up 0"),
        "{text}"
    );
    assert_eq!(fleet.get("healthz").await.0, StatusCode::OK);

    // Back up: the same server serves again (a new session if the old one was lost).
    etcd.restart().await.unwrap();
    let lock = async {
        loop {
            match fleet.lock("node-a", "default").await {
                (StatusCode::SERVICE_UNAVAILABLE, _) => continue,
                other => return other,
            }
        }
    };
    let (status, body) = tokio::time::timeout(BOUND, lock).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn etcd_refusing_the_operation_is_a_500() {
    let etcd = coord_testkit::Etcd::builder()
        .root_password("root-secret")
        .start()
        .await
        .unwrap();
    // A user etcd knows but lets touch no key.
    let mut root = etcd.client().await.unwrap();
    root.user_add("reboot", "secret", None).await.unwrap();
    // No `slots`: the server starts without writing.
    let text = format!(
        "[server]\nrequest_timeout = \"3s\"\n[etcd]\nendpoints = {:?}\nusername = \"reboot\"\n\
         password = \"secret\"\n[groups.default]\n",
        etcd.endpoints()
    );
    let server = Server::start(&Config::from_toml(&text).unwrap())
        .await
        .unwrap();
    let base = serve(server).await;
    let response = reqwest::Client::new()
        .post(base.join("v1/pre-reboot").unwrap())
        .header("fleet-lock-protocol", "true")
        .body(body("node-a", "default"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let text = response.text().await.unwrap();
    assert_eq!(kind(&text), "etcd_error", "{text}");
    assert!(text.contains("permission denied"), "{text}");
}
