//! Agreements and suspensions. An agreement is kept whole as a JSON
//! document beside the columns that are queried; offers are inserted
//! under the capacity ledger's lock, so that two replicas cannot promise
//! the same capacity twice.

use sqlx::Row;
use time::OffsetDateTime;
use vws_model::agreement::{Agreement, AgreementState};

use crate::db::{from_millis, millis, Store, StoreError};

/// The row of `owner_locks` that serializes changes to reserved capacity.
const LEDGER: &str = "*capacity ledger*";

/// A best-effort workspace checked in to make room for an agreement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suspension {
    /// The workspace.
    pub workspace: String,
    /// The agreement it made room for.
    pub agreement: String,
    /// The node it was on.
    pub node: String,
    /// What it was doing: `running` or `paused` (a VM, resumed as it was)
    /// or `stopped` (a dynamic account, started again).
    pub was: String,
    /// When.
    pub at: OffsetDateTime,
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Agreement, StoreError> {
    let doc: String = row.try_get("doc")?;
    serde_json::from_str(&doc).map_err(|e| {
        StoreError::Conflict(format!("an agreement's stored document is unreadable: {e}"))
    })
}

const HOLDING: &str = "state IN ('offered', 'reserved', 'active')";

impl Store {
    /// Inserts the offer `plan` makes from the agreements holding capacity
    /// at some point of `[from, to)`, read under the ledger's lock (so none
    /// can be added meanwhile); `plan` may instead say why there is none.
    pub async fn insert_agreement_planned<E>(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
        plan: impl FnOnce(&[Agreement]) -> Result<Agreement, E>,
    ) -> Result<Result<Agreement, E>, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO owner_locks (owner) VALUES ($1) ON CONFLICT (owner) DO NOTHING")
            .bind(LEDGER)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE owner_locks SET creates = creates + 1 WHERE owner = $1")
            .bind(LEDGER)
            .execute(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT doc FROM agreements WHERE {HOLDING} AND start_at < $1 AND end_at > $2"
        ))
        .bind(millis(to))
        .bind(millis(from))
        .fetch_all(&mut *tx)
        .await?;
        let held = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let a = match plan(&held) {
            Ok(a) => a,
            Err(why) => return Ok(Err(why)),
        };
        sqlx::query(
            "INSERT INTO agreements (id, owner, state, start_at, end_at, doc, version, modified_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&a.id)
        .bind(&a.owner)
        .bind(a.state.as_str())
        .bind(millis(a.start))
        .bind(millis(a.end))
        .bind(serde_json::to_string(&a).expect("agreements serialize"))
        .bind(a.version)
        .bind(millis(a.history.last().map(|e| e.at).unwrap_or(a.start)))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(a))
    }

    /// One agreement.
    pub async fn agreement(&self, id: &str) -> Result<Option<Agreement>, StoreError> {
        let row = sqlx::query("SELECT doc FROM agreements WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode).transpose()
    }

    /// An owner's agreements (everyone's for `None`), by start.
    pub async fn agreements_of(&self, owner: Option<&str>) -> Result<Vec<Agreement>, StoreError> {
        let rows = match owner {
            Some(o) => {
                sqlx::query("SELECT doc FROM agreements WHERE owner = $1 ORDER BY start_at, id")
                    .bind(o)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT doc FROM agreements ORDER BY start_at, id")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(decode).collect()
    }

    /// The agreements in `states`, by start.
    pub async fn agreements_in(
        &self,
        states: &[AgreementState],
    ) -> Result<Vec<Agreement>, StoreError> {
        let list: Vec<String> = states.iter().map(|s| format!("'{}'", s.as_str())).collect();
        let rows = sqlx::query(&format!(
            "SELECT doc FROM agreements WHERE state IN ({}) ORDER BY start_at, id",
            list.join(", ")
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// The agreements holding capacity at some point of `[from, to)`.
    pub async fn agreements_holding(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<Vec<Agreement>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT doc FROM agreements WHERE {HOLDING} AND start_at < $1 AND end_at > $2 ORDER BY start_at, id"
        ))
        .bind(millis(to))
        .bind(millis(from))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Writes changed agreements in one transaction, each only if nobody
    /// changed it since it was read (its version); bumps their versions.
    pub async fn update_agreements(&self, all: &mut [&mut Agreement]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for a in all.iter_mut() {
            let read = a.version;
            a.version += 1;
            let done = sqlx::query(
                "UPDATE agreements SET state = $1, start_at = $2, end_at = $3, doc = $4, version = $5, modified_at = $6 \
                 WHERE id = $7 AND version = $8",
            )
            .bind(a.state.as_str())
            .bind(millis(a.start))
            .bind(millis(a.end))
            .bind(serde_json::to_string(&**a).expect("agreements serialize"))
            .bind(a.version)
            .bind(millis(a.history.last().map(|e| e.at).unwrap_or(a.start)))
            .bind(&a.id)
            .bind(read)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                a.version = read;
                return Err(StoreError::Conflict(format!(
                    "agreement {} was changed meanwhile; read it again",
                    a.id
                )));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a best-effort workspace's suspension.
    pub async fn insert_suspension(&self, s: &Suspension) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO suspensions (workspace_id, agreement_id, node, was, at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (workspace_id) DO UPDATE SET agreement_id = $2, node = $3, at = $5",
        )
        .bind(&s.workspace)
        .bind(&s.agreement)
        .bind(&s.node)
        .bind(&s.was)
        .bind(millis(s.at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The suspended workspaces, longest suspended first.
    pub async fn suspensions(&self) -> Result<Vec<Suspension>, StoreError> {
        let rows = sqlx::query(
            "SELECT workspace_id, agreement_id, node, was, at FROM suspensions ORDER BY at, workspace_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Suspension {
                    workspace: r.try_get("workspace_id")?,
                    agreement: r.try_get("agreement_id")?,
                    node: r.try_get("node")?,
                    was: r.try_get("was")?,
                    at: from_millis(r.try_get("at")?),
                })
            })
            .collect()
    }

    /// Forgets a suspension (resumed, or its workspace went).
    pub async fn remove_suspension(&self, workspace: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM suspensions WHERE workspace_id = $1")
            .bind(workspace)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
