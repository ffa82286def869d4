//! Access keys: an id and a secret that stand for an identity (DN and
//! attributes) in requests signed with AWS Signature Version 4, which is
//! how awscli and boto3 authenticate to the EC2 front-end. A key acts
//! exactly as its identity's certificate would: the same ACL, the same
//! ownership. Anyone may make keys for themselves; keys for another
//! identity need an administrator. SigV4 is an HMAC, so the service keeps
//! the secret itself (as it keeps disk passphrases), and shows it once.

use serde::Serialize;
use time::OffsetDateTime;
use vws_model::Identity;
use vws_store::AccessKey;

use crate::core::Service;
use crate::error::ServiceError;

/// A key as listed (never with its secret).
#[derive(Clone, Debug, Serialize)]
pub struct AccessKeyView {
    /// The key id.
    pub id: String,
    /// Who it acts as.
    pub identity: Identity,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// A new key with its secret (shown this once).
#[derive(Clone, Debug, Serialize)]
pub struct NewAccessKey {
    /// The key as listed.
    #[serde(flatten)]
    pub key: AccessKeyView,
    /// The secret access key.
    pub secret: String,
}

/// `len` characters of `alphabet`, at random.
fn random_of(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

fn view(k: AccessKey) -> Result<AccessKeyView, ServiceError> {
    Ok(AccessKeyView {
        identity: serde_json::from_str(&k.identity).map_err(anyhow::Error::from)?,
        id: k.id,
        created_at: k.created_at,
        revoked_at: k.revoked_at,
    })
}

impl Service {
    /// A new key for `who`, or for `for_identity` (administrators only).
    pub(crate) async fn create_access_key(
        &self,
        who: &Identity,
        for_identity: Option<Identity>,
    ) -> Result<NewAccessKey, ServiceError> {
        let identity = match for_identity {
            Some(other) if other != *who && !who.is_admin() => {
                return Err(ServiceError::Forbidden(format!(
                    "only an administrator makes keys for another identity ({})",
                    other.dn
                )))
            }
            Some(other) => {
                vws_pki::parse_dn(&other.dn)
                    .map_err(|e| ServiceError::BadRequest(format!("dn: {e}")))?;
                other
            }
            None => who.clone(),
        };
        // AWS's shapes: a 20-character id starting AKIA, a 40-character secret.
        let id = format!("AKIA{}", random_of(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16));
        let secret = random_of(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        );
        let key = AccessKey {
            id,
            dn: identity.dn.clone(),
            identity: serde_json::to_string(&identity).map_err(anyhow::Error::from)?,
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.put_access_key(&key, &secret).await?;
        tracing::info!(key = %key.id, dn = %key.dn, by = %who.dn, "access key made");
        Ok(NewAccessKey {
            key: view(key)?,
            secret,
        })
    }

    /// The caller's keys (everyone's for an administrator).
    pub(crate) async fn list_access_keys(
        &self,
        who: &Identity,
    ) -> Result<Vec<AccessKeyView>, ServiceError> {
        let dn = (!who.is_admin()).then_some(who.dn.as_str());
        self.store
            .access_keys(dn)
            .await?
            .into_iter()
            .map(view)
            .collect()
    }

    /// Revokes one of the caller's keys (any, for an administrator).
    pub(crate) async fn revoke_access_key(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<(), ServiceError> {
        let dn = (!who.is_admin()).then_some(who.dn.as_str());
        if self
            .store
            .revoke_access_key(id, dn, self.clock.now())
            .await?
        {
            tracing::info!(key = %id, by = %who.dn, "access key revoked");
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!(
                "access key {id} not found (or already revoked)"
            )))
        }
    }

    /// For a front-end checking a signature: a live key's secret and the
    /// identity it acts as.
    pub async fn access_key(&self, id: &str) -> Result<Option<(String, Identity)>, ServiceError> {
        match self.store.access_key_secret(id).await? {
            Some((secret, identity)) => Ok(Some((
                secret,
                serde_json::from_str(&identity).map_err(anyhow::Error::from)?,
            ))),
            None => Ok(None),
        }
    }
}
