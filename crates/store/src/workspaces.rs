//! Workspace records and their history of transitions.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;
use vws_model::{Category, Placement, State};

use crate::db::{from_millis, millis, Store, StoreError};
pub use vws_model::records::{Binding, Page, TransitionRecord, WorkspaceRecord};

/// List filters.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this owner.
    pub owner: Option<String>,
    /// Only this state.
    pub state: Option<State>,
    /// Only this category.
    pub category: Option<Category>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
    /// Continue after this cursor (from a previous page).
    pub after: Option<String>,
}

const COLUMNS: &str = "id, name, owner, category, description, binding, state, placement, node, lock_holder, \
     lock_since, image_id, disk_path, reason, ram_bytes, created_at, terminates_at, modified_at, version";

fn state_of(id: &str, s: &str) -> Result<State, StoreError> {
    State::parse(s).ok_or_else(|| StoreError::corrupt(id, format!("unknown state {s:?}")))
}

fn decode(row: &AnyRow) -> Result<WorkspaceRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let description: String = row.try_get("description")?;
    let description =
        serde_json::from_str(&description).map_err(|e| StoreError::corrupt(&id, e))?;
    let binding: Option<String> = row.try_get("binding")?;
    let binding = match binding {
        Some(b) => serde_json::from_str(&b).map_err(|e| StoreError::corrupt(&id, e))?,
        None => Binding::default(),
    };
    let state = state_of(&id, &row.try_get::<String, _>("state")?)?;
    let placement = match row.try_get::<String, _>("placement")?.as_str() {
        "repository" => Placement::Repository,
        "host" => Placement::Host,
        other => {
            return Err(StoreError::corrupt(
                &id,
                format!("unknown placement {other:?}"),
            ))
        }
    };
    Ok(WorkspaceRecord {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        description,
        binding,
        state,
        placement,
        node: row.try_get("node")?,
        lock_holder: row.try_get("lock_holder")?,
        lock_since: row
            .try_get::<Option<i64>, _>("lock_since")?
            .map(from_millis),
        image_id: row.try_get("image_id")?,
        disk_path: row.try_get("disk_path")?,
        reason: row.try_get("reason")?,
        created_at: from_millis(row.try_get("created_at")?),
        terminates_at: row
            .try_get::<Option<i64>, _>("terminates_at")?
            .map(from_millis),
        modified_at: from_millis(row.try_get("modified_at")?),
        version: row.try_get("version")?,
        device_images: Vec::new(),
        id,
    })
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("records serialize to JSON")
}

/// An owner's limits, checked when a workspace is inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Most workspaces.
    pub max_workspaces: u64,
    /// Most RAM over all of them (each counted at its range's top), bytes.
    pub max_ram: u64,
}

/// The change an action makes to a record, written with its history entry.
#[derive(Clone, Debug)]
pub struct Change<'a> {
    /// What happened.
    pub action: vws_model::records::HistoryAction,
    /// Who asked.
    pub actor: &'a str,
    /// Anything worth keeping.
    pub detail: Option<String>,
}

/// An action in flight on a workspace: written before its node is asked,
/// cleared by the change that records its result.
#[derive(Clone, Copy, Debug)]
pub struct Intent<'a> {
    /// The action.
    pub action: vws_model::records::HistoryAction,
    /// The service process that asked for it.
    pub by: &'a str,
    /// The node it moves the workspace to, for a migration.
    pub to: Option<&'a str>,
}

/// An action in flight left by a service process that is gone.
#[derive(Clone, Debug, PartialEq)]
pub struct OrphanedIntent {
    /// The workspace.
    pub id: String,
    /// The action.
    pub action: vws_model::records::HistoryAction,
    /// The node it was moving the workspace to, for a migration.
    pub to: Option<String>,
}

impl Store {
    /// Inserts a new record and its `create` history entry, atomically.
    pub async fn insert_workspace(
        &self,
        r: &WorkspaceRecord,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        self.insert_workspace_admitted(r, change, None).await
    }

