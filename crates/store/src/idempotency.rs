//! Idempotency keys: the first request with a key claims it, its answer is
//! kept, and a retry with the same key and the same request gets that
//! answer back, from any replica.

use sqlx::Row;
use time::OffsetDateTime;

use crate::db::{millis, Store, StoreError};

/// What a claimed key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// First use: run the request, then [`Store::finish_idempotency`].
    New,
    /// Answered before: the status, media type and body to give again.
    Replay {
        /// HTTP status.
        status: u16,
        /// Its media type.
        content_type: Option<String>,
        /// Its body.
        body: String,
    },
    /// The first request with this key is still being handled.
    InProgress,
    /// The key was used for another request.
    Mismatch,
}

/// How long a claim may go unanswered before a retry takes it over even
/// though its replica still renews its lease (the request is taken to have
/// hung); a claim whose replica's lease ran out is taken over at once.
pub const ABANDONED_AFTER: time::Duration = time::Duration::minutes(10);

impl Store {
    /// Claims `key` of `owner` for the request whose digest is
    /// `fingerprint`, to be handled by `replica`.
    pub async fn claim_idempotency(
        &self,
        owner: &str,
        key: &str,
        fingerprint: &str,
        replica: &str,
        now: OffsetDateTime,
    ) -> Result<Claim, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency (owner, key, fingerprint, created_at, replica) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (owner, key) DO NOTHING",
        )
        .bind(owner)
        .bind(key)
        .bind(fingerprint)
        .bind(millis(now))
        .bind(replica)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        let row = sqlx::query(
            "SELECT fingerprint, status, content_type, body, created_at, \
             (SELECT COUNT(*) FROM replicas r WHERE r.instance = i.replica AND r.alive_until > $3) AS alive \
             FROM idempotency i WHERE owner = $1 AND key = $2",
        )
        .bind(owner)
        .bind(key)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            // Forgotten between the two statements: claim it again.
            return Box::pin(self.claim_idempotency(owner, key, fingerprint, replica, now)).await;
        };
        if row.try_get::<String, _>("fingerprint")? != fingerprint {
            return Ok(Claim::Mismatch);
        }
        let claimed_at: i64 = row.try_get("created_at")?;
        let replica_alive = row.try_get::<i64, _>("alive")? > 0;
        Ok(match row.try_get::<Option<i64>, _>("status")? {
            // A claim whose replica died (or that hung for so long): the
            // retry takes it over (once: the time must still match).
            None if !replica_alive || claimed_at < millis(now - ABANDONED_AFTER) => {
                let taken = sqlx::query(
                    "UPDATE idempotency SET created_at = $1, replica = $5 \
                     WHERE owner = $2 AND key = $3 AND status IS NULL AND created_at = $4",
                )
                .bind(millis(now))
                .bind(owner)
                .bind(key)
                .bind(claimed_at)
                .bind(replica)
                .execute(&self.writer)
                .await?;
                if taken.rows_affected() == 1 {
                    Claim::New
                } else {
                    Claim::InProgress
                }
            }
            None => Claim::InProgress,
            Some(status) => Claim::Replay {
                status: status as u16,
                content_type: row.try_get("content_type")?,
                body: row
                    .try_get::<Option<String>, _>("body")?
                    .unwrap_or_default(),
            },
        })
    }

    /// Keeps the answer of a claimed key.
    pub async fn finish_idempotency(
        &self,
        owner: &str,
        key: &str,
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency SET status = $1, content_type = $2, body = $3 WHERE owner = $4 AND key = $5",
        )
        .bind(status as i64)
        .bind(content_type)
        .bind(body)
        .bind(owner)
        .bind(key)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Lets a key go (its request failed on the server's side: a retry
    /// runs again).
    pub async fn forget_idempotency(&self, owner: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency WHERE owner = $1 AND key = $2")
            .bind(owner)
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Forgets keys claimed before `before`; returns how many.
    pub async fn prune_idempotency(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM idempotency WHERE created_at < $1")
            .bind(millis(before))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
