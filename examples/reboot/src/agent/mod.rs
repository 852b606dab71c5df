//! The node agent: locksmith's role for hosts without Zincati.
//!
//! An [`Agent`] runs on each node. At start — which, after a reboot, is "after boot" — it first
//! gives back a slot the node holds, as soon as its health command passes. Then it waits for the
//! reboot signal (a file such as `/var/run/reboot-required`, or a command), for a reboot window,
//! and for a slot of its group, taken through a FleetLock server or in etcd directly; then it
//! runs the pre-reboot hook and the reboot command. A real reboot never returns; a harmless
//! reboot command (tests, the demo) does, and the agent stops: starting it again is the boot.
//!
//! | piece | what it is |
//! |---|---|
//! | [`AgentConfig`] | the TOML file: `[agent]` with `[agent.fleetlock]`, or `[etcd]` |
//! | [`Window`], [`Schedule`] | reboot windows (days, start, length, IANA time zone), pure |
//! | [`plan`] | the decisions: [`Facts`] and the time in, the next [`Step`] out, pure |
//! | [`Backend`] | where slots are taken: [`FleetLockClient`] or [`RebootGroups`] |
//! | [`CommandLine`] | the signal, health, hook and reboot commands |
//! | [`Agent`] | carries the steps out; its [`Phase`] is observable through a `watch` |
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use coord_reboot::agent::{Agent, AgentConfig, Outcome};
//!
//! let config = AgentConfig::from_toml(r#"
//!     [agent]
//!     group = "workers"
//!     health = "systemctl is-system-running --wait"
//!     [[agent.windows]]
//!     days = ["sat", "sun"]
//!     start = "02:00"
//!     length = "3h"
//!     time_zone = "Europe/Berlin"
//!     [agent.fleetlock]
//!     url = "http://coordinator:9090/"
//! "#)?;
//! let agent = Agent::connect(&config).await?;
//! let mut phase = agent.subscribe();
//! tokio::spawn(async move {
//!     while phase.changed().await.is_ok() {
//!         println!("{:?}", *phase.borrow());
//!     }
//! });
//! match agent.run().await? {
//!     Outcome::Rebooted => println!("the reboot command returned"),
//!     other => println!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! The commands get `COORD_REBOOT_ID` and `COORD_REBOOT_GROUP` in their environment.

mod backend;
mod client;
mod command;
mod plan;
mod settings;
mod window;

use std::time::Duration;

use backon::BackoffBuilder;
use jiff::Timestamp;
use tokio::sync::watch;

pub use backend::{Backend, BackendError};
pub use client::{ClientError, FleetLockClient, FleetLockTls};
pub use command::{CommandError, CommandLine};
pub use plan::{Facts, SlotState, Step, plan};
pub use settings::{
    AgentConfig, AgentSettings, DEFAULT_SIGNAL_FILE, FleetLockSettings, Signal, WindowSettings,
};
pub use window::{MAX_LENGTH, Schedule, Window, WindowCheck, WindowError};

use crate::config::ConfigError;
use crate::groups::{GroupName, HolderId, RebootGroups};

/// What the agent is doing, published through [`Agent::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Asking the backend whether this node holds a slot.
    Starting,
    /// After boot: running the health command before giving the slot back; `failures` so far.
    CheckingHealth {
        /// Failed checks so far.
        failures: u32,
    },
    /// Giving the slot back.
    Releasing,
    /// Waiting for the reboot signal.
    WaitingForSignal,
    /// A reboot is needed; waiting for the window that opens at `opens_at`.
    WaitingForWindow {
        /// When it opens.
        opens_at: Timestamp,
    },
    /// Asking for a slot; `refusals` so far because the group was full.
    WaitingForSlot {
        /// Refusals so far.
        refusals: u32,
    },
    /// Holding a slot, running the pre-reboot hook.
    PreReboot,
    /// Holding a slot, running the reboot command.
    Rebooting,
    /// Stopped (see the [`Outcome`]).
    Stopped,
}

