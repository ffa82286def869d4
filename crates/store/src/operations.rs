//! Long-running operations, one JSON document each: any replica reads
//! how far one has come.

use sqlx::Row;
use vws_model::records::Operation;

use crate::db::{millis, Store, StoreError};

impl Store {
    /// Writes an operation (inserted, or its new progress).
    pub async fn put_operation(&self, op: &Operation) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO operations (id, owner, doc, created_at, modified_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET doc = $3, modified_at = $5",
        )
        .bind(&op.id)
        .bind(&op.owner)
        .bind(serde_json::to_string(op).expect("operations serialize"))
        .bind(millis(op.created_at))
        .bind(millis(op.modified_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One operation.
    pub async fn operation(&self, id: &str) -> Result<Option<Operation>, StoreError> {
        let row = sqlx::query("SELECT doc FROM operations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let doc: String = r.try_get("doc")?;
            serde_json::from_str(&doc).map_err(|e| {
                StoreError::Conflict(format!("an operation's stored document is unreadable: {e}"))
            })
        })
        .transpose()
    }

    /// Forgets operations last changed before `before`; how many.
    pub async fn prune_operations(&self, before: time::OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM operations WHERE modified_at < $1")
            .bind(millis(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
