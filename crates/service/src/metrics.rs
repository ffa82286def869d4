//! Prometheus metrics (prometheus-client, OpenMetrics text): the API's
//! requests, counted and timed as they are served, and at each scrape what
//! the repository knows — workspaces by state and category, nodes by
//! status, running jobs — and what each node last reported of its running
//! workspaces (CPU seconds, resident memory). docs/metrics.md.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::Service;
use crate::error::ServiceError;
use crate::request_metrics::Labels;
pub use crate::request_metrics::Metrics;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Service {
    /// The metrics (kept between scrapes).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Every metric in the OpenMetrics text format, as of now.
    pub async fn metrics_text(&self) -> Result<String, ServiceError> {
        let mut registry = Registry::default();
        registry.register(
            "vws_http_requests",
            "API requests served, by route, method and status",
            self.metrics.requests(),
        );
        registry.register(
            "vws_http_request_duration_seconds",
            "Time to serve an API request, by route and method",
            self.metrics.durations(),
        );

        registry.register(
            "vws_staging_bytes",
            "Bytes deploys moved to nodes (pool files and disks; what a node had cached is not sent)",
            self.metrics.staged(),
        );
        registry.register(
            "vws_reaper_actions",
            "What the reaper did, by action: destroy (an expired workspace), blob (an unused pool blob), history, event, session (expired ones forgotten), node_lost",
            self.metrics.reaped(),
        );

        let workspaces = Family::<Labels, Gauge>::default();
        for w in self.all_workspaces().await? {
            workspaces
                .get_or_create(&labels(&[
                    ("state", w.state.as_str()),
                    ("category", w.description.category.as_str()),
                ]))
                .inc();
        }
        registry.register(
            "vws_workspaces",
            "Workspaces in the repository, by state and category",
            workspaces,
        );

        let nodes = Family::<Labels, Gauge>::default();
        let cpu = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let memory = Family::<Labels, Gauge>::default();
        let bytes = || Family::<Labels, Counter>::default();
        let (block_read, block_write, net_rx, net_tx) = (bytes(), bytes(), bytes(), bytes());
        for n in self.nodes().await? {
            nodes
                .get_or_create(&labels(&[("status", n.status.as_str())]))
                .inc();
            for (id, u) in &n.record.report.usage {
                let l = labels(&[("workspace", id), ("node", &n.record.name)]);
                cpu.get_or_create(&l).inc_by(u.cpu_seconds);
                memory.get_or_create(&l).set(u.memory_bytes as i64);
                block_read.get_or_create(&l).inc_by(u.block_read_bytes);
                block_write.get_or_create(&l).inc_by(u.block_write_bytes);
                net_rx.get_or_create(&l).inc_by(u.net_rx_bytes);
                net_tx.get_or_create(&l).inc_by(u.net_tx_bytes);
            }
        }
        registry.register("vws_nodes", "Nodes, by status", nodes);
        registry.register(
            "vws_workspace_cpu_seconds",
            "CPU time a running workspace has used (its QEMU, or its account's processes), as its node last reported",
            cpu,
        );
        registry.register(
            "vws_workspace_memory_bytes",
            "Resident memory of a running workspace, as its node last reported",
            memory,
        );
        registry.register(
            "vws_workspace_block_read_bytes",
            "Bytes a running workspace has read from its disks (QEMU's block statistics, or its cgroup's I/O), as its node last reported",
            block_read,
        );
        registry.register(
            "vws_workspace_block_written_bytes",
            "Bytes a running workspace has written to its disks, as its node last reported",
            block_write,
        );
        registry.register(
            "vws_workspace_network_receive_bytes",
            "Bytes a running workspace's interfaces have received (the guest's or the namespace's counters, loopback aside), as its node last reported",
            net_rx,
        );
        registry.register(
            "vws_workspace_network_transmit_bytes",
            "Bytes a running workspace's interfaces have sent, as its node last reported",
            net_tx,
        );
        let running = Gauge::<i64>::default();
        running.set(self.store.running_jobs().await? as i64);
        registry.register("vws_jobs_running", "Jobs running now", running);

        let mut out = String::new();
        encode(&mut out, &registry).map_err(|e| ServiceError::Internal(anyhow::anyhow!("{e}")))?;
        Ok(out)
    }
}
