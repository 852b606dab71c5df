//! Per-server temporary directories, and cleaning up after earlier test runs.
//!
//! Every server or cluster lives in `$TMPDIR/coord-testkit-<pid>-<random>/`. Dropping
//! the server removes it, but the [`shared`](crate::shared()) server is never dropped
//! and a SIGKILLed test process drops nothing, so the first start in a process also
//! removes the directories of processes that are no longer alive.

use std::{fs, path::Path, sync::Once};

use tempfile::TempDir;

use crate::Error;

const PREFIX: &str = "coord-testkit-";

/// A fresh directory for one server or cluster, removed when the returned value drops.
pub(crate) fn create() -> Result<TempDir, Error> {
    static CLEAN_STALE: Once = Once::new();
    let parent = std::env::temp_dir();
    CLEAN_STALE.call_once(|| remove_stale(&parent));
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(&parent)
        .map_err(|e| {
            Error::io(
                format!(
                    "cannot create a temporary directory in {}",
                    parent.display()
                ),
                e,
            )
        })
}

/// Best effort: a directory that cannot be removed is left alone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != own_pid && !process_alive(pid) {
            tracing::debug!(dir = %entry.path().display(), "removing stale coord-testkit directory");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(target_os = "linux")]
fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Without `/proc` liveness is unknown, so nothing is considered stale.
#[cfg(not(target_os = "linux"))]
fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn directories_of_dead_processes_are_removed_and_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22 on Linux, so this pid cannot be alive.
        let dead = parent.path().join(format!("{PREFIX}99999999-abc"));
        let live = parent.path().join(format!("{PREFIX}1-abc"));
        let own = parent
            .path()
            .join(format!("{PREFIX}{}-abc", std::process::id()));
        let unrelated = parent.path().join("coord-testkit-notapid");
        for dir in [&dead, &live, &own, &unrelated] {
            fs::create_dir(dir).unwrap();
        }
        remove_stale(parent.path());
        assert!(!dead.exists());
        assert!(live.exists() && own.exists() && unrelated.exists());
    }
}
