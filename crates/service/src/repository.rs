//! The VW Repository (paper §3.1): inspect, list, renew and destroy
//! workspaces, apply lifecycle transitions, and reap expired ones.

use time::Duration;
use vws_model::{transition, Action, Identity};
use vws_store::{Change, Filter, Page, TransitionRecord};

use crate::core::{Service, Workspace};
use crate::error::ServiceError;

/// The actor name recorded when the reaper destroys a workspace.
pub const REAPER: &str = "reaper";

impl Service {
    /// One workspace the caller may see.
    pub(crate) async fn workspace(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Workspace, ServiceError> {
        Ok(self.view(self.visible(who, id).await?))
    }

    /// Workspaces the caller may see: their own, or everyone's for an admin.
    pub(crate) async fn list(
        &self,
        who: &Identity,
        mut filter: Filter,
    ) -> Result<Page<Workspace>, ServiceError> {
        if !who.is_admin() {
            match &filter.owner {
                Some(o) if *o != who.dn => {
                    return Ok(Page {
                        items: Vec::new(),
                        next: None,
                    })
                }
                _ => filter.owner = Some(who.dn.clone()),
            }
        }
        let page = self.store.list_workspaces(&filter).await?;
        Ok(Page {
            items: page.items.into_iter().map(|r| self.view(r)).collect(),
            next: page.next,
        })
    }

    /// The workspace's history of transitions.
    pub(crate) async fn history(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Vec<TransitionRecord>, ServiceError> {
        self.visible(who, id).await?;
        Ok(self.store.history(id).await?)
    }

    /// Sets a new termination time, `seconds` from now, within the owner's
    /// maximum lifetime.
    pub(crate) async fn renew(
        &self,
        who: &Identity,
        id: &str,
        seconds: u64,
    ) -> Result<Workspace, ServiceError> {
        let mut r = self.visible(who, id).await?;
        let max = self.policy.limits_for(&r.owner).max_lifetime;
        if seconds == 0 {
            return Err(ServiceError::BadRequest(
                "a renewal must be for at least one second".into(),
            ));
        }
        if seconds > max {
            return Err(ServiceError::Policy(format!(
                "a lifetime of {seconds}s is longer than the {max}s allowed for {}",
                r.owner
            )));
        }
        let now = self.clock.now();
        let until = now + Duration::seconds(seconds as i64);
        r.terminates_at = Some(until);
        r.modified_at = now;
        let detail = Some(format!(
            "until {}",
            until
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ));
        self.store
            .update_workspace(
                &mut r,
                Change {
                    action: vws_model::records::HistoryAction::Renew,
                    actor: &who.dn,
                    detail,
                },
            )
            .await?;
        Ok(self.view(r))
    }

    /// Applies a lifecycle action to the record: checked against the
    /// transition table first, written only as the action's result. Drivers
    /// call this after the action really happened. `None` means destroyed.
    /// Only tests call it directly (feature `testing`): everything else
    /// changes a workspace through a [`crate::command::Command`].
    #[cfg(feature = "testing")]
    pub async fn record_transition(
        &self,
        who: &Identity,
        id: &str,
        action: Action,
        detail: Option<String>,
    ) -> Result<Option<Workspace>, ServiceError> {
        let mut r = self.visible(who, id).await?;
        match transition(r.state, r.placement, action)? {
            vws_model::Outcome::Gone => {
                self.remove(&r, &who.dn).await?;
                Ok(None)
            }
            vws_model::Outcome::To(state, _) => {
                r.reason = if state == vws_model::State::Corrupted {
                    detail.clone()
                } else {
                    None
                };
                Ok(Some(self.commit(r, action, &who.dn, detail).await?))
            }
        }
    }

    /// Destroys a workspace: the record goes first (so no record ever points
    /// at a missing disk), then its disk.
    pub(crate) async fn destroy(&self, who: &Identity, id: &str) -> Result<(), ServiceError> {
        let r = self.visible(who, id).await?;
        self.remove(&r, &who.dn).await
    }

    async fn remove(
        &self,
        r: &vws_store::WorkspaceRecord,
        actor: &str,
    ) -> Result<(), ServiceError> {
        transition(r.state, r.placement, Action::Destroy)?;
        // An intent first: a service killed while the node removes it
        // finishes the destroy at its next start (`reconcile`), rather than
        // finding the workspace gone from its node and calling it corrupted.
        self.store
            .set_pending(
                &r.id,
                self.intent_of(vws_model::records::HistoryAction::Destroy),
            )
            .await?;
        self.finish_destroy(r, actor).await
    }

    /// The rest of a destroy whose intent is recorded (by this process, or
    /// by one that was killed).
    pub(crate) async fn finish_destroy(
        &self,
        r: &vws_store::WorkspaceRecord,
        actor: &str,
    ) -> Result<(), ServiceError> {
        // Off its node first: a running VM must not outlive its record.
        if let Err(e) = self.unstage_for_destroy(r).await {
            self.store.clear_pending(&r.id).await?;
            return Err(e);
        }
        let now = self.clock.now();
        let deleted = self
            .store
            .delete_workspace(
                r,
                now,
                Change {
                    action: vws_model::records::HistoryAction::Destroy,
                    actor,
                    detail: None,
                },
            )
            .await;
        if let Err(e) = deleted {
            // Changed meanwhile: the caller decides again, no intent left.
            self.store.clear_pending(&r.id).await?;
            return Err(e.into());
        }
        let _ = tokio::fs::remove_file(self.memory_path(&r.id)).await;
        // Its credential ends with it.
        let _ = tokio::fs::remove_dir_all(self.credentials_dir(&r.id)).await;
        let _ = tokio::fs::remove_file(self.disk_key_path(&r.id)).await;
        // Its addresses go back to their pools.
        if let Err(e) = self.store.release_addresses(&r.id).await {
            tracing::warn!(id = %r.id, error = %e, "could not release addresses (the next start retries)");
        }
        // Its account was emptied by the node (processes, mounts, cgroups, disk).
        if let Err(e) = self.store.release_account(&r.id).await {
            tracing::warn!(id = %r.id, error = %e, "could not release the account lease (the next start retries)");
        }
        if let Some(p) = &r.disk_path {
            if let Err(e) = tokio::fs::remove_file(p).await {
                // The record is gone; the next start's garbage collection retries.
                tracing::warn!(path = %p, error = %e, "could not remove a destroyed workspace's disk");
            }
        }
        tracing::info!(id = %r.id, %actor, "workspace destroyed");
        Ok(())
    }

    /// Destroys every workspace whose termination time has passed; returns
    /// the ids destroyed.
    pub async fn reap(&self) -> Result<Vec<String>, ServiceError> {
        let now = self.clock.now();
        let mut gone = Vec::new();
        for r in self.store.expired(now).await? {
            match self.remove(&r, REAPER).await {
                Ok(()) => gone.push(r.id),
                // Renewed or changed meanwhile: look again next round.
                Err(ServiceError::Conflict(_)) => {}
                Err(e) => {
                    tracing::warn!(id = %r.id, error = %e, "reaper could not destroy a workspace")
                }
            }
        }
        let m = &self.metrics;
        m.reaper("destroy", gone.len() as u64);
        match self.collect_orphan_blobs().await {
            Ok(n) => m.reaper("blob", n as u64),
            Err(e) => tracing::warn!(error = %e, "reaper could not collect unused blobs"),
        }
        match self.store.prune_history(now - HISTORY_RETENTION).await {
            Ok(0) => {}
            Ok(n) => {
                m.reaper("history", n);
                tracing::info!(
                    entries = n,
                    "removed the history of long-destroyed workspaces"
                )
            }
            Err(e) => tracing::warn!(error = %e, "reaper could not prune history"),
        }
        match self.store.prune_ui_secrets(now).await {
            Ok(n) => m.reaper("session", n),
            Err(e) => {
                tracing::warn!(error = %e, "reaper could not forget expired dashboard sessions")
            }
        }
        match self.store.prune_events(now - HISTORY_RETENTION).await {
            Ok(n) => m.reaper("event", n),
            Err(e) => tracing::warn!(error = %e, "reaper could not prune events"),
        }
        match self
            .store
            .prune_idempotency(now - crate::idempotency::KEPT_FOR)
            .await
        {
            Ok(n) => m.reaper("idempotency_key", n),
            Err(e) => tracing::warn!(error = %e, "reaper could not forget old idempotency keys"),
        }
        match self.store.prune_operations(now - OPERATIONS_KEPT_FOR).await {
            Ok(n) => m.reaper("operation", n),
            Err(e) => tracing::warn!(error = %e, "reaper could not forget old operations"),
        }
        // A node's loss becomes an event once.
        let silent_since = now - crate::nodes::LOST_AFTER;
        for n in self.store.nodes().await? {
            if n.last_seen < silent_since {
                match self.store.mark_node_lost(&n.name, silent_since, now).await {
                    Ok(true) => {
                        m.reaper("node_lost", 1);
                        tracing::warn!(node = %n.name, "node lost")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(node = %n.name, error = %e, "could not record a lost node")
                    }
                }
            }
        }
        Ok(gone)
    }

    /// Removes pool blobs no image names that are older than
    /// [`ORPHAN_BLOB_GRACE`]: what an interrupted upload or snapshot left
    /// (a blob uploaded for an import that has not come yet is younger).
    /// Returns how many went.
    pub async fn collect_orphan_blobs(&self) -> Result<usize, ServiceError> {
        let used: std::collections::HashSet<String> =
            self.store.referenced_blobs().await?.into_iter().collect();
        let now = self.clock.now();
        let mut removed = 0;
        for d in self.blobs.list().await? {
            if used.contains(d.as_str()) {
                continue;
            }
            let modified = match tokio::fs::metadata(self.blobs.path(&d)).await {
                Ok(m) => m.modified().map(time::OffsetDateTime::from),
                Err(_) => continue,
            };
            let Ok(modified) = modified else { continue };
            if now - modified < ORPHAN_BLOB_GRACE {
                continue;
            }
            // Named by an image meanwhile (an import of an hour-old upload
            // racing this round)?
            let named = self
                .store
                .referenced_blobs()
                .await?
                .iter()
                .any(|b| b == d.as_str());
            if named {
                continue;
            }
            tracing::info!(digest = %d, "removing a blob no image names");
            self.blobs.remove(&d).await?;
            removed += 1;
        }
        Ok(removed)
    }
}

/// How long the history of a destroyed workspace is kept (then the reaper
/// removes it). Live workspaces keep all of theirs.
pub const HISTORY_RETENTION: time::Duration = time::Duration::days(30);

/// How long a finished operation's record is kept.
pub const OPERATIONS_KEPT_FOR: time::Duration = time::Duration::days(1);

/// How old a blob no image names must be before the reaper removes it.
pub const ORPHAN_BLOB_GRACE: time::Duration = time::Duration::hours(1);

/// Runs the reaper every `every` until `shutdown` resolves, on one
/// replica at a time.
pub async fn run_reaper(
    service: std::sync::Arc<Service>,
    every: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::singleton::run_led(service, "reaper", every, shutdown, |service| async move {
        match service.reap().await {
            Ok(gone) if !gone.is_empty() => {
                tracing::info!(count = gone.len(), "reaper destroyed expired workspaces")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reaper round failed"),
        }
    })
    .await
}
