//! etcd's own request counters, read from its Prometheus `/metrics` before and after each round.
//!
//! The diff of two scrapes says what a variant cost the server: gRPC requests per method
//! (`grpc_server_handled_total`, exported per method with `--metrics=extensive`), watch streams
//! opened (`grpc_server_started_total{grpc_method="Watch"}`), watch events delivered, raft
//! proposals, and mvcc-level operations. The mvcc counters also see the work the server's Lock RPC
//! does through its in-process client, which bypasses the gRPC counters.

use std::collections::HashMap;

/// One scrape (or a difference of scrapes): series (`name{labels}`) to value.
#[derive(Debug, Clone, Default)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses Prometheus text exposition (etcd's has no timestamps).
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse::<f64>().ok()?))
            })
            .collect();
        Scrape(series)
    }

    /// `self − earlier`, series by series.
    pub fn since(&self, earlier: &Scrape) -> Scrape {
        let diff = self
            .0
            .iter()
            .map(|(series, value)| {
                let before = earlier.0.get(series).copied().unwrap_or(0.0);
                (series.clone(), value - before)
            })
            .collect();
        Scrape(diff)
    }

    /// Adds another diff to this one.
    pub fn add(&mut self, other: &Scrape) {
        for (series, value) in &other.0 {
            *self.0.entry(series.clone()).or_insert(0.0) += value;
        }
    }

    /// The sum over every series of metric `name` carrying all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.0
            .iter()
            .filter(|(series, _)| {
                let (metric, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                metric == name && wanted.iter().all(|label| has_label(rest, label))
            })
            .map(|(_, value)| value)
            // An empty f64 sum is -0.0; print it as 0.
            .sum::<f64>()
            + 0.0
    }
}

/// Whether `label` (`key="value"`) is one of the comma-separated pairs of a label set.
fn has_label(label_set: &str, label: &str) -> bool {
    label_set
        .trim_end_matches('}')
        .split(',')
        .any(|pair| pair == label)
}

/// The gauge of watchers in etcd's "unsynced" group: watchers created at a revision that was no
/// longer the newest, which a background loop catches up every 100 ms — until then their events
/// wait.
pub const UNSYNCED_WATCHERS: &str = "etcd_debugging_mvcc_slow_watcher_total";

/// What a metered window measured.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Counters after − counters before.
    pub diff: Scrape,
    /// Samples of [`UNSYNCED_WATCHERS`] taken during the window (none when not sampled).
    pub unsynced: Vec<f64>,
}

/// The unary methods reported one by one; the rest is summed as "other".
pub const NAMED_UNARY: [&str; 10] = [
    "Range",
    "Txn",
    "Put",
    "DeleteRange",
    "LeaseGrant",
    "LeaseRevoke",
    "Lock",
    "Unlock",
    "Campaign",
    "Resign",
];

/// What the server did during a window, from a diff of two scrapes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requests {
    /// Handled unary requests, in the order of [`NAMED_UNARY`].
    pub unary: [f64; NAMED_UNARY.len()],
    /// Handled unary requests of any other method.
    pub other_unary: f64,
    /// Watch streams opened (etcd-client opens one gRPC stream per `watch()` call).
    pub watch_streams: f64,
    /// Watch events sent to watchers (`etcd_debugging_mvcc_events_total`).
    pub watch_events: f64,
    /// Raft proposals committed: every write, plus lease grants and revokes.
    pub raft_proposals: f64,
    /// mvcc-level reads (these include the server-side Lock/Campaign RPCs' own requests, and the
    /// compares of transactions).
    pub mvcc_range: f64,
    /// mvcc-level puts.
    pub mvcc_put: f64,
    /// mvcc-level deletes.
    pub mvcc_delete: f64,
}

impl Requests {
    /// The column names of [`NAMED_UNARY`], for tables.
    pub const UNARY_NAMES: [&'static str; NAMED_UNARY.len()] = NAMED_UNARY;

    /// The counts of a diff of two scrapes.
    pub fn from_diff(diff: &Scrape) -> Requests {
        let handled = |method: &str| {
            diff.sum(
                "grpc_server_handled_total",
                &[("grpc_method", method), ("grpc_type", "unary")],
            )
        };
        let unary = NAMED_UNARY.map(handled);
        let all_unary = diff.sum("grpc_server_handled_total", &[("grpc_type", "unary")]);
        Requests {
            unary,
            other_unary: all_unary - unary.iter().sum::<f64>(),
            watch_streams: diff.sum("grpc_server_started_total", &[("grpc_method", "Watch")]),
            watch_events: diff.sum("etcd_debugging_mvcc_events_total", &[]),
            raft_proposals: diff.sum("etcd_server_proposals_committed_total", &[]),
            mvcc_range: diff.sum("etcd_mvcc_range_total", &[]),
            mvcc_put: diff.sum("etcd_mvcc_put_total", &[]),
            mvcc_delete: diff.sum("etcd_mvcc_delete_total", &[]),
        }
    }

    /// Client requests: every unary request plus every watch stream opened.
    pub fn total(&self) -> f64 {
        self.unary.iter().sum::<f64>() + self.other_unary + self.watch_streams
    }

    /// Every count divided by `ops`.
    pub fn per(&self, ops: u64) -> Requests {
        let n = ops.max(1) as f64;
        Requests {
            unary: self.unary.map(|v| v / n),
            other_unary: self.other_unary / n,
            watch_streams: self.watch_streams / n,
            watch_events: self.watch_events / n,
            raft_proposals: self.raft_proposals / n,
            mvcc_range: self.mvcc_range / n,
            mvcc_put: self.mvcc_put / n,
            mvcc_delete: self.mvcc_delete / n,
        }
    }
}