    /// [`Store::insert_workspace`] under the owner's quota, decided in the
    /// same transaction as the insert: the owner's row of `owner_locks`,
    /// which keeps its count of workspaces and RAM, is counted up first (a
    /// row lock on PostgreSQL, the database's write lock on SQLite), so
    /// concurrent creates of one owner, from any number of service
    /// processes, are counted one after another. With a
    /// quota (the factory's creates), the images it uses are locked too and
    /// must exist, so a concurrent removal of the last one waits, then sees
    /// this workspace. `OverQuota` says which limit.
    pub async fn insert_workspace_admitted(
        &self,
        r: &WorkspaceRecord,
        change: Change<'_>,
        quota: Option<Quota>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        // One statement locks the owner's row and counts this workspace in:
        // the counts it returns include it.
        let row = sqlx::query(
            "INSERT INTO owner_locks (owner, creates, workspaces, ram_bytes) VALUES ($1, 1, 1, $2) \
             ON CONFLICT (owner) DO UPDATE SET creates = owner_locks.creates + 1, \
             workspaces = owner_locks.workspaces + 1, ram_bytes = owner_locks.ram_bytes + $2 \
             RETURNING workspaces, ram_bytes",
        )
        .bind(&r.owner)
        .bind(r.ram_quota() as i64)
        .fetch_one(&mut *tx)
        .await?;
        let (count, ram) = (
            row.try_get::<i64, _>("workspaces")? as u64,
            row.try_get::<i64, _>("ram_bytes")? as u64,
        );
        if let Some(q) = quota {
            if count > q.max_workspaces {
                return Err(StoreError::OverQuota(format!(
                    "{} already has {} workspaces; the limit is {}",
                    r.owner,
                    count - 1,
                    q.max_workspaces
                )));
            }
            if ram > q.max_ram {
                return Err(StoreError::OverQuota(format!(
                    "{} would use {} of RAM with this workspace; the limit is {}",
                    r.owner,
                    vws_model::ByteSize(ram).human(),
                    vws_model::ByteSize(q.max_ram).human()
                )));
            }
        }
        let mut used: Vec<&String> = std::iter::once(&r.image_id)
            .chain(&r.device_images)
            .collect();
        used.sort();
        used.dedup();
        // Admitted creates (the factory's) hold their images against removal.
        for image in used.iter().filter(|_| quota.is_some()) {
            let locked = sqlx::query("UPDATE images SET id = id WHERE id = $1")
                .bind(*image)
                .execute(&mut *tx)
                .await?;
            if locked.rows_affected() == 0 {
                return Err(StoreError::Gone(format!(
                    "image {image} was removed meanwhile"
                )));
            }
        }
        sqlx::query(&format!(
            "INSERT INTO workspaces ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        ))
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.owner)
        .bind(r.description.category.as_str())
        .bind(json(&r.description))
        .bind(json(&r.binding))
        .bind(r.state.as_str())
        .bind(r.placement.as_str())
        .bind(r.node.clone())
        .bind(r.lock_holder.clone())
        .bind(r.lock_since.map(millis))
        .bind(&r.image_id)
        .bind(r.disk_path.clone())
        .bind(r.reason.clone())
        .bind(r.ram_quota() as i64)
        .bind(millis(r.created_at))
        .bind(r.terminates_at.map(millis))
        .bind(millis(r.modified_at))
        .bind(r.version)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::from_insert(e, || format!("a workspace named {:?} already exists", r.name)))?;
        for image in used {
            sqlx::query("INSERT INTO workspace_images (workspace_id, image_id) VALUES ($1, $2)")
                .bind(&r.id)
                .bind(image)
                .execute(&mut *tx)
                .await?;
        }
        insert_transition(
            &mut tx,
            &r.id,
            1,
            r.created_at,
            change.action,
            None,
            Some(r),
            change.actor,
            change.detail,
        )
        .await?;
        workspace_event(
            &mut tx,
            self.backend(),
            r.created_at,
            r,
            change.action,
            change.actor,
            true,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads one record.
    pub async fn workspace(&self, id: &str) -> Result<Option<WorkspaceRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM workspaces WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(mut r) = row.as_ref().map(decode).transpose()? else {
            return Ok(None);
        };
        r.device_images = sqlx::query_scalar("SELECT image_id FROM workspace_images WHERE workspace_id = $1 AND image_id <> $2 ORDER BY image_id")
            .bind(id)
            .bind(&r.image_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(Some(r))
    }

    /// The records placed on `node`.
    pub async fn workspaces_on_node(&self, node: &str) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM workspaces WHERE node = $1 ORDER BY created_at, id"
        ))
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Lists records in creation order, one page at a time.
    pub async fn list_workspaces(&self, f: &Filter) -> Result<Page<WorkspaceRecord>, StoreError> {
        let limit = f.limit.unwrap_or(100).clamp(1, 1000) as i64;
        enum Arg {
            Text(String),
            Int(i64),
        }
        let mut sql = format!("SELECT {COLUMNS} FROM workspaces WHERE 1 = 1");
        let mut args: Vec<Arg> = Vec::new();
        if let Some(o) = &f.owner {
            args.push(Arg::Text(o.clone()));
            sql.push_str(&format!(" AND owner = ${}", args.len()));
        }
        if let Some(s) = f.state {
            args.push(Arg::Text(s.as_str().into()));
            sql.push_str(&format!(" AND state = ${}", args.len()));
        }
        if let Some(c) = f.category {
            args.push(Arg::Text(c.as_str().into()));
            sql.push_str(&format!(" AND category = ${}", args.len()));
        }
        if let Some(cursor) = &f.after {
            let (ms, id) = cursor
                .split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)))
                .ok_or_else(|| StoreError::BadCursor(cursor.clone()))?;
            args.push(Arg::Int(ms));
            args.push(Arg::Text(id.to_string()));
            let (m, i) = (args.len() - 1, args.len());
            sql.push_str(&format!(
                " AND (created_at > ${m} OR (created_at = ${m} AND id > ${i}))"
            ));
        }
        sql.push_str(&format!(" ORDER BY created_at, id LIMIT {}", limit + 1));
        let mut q = sqlx::query(&sql);
        for a in args {
            q = match a {
                Arg::Text(t) => q.bind(t),
                Arg::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(&self.pool).await?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() as i64 > limit {
            items.truncate(limit as usize);
            items
                .last()
                .map(|r| format!("{}.{}", millis(r.created_at), r.id))
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// How many workspaces an owner has and how much RAM they may use.
    pub async fn owner_usage(&self, owner: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query("SELECT workspaces, ram_bytes FROM owner_locks WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => (
                row.try_get::<i64, _>("workspaces")? as u64,
                row.try_get::<i64, _>("ram_bytes")? as u64,
            ),
            None => (0, 0),
        })
    }

    /// Writes `next` over the stored record if nobody changed it since
    /// `next.version` was read, bumping the version and appending history.
    pub async fn update_workspace(
        &self,
        next: &mut WorkspaceRecord,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        self.update_workspace_intending(next, change, None).await
    }

    /// [`Store::update_workspace`] that also records an action now in
    /// flight (see [`Store::set_pending`]) in the same write: a crash
    /// cannot come between the change and its intent.
    pub async fn update_workspace_intending(
        &self,
        next: &mut WorkspaceRecord,
        change: Change<'_>,
        intent: Option<Intent<'_>>,
    ) -> Result<(), StoreError> {
        let before = next.version;
        // Read before the transaction, with the version: a read inside a
        // deferred SQLite transaction followed by a write fails with
        // SQLITE_BUSY_SNAPSHOT when another writer committed in between. The
        // version check below makes the pair exact.
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT state, version FROM workspaces WHERE id = $1")
                .bind(&next.id)
                .fetch_optional(&self.pool)
                .await?;
        let from = match row {
            Some((state, version)) if version == before => Some(state),
            Some(_) => return Err(StoreError::Conflict(next.id.clone())),
            None => None,
        };
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE workspaces SET name = $1, binding = $2, state = $3, placement = $4, node = $5, lock_holder = $6, \
             lock_since = $7, disk_path = $8, reason = $9, terminates_at = $10, modified_at = $11, version = version + 1, \
             pending = $14, pending_by = $15, pending_to = NULL WHERE id = $12 AND version = $13",
        )
        .bind(&next.name)
        .bind(json(&next.binding))
        .bind(next.state.as_str())
        .bind(next.placement.as_str())
        .bind(next.node.clone())
        .bind(next.lock_holder.clone())
        .bind(next.lock_since.map(millis))
        .bind(next.disk_path.clone())
        .bind(next.reason.clone())
        .bind(next.terminates_at.map(millis))
        .bind(millis(next.modified_at))
        .bind(&next.id)
        .bind(before)
        .bind(intent.map(|i| i.action.as_str()))
        .bind(intent.map(|i| i.by))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(next.id.clone()));
        }
        let seq = next_seq(&mut tx, &next.id).await?;
        insert_transition(
            &mut tx,
            &next.id,
            seq,
            next.modified_at,
            change.action,
            from,
            Some(next),
            change.actor,
            change.detail,
        )
        .await?;
        workspace_event(
            &mut tx,
            self.backend(),
            next.modified_at,
            next,
            change.action,
            change.actor,
            true,
        )
        .await?;
        tx.commit().await?;
        next.version = before + 1;
        Ok(())
    }

    /// Removes a record (if `version` still matches), keeping its history with a
    /// final `destroy` entry.
    pub async fn delete_workspace(
        &self,
        r: &WorkspaceRecord,
        at: OffsetDateTime,
        change: Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "DELETE FROM workspaces WHERE id = $1 AND version = $2 RETURNING owner, ram_bytes",
        )
        .bind(&r.id)
        .bind(r.version)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(done) = done else {
            return Err(StoreError::Conflict(r.id.clone()));
        };
        sqlx::query(
            "UPDATE owner_locks SET workspaces = workspaces - 1, ram_bytes = ram_bytes - $2 WHERE owner = $1",
        )
        .bind(done.try_get::<String, _>("owner")?)
        .bind(done.try_get::<i64, _>("ram_bytes")?)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM workspace_images WHERE workspace_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
        // Its jobs go with it, as their logs on the node do.
        sqlx::query("DELETE FROM jobs WHERE workspace_id = $1")
            .bind(&r.id)
            .execute(&mut *tx)
            .await?;
        let seq = next_seq(&mut tx, &r.id).await?;
        insert_transition(
            &mut tx,
            &r.id,
            seq,
            at,
            change.action,
            Some(r.state.as_str().into()),
            None,
            change.actor,
            change.detail,
        )
        .await?;
        workspace_event(
            &mut tx,
            self.backend(),
            at,
            r,
            change.action,
            change.actor,
            false,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the history of workspaces destroyed before `before` (their
    /// last entry is older): what the retention rule keeps is the history
    /// of live workspaces and of those destroyed since. Returns how many
    /// entries went.
    pub async fn prune_history(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM transitions WHERE workspace_id IN ( \
               SELECT t.workspace_id FROM transitions t \
               WHERE NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.id = t.workspace_id) \
               GROUP BY t.workspace_id HAVING MAX(t.at) < $1)",
        )
        .bind(millis(before))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records that `action` (a lifecycle verb, or a destroy) is being
    /// carried out by the service process `by` (the change recording its
    /// result clears it).
    pub async fn set_pending(&self, id: &str, intent: Intent<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workspaces SET pending = $1, pending_by = $2, pending_to = $3 WHERE id = $4",
        )
        .bind(intent.action.as_str())
        .bind(intent.by)
        .bind(intent.to)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets an action in flight that did not happen.
    pub async fn clear_pending(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workspaces SET pending = NULL, pending_by = NULL, pending_to = NULL WHERE id = $1",
        )
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Leaves an action whose outcome is unknown (its node could not
    /// answer) to the reconciler: no process owns it any more.
    pub async fn disown_pending(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workspaces SET pending_by = NULL WHERE id = $1 AND pending IS NOT NULL",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// The action in flight on a workspace, and the service process that
    /// asked for it.
    pub async fn pending(
        &self,
        id: &str,
    ) -> Result<Option<(vws_model::records::HistoryAction, String)>, StoreError> {
        let row = sqlx::query("SELECT pending, pending_by FROM workspaces WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let pending: Option<String> = row.try_get("pending")?;
        let by: Option<String> = row.try_get("pending_by")?;
        Ok(pending.and_then(|p| {
            let action = vws_model::records::HistoryAction::parse(&p)?;
            Some((action, by.unwrap_or_default()))
        }))
    }

    /// Actions in flight on `node`'s workspaces (and on those it was
    /// checking out) written by another service process than `by` whose
    /// lease has run out at `now` (one that was killed before it could
    /// record them), with the node each moves its workspace to, if any.
    pub async fn orphaned_intents(
        &self,
        node: &str,
        by: &str,
        now: time::OffsetDateTime,
    ) -> Result<Vec<OrphanedIntent>, StoreError> {
        // Another replica's intent stays its own while its lease runs.
        let rows = sqlx::query(
            "SELECT id, pending, pending_to FROM workspaces \
             WHERE (node = $1 OR (node IS NULL AND lock_holder = $1)) AND pending IS NOT NULL \
             AND (pending_by IS NULL OR (pending_by <> $2 AND pending_by NOT IN \
                 (SELECT instance FROM replicas WHERE alive_until > $3))) ORDER BY id",
        )
        .bind(node)
        .bind(by)
        .bind(crate::db::millis(now))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let pending: String = row.try_get("pending")?;
            let action = vws_model::records::HistoryAction::parse(&pending)
                .ok_or_else(|| StoreError::corrupt(&id, format!("{pending:?} is not an action")))?;
            let to: Option<String> = row.try_get("pending_to")?;
            out.push(OrphanedIntent { id, action, to });
        }
        Ok(out)
    }

    /// A workspace's history, oldest first (also after it was destroyed).
    pub async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, action, from_state, to_state, placement, actor, detail FROM transitions \
             WHERE workspace_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TransitionRecord {
                    seq: row.try_get("seq")?,
                    at: from_millis(row.try_get("at")?),
                    action: {
                        let a: String = row.try_get("action")?;
                        vws_model::records::HistoryAction::parse(&a).ok_or_else(|| {
                            StoreError::corrupt(id, format!("{a:?} is not a history entry"))
                        })?
                    },
                    from_state: row.try_get("from_state")?,
                    to_state: row.try_get("to_state")?,
                    placement: row.try_get("placement")?,
                    actor: row.try_get("actor")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Records whose termination time has passed.
    pub async fn expired(&self, now: OffsetDateTime) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM workspaces WHERE terminates_at IS NOT NULL AND terminates_at <= $1 ORDER BY terminates_at"
        ))
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Every disk path the records refer to, for garbage collection of files
    /// left behind by a crash.
    pub async fn disk_paths(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT disk_path FROM workspaces WHERE disk_path IS NOT NULL")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// How many workspaces use an image (as their disk or a device).
    pub async fn workspaces_using_image(&self, image_id: &str) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM workspace_images WHERE image_id = $1")
                .bind(image_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(n as u64)
    }
}

async fn next_seq(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<i64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(MAX(seq), 0) + 1 AS BIGINT) FROM transitions WHERE workspace_id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}

/// The event of a workspace's change (`exists`: it is still there).
async fn workspace_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: crate::db::Backend,
    at: OffsetDateTime,
    r: &WorkspaceRecord,
    action: vws_model::records::HistoryAction,
    actor: &str,
    exists: bool,
) -> Result<(), StoreError> {
    let data = serde_json::json!({
        "id": r.id,
        "name": r.name,
        "action": action.as_str(),
        "state": exists.then(|| r.state.as_str()),
        "placement": exists.then(|| r.placement.as_str()),
        "node": if exists { r.node.clone() } else { None },
        "actor": actor,
    });
    crate::events::emit(
        tx,
        backend,
        at,
        vws_model::records::EventKind::Workspace,
        &r.id,
        Some(&r.owner),
        data,
    )
    .await
    .map(drop)
}

#[allow(clippy::too_many_arguments)]
async fn insert_transition(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    seq: i64,
    at: OffsetDateTime,
    action: vws_model::records::HistoryAction,
    from: Option<String>,
    to: Option<&WorkspaceRecord>,
    actor: &str,
    detail: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transitions (workspace_id, seq, at, action, from_state, to_state, placement, actor, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(seq)
    .bind(millis(at))
    .bind(action.as_str())
    .bind(from)
    .bind(to.map(|r| r.state.as_str().to_string()))
    .bind(to.map(|r| r.placement.as_str().to_string()))
    .bind(actor)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
