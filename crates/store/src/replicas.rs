//! Service replicas' leases: each replica renews its row while it runs, so
//! any replica can tell whether the one that wrote an intent is alive.

use sqlx::Row;
use time::OffsetDateTime;

use crate::db::{from_millis, millis, Store, StoreError};

/// A replica that holds a lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaRecord {
    /// The replica's instance id (the intents' `pending_by`).
    pub instance: String,
    /// The URL it serves the API at.
    pub url: String,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Until when its lease runs unless it renews it.
    #[serde(with = "time::serde::rfc3339")]
    pub alive_until: OffsetDateTime,
}

impl Store {
    /// Takes or renews replica `instance`'s lease until `until`.
    pub async fn renew_replica(
        &self,
        instance: &str,
        url: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replicas (instance, url, started_at, alive_until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (instance) DO UPDATE SET alive_until = $4, url = $2",
        )
        .bind(instance)
        .bind(url)
        .bind(millis(now))
        .bind(millis(until))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Gives up replica `instance`'s lease (it stops cleanly), or forgets
    /// every other replica's (`others`: this process is known to be the
    /// only one, as on SQLite).
    pub async fn retire_replicas(&self, instance: &str, others: bool) -> Result<(), StoreError> {
        let sql = if others {
            "DELETE FROM replicas WHERE instance <> $1"
        } else {
            "DELETE FROM replicas WHERE instance = $1"
        };
        sqlx::query(sql)
            .bind(instance)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The replicas whose leases run past `now`, and the expired ones
    /// forgotten an hour after their end.
    pub async fn live_replicas(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<ReplicaRecord>, StoreError> {
        sqlx::query("DELETE FROM replicas WHERE alive_until < $1")
            .bind(millis(now - time::Duration::hours(1)))
            .execute(&self.writer)
            .await?;
        let rows = sqlx::query(
            "SELECT instance, url, started_at, alive_until FROM replicas \
             WHERE alive_until > $1 ORDER BY started_at, instance",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReplicaRecord {
                    instance: r.try_get("instance")?,
                    url: r.try_get("url")?,
                    started_at: from_millis(r.try_get("started_at")?),
                    alive_until: from_millis(r.try_get("alive_until")?),
                })
            })
            .collect()
    }
}
