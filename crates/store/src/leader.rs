//! Singleton loops among service replicas (the reaper, lost-node
//! detection): on PostgreSQL, the one that holds a session-level advisory
//! lock on a connection of its own leads; when it dies its connection
//! closes, the lock goes with it, and the next replica to try takes over.
//! SQLite serves one process (a second is refused at start), which always
//! leads.

use sqlx::Connection;

use crate::db::{Backend, Store, StoreError};

/// The right to run a singleton loop, held while this value lives.
pub struct Leadership {
    /// The connection that holds the advisory lock (PostgreSQL); closed
    /// when this is dropped, which releases the lock.
    held: Option<sqlx::AnyConnection>,
}

impl Store {
    /// Whether the database answers (a replica's health).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Tries to lead loop `name`: none if another process leads it.
    pub async fn try_lead(&self, name: &str) -> Result<Option<Leadership>, StoreError> {
        if self.backend() == Backend::Sqlite {
            return Ok(Some(Leadership { held: None }));
        }
        // Tried on a pooled connection; taken out of the pool only when it
        // got the lock, which lives as long as that session does. (A
        // connection opened for every try, by every replica that does not
        // lead, every round, cost PostgreSQL a backend each time.)
        let mut conn = self.pool.acquire().await?;
        // Advisory locks are the cluster's: the key names the database too.
        let got: bool = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtext(current_database()), hashtext('vws:' || $1))",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
        Ok(got.then(|| Leadership {
            held: Some(conn.detach()),
        }))
    }
}

impl Leadership {
    /// Whether the lock is still held (its session alive).
    pub async fn still_held(&mut self) -> bool {
        match &mut self.held {
            None => true,
            Some(conn) => conn.ping().await.is_ok(),
        }
    }
}
