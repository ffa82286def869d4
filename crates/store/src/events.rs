//! The event log: every change worth telling a client about, in one global
//! order. Each is written in the transaction of the change it reports, so
//! an event exists exactly when its change does.

use sqlx::Row;
use time::OffsetDateTime;
use vws_model::records::{Event, EventKind};

use crate::db::{from_millis, millis, Backend, Store, StoreError};

/// A key of PostgreSQL's transaction advisory locks: event writers take it
/// so that sequence numbers are given in commit order.
const EVENT_LOCK: i64 = 0x7677_7365_7665_6e74;

/// The PostgreSQL channel an event's commit is announced on.
const EVENTS_CHANNEL: &str = "vws_events";

/// The owner of events only administrators see (nodes': the node list is
/// theirs). No DN is this.
pub const ADMINISTRATORS: &str = "@administrators";

/// Appends an event inside `tx`; returns its sequence number.
pub(crate) async fn emit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
    at: OffsetDateTime,
    kind: EventKind,
    subject: &str,
    owner: Option<&str>,
    data: serde_json::Value,
) -> Result<i64, StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOCK)
            .execute(&mut **tx)
            .await?;
        // Delivered at commit, once per transaction, to every replica's
        // listener: followers wake instead of polling.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(EVENTS_CHANNEL)
            .execute(&mut **tx)
            .await?;
    }
    // One statement: a SQLite transaction that reads before it writes can
    // fail at once when another writer commits in between.
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO events (seq, at, kind, subject, owner, data) \
         SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4, $5 FROM events RETURNING seq",
    )
    .bind(millis(at))
    .bind(kind.as_str())
    .bind(subject)
    .bind(owner)
    .bind(data.to_string())
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}

impl Store {
    /// A counter that moves when events may have been committed, by any
    /// replica (PostgreSQL's LISTEN on the events' channel, reconnecting
    /// as needed); none on SQLite, whose one process polls. The events
    /// table stays the truth: a follower that misses a wake-up reads the
    /// events at its next poll.
    pub fn event_wakeups(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        if self.backend() != Backend::Postgres {
            return None;
        }
        let url = self.url.clone();
        Some(
            self.wakeups
                .get_or_init(|| {
                    let (tx, rx) = tokio::sync::watch::channel(0u64);
                    tokio::spawn(listen_for_events(url, tx));
                    rx
                })
                .clone(),
        )
    }

    /// Events after `after`, oldest first, at most `limit`: all of them
    /// (`viewer` none, an administrator) or those `viewer` may see.
    pub async fn events_after(
        &self,
        after: i64,
        limit: i64,
        viewer: Option<&str>,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = match viewer {
            None => {
                sqlx::query(
                    "SELECT seq, at, kind, subject, data FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(dn) => {
                sqlx::query(
                    "SELECT seq, at, kind, subject, data FROM events \
                     WHERE seq > $1 AND (owner IS NULL OR owner = $2) ORDER BY seq LIMIT $3",
                )
                .bind(after)
                .bind(dn)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let data: String = row.try_get("data")?;
                Ok(Event {
                    seq: row.try_get("seq")?,
                    at: from_millis(row.try_get("at")?),
                    kind: EventKind::parse(&kind).ok_or_else(|| {
                        StoreError::corrupt("events", format!("{kind:?} is not an event kind"))
                    })?,
                    subject: row.try_get("subject")?,
                    data: serde_json::from_str(&data)
                        .map_err(|e| StoreError::corrupt("events", e.to_string()))?,
                })
            })
            .collect()
    }

    /// The newest event's sequence number (0 when there is none).
    pub async fn last_event(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Forgets events older than `before` (the newest is always kept, so
    /// sequence numbers go on growing); returns how many.
    pub async fn prune_events(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM events WHERE at < $1 AND seq < (SELECT MAX(seq) FROM events)")
                .bind(millis(before))
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected())
    }
}

/// Moves `wake` at each notification on the events' channel until every
/// receiver is gone; reconnects after a lost connection (a wake-up is given
/// then too, for what may have been missed meanwhile).
async fn listen_for_events(url: String, wake: tokio::sync::watch::Sender<u64>) {
    let mut n = 0u64;
    while !wake.is_closed() {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for events; followers poll meanwhile");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(EVENTS_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for events; followers poll meanwhile");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            continue;
        }
        loop {
            n += 1;
            if wake.send(n).is_err() {
                return;
            }
            // `recv` reconnects by itself and says so with an error only
            // when it cannot.
            if let Err(e) = listener.recv().await {
                tracing::warn!(error = %e, "lost the events' channel; listening again");
                break;
            }
        }
    }
}
