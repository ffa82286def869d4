//! Loops that one replica runs at a time (the reaper, the agreements'
//! scheduler): each round, the replica holding the loop's lock (an
//! advisory lock on PostgreSQL; trivially this process on SQLite) runs it,
//! the others try for the lock, and one takes over when its holder dies.

use std::future::Future;
use std::sync::Arc;

use crate::core::Service;

/// Runs `round` every `every` while this replica leads `name`, until
/// `shutdown` resolves.
pub async fn run_led<F, Fut>(
    service: Arc<Service>,
    name: &'static str,
    every: std::time::Duration,
    shutdown: impl Future<Output = ()>,
    round: F,
) where
    F: Fn(Arc<Service>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut leading: Option<vws_store::Leadership> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if let Some(l) = &mut leading {
                    if !l.still_held().await {
                        tracing::warn!(%name, "the lock was lost with its database session");
                        leading = None;
                    }
                }
                if leading.is_none() {
                    match service.store().try_lead(name).await {
                        Ok(Some(l)) => {
                            tracing::info!(%name, "this replica runs it");
                            leading = Some(l);
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(%name, error = %e, "could not try for the lock");
                            continue;
                        }
                    }
                }
                round(service.clone()).await;
            }
        }
    }
}
