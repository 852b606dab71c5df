//! CPU time spent by the benchmark's own process and by the etcd server over a measured stretch,
//! so that a scenario can split a cycle's cost into the client's work and the server's work
//! independently of wall-clock noise (fsync latency, other load on the machine).
//!
//! Read from Linux's `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU, summed over the
//! process's threads). Threads that exit during the stretch take their time with them; the
//! tokio workers and etcd's Go threads live for the whole run. Elsewhere nothing is measured.

use std::path::Path;
use std::time::Duration;

/// The CPU time the threads of process `pid` have run so far, or `None` where `/proc` does not
/// tell (not Linux, or the process is gone).
///
/// ```
/// let own = coord_testkit::bench::cpu::process_cpu(std::process::id());
/// if cfg!(target_os = "linux") {
///     assert!(own.is_some());
/// }
/// ```
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(tasks).ok()?.flatten() {
        // A thread may exit between the listing and the read: it is then not counted.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|on_cpu| on_cpu.parse::<u64>().ok())?;
    }
    Some(Duration::from_nanos(nanos))
}

/// CPU time spent over a stretch: by this process (the client) and by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSpent {
    /// This process's CPU time.
    pub client: Duration,
    /// The server process's CPU time.
    pub server: Duration,
}

impl CpuSpent {
    /// Adds another stretch.
    pub fn add(&mut self, other: CpuSpent) {
        self.client += other.client;
        self.server += other.server;
    }

    /// Microseconds of client and server CPU per operation, over `ops` operations.
    pub fn micros_per(&self, ops: u64) -> (f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        (per(self.client), per(self.server))
    }
}

/// Measures the CPU time of this process and of a server process from its start.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    server_pid: u32,
    client: Duration,
    server: Duration,
}

impl CpuMeter {
    /// Starts measuring; `None` if either process's CPU time cannot be read.
    pub fn start(server_pid: u32) -> Option<CpuMeter> {
        Some(CpuMeter {
            server_pid,
            client: process_cpu(std::process::id())?,
            server: process_cpu(server_pid)?,
        })
    }

    /// The CPU time spent since [`start`](Self::start); `None` if it can no longer be read.
    pub fn spent(&self) -> Option<CpuSpent> {
        Some(CpuSpent {
            client: process_cpu(std::process::id())?.saturating_sub(self.client),
            server: process_cpu(self.server_pid)?.saturating_sub(self.server),
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_as_client_time() {
        let pid = std::process::id();
        let meter = CpuMeter::start(pid).expect("own /proc");
        let start = std::time::Instant::now();
        let mut x: u64 = 1;
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = meter.spent().expect("own /proc");
        // The loop spun for 50 ms of wall time on one thread: nearly all of it on a CPU.
        assert!(spent.client >= Duration::from_millis(20), "{spent:?}");
        assert_eq!(spent.micros_per(0).0, spent.client.as_secs_f64() * 1e6);
    }

    #[test]
    fn a_missing_process_has_no_cpu_time() {
        assert_eq!(process_cpu(u32::MAX), None);
        assert!(CpuMeter::start(u32::MAX).is_none());
    }
}