/// How [`Agent::run`] or [`Agent::boot`] ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The reboot command returned successfully (a real reboot does not return). The slot is
    /// held; the next start of the agent gives it back once healthy.
    Rebooted,
    /// [`boot`](Agent::boot): the boot duties are done (no slot held any more).
    Booted,
    /// [`once`](Agent::once): no reboot is needed.
    NoRebootNeeded,
    /// [`once`](Agent::once): a reboot is needed, but no window is open until `opens_at`.
    OutsideWindow {
        /// When the next window opens.
        opens_at: Timestamp,
    },
    /// [`once`](Agent::once): every slot of the group is taken.
    GroupFull,
    /// [`once`](Agent::once): after boot the health command failed; the slot is kept.
    Unhealthy,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// etcd could not be reached (etcd backend).
    #[error("cannot connect to etcd")]
    Connect(#[source] coord_core::Error),
    /// The backend refused in a way retrying does not fix (unknown group, permissions…).
    #[error("the slot backend refused")]
    Backend(#[source] BackendError),
    /// The signal could not be checked (command not runnable, file not accessible).
    #[error("cannot check the reboot signal")]
    Signal(#[source] std::io::Error),
    /// A command could not be started at all (not found); a failing exit is retried instead.
    #[error("cannot run the health command")]
    Health(#[source] CommandError),
    /// The pre-reboot hook failed; the slot was given back (`released`) or will be at the next
    /// start.
    #[error("the pre-reboot hook failed (slot released: {released})")]
    PreReboot {
        /// The failure.
        #[source]
        source: CommandError,
        /// Whether the slot was given back.
        released: bool,
    },
    /// The reboot command failed; the slot is kept (the hook ran), and the next start gives it
    /// back once healthy.
    #[error("the reboot command failed")]
    Reboot(#[source] CommandError),
}

/// A node agent. Build it with [`connect`](Self::connect) (from a configuration) or
/// [`new`](Self::new) (with a backend), then [`run`](Self::run) it.
#[derive(Debug)]
pub struct Agent {
    id: HolderId,
    group: GroupName,
    settings: AgentSettings,
    schedule: Schedule,
    signal: Signal,
    backend: Backend,
    once: bool,
    phase: watch::Sender<Phase>,
}

impl Agent {
    /// An agent for `settings` (id, group, signal, windows, commands) over `backend`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a bad group, id or window.
    pub fn new(settings: &AgentSettings, backend: Backend) -> Result<Agent, AgentError> {
        Ok(Agent {
            id: settings.node_id()?,
            group: settings.group()?,
            schedule: settings.schedule()?,
            signal: settings.signal(),
            settings: settings.clone(),
            backend,
            once: false,
            phase: watch::Sender::new(Phase::Starting),
        })
    }

    /// An agent for `config`, with its backend: a FleetLock client, or a connection to etcd.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`], [`AgentError::Connect`].
    pub async fn connect(config: &AgentConfig) -> Result<Agent, AgentError> {
        let settings = &config.agent;
        let backend = match (&settings.fleetlock, &config.etcd) {
            (Some(fleetlock), _) => Backend::FleetLock(fleetlock.client()?),
            (None, Some(etcd)) => {
                let client = etcd
                    .client_config()?
                    .connect()
                    .await
                    .map_err(AgentError::Connect)?;
                Backend::Etcd {
                    groups: RebootGroups::new(client),
                    holder_ttl: settings.holder_ttl,
                }
            }
            (None, None) => {
                return Err(ConfigError::Invalid {
                    field: "agent.fleetlock".to_owned(),
                    reason: "no backend".to_owned(),
                }
                .into());
            }
        };
        Agent::new(settings, backend)
    }

    /// Instead of waiting, stop with an [`Outcome`] when there is nothing to do now (no signal,
    /// window closed, group full, unhealthy): for a systemd timer or cron.
    #[must_use = "builder methods return the modified agent"]
    pub fn once(mut self, once: bool) -> Agent {
        self.once = once;
        self
    }

    /// The node id.
    pub fn id(&self) -> &HolderId {
        &self.id
    }

    /// The group.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// What the agent is doing, now and as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// The boot duties only: give back a slot this node holds once the health command passes.
    /// Returns [`Outcome::Booted`] (or [`Outcome::Unhealthy`] with [`once`](Self::once)).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    ///
    /// # Cancel safety
    ///
    /// As [`run`](Self::run).
    pub async fn boot(&self) -> Result<Outcome, AgentError> {
        self.drive(true).await
    }

    /// The boot duties, then: wait for the signal, a window and a slot; run the hook and the
    /// reboot command. Returns when the reboot command returns ([`Outcome::Rebooted`]), or
    /// with [`once`](Self::once) when there is nothing to do now.
    ///
    /// Refusals (group full) and transient failures (server or etcd unavailable, a failing
    /// health command) are retried with exponential backoff between `retry_min` and
    /// `retry_max`; through etcd, a full group is asked again as soon as one of its holders
    /// leaves.
    ///
    /// # Errors
    ///
    /// [`AgentError`] for what retrying does not fix.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future kills a running command. A slot taken stays taken; the next start
    /// gives it back once healthy.
    pub async fn run(&self) -> Result<Outcome, AgentError> {
        self.drive(false).await
    }

    fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_min)
            .with_max_delay(self.settings.retry_max)
            .with_jitter()
            .without_max_times()
            .build()
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    async fn drive(&self, boot_only: bool) -> Result<Outcome, AgentError> {
        let result = self.steps(boot_only).await;
        self.set(Phase::Stopped);
        self.backend.close().await;
        result
    }

    async fn steps(&self, boot_only: bool) -> Result<Outcome, AgentError> {
        let (id, group) = (self.id.as_str(), self.group.as_str());
        let env = [("COORD_REBOOT_ID", id), ("COORD_REBOOT_GROUP", group)];
        let mut backoff = self.backoff();
        let retry = |backoff: &mut backon::ExponentialBackoff| {
            backoff.next().unwrap_or(self.settings.retry_max)
        };

        self.set(Phase::Starting);
        let slot = loop {
            match self.backend.slot(&self.group, &self.id).await {
                Ok(slot) => break slot,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %chain(&e), "cannot tell whether this node holds a slot; retrying");
                    tokio::time::sleep(retry(&mut backoff)).await;
                }
                Err(e) => return Err(AgentError::Backend(e)),
            }
        };
        let mut facts = Facts::at_start(slot);
        let mut health_failures = 0;
        let mut refusals = 0;
        loop {
            if boot_only && facts.booted {
                return Ok(Outcome::Booted);
            }
            let now = Timestamp::now();
            match plan(&facts, &self.schedule, now) {
                Step::CheckHealth => {
                    self.set(Phase::CheckingHealth {
                        failures: health_failures,
                    });
                    let Some(health) = &self.settings.health else {
                        facts.healthy = true;
                        continue;
                    };
                    match health.run(&env, Some(self.settings.health_timeout)).await {
                        Ok(()) => {
                            tracing::info!(%id, "healthy after boot");
                            facts.healthy = true;
                            backoff = self.backoff();
                        }
                        Err(CommandError::Spawn { command, source }) => {
                            return Err(AgentError::Health(CommandError::Spawn {
                                command,
                                source,
                            }));
                        }
                        Err(e) => {
                            health_failures += 1;
                            self.set(Phase::CheckingHealth {
                                failures: health_failures,
                            });
                            tracing::warn!(%id, error = %e, failures = health_failures, "unhealthy after boot: keeping the slot");
                            if self.once {
                                return Ok(Outcome::Unhealthy);
                            }
                            tokio::time::sleep(retry(&mut backoff)).await;
                        }
                    }
                }
                Step::Release => {
                    self.set(Phase::Releasing);
                    match self.backend.unlock(&self.group, &self.id).await {
                        Ok(()) => {
                            tracing::info!(%id, %group, "slot released (if held)");
                            facts.slot = SlotState::Free;
                            facts.booted = true;
                            facts.hook_ran = false;
                            backoff = self.backoff();
                        }
                        Err(e) if e.is_transient() => {
                            tracing::warn!(%id, error = %chain(&e), "cannot release the slot; retrying");
                            tokio::time::sleep(retry(&mut backoff)).await;
                        }
                        Err(e) => return Err(AgentError::Backend(e)),
                    }
                }
                Step::FinishBoot => facts.booted = true,
                Step::CheckSignal => {
                    self.set(Phase::WaitingForSignal);
                    if self.reboot_needed().await? {
                        tracing::info!(%id, "a reboot is needed");
                        facts.reboot_needed = true;
                    } else if self.once {
                        return Ok(Outcome::NoRebootNeeded);
                    } else {
                        tokio::time::sleep(self.settings.check_interval).await;
                    }
                }
                Step::WaitForWindow { opens_at } => {
                    self.set(Phase::WaitingForWindow { opens_at });
                    if self.once {
                        return Ok(Outcome::OutsideWindow { opens_at });
                    }
                    tracing::info!(%id, %opens_at, "waiting for the reboot window");
                    // Wake up at least every check interval: the wall clock may jump.
                    let until = until(now, opens_at).min(self.settings.check_interval);
                    tokio::time::sleep(until).await;
                    facts.reboot_needed = self.reboot_needed().await?;
                }
                Step::TakeSlot { closes_at } => {
                    self.set(Phase::WaitingForSlot { refusals });
                    if !self.reboot_needed().await? {
                        tracing::info!(%id, "the reboot signal is gone");
                        facts.reboot_needed = false;
                        continue;
                    }
                    match self.backend.lock(&self.group, &self.id).await {
                        Ok(()) => {
                            tracing::info!(%id, %group, "slot taken");
                            facts.slot = SlotState::Held;
                            refusals = 0;
                            backoff = self.backoff();
                        }
                        Err(e) if e.is_full() => {
                            refusals += 1;
                            self.set(Phase::WaitingForSlot { refusals });
                            tracing::info!(%id, %group, refusals, "group full; waiting");
                            if self.once {
                                return Ok(Outcome::GroupFull);
                            }
                            let bound = retry(&mut backoff).min(until(now, closes_at));
                            self.backend.wait_for_change(&self.group, bound).await;
                        }
                        Err(e) if e.is_transient() => {
                            tracing::warn!(%id, error = %chain(&e), "cannot take a slot; retrying");
                            tokio::time::sleep(retry(&mut backoff)).await;
                        }
                        Err(e) => return Err(AgentError::Backend(e)),
                    }
                }
                Step::RunPreReboot => {
                    self.set(Phase::PreReboot);
                    if let Some(hook) = &self.settings.pre_reboot {
                        if let Err(source) =
                            hook.run(&env, Some(self.settings.pre_reboot_timeout)).await
                        {
                            let released = self.backend.unlock(&self.group, &self.id).await;
                            if let Err(e) = &released {
                                tracing::warn!(%id, error = %chain(e), "cannot give the slot back after the failed hook");
                            }
                            return Err(AgentError::PreReboot {
                                source,
                                released: released.is_ok(),
                            });
                        }
                    }
                    facts.hook_ran = true;
                }
                Step::Reboot => {
                    self.set(Phase::Rebooting);
                    tracing::info!(%id, command = %self.settings.reboot, "rebooting");
                    self.settings
                        .reboot
                        .run(&env, None)
                        .await
                        .map_err(AgentError::Reboot)?;
                    return Ok(Outcome::Rebooted);
                }
            }
        }
    }

    async fn reboot_needed(&self) -> Result<bool, AgentError> {
        match &self.signal {
            Signal::File(path) => tokio::fs::try_exists(path)
                .await
                .map_err(AgentError::Signal),
            Signal::Command(command) => {
                let env = [
                    ("COORD_REBOOT_ID", self.id.as_str()),
                    ("COORD_REBOOT_GROUP", self.group.as_str()),
                ];
                match command
                    .status(&env, Some(self.settings.check_interval))
                    .await
                {
                    Ok(status) => Ok(status.success()),
                    Err(CommandError::TimedOut { .. }) => Ok(false),
                    Err(e) => Err(AgentError::Signal(std::io::Error::other(e))),
                }
            }
        }
    }
}

/// The time from `now` until `then` (zero when past).
fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
