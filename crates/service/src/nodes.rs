//! The service's view of the VW Managers: registration, heartbeats, loss,
//! unasked events, and placement of workspaces onto nodes.

use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vws_model::node::{NodeEvent, NodeReport, Registration};
use vws_model::{Action, Description, State};
use vws_store::{Binding, Change, NodeRecord, WorkspaceRecord};

use crate::core::Service;
use crate::error::ServiceError;

/// How long a call waits, right after the service started, for a node to
/// report before it is called at the address it had.
pub const NODE_REPORTS_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// A node is lost when it has not sent a heartbeat for this long.
pub const LOST_AFTER: Duration = Duration::from_secs(10);

/// RAM a node keeps for itself when binding a workspace's range.
pub(crate) const HOST_RESERVE: u64 = 256 << 20;

/// A node as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// The record.
    #[serde(flatten)]
    pub record: NodeRecord,
    /// `up` or `lost`.
    pub status: String,
}

impl Service {
    fn node_view(&self, record: NodeRecord) -> NodeView {
        let age = self.clock.now() - record.last_seen;
        let lost =
            age > time::Duration::try_from(LOST_AFTER).unwrap_or(time::Duration::seconds(10));
        NodeView {
            status: if lost { "lost" } else { "up" }.into(),
            record,
        }
    }

