//! What the EC2 front-end keeps beside the workspaces: access keys for
//! SigV4, the launch facts of instances, key pairs and tags. Workspaces
//! themselves stay the core's records; these rows only add to them.

use sqlx::Row;
use time::OffsetDateTime;

use crate::db::{from_millis, millis, Store, StoreError};

/// An access key, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessKey {
    /// The key id (`AKIA…`).
    pub id: String,
    /// The DN it acts as.
    pub dn: String,
    /// The identity it acts as (DN and attributes), JSON.
    pub identity: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
}

/// The launch facts of an instance: what RunInstances was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ec2Instance {
    /// The workspace it is.
    pub workspace: String,
    /// Its owner's DN.
    pub owner: String,
    /// The reservation it was launched in (`r-…`).
    pub reservation: String,
    /// The image id it was launched from (`ami-…`).
    pub image_id: String,
    /// The instance type's name.
    pub instance_type: String,
    /// The key pair named at launch.
    pub key_name: Option<String>,
    /// User data, base64 as given.
    pub user_data: Option<String>,
    /// The launch's idempotency token.
    pub client_token: Option<String>,
    /// Its index within the launch.
    pub launch_index: i64,
    /// When it was launched.
    pub launched_at: OffsetDateTime,
    /// When its launch (deploy and start) was done; none while pending.
    pub ready_at: Option<OffsetDateTime>,
    /// When it was terminated (its workspace destroyed), if it was.
    pub terminated_at: Option<OffsetDateTime>,
}

/// A key pair's public half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// Owner's DN.
    pub owner: String,
    /// Its name, unique per owner.
    pub name: String,
    /// Its id (`key-…`).
    pub id: String,
    /// `rsa` or `ed25519`.
    pub key_type: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// The public key, OpenSSH's one-line form.
    pub public_key: String,
    /// When it was made or imported.
    pub created_at: OffsetDateTime,
}

/// A tag on a resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// The resource's id (`i-…`, `ami-…`).
    pub resource: String,
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: String,
}

const INSTANCE_COLUMNS: &str = "workspace, owner, reservation, image_id, instance_type, key_name, user_data, client_token, launch_index, launched_at, ready_at, terminated_at";

fn instance(row: &sqlx::any::AnyRow) -> Result<Ec2Instance, StoreError> {
    Ok(Ec2Instance {
        workspace: row.try_get("workspace")?,
        owner: row.try_get("owner")?,
        reservation: row.try_get("reservation")?,
        image_id: row.try_get("image_id")?,
        instance_type: row.try_get("instance_type")?,
        key_name: row.try_get("key_name")?,
        user_data: row.try_get("user_data")?,
        client_token: row.try_get("client_token")?,
        launch_index: row.try_get("launch_index")?,
        launched_at: from_millis(row.try_get("launched_at")?),
        ready_at: row.try_get::<Option<i64>, _>("ready_at")?.map(from_millis),
        terminated_at: row
            .try_get::<Option<i64>, _>("terminated_at")?
            .map(from_millis),
    })
}

fn key_pair(row: &sqlx::any::AnyRow) -> Result<KeyPair, StoreError> {
    Ok(KeyPair {
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        id: row.try_get("id")?,
        key_type: row.try_get("key_type")?,
        fingerprint: row.try_get("fingerprint")?,
        public_key: row.try_get("public_key")?,
        created_at: from_millis(row.try_get("created_at")?),
    })
}

