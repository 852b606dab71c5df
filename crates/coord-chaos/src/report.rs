//! The report of a run: operations, faults, fenced-write figures, recovery and convergence
//! times, violations. Printed as text, or as JSON with `--json`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::history::{FaultKind, Op, OpKind, Outcome};

/// Counts of one operation kind by outcome.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Succeeded (fenced writes: applied).
    pub ok: u64,
    /// Fenced writes rejected by their compare; releases of something already lost.
    pub rejected: u64,
    /// Errors (outcome unknown for writes).
    pub failed: u64,
    /// Bounded waits given up, waits dropped.
    pub cancelled: u64,
}

/// Milliseconds: how many samples, median, maximum.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    /// Samples.
    pub n: usize,
    /// Median, ms.
    pub p50_ms: u64,
    /// Maximum, ms.
    pub max_ms: u64,
}

impl Stats {
    /// The statistics of `samples`.
    pub fn of(samples: &[Duration]) -> Stats {
        let mut ms: Vec<u64> = samples.iter().map(|d| d.as_millis() as u64).collect();
        ms.sort_unstable();
        Stats {
            n: ms.len(),
            p50_ms: ms.get(ms.len() / 2).copied().unwrap_or(0),
            max_ms: ms.last().copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} p50={} ms max={} ms",
            self.n, self.p50_ms, self.max_ms
        )
    }
}

/// What etcd's final state shows about the fenced writes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Fenced {
    /// Applied fenced increments of the mutex counter (= the counter's final value when correct).
    pub mutex_increments: usize,
    /// The counter's final value.
    pub counter: u64,
    /// Distinct mutex holders that wrote.
    pub mutex_holders: usize,
    /// Applied fenced writes of semaphore permits.
    pub semaphore_writes: usize,
    /// Distinct permits that wrote.
    pub semaphore_permits: usize,
    /// The most permits whose writes overlapped (≤ the limit).
    pub semaphore_max_overlap: usize,
    /// Applied fenced writes of the stored-limit semaphore's holders (permits and durable slots).
    pub stored_writes: usize,
    /// Distinct holders of the stored-limit semaphore that wrote.
    pub stored_holders: usize,
    /// The most of them whose writes overlapped (≤ the limit + 1: the stored limit moves).
    pub stored_max_overlap: usize,
    /// Applied fenced leader writes.
    pub leader_writes: usize,
    /// Distinct terms that wrote.
    pub terms: usize,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The seed (replay with `--seed`).
    pub seed: u64,
    /// Client processes.
    pub clients: usize,
    /// The nemesis' duration, s.
    pub duration_s: u64,
    /// Session TTL, s.
    pub ttl_s: u64,
    /// The semaphore's limit.
    pub semaphore_limit: u32,
    /// Whether holders fenced their writes (false: a negative control that must find violations).
    pub fencing: bool,
    /// Wall time of the whole run, s.
    pub elapsed_s: f64,
    /// Operations by kind and outcome.
    pub operations: BTreeMap<OpKind, Counts>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Fenced writes attempted after a pause outlived the holder's key, and rejected.
    pub stale_writes_rejected: u64,
    /// Pauses after which the holder's key still existed (its write was legitimately accepted).
    pub pauses_lease_survived: u64,
    /// etcd's final state of the fenced writes.
    pub fenced: Fenced,
    /// Time from a fault's heal to the affected client's next successful operation, by fault
    /// kind (member faults affect every client).
    pub recovery_after_fault: BTreeMap<FaultKind, Stats>,
    /// Time from the end of the nemesis to each client's first applied fenced write of each
    /// primitive (mutex, semaphore, leader).
    pub recovery_after_nemesis: Stats,
    /// Time from the final read to each client's caches (discovery, config, leader) showing it.
    pub cache_convergence: Stats,
    /// Time until no lock, semaphore, election or service key was left after the clients stopped
    /// (resp. closed their sessions).
    pub cleanup: Stats,
    /// What went wrong. Must be empty.
    pub violations: Vec<String>,
}

impl Report {
    /// Counts operations by kind and outcome.
    pub fn count_ops(&mut self, ops: &[Op]) {
        for op in ops {
            let counts = self.operations.entry(op.kind).or_default();
            match op.outcome {
                Outcome::Ok => counts.ok += 1,
                Outcome::Rejected => counts.rejected += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Cancelled => counts.cancelled += 1,
            }
        }
        self.stale_writes_rejected = ops
            .iter()
            .filter(|op| op.kind == OpKind::StaleWrite && op.outcome == Outcome::Rejected)
            .count() as u64;
        self.pauses_lease_survived = ops
            .iter()
            .filter(|op| op.kind == OpKind::PauseLeaseSurvived)
            .count() as u64;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "coord-chaos: seed {} | {} clients | nemesis {} s | TTL {} s | semaphore limit {} | {:.1} s in all",
            self.seed,
            self.clients,
            self.duration_s,
            self.ttl_s,
            self.semaphore_limit,
            self.elapsed_s
        )?;
        if !self.fencing {
            writeln!(
                f,
                "NEGATIVE CONTROL: writes were not fenced; violations are expected"
            )?;
        }
        writeln!(f, "operations (ok / rejected / failed / cancelled):")?;
        for (kind, c) in &self.operations {
            writeln!(
                f,
                "  {:<22} {:>6} / {:>5} / {:>5} / {:>5}",
                format!("{kind:?}"),
                c.ok,
                c.rejected,
                c.failed,
                c.cancelled
            )?;
        }
        writeln!(f, "faults injected:")?;
        for (kind, n) in &self.faults {
            writeln!(f, "  {:<22} {n:>6}", format!("{kind:?}"))?;
        }
        let x = &self.fenced;
        writeln!(f, "fenced writes applied (etcd's final state):")?;
        writeln!(
            f,
            "  mutex      {} increments by {} holders, counter = {}",
            x.mutex_increments, x.mutex_holders, x.counter
        )?;
        writeln!(
            f,
            "  semaphore  {} writes by {} permits, max overlap {} (limit {})",
            x.semaphore_writes, x.semaphore_permits, x.semaphore_max_overlap, self.semaphore_limit
        )?;
        writeln!(
            f,
            "  semaphore with a stored limit ({}–{}), permits and durable slots: {} writes by {} \
             holders, max overlap {}",
            self.semaphore_limit,
            self.semaphore_limit + 1,
            x.stored_writes,
            x.stored_holders,
            x.stored_max_overlap
        )?;
        writeln!(
            f,
            "  election   {} writes in {} terms",
            x.leader_writes, x.terms
        )?;
        writeln!(
            f,
            "stale writes rejected after pauses: {} (pauses the lease survived: {})",
            self.stale_writes_rejected, self.pauses_lease_survived
        )?;
        writeln!(
            f,
            "recovery, heal -> next successful op of the affected client:"
        )?;
        for (kind, stats) in &self.recovery_after_fault {
            writeln!(f, "  {:<22} {stats}", format!("{kind:?}"))?;
        }
        writeln!(
            f,
            "recovery after the nemesis, per client and primitive: {}",
            self.recovery_after_nemesis
        )?;
        writeln!(
            f,
            "cache convergence after the final read: {}",
            self.cache_convergence
        )?;
        writeln!(f, "cleanup (no keys left): {}", self.cleanup)?;
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}
