//! The node agent end to end: a real FleetLock server (or etcd directly) over a real etcd,
//! harmless commands for the signal, hook, health and reboot, and a "reboot" simulated by
//! starting a fresh agent (or process).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests: failing loudly is the point

use std::path::{Path, PathBuf};
use std::time::Duration;

use coord_reboot::agent::{Agent, AgentConfig, Outcome, Phase};
use coord_reboot::{Config, GroupName, HolderId, Server};
use tokio::sync::watch;

/// Failure bound for waits on events; never a timing assertion.
const BOUND: Duration = Duration::from_secs(30);

const BIN: &str = env!("CARGO_BIN_EXE_coord-reboot");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    FleetLock,
    Etcd,
}

/// A FleetLock server on a loopback port over the shared etcd, in a namespace of its own, and a
/// directory for the node's files.
struct Fleet {
    server: Server,
    base: String,
    endpoints: Vec<String>,
    namespace: String,
    dir: tempfile::TempDir,
}

impl Fleet {
    async fn start(label: &str, slots: u32) -> Fleet {
        let etcd = coord_testkit::shared().await.unwrap();
        let endpoints = etcd.endpoints();
        let namespace = coord_testkit::unique_namespace(label);
        let config = Config::from_toml(&format!(
            "[etcd]\nendpoints = {endpoints:?}\nnamespace = {namespace:?}\n\
             [groups.workers]\nslots = {slots}\n"
        ))
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(server.clone().serve(listener, std::future::pending()));
        Fleet {
            server,
            base,
            endpoints,
            namespace,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The reboot signal file of node `id` (created by [`needs_reboot`](Self::needs_reboot)).
    fn signal(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}.reboot-required"))
    }

    fn needs_reboot(&self, id: &str) {
        std::fs::write(self.signal(id), b"").unwrap();
    }

    /// The file the node's reboot command touches.
    fn marker(&self, id: &str) -> PathBuf {
        self.path(&format!("{id}.rebooted"))
    }

    /// An agent configuration for node `id` of `workers`. Its reboot command clears the signal
    /// (as a reboot clears /run) and touches the marker. `extra` goes into `[agent]`.
    fn config(&self, id: &str, via: Via, extra: &str) -> String {
        let backend = match via {
            Via::FleetLock => format!("[agent.fleetlock]\nurl = {:?}\n", self.base),
            Via::Etcd => format!(
                "[etcd]\nendpoints = {:?}\nnamespace = {:?}\n",
                self.endpoints, self.namespace
            ),
        };
        let signal = self.signal(id).display().to_string();
        let marker = self.marker(id).display().to_string();
        format!(
            "[agent]\nid = {id:?}\ngroup = \"workers\"\nsignal_file = {signal:?}\n\
             check_interval = \"100ms\"\nretry_min = \"50ms\"\nretry_max = \"300ms\"\n\
             pre_reboot = \"test \\\"$COORD_REBOOT_ID\\\" = {id}\"\n\
             reboot = \"rm -f '{signal}' && touch '{marker}'\"\n{extra}\n{backend}"
        )
    }

    async fn agent(&self, id: &str, via: Via, extra: &str) -> Agent {
        let config = AgentConfig::from_toml(&self.config(id, via, extra)).unwrap();
        Agent::connect(&config).await.unwrap()
    }

    async fn holders(&self) -> Vec<String> {
        let group = GroupName::new("workers").unwrap();
        let status = self.server.groups().status(&group).await.unwrap();
        status.holders.into_iter().map(|h| h.id).collect()
    }

    async fn take(&self, id: &str) {
        let group = GroupName::new("workers").unwrap();
        let id = HolderId::new(id).unwrap();
        self.server.groups().lock(&group, &id, None).await.unwrap();
    }

    async fn give_back(&self, id: &str) {
        let group = GroupName::new("workers").unwrap();
        let id = HolderId::new(id).unwrap();
        self.server.groups().unlock(&group, &id).await.unwrap();
    }
}

async fn wait_for(
    phases: &mut watch::Receiver<Phase>,
    what: &str,
    until: impl FnMut(&Phase) -> bool,
) {
    let reached = tokio::time::timeout(BOUND, phases.wait_for(until))
        .await
        .map(|r| r.is_ok());
    assert!(
        matches!(reached, Ok(true)),
        "the agent never got to {what}: {:?}",
        *phases.borrow()
    );
}

async fn takes_a_slot_reboots_and_releases_it_after_boot(via: Via, label: &str) {
    let fleet = Fleet::start(label, 1).await;
    fleet.needs_reboot("node-a");

    // Run 1: the signal is there, the window (none configured) is open, a slot is free.
    let first = fleet.agent("node-a", via, "").await;
    let outcome = tokio::time::timeout(BOUND, first.run())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Rebooted);
    assert!(fleet.marker("node-a").exists(), "the reboot command ran");
    assert_eq!(
        fleet.holders().await,
        ["node-a"],
        "the slot survives the reboot"
    );

