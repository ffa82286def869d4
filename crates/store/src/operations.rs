//! Long-running operations, one JSON document each: any replica reads
//! how far one has come.

use sqlx::Row;
use vws_model::records::Operation;

use crate::db::{millis, Store, StoreError};

impl Store {
    /// Writes an operation (inserted, or its new progress) that replica
    /// `by` runs.
    pub async fn put_operation(&self, op: &Operation, by: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO operations (id, owner, doc, created_at, modified_at, replica) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET doc = $3, modified_at = $5, replica = $6",
        )
        .bind(&op.id)
        .bind(&op.owner)
        .bind(serde_json::to_string(op).expect("operations serialize"))
        .bind(millis(op.created_at))
        .bind(millis(op.modified_at))
        .bind(by)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// One operation, and whether the replica running it holds its lease
    /// at `now`.
    pub async fn operation(
        &self,
        id: &str,
        now: time::OffsetDateTime,
    ) -> Result<Option<(Operation, bool)>, StoreError> {
        let row = sqlx::query(
            "SELECT doc, (SELECT COUNT(*) FROM replicas r WHERE r.instance = o.replica AND r.alive_until > $2) AS alive \
             FROM operations o WHERE id = $1",
        )
        .bind(id)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let doc: String = r.try_get("doc")?;
            let alive = r.try_get::<i64, _>("alive")? > 0;
            let op = serde_json::from_str(&doc).map_err(|e| {
                StoreError::Conflict(format!("an operation's stored document is unreadable: {e}"))
            })?;
            Ok((op, alive))
        })
        .transpose()
    }

    /// Forgets operations last changed before `before`; how many.
    pub async fn prune_operations(&self, before: time::OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM operations WHERE modified_at < $1")
            .bind(millis(before))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
