//! The API's request counters and durations, kept between scrapes (the
//! rest of the metrics are read at each scrape: `metrics.rs`).

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// A metric's labels.
pub(crate) type Labels = Vec<(String, String)>;

/// What the reaper counts (`vws_reaper_actions_total{action}`).
pub const REAPER_ACTIONS: [&str; 8] = [
    "destroy",
    "blob",
    "history",
    "event",
    "session",
    "node_lost",
    "idempotency_key",
    "operation",
];

/// The metrics kept between scrapes.
#[derive(Clone)]
pub struct Metrics {
    requests: Family<Labels, Counter>,
    durations: Family<Labels, Histogram>,
    staged: Counter,
    reaped: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            // 1 ms to ~16 s.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            staged: Counter::default(),
            reaped: {
                // Every action shown from the start, at zero.
                let f = Family::<Labels, Counter>::default();
                for action in REAPER_ACTIONS {
                    let _ = f.get_or_create(&vec![("action".to_string(), action.to_string())]);
                }
                f
            },
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics { .. }")
    }
}

impl Metrics {
    pub(crate) fn requests(&self) -> Family<Labels, Counter> {
        self.requests.clone()
    }

    pub(crate) fn durations(&self) -> Family<Labels, Histogram> {
        self.durations.clone()
    }

    pub(crate) fn staged(&self) -> Counter {
        self.staged.clone()
    }

    pub(crate) fn reaped(&self) -> Family<Labels, Counter> {
        self.reaped.clone()
    }

    /// Counts bytes a deploy moved to a node (what it had cached is not).
    pub fn staged_bytes(&self, bytes: u64) {
        self.staged.inc_by(bytes);
    }

    /// Counts what the reaper did, by action.
    pub fn reaper(&self, action: &str, n: u64) {
        if n > 0 {
            self.reaped
                .get_or_create(&vec![("action".to_string(), action.to_string())])
                .inc_by(n);
        }
    }

    /// Counts and times one served request.
    pub fn observe(&self, route: &str, method: &str, status: u16, started: Instant) {
        let route = vec![
            ("route".to_string(), route.to_string()),
            ("method".to_string(), method.to_string()),
        ];
        let mut with_status = route.clone();
        with_status.push(("status".into(), status.to_string()));
        self.requests.get_or_create(&with_status).inc();
        self.durations
            .get_or_create(&route)
            .observe(started.elapsed().as_secs_f64());
    }
}