    // Run 2, the boot: healthy, so the slot goes back before anything else.
    let booted = fleet.agent("node-a", via, "health = \"true\"").await;
    let mut phases = booted.subscribe();
    let running = tokio::spawn(async move { booted.run().await });
    wait_for(&mut phases, "waiting for the next signal", |p| {
        *p == Phase::WaitingForSignal
    })
    .await;
    assert!(fleet.holders().await.is_empty(), "released after boot");
    running.abort();
}

#[tokio::test]
async fn an_agent_reboots_with_a_fleetlock_slot_and_releases_it_after_boot() {
    takes_a_slot_reboots_and_releases_it_after_boot(Via::FleetLock, "agent_flow_fl").await;
}

#[tokio::test]
async fn an_agent_reboots_with_an_etcd_slot_and_releases_it_after_boot() {
    takes_a_slot_reboots_and_releases_it_after_boot(Via::Etcd, "agent_flow_etcd").await;
}

async fn a_failing_health_check_keeps_the_slot(via: Via, label: &str) {
    let fleet = Fleet::start(label, 1).await;
    fleet.take("node-a").await;

    let booted = fleet.agent("node-a", via, "health = \"exit 1\"").await;
    let mut phases = booted.subscribe();
    let running = tokio::spawn(async move { booted.run().await });
    wait_for(
        &mut phases,
        "a second failed health check",
        |p| matches!(p, Phase::CheckingHealth { failures } if *failures >= 2),
    )
    .await;
    assert_eq!(
        fleet.holders().await,
        ["node-a"],
        "unhealthy: the slot stays"
    );
    running.abort();

    let once = fleet
        .agent("node-a", via, "health = \"exit 1\"")
        .await
        .once(true);
    assert_eq!(once.run().await.unwrap(), Outcome::Unhealthy);
    assert_eq!(fleet.holders().await, ["node-a"]);
}

#[tokio::test]
async fn a_failing_health_check_keeps_the_fleetlock_slot() {
    a_failing_health_check_keeps_the_slot(Via::FleetLock, "agent_unhealthy_fl").await;
}

#[tokio::test]
async fn a_failing_health_check_keeps_the_etcd_slot() {
    a_failing_health_check_keeps_the_slot(Via::Etcd, "agent_unhealthy_etcd").await;
}

/// A one-hour UTC window that opens six hours from now.
fn closed_window() -> (String, jiff::Timestamp) {
    let opens = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(6))
        .unwrap();
    let start = opens.to_zoned(jiff::tz::TimeZone::UTC);
    let text = format!(
        "[[agent.windows]]\nstart = \"{:02}:{:02}\"\nlength = \"1h\"\ntime_zone = \"UTC\"\n",
        start.hour(),
        start.minute()
    );
    let opens_at = start
        .with()
        .second(0)
        .subsec_nanosecond(0)
        .build()
        .unwrap()
        .timestamp();
    (text, opens_at)
}

#[tokio::test]
async fn outside_the_window_nothing_is_taken() {
    let fleet = Fleet::start("agent_window", 1).await;
    fleet.needs_reboot("node-a");
    let (window, opens_at) = closed_window();
    // The windows are a table array after [agent]: they go into the agent's text, before the
    // backend section.
    let text = fleet
        .config("node-a", Via::FleetLock, "")
        .replace("[agent.fleetlock]", &format!("{window}[agent.fleetlock]"));

    let once = Agent::connect(&AgentConfig::from_toml(&text).unwrap())
        .await
        .unwrap()
        .once(true);
    assert_eq!(
        once.run().await.unwrap(),
        Outcome::OutsideWindow { opens_at }
    );

    let waiting = Agent::connect(&AgentConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    let mut phases = waiting.subscribe();
    let running = tokio::spawn(async move { waiting.run().await });
    wait_for(&mut phases, "waiting for the window", |p| {
        *p == Phase::WaitingForWindow { opens_at }
    })
    .await;
    assert!(
        fleet.holders().await.is_empty(),
        "no slot outside the window"
    );
    assert!(
        !fleet.marker("node-a").exists(),
        "no reboot outside the window"
    );
    running.abort();
}

#[tokio::test]
async fn a_slot_held_at_boot_is_released_even_outside_the_window() {
    // locksmith kept it until the node's next window (Flatcar#408).
    let fleet = Fleet::start("agent_window_boot", 1).await;
    fleet.take("node-a").await;
    fleet.needs_reboot("node-a");
    let (window, _) = closed_window();
    let text = fleet
        .config("node-a", Via::Etcd, "health = \"true\"")
        .replace("[etcd]", &format!("{window}[etcd]"));
    let agent = Agent::connect(&AgentConfig::from_toml(&text).unwrap())
        .await
        .unwrap()
        .once(true);
    assert!(matches!(
        agent.run().await.unwrap(),
        Outcome::OutsideWindow { .. }
    ));
    assert!(fleet.holders().await.is_empty());
}

async fn a_full_group_waits_for_a_release(via: Via, label: &str) {
    let fleet = Fleet::start(label, 1).await;
    fleet.take("node-b").await;
    fleet.needs_reboot("node-a");

    let agent = fleet.agent("node-a", via, "").await;
    let mut phases = agent.subscribe();
    let running = tokio::spawn(async move { agent.run().await });
    wait_for(
        &mut phases,
        "a refusal",
        |p| matches!(p, Phase::WaitingForSlot { refusals } if *refusals >= 1),
    )
    .await;
    assert_eq!(fleet.holders().await, ["node-b"]);
    assert!(!fleet.marker("node-a").exists());

    fleet.give_back("node-b").await;
    let outcome = tokio::time::timeout(BOUND, running)
        .await
        .expect("the agent did not get the released slot")
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Outcome::Rebooted);
    assert_eq!(fleet.holders().await, ["node-a"]);
    assert!(fleet.marker("node-a").exists());
}

