//! The repository's image pool: content-addressed blobs, named `name:tag`.
//!
//! Import is two steps, like an OCI registry: the client uploads each file as
//! a blob under its digest (verified on arrival), then registers an image that
//! names those blobs. Disk images are inspected with `qemu-img info`.

use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use vws_model::{Identity, ImageRef};
use vws_store::{Digest, ImageFile, ImageKind, ImageRecord, Publisher, Visibility};

use crate::core::Service;
use crate::error::ServiceError;

/// Largest blob accepted (64 GiB).
pub const MAX_BLOB: u64 = 64 << 30;

/// A request to register an image from uploaded blobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// Image name.
    pub name: String,
    /// Tag (default `latest`).
    #[serde(default = "latest")]
    pub tag: String,
    /// Digest of a disk image (raw or qcow2).
    #[serde(default)]
    pub disk: Option<String>,
    /// Digest of a kernel.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Digest of an initrd.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Who may use it (default: every client).
    #[serde(default)]
    pub visibility: Visibility,
}

impl ImportRequest {
    /// An image that is one disk (a root filesystem or a bootable disk).
    pub fn disk(name: &str, tag: &str, digest: String, visibility: Visibility) -> Self {
        ImportRequest {
            name: name.into(),
            tag: tag.into(),
            disk: Some(digest),
            kernel: None,
            initrd: None,
            cmdline: None,
            visibility,
        }
    }
}

fn latest() -> String {
    "latest".into()
}

impl Service {
    /// Stores an uploaded blob after checking it hashes to `digest`.
    pub async fn put_blob(
        &self,
        digest: &str,
        body: impl AsyncRead + Unpin,
    ) -> Result<(Digest, u64), ServiceError> {
        let digest: Digest = digest.parse()?;
        if self.blobs.contains(&digest).await {
            return Ok((digest.clone(), self.blobs.size(&digest).await?));
        }
        Ok(self.blobs.put(Some(&digest), body, MAX_BLOB).await?)
    }

    /// Whether a blob is present (so a client can skip uploading it).
    pub async fn has_blob(&self, digest: &str) -> Result<Option<u64>, ServiceError> {
        let digest: Digest = digest.parse()?;
        if self.blobs.contains(&digest).await {
            Ok(Some(self.blobs.size(&digest).await?))
        } else {
            Ok(None)
        }
    }

    /// Where a stored blob is (404 when the pool lacks it).
    pub(crate) async fn blob_path(&self, digest: &str) -> Result<std::path::PathBuf, ServiceError> {
        let d: Digest = digest.parse()?;
        if !self.blobs.contains(&d).await {
            return Err(ServiceError::NotFound(format!("blob {digest} not found")));
        }
        Ok(self.blobs.path(&d))
    }

    /// A stored blob's chunk manifest (404 when the pool lacks it).
    pub(crate) async fn blob_manifest(
        &self,
        digest: &str,
    ) -> Result<vws_model::node::Manifest, ServiceError> {
        let d: Digest = digest.parse()?;
        if !self.blobs.contains(&d).await {
            return Err(ServiceError::NotFound(format!("blob {digest} not found")));
        }
        Ok(self.blobs.manifest(&d).await?)
    }

    async fn blob_file(
        &self,
        role: vws_model::node::BlobRole,
        digest: &str,
    ) -> Result<ImageFile, ServiceError> {
        let d: Digest = digest.parse()?;
        match self.has_blob(digest).await? {
            Some(size) => Ok(ImageFile {
                role,
                digest: d.to_string(),
                size,
            }),
            None => Err(ServiceError::NotFound(format!(
                "{role} blob {digest} has not been uploaded"
            ))),
        }
    }

    /// Registers an image from uploaded blobs and names it `name:tag`.
    pub(crate) async fn import_image(
        &self,
        who: &Identity,
        req: ImportRequest,
    ) -> Result<ImageRecord, ServiceError> {
        self.import_image_with(who, req, None).await
    }

