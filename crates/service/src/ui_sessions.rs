//! Sign-in for the web dashboard: an authenticated client (its certificate,
//! through the API) asks for a one-time link; the browser that opens it
//! gets a session for that identity, kept in the repository by digest.
//! The dashboard then runs every action as that identity, through the same
//! commands and ACLs as the API.

use sha2::Digest;
use time::OffsetDateTime;
use vws_model::Identity;
use vws_store::UiSecret;

use crate::core::Service;
use crate::error::ServiceError;

/// How long a sign-in link is good for.
pub const LINK_LIFETIME: time::Duration = time::Duration::minutes(10);

/// How long a browser session lasts.
pub const SESSION_LIFETIME: time::Duration = time::Duration::hours(12);

/// A browser session: its secret (the cookie), the identity it acts as and
/// the token its forms carry.
#[derive(Clone, Debug)]
pub struct UiSession {
    /// The cookie's value.
    pub secret: String,
    /// Who it acts as.
    pub identity: Identity,
    /// The CSRF token of its forms.
    pub csrf: String,
    /// When it ends.
    pub expires_at: OffsetDateTime,
}

fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

fn digest(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

impl Service {
    /// A one-time sign-in link's secret for `who`, and when it expires.
    pub(crate) async fn sign_in_link(
        &self,
        who: &Identity,
    ) -> Result<(String, OffsetDateTime), ServiceError> {
        let token = secret();
        let expires = self.clock.now() + LINK_LIFETIME;
        let identity = serde_json::to_string(who).map_err(anyhow::Error::from)?;
        self.store
            .put_ui_secret(&digest(&token), UiSecret::Link, &identity, "", expires)
            .await?;
        Ok((token, expires))
    }

    /// Turns a sign-in link's secret into a browser session (the link is
    /// used up); none if it is unknown, used or expired.
    pub async fn sign_in(&self, token: &str) -> Result<Option<UiSession>, ServiceError> {
        let now = self.clock.now();
        let Some(identity) = self.store.take_ui_link(&digest(token), now).await? else {
            return Ok(None);
        };
        let (session, csrf) = (secret(), secret());
        let expires_at = now + SESSION_LIFETIME;
        self.store
            .put_ui_secret(
                &digest(&session),
                UiSecret::Session,
                &identity,
                &csrf,
                expires_at,
            )
            .await?;
        let identity = serde_json::from_str(&identity).map_err(anyhow::Error::from)?;
        Ok(Some(UiSession {
            secret: session,
            identity,
            csrf,
            expires_at,
        }))
    }

    /// The live session a cookie names, if any.
    pub async fn ui_session(&self, secret: &str) -> Result<Option<UiSession>, ServiceError> {
        let now = self.clock.now();
        let Some((identity, csrf)) = self.store.ui_session(&digest(secret), now).await? else {
            return Ok(None);
        };
        Ok(Some(UiSession {
            secret: secret.to_string(),
            identity: serde_json::from_str(&identity).map_err(anyhow::Error::from)?,
            csrf,
            expires_at: now,
        }))
    }

    /// Ends a session.
    pub async fn sign_out(&self, secret: &str) -> Result<(), ServiceError> {
        Ok(self.store.drop_ui_secret(&digest(secret)).await?)
    }
}
