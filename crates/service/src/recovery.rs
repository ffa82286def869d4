//! Recovery after a crash (the intent journal's other half): a service
//! process writes an intent before it asks a node for a lifecycle action
//! and clears it with the change that records the result. Intents left by a
//! process that is gone are settled here, by what the node reports when it
//! registers and at each heartbeat: finished where the node did the work,
//! rolled back where it did not, so every workspace stays drivable with the
//! ordinary commands and nothing is left locked or leased.

use vws_model::node::{MigrationDone, NodeReport};
use vws_model::records::{HistoryAction as H, JobState};
use vws_model::{State, Verb};
use vws_store::{Change, OrphanedIntent, WorkspaceRecord};

use crate::core::Service;
use crate::error::ServiceError;

/// Who the history names for what recovery records.
const RECONCILER: &str = "reconciler";

impl Service {
    /// Settles the intents a killed service process left on `node`'s
    /// workspaces (and on those it was checking out).
    pub(crate) async fn reconcile(
        &self,
        node: &str,
        report: &NodeReport,
    ) -> Result<(), ServiceError> {
        for o in self
            .store
            .orphaned_intents(node, &self.instance, self.clock.now())
            .await?
        {
            if let Some(action) = report.busy.get(&o.id) {
                // Still at it (its requests run to their end): settled
                // once the node is done.
                tracing::debug!(id = %o.id, %action, "the node is still acting on it");
                continue;
            }
            let Some(r) = self.store.workspace(&o.id).await? else {
                continue;
            };
            let settled = match o.action {
                H::Destroy => {
                    // Asked for and half done: finish it.
                    tracing::info!(id = %o.id, "finishing a destroy that was interrupted");
                    self.finish_destroy(&r, RECONCILER).await
                }
                H::Undeploy => self.settle_undeploy(&o.id, report).await,
                H::Deploy => self.settle_deploy(r, node, report).await,
                H::Migrate => self.settle_migration(r, &o, report).await,
                H::Start | H::Stop | H::Pause | H::Unpause => {
                    self.settle_transition(r, &o, node, report).await
                }
                _ => Ok(self.store.clear_pending(&o.id).await?),
            };
            match settled {
                // Changed meanwhile: that change ended the intent.
                Ok(()) | Err(ServiceError::Conflict(_)) => {}
                // A node that does not answer yet: the intent stays for a
                // later heartbeat, and the others are settled meanwhile.
                Err(e) => {
                    tracing::warn!(id = %o.id, action = o.action.as_str(), error = %e, "an interrupted action could not be settled yet")
                }
            }
        }
        Ok(())
    }

    /// The node lets a workspace go only once its disk (and memory) are
    /// checked in: gone from its report, the check-in happened; still
    /// there, it did not.
    async fn settle_undeploy(&self, id: &str, report: &NodeReport) -> Result<(), ServiceError> {
        if report.workspaces.contains_key(id) {
            return Ok(self.store.clear_pending(id).await?);
        }
        tracing::info!(%id, "an interrupted undeploy happened; recorded");
        self.finish_undeploy(id, RECONCILER).await.map(drop)
    }

    /// A start or unpause whose workspace runs, a pause whose workspace is
    /// paused, a stop whose workspace is shut down happened, and is
    /// recorded now; anything else did not, and the record stays.
    async fn settle_transition(
        &self,
        mut r: WorkspaceRecord,
        o: &OrphanedIntent,
        node: &str,
        report: &NodeReport,
    ) -> Result<(), ServiceError> {
        let verb = match o.action {
            H::Start => Verb::Start,
            H::Stop => Verb::Stop,
            H::Pause => Verb::Pause,
            _ => Verb::Unpause,
        };
        let there = report.workspaces.get(&r.id).map(String::as_str);
        if verb == Verb::Stop && there == Some("running") {
            // The guest was asked to power off and may still do so: the
            // node's word that it ended (`node_event`) is then a stop.
            return Ok(());
        }
        let done = match verb {
            Verb::Start | Verb::Unpause => there == Some("running"),
            Verb::Pause => there == Some("paused"),
            _ => there == Some("shutdown"),
        };
        if !done || vws_model::transition(r.state, r.placement, verb.action()).is_err() {
            tracing::info!(id = %r.id, verb = verb.as_str(), ?there, "an interrupted action did not happen; forgotten");
            return Ok(self.store.clear_pending(&r.id).await?);
        }
        if verb == Verb::Stop {
            r.binding.forwards.clear();
        }
        let detail = format!(
            "{} finished on node {node} while the service was down",
            verb.as_str()
        );
        tracing::info!(id = %r.id, verb = verb.as_str(), "an interrupted action happened; recorded");
        self.commit(r, verb.action(), RECONCILER, Some(detail))
            .await
            .map(drop)
    }

