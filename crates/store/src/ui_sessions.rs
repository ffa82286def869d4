//! The dashboard's sign-in links and browser sessions, kept by the digest
//! of their secret so that any replica recognizes them.

use time::OffsetDateTime;

use crate::db::{millis, Store, StoreError};

/// What a sign-in secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiSecret {
    /// A one-time link, good until it is used or expires.
    Link,
    /// A browser session.
    Session,
}

impl UiSecret {
    fn as_str(self) -> &'static str {
        match self {
            UiSecret::Link => "link",
            UiSecret::Session => "session",
        }
    }
}

impl Store {
    /// Keeps a secret's digest with the identity it stands for (JSON) and
    /// the session's CSRF token.
    pub async fn put_ui_secret(
        &self,
        id_hash: &str,
        kind: UiSecret,
        identity: &str,
        csrf: &str,
        expires_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ui_sessions (id_hash, kind, identity, csrf, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(kind.as_str())
        .bind(identity)
        .bind(csrf)
        .bind(millis(expires_at))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Uses up a sign-in link: its identity if it was valid, and it is gone.
    pub async fn take_ui_link(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "DELETE FROM ui_sessions WHERE id_hash = $1 AND kind = 'link' AND expires_at > $2 RETURNING identity",
        )
        .bind(id_hash)
        .bind(millis(now))
        .fetch_optional(&self.writer)
        .await?)
    }

    /// A live session's identity and CSRF token.
    pub async fn ui_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT identity, csrf FROM ui_sessions WHERE id_hash = $1 AND kind = 'session' AND expires_at > $2",
        )
        .bind(id_hash)
        .bind(millis(now))
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Ends a session (sign-out).
    pub async fn drop_ui_secret(&self, id_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Forgets expired links and sessions; returns how many.
    pub async fn prune_ui_secrets(&self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM ui_sessions WHERE expires_at <= $1")
            .bind(millis(now))
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}
