//! CPU time spent by the benchmark's own process and by the etcd server over a measured stretch,
//! so that a scenario can split a cycle's cost into the client's work and the server's work
//! independently of wall-clock noise (fsync latency, other load on the machine).
//!
//! Read from Linux's `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU and the number of times
//! a thread was put on a CPU, each summed over the process's threads). Threads that exit during the stretch take their time with them; the
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
    process_schedstat(pid).map(|(on_cpu, _)| on_cpu)
}

/// The CPU time the threads of process `pid` have run so far and how many times they were put on
/// a CPU (each wake-up of a sleeping thread is one), or `None` where `/proc` does not tell.
///
/// ```
/// let own = coord_testkit::bench::cpu::process_schedstat(std::process::id());
/// if cfg!(target_os = "linux") {
///     assert!(own.is_some_and(|(_, slices)| slices > 0));
/// }
/// ```
pub fn process_schedstat(pid: u32) -> Option<(Duration, u64)> {
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    let (mut nanos, mut slices) = (0u64, 0u64);
    for task in std::fs::read_dir(tasks).ok()?.flatten() {
        // A thread may exit between the listing and the read: it is then not counted.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        // "<ns on a CPU> <ns waiting for a CPU> <timeslices run>"
        let mut fields = stat.split_whitespace();
        nanos += fields.next().and_then(|f| f.parse::<u64>().ok())?;
        slices += fields.nth(1).and_then(|f| f.parse::<u64>().ok())?;
    }
    Some((Duration::from_nanos(nanos), slices))
}

/// CPU time spent over a stretch: by this process (the client) and by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSpent {
    /// This process's CPU time.
    pub client: Duration,
    /// The server process's CPU time.
    pub server: Duration,
    /// How many times this process's threads were put on a CPU (mostly wake-ups).
    pub client_slices: u64,
    /// How many times the server's threads were put on a CPU.
    pub server_slices: u64,
}

impl CpuSpent {
    /// Adds another stretch.
    pub fn add(&mut self, other: CpuSpent) {
        self.client += other.client;
        self.server += other.server;
        self.client_slices += other.client_slices;
        self.server_slices += other.server_slices;
    }

    /// Microseconds of client and server CPU per operation, over `ops` operations.
    pub fn micros_per(&self, ops: u64) -> (f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
        (per(self.client), per(self.server))
    }

    /// Times the client's and the server's threads were put on a CPU per operation, over `ops`
    /// operations.
    pub fn slices_per(&self, ops: u64) -> (f64, f64) {
        let per = |n: u64| n as f64 / ops.max(1) as f64;
        (per(self.client_slices), per(self.server_slices))
    }
}

/// Measures the CPU time of this process and of a server process from its start.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    server_pid: u32,
    client: (Duration, u64),
    server: (Duration, u64),
}

impl CpuMeter {
    /// Starts measuring; `None` if either process's CPU time cannot be read.
    pub fn start(server_pid: u32) -> Option<CpuMeter> {
        Some(CpuMeter {
            server_pid,
            client: process_schedstat(std::process::id())?,
            server: process_schedstat(server_pid)?,
        })
    }

    /// The CPU time spent since [`start`](Self::start); `None` if it can no longer be read.
    pub fn spent(&self) -> Option<CpuSpent> {
        let client = process_schedstat(std::process::id())?;
        let server = process_schedstat(self.server_pid)?;
        Some(CpuSpent {
            client: client.0.saturating_sub(self.client.0),
            server: server.0.saturating_sub(self.server.0),
            client_slices: client.1.saturating_sub(self.client.1),
            server_slices: server.1.saturating_sub(self.server.1),
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
