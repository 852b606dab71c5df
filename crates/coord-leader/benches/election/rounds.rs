//! Interleaved rounds: the variants of a scenario take turns (A B C, C B A, A B C …), so drift —
//! other load on the machine, etcd's growing database — hits all of them alike. Results are
//! medians over rounds; ratios are medians of the per-round ratios of neighbouring runs.
//!
//! Copied from coord-lock's bench harness (`crates/coord-lock/benches/lock/rounds.rs`), plus
//! percentiles of latency samples.

use std::time::Duration;

use crate::metrics::{Requests, Scrape, Window};

/// How long each round runs and how many rounds each variant gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) round: Duration,
    pub(crate) rounds: usize,
}

/// The order in which the variants run in round `round`: forwards in even rounds, backwards in
/// odd ones, so no variant always runs first or last.
pub(crate) fn order(round: usize, variants: usize) -> Vec<usize> {
    let forwards: Vec<usize> = (0..variants).collect();
    if round % 2 == 0 {
        forwards
    } else {
        forwards.into_iter().rev().collect()
    }
}

/// The median (mean of the two middle values for an even count); NaN for none.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// What one variant measured over its rounds.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// One value per round (a time per cycle, or a rate).
    pub(crate) per_round: Vec<f64>,
    /// Operations (hand-offs) completed in all rounds, the divisor of `requests`.
    pub(crate) ops: u64,
    /// The sum of the rounds' `/metrics` diffs.
    pub(crate) diff: Scrape,
    /// Samples of the unsynced-watcher gauge over all rounds.
    pub(crate) unsynced: Vec<f64>,
}

impl Tally {
    pub(crate) fn record(&mut self, value: f64, ops: u64, window: &Window) {
        self.per_round.push(value);
        self.ops += ops;
        self.diff.add(&window.diff);
        self.unsynced.extend(&window.unsynced);
    }

    /// The mean of the unsynced-watcher samples, if any were taken.
    pub(crate) fn mean_unsynced(&self) -> Option<f64> {
        (!self.unsynced.is_empty())
            .then(|| self.unsynced.iter().sum::<f64>() / self.unsynced.len() as f64)
    }

    pub(crate) fn median(&self) -> f64 {
        median(&self.per_round)
    }

    /// The median over rounds of `self / baseline`, pairing the runs of the same round.
    pub(crate) fn median_ratio_to(&self, baseline: &Tally) -> f64 {
        let ratios: Vec<f64> = self
            .per_round
            .iter()
            .zip(&baseline.per_round)
            .map(|(candidate, baseline)| candidate / baseline)
            .collect();
        median(&ratios)
    }

    /// etcd requests per operation.
    pub(crate) fn requests_per_op(&self) -> Requests {
        Requests::from_diff(&self.diff).per(self.ops)
    }
}

/// The `p`-th percentile (0–100, nearest rank) of some samples; NaN for none.
pub(crate) fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Values rounded to three decimals, for printing per-round results.
pub(crate) fn rounded(values: &[f64]) -> Vec<f64> {
    values
        .iter()
        .map(|v| (v * 1000.0).round() / 1000.0)
        .collect()
}
