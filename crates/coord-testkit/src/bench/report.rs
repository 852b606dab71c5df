//! The results table and the request-count table, printed as Markdown so that they can go into
//! BENCHMARKS.md unchanged.

use super::metrics::Requests;

/// A ratio of the candidate to its baseline.
#[derive(Debug, Clone, Copy)]
pub enum Ratio {
    /// Candidate time / baseline time: lower is better.
    Time(f64),
    /// Candidate rate / baseline rate: higher is better.
    Rate(f64),
}

/// What a row must show to pass.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// A ratio of times, at most this.
    TimeAtMost(f64),
    /// A ratio of rates, at least this.
    RateAtLeast(f64),
    /// A count that must be zero.
    Zero,
    /// For information only.
    None,
}

impl Target {
    fn describe(self) -> String {
        match self {
            Target::TimeAtMost(x) => format!("≤ {x}×"),
            Target::RateAtLeast(x) => format!("≥ {x}×"),
            Target::Zero => "0".to_owned(),
            Target::None => "—".to_owned(),
        }
    }

    fn passes(self, value: f64) -> Option<bool> {
        match self {
            Target::TimeAtMost(x) => Some(value <= x),
            Target::RateAtLeast(x) => Some(value >= x),
            Target::Zero => Some(value == 0.0),
            Target::None => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    baseline: String,
    candidate: String,
    ratio: String,
    target: String,
    pass: Option<bool>,
}

#[derive(Debug, Clone)]
struct RequestRow {
    variant: String,
    ops: u64,
    per_op: Requests,
    unsynced: Option<f64>,
}

/// Everything the run prints at the end.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    requests: Vec<RequestRow>,
    notes: Vec<String>,
    operation: Option<String>,
}

impl Report {
    /// A report whose request table counts per `operation` (e.g. "one acquire + one release").
    pub fn per(operation: impl Into<String>) -> Report {
        Report {
            operation: Some(operation.into()),
            ..Report::default()
        }
    }

    /// A comparison of the candidate with a baseline.
    pub fn compare(
        &mut self,
        scenario: &str,
        baseline: String,
        candidate: String,
        ratio: Ratio,
        target: Target,
    ) {
        let (value, unit) = match ratio {
            Ratio::Time(value) => (value, "time"),
            Ratio::Rate(value) => (value, "rate"),
        };
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            baseline,
            candidate,
            ratio: format!("{value:.2}× {unit}"),
            target: target.describe(),
            pass: target.passes(value),
        });
    }

    /// A check on a count (violations, stuck waiters…) of the baseline and the candidate; the
    /// target applies to the candidate.
    pub fn check(&mut self, scenario: &str, baseline: String, candidate: u64, target: Target) {
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            baseline,
            candidate: candidate.to_string(),
            ratio: "—".to_owned(),
            target: target.describe(),
            pass: target.passes(candidate as f64),
        });
    }

    /// etcd's requests per operation of a variant, and the mean number of unsynced watchers
    /// during its rounds (when sampled).
    pub fn requests(&mut self, variant: &str, ops: u64, per_op: Requests, unsynced: Option<f64>) {
        self.requests.push(RequestRow {
            variant: variant.to_owned(),
            ops,
            per_op,
            unsynced,
        });
    }

    /// A free-text line printed under the tables.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Prints the results table, the request table and the notes, as Markdown.
    pub fn print(&self) {
        println!("\n## Results\n");
        println!("| scenario | baseline | candidate (coord) | ratio | target | pass |");
        println!("|---|---|---|---|---|---|");
        for row in &self.rows {
            let pass = match row.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "—",
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                row.scenario, row.baseline, row.candidate, row.ratio, row.target, pass
            );
        }

        match &self.operation {
            Some(operation) => println!("\n## etcd requests per operation ({operation})\n"),
            None => println!("\n## etcd requests per operation\n"),
        }
        let unary: Vec<&str> = Requests::UNARY_NAMES.to_vec();
        println!(
            "| variant | ops | requests | {} | other | Watch streams | watch events | raft proposals | mvcc range/put/delete | unsynced watchers (mean) |",
            unary.join(" | ")
        );
        println!(
            "|---|---:|---:|{}---:|---:|---:|---:|---:|---:|",
            "---:|".repeat(unary.len())
        );
        for row in &self.requests {
            let r = &row.per_op;
            let unary: Vec<String> = r.unary.iter().map(|v| format!("{v:.2}")).collect();
            // Nothing to divide by: the counts are the rounds' totals.
            let variant = if row.ops == 0 {
                format!("{} (no operation completed: totals)", row.variant)
            } else {
                row.variant.clone()
            };
            println!(
                "| {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} / {:.2} | {} |",
                variant,
                row.ops,
                r.total(),
                unary.join(" | "),
                r.other_unary,
                r.watch_streams,
                r.watch_events,
                r.raft_proposals,
                r.mvcc_range,
                r.mvcc_put,
                r.mvcc_delete,
                row.unsynced.map_or("—".to_owned(), |u| format!("{u:.1}")),
            );
        }

        if !self.notes.is_empty() {
            println!("\n## Notes\n");
            for note in &self.notes {
                println!("- {note}");
            }
        }
    }
}
