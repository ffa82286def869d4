//! Job records.

use sqlx::any::AnyRow;
use sqlx::Row;

use time::OffsetDateTime;

use crate::db::{from_millis, millis, Store, StoreError};
pub use vws_model::records::JobRecord;

const COLUMNS: &str =
    "id, workspace_id, owner, node, argv, state, exit_code, signal, timed_out, message, cancelled, output_bytes, created_at, ended_at";

fn decode(row: &AnyRow) -> Result<JobRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let argv: String = row.try_get("argv")?;
    Ok(JobRecord {
        workspace_id: row.try_get("workspace_id")?,
        owner: row.try_get("owner")?,
        node: row.try_get("node")?,
        argv: serde_json::from_str(&argv).map_err(|e| StoreError::corrupt(&id, e))?,
        state: {
            let state: String = row.try_get("state")?;
            vws_model::records::JobState::parse(&state)
                .ok_or_else(|| StoreError::corrupt(&id, format!("{state:?} is not a job state")))?
        },
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|v| v as i32),
        signal: row.try_get::<Option<i64>, _>("signal")?.map(|v| v as i32),
        timed_out: row.try_get::<i64, _>("timed_out")? != 0,
        message: row.try_get("message")?,
        cancelled: row.try_get::<i64, _>("cancelled")? != 0,
        output_bytes: row.try_get::<i64, _>("output_bytes")? as u64,
        created_at: from_millis(row.try_get("created_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(from_millis),
        id,
    })
}

/// The event of a job's record: its state now.
async fn job_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: crate::db::Backend,
    at: OffsetDateTime,
    j: &JobRecord,
) -> Result<(), StoreError> {
    let data = serde_json::json!({
        "job": j.id,
        "workspace": j.workspace_id,
        "state": j.state.as_str(),
        "exit_code": j.exit_code,
        "signal": j.signal,
    });
    crate::events::emit(
        tx,
        backend,
        at,
        vws_model::records::EventKind::Job,
        &j.id,
        Some(&j.owner),
        data,
    )
    .await
    .map(drop)
}

impl Store {
    /// Records a new job.
    pub async fn insert_job(&self, j: &JobRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(&format!("INSERT INTO jobs ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"))
            .bind(&j.id)
            .bind(&j.workspace_id)
            .bind(&j.owner)
            .bind(&j.node)
            .bind(serde_json::to_string(&j.argv).expect("argv serializes"))
            .bind(j.state.as_str())
            .bind(j.exit_code.map(i64::from))
            .bind(j.signal.map(i64::from))
            .bind(j.timed_out as i64)
            .bind(j.message.clone())
            .bind(j.cancelled as i64)
            .bind(j.output_bytes as i64)
            .bind(millis(j.created_at))
            .bind(j.ended_at.map(millis))
            .execute(&mut *tx)
            .await?;
        job_event(&mut tx, self.backend(), j.created_at, j).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes a job's changed fields.
    pub async fn update_job(&self, j: &JobRecord) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE jobs SET state = $1, exit_code = $2, signal = $3, timed_out = $4, message = $5, cancelled = $6, \
             output_bytes = $7, ended_at = $8 WHERE id = $9",
        )
        .bind(j.state.as_str())
        .bind(j.exit_code.map(i64::from))
        .bind(j.signal.map(i64::from))
        .bind(j.timed_out as i64)
        .bind(j.message.clone())
        .bind(j.cancelled as i64)
        .bind(j.output_bytes as i64)
        .bind(j.ended_at.map(millis))
        .bind(&j.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            let at = j.ended_at.unwrap_or_else(OffsetDateTime::now_utc);
            job_event(&mut tx, self.backend(), at, j).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves a workspace's running jobs to another node (after a migration:
    /// they go on there).
    pub async fn move_running_jobs(&self, workspace: &str, node: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE jobs SET node = $1 WHERE workspace_id = $2 AND state = 'running'")
            .bind(node)
            .bind(workspace)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// How many jobs are running now.
    pub async fn running_jobs(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// One job.
    pub async fn job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// A workspace's jobs, oldest first.
    pub async fn jobs_of(&self, workspace: &str) -> Result<Vec<JobRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE workspace_id = $1 ORDER BY created_at, id"
        ))
        .bind(workspace)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}