    /// Every node with its status.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ServiceError> {
        Ok(self
            .store
            .nodes()
            .await?
            .into_iter()
            .map(|r| self.node_view(r))
            .collect())
    }

    /// A live node by name. Right after this service started, a node not
    /// heard from since is waited for (up to [`NODE_REPORTS_WITHIN`]): one
    /// that restarted with it (`vws up`) is at a new address, which its
    /// registration brings.
    pub(crate) async fn live_node(&self, name: &str) -> Result<NodeRecord, ServiceError> {
        let read = || async {
            self.store
                .node(name)
                .await?
                .ok_or_else(|| ServiceError::NotFound(format!("node {name} not found")))
        };
        let mut record = read().await?;
        let deadline = tokio::time::Instant::now() + NODE_REPORTS_WITHIN;
        while record.last_seen < self.opened_at && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            record = read().await?;
        }
        let view = self.node_view(record);
        if view.status == "lost" {
            return Err(ServiceError::Unavailable(format!(
                "node {name} is lost (no heartbeat for {}s)",
                LOST_AFTER.as_secs()
            )));
        }
        Ok(view.record)
    }

    /// A node (re)registers. Interrupted actions are settled first; then
    /// workspaces the records place on it as running or paused but which it
    /// no longer has (and no unsettled action explains) are corrupted:
    /// their VM did not survive whatever restarted the node.
    pub async fn register_node(&self, reg: Registration) -> Result<(), ServiceError> {
        if crate::path_params::check_param("name", &reg.name).is_err() {
            return Err(ServiceError::BadRequest(format!(
                "{:?} is not a node name (1 to 63 letters, digits, '.', '_' or '-', from a letter or digit)",
                reg.name
            )));
        }
        self.store
            .register_node(&reg.name, &reg.url, &reg.report, self.clock.now())
            .await?;
        tracing::info!(node = %reg.name, url = %reg.url, accel = %reg.report.accel, "node registered");
        self.reconcile(&reg.name, &reg.report).await?;
        self.remove_strays(&reg).await;
        for r in self.store.workspaces_on_node(&reg.name).await? {
            if !matches!(r.state, State::Running | State::Paused) {
                continue;
            }
            let there = reg.report.workspaces.get(&r.id).map(String::as_str);
            // One with an action still in flight (a migration that could not
            // be settled yet) is the reconciler's to decide.
            if !matches!(there, Some("running" | "paused"))
                && self.store.pending(&r.id).await?.is_none()
            {
                let reason = format!("node {} restarted and the workspace's VM is gone", reg.name);
                self.corrupt(&r.id, &reason, &format!("node:{}", reg.name))
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes what a node holds that no record places there and no action
    /// in flight explains: a deploy rolled back while the node was down, a
    /// workspace destroyed meanwhile. The records are the truth.
    async fn remove_strays(&self, reg: &Registration) {
        for id in reg.report.workspaces.keys() {
            let stray = match self.store.workspace(id).await {
                Ok(None) => true,
                Ok(Some(r)) => {
                    r.node.as_deref() != Some(reg.name.as_str())
                        && r.lock_holder.as_deref() != Some(reg.name.as_str())
                        && matches!(self.store.pending(id).await, Ok(None))
                }
                Err(_) => false,
            };
            if !stray {
                continue;
            }
            tracing::info!(%id, node = %reg.name, "removing a workspace no record places on the node");
            let removed = match self.live_node(&reg.name).await {
                Ok(node) => self.nodes.remove(&node, id).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(%id, node = %reg.name, error = %e, "could not remove a stray workspace");
            }
        }
    }

    /// A node's heartbeat.
    pub async fn node_heartbeat(&self, name: &str, report: NodeReport) -> Result<(), ServiceError> {
        if self
            .store
            .node_heartbeat(name, &report, self.clock.now())
            .await?
        {
            self.reconcile(name, &report).await
        } else {
            Err(ServiceError::NotFound(format!(
                "node {name} is not registered"
            )))
        }
    }

    /// A node reports that a workspace's VM died unasked.
    /// One whose stop a killed service process had asked for ended as
    /// that stop, not as a corruption.
    pub async fn node_event(&self, name: &str, ev: NodeEvent) -> Result<(), ServiceError> {
        match self.store.workspace(&ev.id).await? {
            Some(mut r) if r.node.as_deref() == Some(name) => {
                let stopping = self.store.pending(&ev.id).await?;
                let orphaned_stop = matches!(&stopping, Some((vws_model::records::HistoryAction::Stop, by)) if *by != self.instance);
                if orphaned_stop && r.state == State::Running {
                    r.binding.forwards.clear();
                    let detail =
                        format!("the stop ended on node {name} while the service was down");
                    return self
                        .commit(r, Action::Stop, "reconciler", Some(detail))
                        .await
                        .map(drop);
                }
                self.corrupt(&ev.id, &ev.reason, &format!("node:{name}"))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Marks a workspace corrupted with a reason (from any state).
    pub(crate) async fn corrupt(
        &self,
        id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<(), ServiceError> {
        for _ in 0..5 {
            let Some(mut r) = self.store.workspace(id).await? else {
                return Ok(());
            };
            if r.state == State::Corrupted {
                return Ok(());
            }
            vws_model::transition(r.state, r.placement, Action::Corrupt)?;
            r.state = State::Corrupted;
            r.reason = Some(reason.to_string());
            r.modified_at = self.clock.now();
            match self
                .store
                .update_workspace(
                    &mut r,
                    Change {
                        action: vws_model::records::HistoryAction::Corrupt,
                        actor,
                        detail: Some(reason.to_string()),
                    },
                )
                .await
            {
                Ok(()) => {
                    tracing::warn!(%id, %reason, "workspace corrupted");
                    return Ok(());
                }
                Err(vws_store::StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict(format!(
            "workspace {id} keeps changing; could not mark it corrupted"
        )))
    }

    /// Picks a node for a workspace and binds its ranges there: a live node
    /// with room, preferring one that already holds the image, then the one
    /// with most free RAM.
    pub(crate) async fn place(
        &self,
        r: &WorkspaceRecord,
        host: Option<&str>,
    ) -> Result<(NodeRecord, Binding), ServiceError> {
        let candidates: Vec<NodeRecord> = match host {
            Some(h) => vec![self.live_node(h).await?],
            None => self
                .nodes()
                .await?
                .into_iter()
                .filter(|n| n.status == "up")
                .map(|n| n.record)
                .collect(),
        };
        if candidates.is_empty() {
            return Err(ServiceError::Unavailable(
                "no node is up to deploy on (start one with `vws node --service URL`)".into(),
            ));
        }
        let account = r.description.category == vws_model::Category::DynamicAccount;
        if account && candidates.iter().all(|n| n.report.accounts.is_none()) {
            return Err(ServiceError::Node {
                node: host.unwrap_or("any").into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_capacity".into(),
                message: match host {
                    Some(h) => format!("node {h} runs no dynamic accounts (a node needs root and cgroups; see its log)"),
                    None => "no node that is up runs dynamic accounts (a node needs root and cgroups; see its log)".into(),
                },
            });
        }
        // Capacity reserved by agreements in their time, not yet taken by
        // their workspaces, is not given to anyone else.
        let reserved = self.reserved_pending_by_node().await?;
        let mut fitting: Vec<(NodeRecord, Binding)> = Vec::new();
        for n in candidates {
            if account && n.report.accounts.is_none() {
                continue;
            }
            let mut report = n.report.clone();
            report.ram_free = report
                .ram_free
                .saturating_sub(reserved.get(&n.name).copied().unwrap_or(0));
            if let Some(b) = bind(&r.description, &report) {
                fitting.push((n, b));
            }
        }
        fitting.sort_by_key(|(n, _)| {
            (
                !n.report.images.contains(&r.image_id),
                std::cmp::Reverse(n.report.ram_free),
            )
        });
        match fitting.into_iter().next() {
            Some(found) => Ok(found),
            None => Err(ServiceError::Node {
                node: host.unwrap_or("any").into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_capacity".into(),
                message: format!(
                    "no node has room for {} cpus and {} of RAM",
                    r.description.hardware.cpus.min,
                    r.description.hardware.ram.min.human()
                ),
            }),
        }
    }
}

/// Binds a description's ranges to what a node offers: as much as asked, up
/// to what is free; `None` when even the minimum does not fit.
pub fn bind(d: &Description, n: &NodeReport) -> Option<Binding> {
    let ram_room = n.ram_free.saturating_sub(HOST_RESERVE);
    if ram_room < d.hardware.ram.min.0 || n.cores < d.hardware.cpus.min {
        return None;
    }
    Some(Binding {
        cpus: Some(d.hardware.cpus.max.min(n.cores)),
        ram: Some(d.hardware.ram.max.0.min(ram_room)),
        disk: None,
        forwards: Vec::new(),
    })
}
