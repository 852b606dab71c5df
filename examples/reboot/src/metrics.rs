//! Prometheus metrics of the FleetLock server (`GET /metrics`, OpenMetrics text).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `coord_reboot_requests_total` | `operation` (`pre_reboot`, `steady_state`), `outcome` (`ok` or an error kind) | FleetLock requests answered |
//! | `coord_reboot_group_holders` | `group` | holders of each configured group, read from etcd at scrape time |
//! | `coord_reboot_group_slots` | `group` | slots of each configured group, read from etcd at scrape time |
//! | `coord_reboot_etcd_up` | | 1 when the last scrape could read etcd, else 0 |
//!
//! Holders and slots are read from etcd when scraped, not counted locally, so every replica
//! reports the same numbers, whichever replica took the slots.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

/// The server's metrics, in a registry of their own (several servers can live in one process).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    holders: Family<GroupLabels, Gauge>,
    slots: Family<GroupLabels, Gauge>,
    etcd_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("coord_reboot");
        let requests = Family::<RequestLabels, Counter>::default();
        let holders = Family::<GroupLabels, Gauge>::default();
        let slots = Family::<GroupLabels, Gauge>::default();
        let etcd_up = Gauge::default();
        registry.register(
            "requests",
            "FleetLock requests answered, by operation and outcome",
            requests.clone(),
        );
        registry.register(
            "group_holders",
            "Holders of each reboot group (read from etcd)",
            holders.clone(),
        );
        registry.register(
            "group_slots",
            "Slots of each reboot group (read from etcd)",
            slots.clone(),
        );
        registry.register(
            "etcd_up",
            "Whether the last scrape could read etcd",
            etcd_up.clone(),
        );
        Metrics {
            registry,
            requests,
            holders,
            slots,
            etcd_up,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, operation: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// Replaces the group gauges with these `(group, holders, slots)` readings, or marks etcd down
    /// (`None`), dropping the gauges of groups no longer listed.
    pub fn set_groups(&self, groups: Option<&[(String, usize, u32)]>) {
        self.holders.clear();
        self.slots.clear();
        let Some(groups) = groups else {
            self.etcd_up.set(0);
            return;
        };
        self.etcd_up.set(1);
        for (group, holders, slots) in groups {
            let labels = GroupLabels {
                group: group.clone(),
            };
            self.holders
                .get_or_create(&labels)
                .set(i64::try_from(*holders).unwrap_or(i64::MAX));
            self.slots.get_or_create(&labels).set(i64::from(*slots));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
