//! Leases of the account pool: which workspace holds which uid on which
//! node. Allocation takes the lowest free uid of the node's range and
//! relies on the primary key to refuse a second holder, retrying on a lost
//! race (as for addresses).

use sqlx::Row;
use time::OffsetDateTime;

use crate::db::{from_millis, millis, pick_free, Store, StoreError};
pub use vws_model::records::AccountLease;

fn decode(row: &sqlx::any::AnyRow) -> Result<AccountLease, StoreError> {
    let uid: i64 = row.try_get("uid")?;
    Ok(AccountLease {
        node: row.try_get("node")?,
        uid: uid as u32,
        workspace_id: row.try_get("workspace_id")?,
        leased_at: from_millis(row.try_get("leased_at")?),
    })
}

impl Store {
    /// Leases a uid of `first ..= last` on `node` to a workspace; a
    /// workspace that already holds one there keeps it. `None` when the
    /// range is used up.
    pub async fn lease_account(
        &self,
        node: &str,
        first: u32,
        last: u32,
        workspace_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<u32>, StoreError> {
        for attempt in 0..64 {
            if let Some(held) = self.account_of(workspace_id).await? {
                if held.node == node {
                    return Ok(Some(held.uid));
                }
                self.release_account(workspace_id).await?;
            }
            let used: std::collections::BTreeSet<i64> = sqlx::query_scalar(
                "SELECT uid FROM account_leases WHERE node = $1 AND uid >= $2 AND uid <= $3",
            )
            .bind(node)
            .bind(first as i64)
            .bind(last as i64)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
            let Some(free) = pick_free(
                (first as i64..=last as i64).filter(|u| !used.contains(u)),
                attempt,
            ) else {
                return Ok(None);
            };
            let inserted = sqlx::query(
                "INSERT INTO account_leases (node, uid, workspace_id, leased_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(node)
            .bind(free)
            .bind(workspace_id)
            .bind(millis(now))
            .execute(&self.writer)
            .await;
            match inserted.map_err(|e| StoreError::from_insert(e, || format!("uid {free}"))) {
                Ok(_) => return Ok(Some(free as u32)),
                // Someone took it (or this workspace raced itself): look again.
                Err(StoreError::Duplicate(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "could not lease an account on {node}: too many concurrent leases"
        )))
    }

    /// The lease a workspace holds, if any.
    pub async fn account_of(&self, workspace_id: &str) -> Result<Option<AccountLease>, StoreError> {
        let row = sqlx::query(
            "SELECT node, uid, workspace_id, leased_at FROM account_leases WHERE workspace_id = $1",
        )
        .bind(workspace_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Every lease, by node and uid.
    pub async fn account_leases(&self) -> Result<Vec<AccountLease>, StoreError> {
        let rows = sqlx::query(
            "SELECT node, uid, workspace_id, leased_at FROM account_leases ORDER BY node, uid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Returns a workspace's lease to the pool.
    pub async fn release_account(&self, workspace_id: &str) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM account_leases WHERE workspace_id = $1")
            .bind(workspace_id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected())
    }

    /// Releases leases whose workspace has no record or is no longer on a
    /// node (a crash between a check-in or destroy and the release);
    /// returns how many.
    pub async fn release_orphan_accounts(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM account_leases WHERE workspace_id NOT IN \
             (SELECT id FROM workspaces WHERE lock_holder IS NOT NULL OR node IS NOT NULL)",
        )
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }
}