    /// [`Service::import_image`] of an image pulled from an OCI registry:
    /// its origin and labels join what the image holds.
    pub(crate) async fn import_image_with(
        &self,
        who: &Identity,
        req: ImportRequest,
        oci: Option<(
            vws_model::software::OciOrigin,
            std::collections::BTreeMap<String, String>,
        )>,
    ) -> Result<ImageRecord, ServiceError> {
        let reference = ImageRef::tagged(&req.name, &req.tag)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let ImageRef::Tag { name, tag } = &reference else {
            unreachable!("tagged() builds a tag")
        };
        if let Some(c) = &req.cmdline {
            if c.chars().count() > 4096 || c.contains(['\0', '\n']) {
                return Err(ServiceError::BadRequest(
                    "cmdline must be one line of at most 4096 characters".into(),
                ));
            }
        }
        self.check_publisher(who, name).await?;
        let now = self.clock.now();
        let mut record = match (&req.disk, &req.kernel, &req.initrd) {
            (Some(disk), None, None) => {
                let file = self
                    .blob_file(vws_model::node::BlobRole::Disk, disk)
                    .await?;
                let path = self.blobs.path(&file.digest.parse()?);
                let info = vws_qemu::img::info(&path).await.map_err(|e| {
                    ServiceError::BadRequest(format!("not a disk image qemu-img can read: {e}"))
                })?;
                if info.format != "raw" && info.format != "qcow2" {
                    return Err(ServiceError::BadRequest(format!(
                        "disk format {} is not supported (raw or qcow2)",
                        info.format
                    )));
                }
                if let Some(b) = info.backing_filename {
                    return Err(ServiceError::BadRequest(format!(
                        "the qcow2 image has a backing file ({b}); import a self-contained image (qemu-img convert)"
                    )));
                }
                ImageRecord {
                    id: file.digest.clone(),
                    kind: ImageKind::Disk,
                    format: Some(info.format),
                    virtual_size: info.virtual_size,
                    stored_size: file.size,
                    files: vec![file],
                    cmdline: req.cmdline.clone(),
                    owner: who.dn.clone(),
                    created_at: now,
                    tags: vec![],
                    machine: None,
                    signer: None,
                    visibility: req.visibility,
                    manifest: Default::default(),
                }
            }
            (None, Some(kernel), Some(initrd)) => {
                let files = vec![
                    self.blob_file(vws_model::node::BlobRole::Kernel, kernel)
                        .await?,
                    self.blob_file(vws_model::node::BlobRole::Initrd, initrd)
                        .await?,
                ];
                // The image's id names its whole content: both files and the command line.
                let manifest = serde_json::json!({ "kernel": files[0].digest, "initrd": files[1].digest, "cmdline": req.cmdline });
                ImageRecord {
                    id: Digest::of(manifest.to_string().as_bytes()).to_string(),
                    kind: ImageKind::Kernel,
                    format: None,
                    virtual_size: 0,
                    stored_size: files.iter().map(|f| f.size).sum(),
                    files,
                    cmdline: req.cmdline.clone(),
                    owner: who.dn.clone(),
                    created_at: now,
                    tags: vec![],
                    machine: None,
                    signer: None,
                    visibility: req.visibility,
                    manifest: Default::default(),
                }
            }
            _ => {
                return Err(ServiceError::BadRequest(
                    "give either a disk, or a kernel and an initrd".into(),
                ))
            }
        };
        record.manifest = self.read_manifest(&record).await?;
        if let Some((origin, labels)) = oci {
            record.manifest.oci = Some(origin);
            record.manifest.labels = labels;
        }
        // The same content already registered keeps its owner and
        // visibility; someone else's private content is not theirs to name.
        if let Some(existing) = self
            .store
            .image(&ImageRef::Digest(record.id.clone()))
            .await?
        {
            if !existing.usable_by(&who.dn, who.is_admin()) {
                return Err(ServiceError::Forbidden(format!(
                    "that content is a private image of {}",
                    existing.owner
                )));
            }
            record.visibility = existing.visibility;
        }
        // Staging manifests are made now, not on the first deploy.
        for f in &record.files {
            self.blobs.manifest(&f.digest.parse()?).await?;
        }
        self.store
            .put_image(&record, name, tag, publisher(who))
            .await?;
        tracing::info!(image = %record.id, %name, %tag, "image imported");
        self.image(who, &reference.to_string()).await
    }

    /// What an image holds, read from its files (the catalogue).
    async fn read_manifest(
        &self,
        record: &ImageRecord,
    ) -> Result<vws_model::software::Manifest, ServiceError> {
        let rootfs = self.disk_content(record).await? == Some(vws_qemu::img::Content::RootFs);
        let path =
            |role: vws_model::node::BlobRole| -> Result<Option<std::path::PathBuf>, ServiceError> {
                Ok(match record.file(role) {
                    Some(f) => Some(self.blobs.path(&f.digest.parse()?)),
                    None => None,
                })
            };
        let (disk, kernel) = (
            path(vws_model::node::BlobRole::Disk)?,
            path(vws_model::node::BlobRole::Kernel)?,
        );
        let manifest = tokio::task::spawn_blocking(move || {
            let mut m = match (&disk, rootfs) {
                (Some(d), true) => crate::catalogue::read_rootfs(d),
                _ => Default::default(),
            };
            if let Some(k) = &kernel {
                m.kernel = crate::catalogue::kernel_version(k);
                m.arch.get_or_insert_with(|| "amd64".into());
                m.note
                    .get_or_insert_with(|| "a kernel and initrd: no package database".into());
            }
            m
        })
        .await
        .map_err(anyhow::Error::from)?;
        Ok(manifest)
    }

    /// Refuses a publisher of `name` that is not its owner (nor an
    /// administrator), before any work is done; the store checks it again
    /// when it writes the tag.
    pub(crate) async fn check_publisher(
        &self,
        who: &Identity,
        name: &str,
    ) -> Result<(), ServiceError> {
        match self.store.image_name_owner(name).await? {
            Some(owner) if owner != who.dn && !who.is_admin() => {
                Err(vws_store::StoreError::NameTaken {
                    name: name.into(),
                    owner,
                }
                .into())
            }
            _ => Ok(()),
        }
    }