impl Store {
    /// Keeps a new access key.
    pub async fn put_access_key(&self, key: &AccessKey, secret: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_keys (id, secret, dn, identity, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.id)
        .bind(secret)
        .bind(&key.dn)
        .bind(&key.identity)
        .bind(millis(key.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| StoreError::from_insert(e, || format!("access key {}", key.id)))?;
        Ok(())
    }

    /// A key that is not revoked: its secret and identity (JSON).
    pub async fn access_key_secret(
        &self,
        id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT secret, identity FROM access_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The keys of one DN, or everyone's; newest first.
    pub async fn access_keys(&self, dn: Option<&str>) -> Result<Vec<AccessKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, dn, identity, created_at, revoked_at FROM access_keys \
             WHERE ($1 IS NULL OR dn = $1) ORDER BY created_at DESC, id",
        )
        .bind(dn)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AccessKey {
                    id: r.try_get("id")?,
                    dn: r.try_get("dn")?,
                    identity: r.try_get("identity")?,
                    created_at: from_millis(r.try_get("created_at")?),
                    revoked_at: r.try_get::<Option<i64>, _>("revoked_at")?.map(from_millis),
                })
            })
            .collect()
    }

    /// Revokes a key (of `dn` only, when given); whether one was.
    pub async fn revoke_access_key(
        &self,
        id: &str,
        dn: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE access_keys SET revoked_at = $1 \
             WHERE id = $2 AND ($3 IS NULL OR dn = $3) AND revoked_at IS NULL",
        )
        .bind(millis(now))
        .bind(id)
        .bind(dn)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records the instances of one launch.
    pub async fn put_ec2_instances(&self, launched: &[Ec2Instance]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for i in launched {
            sqlx::query(&format!(
                "INSERT INTO ec2_instances ({INSTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL)"
            ))
            .bind(&i.workspace)
            .bind(&i.owner)
            .bind(&i.reservation)
            .bind(&i.image_id)
            .bind(&i.instance_type)
            .bind(&i.key_name)
            .bind(&i.user_data)
            .bind(&i.client_token)
            .bind(i.launch_index)
            .bind(millis(i.launched_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::from_insert(e, || format!("instance {}", i.workspace)))?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Instances of an owner (everyone's for `None`), oldest launch first.
    pub async fn ec2_instances(&self, owner: Option<&str>) -> Result<Vec<Ec2Instance>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM ec2_instances WHERE ($1 IS NULL OR owner = $1) \
             ORDER BY launched_at, reservation, launch_index"
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance).collect()
    }

    /// One instance's launch facts.
    pub async fn ec2_instance(&self, workspace: &str) -> Result<Option<Ec2Instance>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM ec2_instances WHERE workspace = $1"
        ))
        .bind(workspace)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(instance).transpose()
    }

    /// The instances an owner launched with a client token.
    pub async fn ec2_instances_by_token(
        &self,
        owner: &str,
        token: &str,
    ) -> Result<Vec<Ec2Instance>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM ec2_instances WHERE owner = $1 AND client_token = $2 ORDER BY launch_index"
        ))
        .bind(owner)
        .bind(token)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance).collect()
    }

    /// Marks an instance's launch done.
    pub async fn ec2_instance_ready(
        &self,
        workspace: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE ec2_instances SET ready_at = $1 WHERE workspace = $2 AND ready_at IS NULL",
        )
        .bind(millis(at))
        .bind(workspace)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Marks an instance terminated (its workspace is gone).
    pub async fn terminate_ec2_instance(
        &self,
        workspace: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE ec2_instances SET terminated_at = $1 WHERE workspace = $2 AND terminated_at IS NULL",
        )
        .bind(millis(at))
        .bind(workspace)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets instances terminated before `before`, and their tags;
    /// returns how many.
    pub async fn prune_ec2_instances(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "DELETE FROM ec2_tags WHERE resource IN (SELECT 'i-' || substr(workspace, 4) FROM ec2_instances \
             WHERE terminated_at IS NOT NULL AND terminated_at < $1)",
        )
        .bind(millis(before))
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "DELETE FROM ec2_instances WHERE terminated_at IS NOT NULL AND terminated_at < $1",
        )
        .bind(millis(before))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Keeps a key pair; `Duplicate` if the owner has one of that name.
    pub async fn put_key_pair(&self, k: &KeyPair) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO ec2_key_pairs (owner, name, id, key_type, fingerprint, public_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&k.owner)
        .bind(&k.name)
        .bind(&k.id)
        .bind(&k.key_type)
        .bind(&k.fingerprint)
        .bind(&k.public_key)
        .bind(millis(k.created_at))
        .execute(&self.writer)
        .await
        .map_err(|e| StoreError::from_insert(e, || format!("key pair {}", k.name)))?;
        Ok(())
    }

    /// An owner's key pairs, by name.
    pub async fn key_pairs(&self, owner: &str) -> Result<Vec<KeyPair>, StoreError> {
        let rows = sqlx::query(
            "SELECT owner, name, id, key_type, fingerprint, public_key, created_at FROM ec2_key_pairs \
             WHERE owner = $1 ORDER BY name",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_pair).collect()
    }

    /// Removes an owner's key pair by name or id; whether there was one.
    pub async fn delete_key_pair(&self, owner: &str, name_or_id: &str) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM ec2_key_pairs WHERE owner = $1 AND (name = $2 OR id = $2)")
                .bind(owner)
                .bind(name_or_id)
                .execute(&self.writer)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets tags (a key's value replaced) on resources of an owner.
    pub async fn put_tags(&self, owner: &str, tags: &[Tag]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for t in tags {
            sqlx::query("DELETE FROM ec2_tags WHERE resource = $1 AND key = $2")
                .bind(&t.resource)
                .bind(&t.key)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO ec2_tags (resource, owner, key, value) VALUES ($1, $2, $3, $4)",
            )
            .bind(&t.resource)
            .bind(owner)
            .bind(&t.key)
            .bind(&t.value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes tags (any value when `value` is none).
    pub async fn delete_tags(
        &self,
        owner: &str,
        resource: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM ec2_tags WHERE owner = $1 AND resource = $2 AND key = $3 AND ($4 IS NULL OR value = $4)",
        )
        .bind(owner)
        .bind(resource)
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// An owner's tags (everyone's for `None`), by resource and key.
    pub async fn tags(&self, owner: Option<&str>) -> Result<Vec<Tag>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT resource, key, value FROM ec2_tags WHERE ($1 IS NULL OR owner = $1) ORDER BY resource, key",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(resource, key, value)| Tag {
                resource,
                key,
                value,
            })
            .collect())
    }
}
