//! Interleaved rounds: the variants of a scenario take turns (A B C, C B A, A B C …), so drift —
//! other load on the machine, etcd's growing database — hits all of them alike. Results are
//! medians over rounds; ratios are medians of the per-round ratios of neighbouring runs.

use std::time::Duration;

use super::metrics::{Requests, Scrape, Window};

/// How long each round runs and how many rounds each variant gets.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How long one round of one variant runs.
    pub round: Duration,
    /// How many rounds each variant gets.
    pub rounds: usize,
}

/// The order in which the variants run in round `round`: forwards in even rounds, backwards in
/// odd ones, so no variant always runs first or last.
pub fn order(round: usize, variants: usize) -> Vec<usize> {
    let forwards: Vec<usize> = (0..variants).collect();
    if round % 2 == 0 {
        forwards
    } else {
        forwards.into_iter().rev().collect()
    }
}

/// The median (mean of the two middle values for an even count); NaN for none.
pub fn median(values: &[f64]) -> f64 {
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
pub struct Tally {
    /// One value per round (a time per cycle, or a rate).
    pub per_round: Vec<f64>,
    /// Operations (acquire + release cycles) completed in all rounds, the divisor of `requests`.
    pub ops: u64,
    /// The sum of the rounds' `/metrics` diffs.
    pub diff: Scrape,
    /// Samples of the unsynced-watcher gauge over all rounds.
    pub unsynced: Vec<f64>,
}

impl Tally {
    /// Records one round: its figure, the operations completed and the server's counters.
    pub fn record(&mut self, value: f64, ops: u64, window: &Window) {
        self.per_round.push(value);
        self.ops += ops;
        self.diff.add(&window.diff);
        self.unsynced.extend(&window.unsynced);
    }

    /// The mean of the unsynced-watcher samples, if any were taken.
    pub fn mean_unsynced(&self) -> Option<f64> {
        (!self.unsynced.is_empty())
            .then(|| self.unsynced.iter().sum::<f64>() / self.unsynced.len() as f64)
    }

    /// The median of the per-round figures.
    pub fn median(&self) -> f64 {
        median(&self.per_round)
    }

    /// The median over rounds of `self / baseline`, pairing the runs of the same round.
    pub fn median_ratio_to(&self, baseline: &Tally) -> f64 {
        let ratios: Vec<f64> = self
            .per_round
            .iter()
            .zip(&baseline.per_round)
            .map(|(candidate, baseline)| candidate / baseline)
            .collect();
        median(&ratios)
    }

    /// etcd requests per operation.
    pub fn requests_per_op(&self) -> Requests {
        Requests::from_diff(&self.diff).per(self.ops)
    }
}

/// Values rounded to three decimals, for printing per-round results.
pub fn rounded(values: &[f64]) -> Vec<f64> {
    values
        .iter()
        .map(|v| (v * 1000.0).round() / 1000.0)
        .collect()
}

/// The `p`-th percentile (0–100, nearest rank) of some samples; NaN for none.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