#[tokio::test]
async fn a_full_group_waits_for_a_fleetlock_release() {
    a_full_group_waits_for_a_release(Via::FleetLock, "agent_full_fl").await;
}

#[tokio::test]
async fn a_full_group_waits_for_an_etcd_release() {
    a_full_group_waits_for_a_release(Via::Etcd, "agent_full_etcd").await;
}

#[tokio::test]
async fn a_failing_pre_reboot_hook_gives_the_slot_back_and_does_not_reboot() {
    let fleet = Fleet::start("agent_hook", 1).await;
    fleet.needs_reboot("node-a");
    let text = fleet
        .config("node-a", Via::FleetLock, "")
        .replace("pre_reboot = ", "pre_reboot = \"exit 3\"\n# was: ");
    let agent = Agent::connect(&AgentConfig::from_toml(&text).unwrap())
        .await
        .unwrap();
    let error = agent.run().await.unwrap_err();
    assert!(
        matches!(
            error,
            coord_reboot::agent::AgentError::PreReboot { released: true, .. }
        ),
        "{error:?}"
    );
    assert!(fleet.holders().await.is_empty());
    assert!(!fleet.marker("node-a").exists());
}

#[tokio::test]
async fn without_a_signal_nothing_happens() {
    let fleet = Fleet::start("agent_nosignal", 1).await;
    let agent = fleet.agent("node-a", Via::Etcd, "").await.once(true);
    assert_eq!(agent.run().await.unwrap(), Outcome::NoRebootNeeded);
    assert!(fleet.holders().await.is_empty());
}

#[tokio::test]
async fn a_signal_command_says_whether_a_reboot_is_needed() {
    let fleet = Fleet::start("agent_signal_cmd", 1).await;
    let flag = fleet.path("flag");
    let text = fleet.config("node-a", Via::FleetLock, "").replace(
        "signal_file = ",
        &format!("signal_command = \"test -e '{}'\"\n# was: ", flag.display()),
    );
    let config = AgentConfig::from_toml(&text).unwrap();
    let once = Agent::connect(&config).await.unwrap().once(true);
    assert_eq!(once.run().await.unwrap(), Outcome::NoRebootNeeded);
    std::fs::write(&flag, b"").unwrap();
    let once = Agent::connect(&config).await.unwrap().once(true);
    assert_eq!(once.run().await.unwrap(), Outcome::Rebooted);
    assert_eq!(fleet.holders().await, ["node-a"]);
}

async fn agent_process(config: &Path, once: bool) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(BIN);
    command.arg("agent").arg("--config").arg(config);
    if once {
        command.arg("--once");
    }
    let output = tokio::time::timeout(BOUND, command.kill_on_drop(true).output())
        .await
        .expect("the agent process did not finish")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_agent_process_reboots_and_the_next_process_releases() {
    let fleet = Fleet::start("agent_process", 1).await;
    fleet.needs_reboot("node-a");
    let file = fleet.path("agent.toml");
    std::fs::write(
        &file,
        fleet.config("node-a", Via::FleetLock, "health = \"true\""),
    )
    .unwrap();

    let (code, stdout, stderr) = agent_process(&file, false).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("rebooted"), "{stdout}");
    assert!(fleet.marker("node-a").exists());
    assert_eq!(fleet.holders().await, ["node-a"]);

    // The boot: a fresh process gives the slot back, then finds no signal (the reboot cleared
    // it) and, with --once, exits.
    let (code, stdout, stderr) = agent_process(&file, true).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("no reboot needed"), "{stdout}");
    assert!(fleet.holders().await.is_empty());

    // A full group is EX_TEMPFAIL with --once.
    fleet.take("node-b").await;
    fleet.needs_reboot("node-a");
    let (code, stdout, _) = agent_process(&file, true).await;
    assert_eq!(code, 75, "{stdout}");
    assert_eq!(fleet.holders().await, ["node-b"]);
}
