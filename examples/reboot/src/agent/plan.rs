//! The agent's decisions as a pure function: from what it knows ([`Facts`]) and the time, the
//! next [`Step`]. The [`Agent`](super::Agent) carries steps out and records what they found.
//!
//! The order of concerns is fixed:
//!
//! 1. **After boot**: a slot this node may hold (etcd says so, or FleetLock cannot tell) is given
//!    back as soon as the health command passes, before anything else, whether or not a window is
//!    open (locksmith kept it until the next window: flatcar/Flatcar#408).
//! 2. **Holding a slot** (taken by this run): inside a window, run the pre-reboot hook, then the
//!    reboot command. If the window closed while the slot was being waited for, give it back and
//!    wait for the next window. Once the hook has run, the reboot follows whatever the clock says.
//! 3. **Otherwise**: wait for the reboot signal, then for a window, then take a slot.

use jiff::Timestamp;

use super::window::{Schedule, WindowCheck};

/// Whether this node holds a slot, as far as the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// It may (FleetLock has no query: only a release tells, and it is harmless when nothing is
    /// held).
    Unknown,
    /// It does.
    Held,
    /// It does not.
    Free,
}

/// What the agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The boot duties (health, then release) are done.
    pub booted: bool,
    /// Whether this node holds a slot.
    pub slot: SlotState,
    /// The health command passed since the agent started.
    pub healthy: bool,
    /// The reboot signal was present at its last check.
    pub reboot_needed: bool,
    /// The pre-reboot hook ran for the slot held now.
    pub hook_ran: bool,
}

impl Facts {
    /// What a freshly started agent knows: its slot, from the backend.
    pub fn at_start(slot: SlotState) -> Facts {
        Facts {
            booted: false,
            slot,
            healthy: false,
            reboot_needed: false,
            hook_ran: false,
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// After boot, with a slot held or possibly held: run the health command.
    CheckHealth,
    /// Give the slot back (after boot once healthy, or because the window closed before the hook
    /// ran). Then the slot is [`SlotState::Free`] and the boot duties are done.
    Release,
    /// Nothing held after boot: the boot duties are done, nothing to do for them.
    FinishBoot,
    /// Check the reboot signal (and, if absent, check again after the check interval).
    CheckSignal,
    /// A reboot is needed but no window is open: wait until `opens_at`.
    WaitForWindow {
        /// When the next window opens.
        opens_at: Timestamp,
    },
    /// A reboot is needed and a window is open until `closes_at`: take a slot.
    TakeSlot {
        /// When the window closes.
        closes_at: Timestamp,
    },
    /// The slot is held inside a window: run the pre-reboot hook.
    RunPreReboot,
    /// The hook ran: run the reboot command.
    Reboot,
}

/// The next step from `facts` at `now` under `schedule`.
///
/// ```
/// use coord_reboot::agent::{plan, Facts, Schedule, SlotState, Step};
///
/// let now = jiff::Timestamp::now();
/// // A node that booted holding a slot checks its health first, window or not.
/// assert_eq!(plan(&Facts::at_start(SlotState::Held), &Schedule::always(), now), Step::CheckHealth);
/// ```
pub fn plan(facts: &Facts, schedule: &Schedule, now: Timestamp) -> Step {
    if !facts.booted {
        return match facts.slot {
            SlotState::Free => Step::FinishBoot,
            SlotState::Held | SlotState::Unknown if !facts.healthy => Step::CheckHealth,
            SlotState::Held | SlotState::Unknown => Step::Release,
        };
    }
    match facts.slot {
        SlotState::Held if facts.hook_ran => Step::Reboot,
        SlotState::Held => match schedule.check(now) {
            WindowCheck::Open { .. } => Step::RunPreReboot,
            // Never sit on a slot outside the window (Flatcar#408).
            WindowCheck::Closed { .. } => Step::Release,
        },
        // A release that failed leaves Unknown: release again.
        SlotState::Unknown => Step::Release,
        SlotState::Free if !facts.reboot_needed => Step::CheckSignal,
        SlotState::Free => match schedule.check(now) {
            WindowCheck::Open { closes_at } => Step::TakeSlot { closes_at },
            WindowCheck::Closed { opens_at } => Step::WaitForWindow { opens_at },
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::time::Duration;

    use super::*;
    use crate::agent::window::Window;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    /// Open 02:00–04:00 UTC daily.
    fn nightly() -> Schedule {
        Schedule::new(vec![
            Window::new::<&str>(&[], "02:00", Duration::from_secs(7200), Some("UTC")).unwrap(),
        ])
    }

    const NIGHT: &str = "2025-06-02T03:00:00Z";
    const DAY: &str = "2025-06-02T12:00:00Z";

    fn booted(slot: SlotState, reboot_needed: bool, hook_ran: bool) -> Facts {
        Facts {
            booted: true,
            slot,
            healthy: true,
            reboot_needed,
            hook_ran,
        }
    }

    #[test]
    fn after_boot_a_held_slot_is_released_once_healthy_even_outside_the_window() {
        let mut facts = Facts::at_start(SlotState::Held);
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::CheckHealth);
        facts.reboot_needed = true;
        assert_eq!(
            plan(&facts, &nightly(), at(NIGHT)),
            Step::CheckHealth,
            "health and release come before a new reboot"
        );
        facts.healthy = true;
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::Release);
    }

    #[test]
    fn fleetlock_cannot_tell_so_it_checks_health_and_releases() {
        let mut facts = Facts::at_start(SlotState::Unknown);
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::CheckHealth);
        facts.healthy = true;
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::Release);
    }

    #[test]
    fn a_node_holding_nothing_skips_the_health_check() {
        let facts = Facts::at_start(SlotState::Free);
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::FinishBoot);
    }

    #[test]
    fn without_a_signal_it_keeps_checking() {
        let facts = booted(SlotState::Free, false, false);
        assert_eq!(plan(&facts, &nightly(), at(NIGHT)), Step::CheckSignal);
    }

    #[test]
    fn with_a_signal_it_waits_for_the_window_then_takes_a_slot() {
        let facts = booted(SlotState::Free, true, false);
        assert_eq!(
            plan(&facts, &nightly(), at(DAY)),
            Step::WaitForWindow {
                opens_at: at("2025-06-03T02:00:00Z")
            }
        );
        assert_eq!(
            plan(&facts, &nightly(), at(NIGHT)),
            Step::TakeSlot {
                closes_at: at("2025-06-02T04:00:00Z")
            }
        );
    }

    #[test]
    fn a_slot_held_inside_the_window_runs_the_hook_then_reboots() {
        let facts = booted(SlotState::Held, true, false);
        assert_eq!(plan(&facts, &nightly(), at(NIGHT)), Step::RunPreReboot);
        let facts = booted(SlotState::Held, true, true);
        assert_eq!(plan(&facts, &nightly(), at(NIGHT)), Step::Reboot);
        assert_eq!(
            plan(&facts, &nightly(), at(DAY)),
            Step::Reboot,
            "once the hook ran the reboot follows"
        );
    }

    #[test]
    fn a_slot_granted_after_the_window_closed_is_given_back() {
        let facts = booted(SlotState::Held, true, false);
        assert_eq!(plan(&facts, &nightly(), at(DAY)), Step::Release);
    }

    #[test]
    fn a_release_that_failed_is_tried_again() {
        let facts = booted(SlotState::Unknown, true, false);
        assert_eq!(plan(&facts, &nightly(), at(NIGHT)), Step::Release);
    }
}