    /// An interrupted check-out is rolled back: what the node staged goes
    /// (it never ran, so nothing is lost), then the lock and the lease. A
    /// node still staging is left to finish first.
    async fn settle_deploy(
        &self,
        r: WorkspaceRecord,
        node: &str,
        report: &NodeReport,
    ) -> Result<(), ServiceError> {
        let n = self.live_node(node).await?;
        if report.workspaces.contains_key(&r.id) {
            self.nodes.remove(&n, &r.id).await?;
        } else if self.nodes.staging(&n, &r.id).await.is_ok() {
            return Ok(());
        }
        tracing::info!(id = %r.id, %node, "an interrupted deploy was rolled back");
        let why = format!(
            "the deploy to {node} was interrupted by a restart of the service; rolled back"
        );
        self.checkout_failed(r, RECONCILER, why).await
    }

    /// An interrupted migration: while the source still holds the guest
    /// (running or paused), the target's copy never ran, so it goes and the
    /// guest resumes on the source. Once the source has let go, the guest
    /// lives only on the target: the switch-over is finished there. Jobs
    /// that were handed over in the lost reply fail, saying so.
    async fn settle_migration(
        &self,
        mut r: WorkspaceRecord,
        o: &OrphanedIntent,
        report: &NodeReport,
    ) -> Result<(), ServiceError> {
        let (Some(source), Some(to)) = (r.node.clone(), o.to.clone()) else {
            return Ok(self.store.clear_pending(&r.id).await?);
        };
        // Both nodes must answer and be done with it; until then this waits.
        let target = self.live_node(&to).await?;
        if target.last_seen < self.opened_at || target.report.busy.contains_key(&r.id) {
            return Err(ServiceError::Unavailable(format!(
                "node {to} has not reported since the service started, or is still receiving {}",
                r.id
            )));
        }
        let running = r.state == State::Running;
        let held = matches!(
            report.workspaces.get(&r.id).map(String::as_str),
            Some("running" | "paused")
        );
        if held {
            match self.nodes.remove(&target, &r.id).await {
                Ok(()) => {}
                Err(ServiceError::Node { code, .. }) if code == "not_deployed" => {}
                Err(e) => return Err(e),
            }
            let src = self.live_node(&source).await?;
            if running && report.workspaces.get(&r.id).map(String::as_str) == Some("paused") {
                self.nodes
                    .transition(&src, &r.id, Verb::Unpause, None)
                    .await?;
            }
            r.modified_at = self.clock.now();
            let change = Change {
                action: H::MigrateFailed,
                actor: RECONCILER,
                detail: Some(format!(
                    "to {to}: interrupted by a restart of the service; rolled back, it runs on {source}"
                )),
            };
            self.store.update_workspace(&mut r, change).await?;
            tracing::info!(id = %r.id, %source, %to, "an interrupted migration was rolled back");
            return Ok(());
        }
        let done = MigrationDone {
            jobs: Vec::new(),
            running,
        };
        self.nodes.finish_incoming(&target, &r.id, &done).await?;
        if report.workspaces.contains_key(&r.id) {
            // The source's leftover folder (its QEMU has ended).
            let src = self.live_node(&source).await?;
            self.nodes.remove(&src, &r.id).await?;
        }
        let lost = "lost: the migration that moved its workspace was interrupted";
        for mut j in self.store.jobs_of(&r.id).await? {
            if j.state == JobState::Running {
                j.state = JobState::Failed;
                j.message = Some(lost.into());
                j.ended_at = Some(self.clock.now());
                self.store.update_job(&j).await?;
            }
        }
        r.node = Some(to.clone());
        r.lock_holder = Some(to.clone());
        let detail = format!("from {source} to {to}, finished after a restart of the service");
        tracing::info!(id = %r.id, %source, %to, "an interrupted migration was finished");
        self.commit(r, vws_model::Action::Migrate, RECONCILER, Some(detail))
            .await
            .map(drop)
    }
}
