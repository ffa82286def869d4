//! The image pool's records: images by content id, and `name:tag` tags.

use sqlx::any::AnyRow;
use sqlx::Row;
use vws_model::ImageRef;

use crate::db::{from_millis, millis, Store, StoreError};
use time::OffsetDateTime;
use vws_model::records::EventKind;
pub use vws_model::records::{HotMachine, ImageFile, ImageKind, ImageRecord, Visibility};

/// Who publishes under a name, for [`Store::put_image`].
#[derive(Clone, Copy, Debug)]
pub struct Publisher<'a> {
    /// The publisher's DN: the owner of a new name.
    pub dn: &'a str,
    /// Administrators may move a name someone else owns (its owner stays).
    pub admin: bool,
}

const COLUMNS: &str =
    "id, kind, format, virtual_size, stored_size, files, cmdline, owner, created_at, machine, signer, visibility, manifest";

fn decode(row: &AnyRow) -> Result<ImageRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "disk" => ImageKind::Disk,
        "kernel" => ImageKind::Kernel,
        "hot" => ImageKind::Hot,
        other => {
            return Err(StoreError::corrupt(
                &id,
                format!("unknown image kind {other:?}"),
            ))
        }
    };
    let files: String = row.try_get("files")?;
    Ok(ImageRecord {
        kind,
        format: row.try_get("format")?,
        virtual_size: row.try_get::<i64, _>("virtual_size")? as u64,
        stored_size: row.try_get::<i64, _>("stored_size")? as u64,
        files: serde_json::from_str(&files).map_err(|e| StoreError::corrupt(&id, e))?,
        cmdline: row.try_get("cmdline")?,
        owner: row.try_get("owner")?,
        created_at: from_millis(row.try_get("created_at")?),
        tags: Vec::new(),
        machine: row
            .try_get::<Option<String>, _>("machine")?
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| StoreError::corrupt(&id, e))?,
        signer: row.try_get("signer")?,
        visibility: match row.try_get::<String, _>("visibility")?.as_str() {
            "private" => Visibility::Private,
            _ => Visibility::Public,
        },
        manifest: serde_json::from_str(&row.try_get::<String, _>("manifest")?)
            .map_err(|e| StoreError::corrupt(&id, e))?,
        id,
    })
}

