//! This replica's lease among the service's replicas: renewed every
//! [`RENEW_EVERY`] while the process runs, so that the others know its
//! intents are its own; a replica killed (`kill -9`, a lost host) stops
//! renewing, and once [`LEASE`] has passed, the next heartbeat of a node it
//! was acting on has another replica settle what it left (`recovery.rs`).

use std::future::Future;
use std::sync::Arc;

use vws_store::{Backend, ReplicaRecord};

use crate::core::Service;
use crate::error::ServiceError;

/// How long a replica's lease runs without a renewal: how soon after a
/// replica dies its actions in flight are settled by another.
pub const LEASE: time::Duration = time::Duration::seconds(5);

/// How often a replica renews its lease.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Service {
    /// Takes or renews this replica's lease.
    pub async fn renew_lease(&self) -> Result<(), ServiceError> {
        let now = self.clock.now();
        self.store
            .renew_replica(&self.instance, &self.public_url, now, now + LEASE)
            .await?;
        Ok(())
    }

    /// The replicas alive now (this one among them once it holds a lease).
    pub async fn replicas(&self) -> Result<Vec<ReplicaRecord>, ServiceError> {
        Ok(self.store.live_replicas(self.clock.now()).await?)
    }

    /// This replica's instance id (what its intents and `/v1/health` name).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether this process may clear what no record refers to (overlays,
    /// work folders, unheld leases): only while no other replica is alive,
    /// since one could be in the middle of making them. On SQLite this
    /// process is the only one (a second is refused), so leases left by its
    /// predecessors are forgotten first.
    pub(crate) async fn alone(&self) -> Result<bool, ServiceError> {
        if self.store.backend() == Backend::Sqlite {
            self.store.retire_replicas(&self.instance, true).await?;
            return Ok(true);
        }
        Ok(self
            .replicas()
            .await?
            .iter()
            .all(|r| r.instance == self.instance))
    }
}

/// Renews `service`'s lease every [`RENEW_EVERY`] until `shutdown`, then
/// gives it up (its intents are settled at once by whoever comes next).
pub async fn keep_lease(service: Arc<Service>, shutdown: impl Future<Output = ()>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if let Err(e) = service.renew_lease().await {
                    tracing::warn!(error = %e, "could not renew this replica's lease");
                }
            }
        }
    }
    if let Err(e) = service
        .store
        .retire_replicas(&service.instance, false)
        .await
    {
        tracing::warn!(error = %e, "could not give up this replica's lease");
    }
}
