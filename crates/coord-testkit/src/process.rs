//! Spawning etcd so that it never outlives the test process.
//!
//! On Linux every child gets `PR_SET_PDEATHSIG = SIGKILL`. The kernel sends that
//! signal when the *thread* that forked the child exits, not the process, and the
//! test harness runs each test on a thread that exits when the test ends. So all
//! children are forked by one spawner thread that lives as long as the process;
//! when the process dies for any reason (panic, `exit`, SIGKILL), that thread dies
//! with it and every etcd receives SIGKILL.

use std::{
    io,
    process::{Child, Command},
    sync::{OnceLock, mpsc},
};

use tokio::sync::oneshot;

use crate::Error;

struct SpawnRequest {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Spawns `command` from the spawner thread.
pub(crate) async fn spawn(command: Command) -> Result<Child, Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    let spawner = spawner()?;
    let (reply, response) = oneshot::channel();
    spawner
        .send(SpawnRequest { command, reply })
        .map_err(|_| spawner_gone())?;
    response
        .await
        .map_err(|_| spawner_gone())?
        .map_err(|e| Error::io(format!("cannot run {program}"), e))
}

fn spawner_gone() -> Error {
    Error::io(
        "the coord-testkit spawner thread is gone",
        io::Error::from(io::ErrorKind::BrokenPipe),
    )
}

fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>, Error> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, requests) = mpsc::channel::<SpawnRequest>();
    // Two racing callers may both get here; the loser's thread ends at once (its channel is
    // dropped) and never spawned anything, so no child depends on it.
    std::thread::Builder::new()
        .name("coord-testkit-spawner".into())
        .spawn(move || {
            // The sender lives in a static, so this loop runs until the process exits.
            for SpawnRequest { mut command, reply } in requests {
                die_with_parent(&mut command);
                let _ = reply.send(command.spawn());
            }
        })
        .map_err(|e| Error::io("cannot start the coord-testkit spawner thread", e))?;
    Ok(SPAWNER.get_or_init(|| sender))
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid) and builds an io::Error from an
    // errno value, which does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then the signal will never come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere children die with the test process only when it ends normally (see [`kill`]).
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// SIGSTOPs (`stop`) or SIGCONTs `child`.
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn pause(child: &Child, stop: bool) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(child.id()).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is that of a
    // child we spawned and have not reaped (we hold its `Child`), so it names no other process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pausing needs Unix signals.
#[cfg(not(unix))]
pub(crate) fn pause(_child: &Child, _stop: bool) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pausing a process needs Unix signals",
    ))
}

/// SIGKILLs and reaps `child`; best effort, never blocks for long (a killed child exits at once).
pub(crate) fn kill(child: &mut Child) {
    if let Err(e) = child.kill() {
        tracing::debug!(pid = child.id(), error = %e, "kill etcd");
    }
    if let Err(e) = child.wait() {
        tracing::debug!(pid = child.id(), error = %e, "reap etcd");
    }
}