impl Store {
    /// Records a verified signature of an image.
    pub async fn sign_image(
        &self,
        id: &str,
        signer: &str,
        signature: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE images SET signer = $1, signature = $2 WHERE id = $3")
            .bind(signer)
            .bind(signature)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Records an image (no-op if that content is already recorded) and points
    /// `name:tag` at it, moving the tag if it named another image. A name
    /// belongs to whoever first published under it: another publisher gets
    /// [`StoreError::NameTaken`] (administrators may move it; the name keeps
    /// its owner), and nothing is written.
    pub async fn put_image(
        &self,
        r: &ImageRecord,
        name: &str,
        tag: &str,
        by: Publisher<'_>,
    ) -> Result<(), StoreError> {
        // Writes first: a SQLite transaction that reads before it writes
        // fails at once (SQLITE_BUSY_SNAPSHOT, no busy wait) when another
        // writer, a node's heartbeat say, commits in between.
        let mut tx = self.writer.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO images ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO NOTHING"
        ))
        .bind(&r.id)
        .bind(r.kind.as_str())
        .bind(r.format.clone())
        .bind(r.virtual_size as i64)
        .bind(r.stored_size as i64)
        .bind(serde_json::to_string(&r.files).expect("files serialize"))
        .bind(r.cmdline.clone())
        .bind(&r.owner)
        .bind(millis(r.created_at))
        .bind(
            r.machine
                .as_ref()
                .map(|m| serde_json::to_string(m).expect("machines serialize")),
        )
        .bind(r.signer.clone())
        .bind(r.visibility.as_str())
        .bind(serde_json::to_string(&r.manifest).expect("manifests serialize"))
        .execute(&mut *tx)
        .await?;
        let owner: Option<String> =
            sqlx::query_scalar("SELECT owner FROM image_tags WHERE name = $1 LIMIT 1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let owner = match owner {
            Some(o) if o != by.dn && !by.admin => {
                tx.rollback().await?;
                return Err(StoreError::NameTaken {
                    name: name.into(),
                    owner: o,
                });
            }
            Some(o) => o,
            None => by.dn.to_string(),
        };
        sqlx::query(
            "INSERT INTO image_tags (name, tag, image_id, created_at, owner) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name, tag) DO UPDATE SET image_id = excluded.image_id, created_at = excluded.created_at",
        )
        .bind(name)
        .bind(tag)
        .bind(&r.id)
        .bind(millis(r.created_at))
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        let data = serde_json::json!({
            "image": r.id, "name": name, "tag": tag, "kind": r.kind.as_str(), "action": "added",
        });
        let seen_by = (r.visibility == Visibility::Private).then_some(r.owner.as_str());
        let at = OffsetDateTime::now_utc();
        crate::events::emit(
            &mut tx,
            self.backend(),
            at,
            EventKind::Image,
            &r.id,
            seen_by,
            data,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who owns an image name (the first to publish under it), if it has tags.
    pub async fn image_name_owner(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT owner FROM image_tags WHERE name = $1 LIMIT 1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn tags_of(&self, id: &str) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT name, tag FROM image_tags WHERE image_id = $1 ORDER BY name, tag")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(format!(
                    "{}:{}",
                    r.try_get::<String, _>("name")?,
                    r.try_get::<String, _>("tag")?
                ))
            })
            .collect()
    }

    /// Finds an image by `name:tag` or digest.
    pub async fn image(&self, r: &ImageRef) -> Result<Option<ImageRecord>, StoreError> {
        let id = match r {
            ImageRef::Digest(d) => d.clone(),
            ImageRef::Tag { name, tag } => {
                let id: Option<String> = sqlx::query_scalar(
                    "SELECT image_id FROM image_tags WHERE name = $1 AND tag = $2",
                )
                .bind(name)
                .bind(tag)
                .fetch_optional(&self.pool)
                .await?;
                match id {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
        };
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM images WHERE id = $1"))
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut rec = decode(&row)?;
        rec.tags = self.tags_of(&rec.id).await?;
        Ok(Some(rec))
    }

    /// Every image, newest first, with its tags.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM images ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut rec = decode(row)?;
            rec.tags = self.tags_of(&rec.id).await?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Removes a tag; returns whether it existed.
    pub async fn untag_image(&self, name: &str, tag: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM image_tags WHERE name = $1 AND tag = $2")
            .bind(name)
            .bind(tag)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes an image record and its tags.
    pub async fn delete_image(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        // The image's row first, as a create that uses it does: either the
        // create waits and finds it gone, or this sees the create's workspace.
        sqlx::query("UPDATE images SET id = id WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let users: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM workspace_images WHERE image_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        if users > 0 {
            return Err(StoreError::InUse(format!(
                "image {id} is used by {users} workspace(s); destroy them first"
            )));
        }
        sqlx::query("DELETE FROM image_tags WHERE image_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let gone: Option<(String, String)> =
            sqlx::query_as("DELETE FROM images WHERE id = $1 RETURNING owner, visibility")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((owner, visibility)) = gone {
            let seen_by = (visibility == Visibility::Private.as_str()).then_some(owner.as_str());
            let data = serde_json::json!({ "image": id, "action": "removed" });
            let at = OffsetDateTime::now_utc();
            crate::events::emit(
                &mut tx,
                self.backend(),
                at,
                EventKind::Image,
                id,
                seen_by,
                data,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Digests of every blob an image record refers to: its files, and
    /// the OCI layers it was made of (kept, so that a pull of an image
    /// sharing them moves none again).
    pub async fn referenced_blobs(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT files, manifest FROM images")
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let files: Vec<ImageFile> = serde_json::from_str(&row.try_get::<String, _>("files")?)
                .map_err(|e| StoreError::corrupt("images", e))?;
            out.extend(files.into_iter().map(|f| f.digest));
            let manifest: vws_model::software::Manifest =
                serde_json::from_str(&row.try_get::<String, _>("manifest")?)
                    .map_err(|e| StoreError::corrupt("images", e))?;
            out.extend(manifest.oci.into_iter().flat_map(|o| o.layers));
        }
        Ok(out)
    }
}
