//! Node records: where each VW Manager is and what it last reported.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use time::OffsetDateTime;
use vws_model::node::NodeReport;

use crate::db::{from_millis, millis, Store, StoreError};

/// A node as the repository knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// Name.
    pub name: String,
    /// Base URL of its API.
    pub url: String,
    /// Its last report.
    pub report: NodeReport,
    /// When it (last) registered.
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Its last heartbeat.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// The event of a node's status.
async fn node_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: crate::db::Backend,
    at: OffsetDateTime,
    name: &str,
    status: &str,
) -> Result<(), StoreError> {
    let data = serde_json::json!({ "node": name, "status": status });
    crate::events::emit(
        tx,
        backend,
        at,
        vws_model::records::EventKind::Node,
        name,
        Some(crate::events::ADMINISTRATORS),
        data,
    )
    .await
    .map(drop)
}

impl Store {
    /// Records that a node not heard from since `silent_since` is lost, once
    /// (until it is heard from again); true if this call recorded it.
    pub async fn mark_node_lost(
        &self,
        name: &str,
        silent_since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE nodes SET lost = 1 WHERE name = $1 AND lost = 0 AND last_seen < $2",
        )
        .bind(name)
        .bind(millis(silent_since))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            node_event(&mut tx, self.backend(), now, name, "lost").await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a node's registration (replacing an earlier one of that name).
    pub async fn register_node(
        &self,
        name: &str,
        url: &str,
        report: &NodeReport,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let report = serde_json::to_string(report).expect("reports serialize");
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO nodes (name, url, report, registered_at, last_seen, lost) VALUES ($1, $2, $3, $4, $4, 0) \
             ON CONFLICT (name) DO UPDATE SET url = excluded.url, report = excluded.report, \
             registered_at = excluded.registered_at, last_seen = excluded.last_seen, lost = 0",
        )
        .bind(name)
        .bind(url)
        .bind(report)
        .bind(millis(now))
        .execute(&mut *tx)
        .await?;
        node_event(&mut tx, self.backend(), now, name, "up").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a heartbeat; false if the node is not registered.
    pub async fn node_heartbeat(
        &self,
        name: &str,
        report: &NodeReport,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let report = serde_json::to_string(report).expect("reports serialize");
        // The common case in one statement: a node that is up stays up.
        let quick = sqlx::query(
            "UPDATE nodes SET report = $1, last_seen = $2 WHERE name = $3 AND lost = 0",
        )
        .bind(&report)
        .bind(millis(now))
        .bind(name)
        .execute(&self.writer)
        .await?;
        if quick.rows_affected() == 1 {
            return Ok(true);
        }
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query("UPDATE nodes SET report = $1, last_seen = $2 WHERE name = $3")
            .bind(report)
            .bind(millis(now))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // Heard from again after it was reported lost: it is up.
        let back = sqlx::query("UPDATE nodes SET lost = 0 WHERE name = $1 AND lost = 1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if back.rows_affected() == 1 {
            node_event(&mut tx, self.backend(), now, name, "up").await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, url, report, registered_at, last_seen FROM nodes ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                let report: String = row.try_get("report")?;
                Ok(NodeRecord {
                    report: serde_json::from_str(&report)
                        .map_err(|e| StoreError::corrupt(&name, e))?,
                    url: row.try_get("url")?,
                    registered_at: from_millis(row.try_get("registered_at")?),
                    last_seen: from_millis(row.try_get("last_seen")?),
                    name,
                })
            })
            .collect()
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.nodes().await?.into_iter().find(|n| n.name == name))
    }
}