    /// One image by `name:tag` or digest, if the caller may use it (others'
    /// private images are not found).
    pub(crate) async fn image(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<ImageRecord, ServiceError> {
        let r: ImageRef = reference
            .parse()
            .map_err(|e: vws_model::image_ref::ImageRefError| {
                ServiceError::BadRequest(e.to_string())
            })?;
        self.store
            .image(&r)
            .await?
            .filter(|i| i.usable_by(&who.dn, who.is_admin()))
            .ok_or_else(|| ServiceError::NotFound(format!("image {reference} not found")))
    }

    /// Every image in the pool the caller may use.
    pub(crate) async fn images(&self, who: &Identity) -> Result<Vec<ImageRecord>, ServiceError> {
        let mut all = self.store.list_images().await?;
        all.retain(|i| i.usable_by(&who.dn, who.is_admin()));
        Ok(all)
    }

    /// Whether a client may read a blob: it belongs to an image the client
    /// may use (nodes read any: they stage every image).
    pub(crate) async fn check_blob_readable(
        &self,
        who: &Identity,
        digest: &str,
    ) -> Result<(), ServiceError> {
        let digest = digest.parse::<Digest>()?.to_string();
        let readable = self.store.list_images().await?.iter().any(|i| {
            i.usable_by(&who.dn, who.is_admin()) && i.files.iter().any(|f| f.digest == digest)
        });
        if readable {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!("blob {digest} not found")))
        }
    }

    /// Adds a signature over an image's content id: the certificate must
    /// be the CA's, valid and not revoked, and the signature its key's.
    pub(crate) async fn sign_image(
        &self,
        who: &Identity,
        reference: &str,
        certificate: &str,
        signature_b64: &str,
    ) -> Result<ImageRecord, ServiceError> {
        use base64::Engine;
        let image = self.image(who, reference).await?;
        let ca_dir = self.ca_dir.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("this service has no certificate authority".into())
        })?;
        let ca = vws_pki::Ca::open(ca_dir).map_err(anyhow::Error::from)?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|e| ServiceError::BadRequest(format!("signature is not base64: {e}")))?;
        let signer = vws_pki::verify_signature(
            ca.cert_pem(),
            certificate,
            Some(&ca.revoked()),
            &vws_pki::image_signing_message(&image.id),
            &signature,
        )
        .map_err(|e| ServiceError::Forbidden(format!("signature refused: {e}")))?;
        self.store
            .sign_image(&image.id, &signer.identity.dn, signature_b64.trim())
            .await?;
        tracing::info!(image = %image.id, signer = %signer.identity.dn, "image signed");
        self.image(who, &image.id).await
    }

    /// Removes `name:tag`; the image itself (record and files) goes with its
    /// last tag, or at once when named by digest, unless a workspace uses it.
    /// A tag is removed by its name's owner, an image by digest by the
    /// image's owner (administrators may do both).
    pub(crate) async fn remove_image(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<(), ServiceError> {
        let image = self.image(who, reference).await?;
        let parsed: ImageRef =
            reference
                .parse()
                .map_err(|e: vws_model::image_ref::ImageRefError| {
                    ServiceError::BadRequest(e.to_string())
                })?;
        let owner = match &parsed {
            ImageRef::Tag { name, .. } => self.store.image_name_owner(name).await?,
            ImageRef::Digest(_) => Some(image.owner.clone()),
        };
        if let Some(owner) = owner.filter(|o| *o != who.dn && !who.is_admin()) {
            return Err(ServiceError::Forbidden(format!(
                "image {reference} belongs to {owner}"
            )));
        }
        let last_tag = match &parsed {
            ImageRef::Tag { .. } => image.tags.len() <= 1,
            ImageRef::Digest(_) => true,
        };
        if last_tag {
            let users = self.store.workspaces_using_image(&image.id).await?;
            if users > 0 {
                return Err(ServiceError::Conflict(format!(
                    "image {reference} is used by {users} workspace(s); destroy them first"
                )));
            }
        } else if let ImageRef::Tag { name, tag } = &parsed {
            self.store.untag_image(name, tag).await?;
        }
        if last_tag {
            // Decided in the database: a create that uses the image in the
            // meantime makes this refuse (and keeps its tag).
            self.store.delete_image(&image.id).await?;
            let still: std::collections::HashSet<String> =
                self.store.referenced_blobs().await?.into_iter().collect();
            let layers = image.manifest.oci.iter().flat_map(|o| &o.layers);
            for digest in image.files.iter().map(|f| &f.digest).chain(layers) {
                if !still.contains(digest) {
                    self.blobs.remove(&digest.parse()?).await?;
                }
            }
            tracing::info!(image = %image.id, "image removed");
        }
        Ok(())
    }
}

/// The store's view of a publisher.
pub(crate) fn publisher(who: &Identity) -> Publisher<'_> {
    Publisher {
        dn: &who.dn,
        admin: who.is_admin(),
    }
}
