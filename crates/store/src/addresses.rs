//! The address pool's records: which workspace holds which address of which
//! network. Allocation picks the lowest free candidate and relies on the
//! primary key to refuse a second holder, retrying on a lost race.

use sqlx::Row;
use time::OffsetDateTime;

use crate::db::{from_millis, millis, pick_free, Store, StoreError};
pub use vws_model::records::Address;

fn decode(row: &sqlx::any::AnyRow) -> Result<Address, StoreError> {
    Ok(Address {
        network: row.try_get("network")?,
        address: row.try_get("address")?,
        workspace_id: row.try_get("workspace_id")?,
        nic: row.try_get("nic")?,
        mac: row.try_get("mac")?,
        allocated_at: from_millis(row.try_get("allocated_at")?),
    })
}

const COLUMNS: &str = "network, address, workspace_id, nic, mac, allocated_at";

impl Store {
    /// Takes the first of `candidates` that no one holds in `network`;
    /// `None` when all are taken.
    pub async fn allocate_address(
        &self,
        network: &str,
        candidates: &[String],
        workspace_id: &str,
        nic: &str,
        mac: &str,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        for attempt in 0..64 {
            let used: std::collections::HashSet<String> =
                sqlx::query_scalar("SELECT address FROM addresses WHERE network = $1")
                    .bind(network)
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .collect();
            let Some(free) = pick_free(candidates.iter().filter(|c| !used.contains(*c)), attempt)
            else {
                return Ok(None);
            };
            let inserted = sqlx::query(&format!(
                "INSERT INTO addresses ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
            ))
            .bind(network)
            .bind(free)
            .bind(workspace_id)
            .bind(nic)
            .bind(mac)
            .bind(millis(now))
            .execute(&self.writer)
            .await;
            match inserted.map_err(|e| StoreError::from_insert(e, || free.clone())) {
                Ok(_) => return Ok(Some(free.clone())),
                // Someone took it between our read and our insert: look again.
                Err(StoreError::Duplicate(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict(format!(
            "could not allocate an address in {network}: too many concurrent allocations"
        )))
    }

    /// Gives back every address a workspace holds.
    pub async fn release_addresses(&self, workspace_id: &str) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM addresses WHERE workspace_id = $1")
            .bind(workspace_id)
            .execute(&self.writer)
            .await?;
        Ok(r.rows_affected())
    }

    /// Addresses in use, in one network or all, ordered.
    pub async fn addresses(&self, network: Option<&str>) -> Result<Vec<Address>, StoreError> {
        let rows = match network {
            Some(n) => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM addresses WHERE network = $1 ORDER BY network, allocated_at, address"
            ))
            .bind(n)
            .fetch_all(&self.pool)
            .await?,
            None => sqlx::query(&format!(
                "SELECT {COLUMNS} FROM addresses ORDER BY network, allocated_at, address"
            ))
            .fetch_all(&self.pool)
            .await?,
        };
        rows.iter().map(decode).collect()
    }

    /// The addresses a workspace holds.
    pub async fn addresses_of(&self, workspace_id: &str) -> Result<Vec<Address>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM addresses WHERE workspace_id = $1 ORDER BY nic"
        ))
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Releases addresses whose workspace has no record (a crash between
    /// allocation and the record's insert); returns how many.
    pub async fn release_orphan_addresses(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM addresses WHERE workspace_id NOT IN (SELECT id FROM workspaces)",
        )
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected())
    }
}
