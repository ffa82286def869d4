//! `vws image pull` (docs/images.md): an OCI image from a registry into
//! the pool, as a long-running operation any replica can report on. Its
//! layers go into the blob store under their own digests (checked as they
//! stream; one the pool has is not moved again), are applied in order
//! into a root filesystem, which becomes an ext4 image both categories
//! use; the image config rides in its manifest as the workspaces'
//! defaults. A pull that fails registers nothing; the layers it finished
//! stay in the pool for the next one (the reaper removes them after an
//! hour if nothing names them).

use std::sync::Arc;

use serde::Deserialize;
use vws_model::records::{LayerProgress, Operation};
use vws_model::Identity;
use vws_store::Visibility;

use crate::core::Service;
use crate::error::ServiceError;
use crate::pool::ImportRequest;

/// What `POST /v1/images/pull` takes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// `REGISTRY/REPOSITORY:TAG` or `…@sha256:…`.
    pub reference: String,
    /// The pool name to register it as, `NAME:TAG` [default: the
    /// repository's last part and the tag, `latest` for a digest].
    #[serde(default)]
    pub name: Option<String>,
    /// Credentials for the registry (never stored).
    #[serde(default)]
    pub credentials: Option<vws_oci::Credentials>,
    /// Plain HTTP to a registry that is not on loopback.
    #[serde(default)]
    pub plain_http: bool,
    /// A CA (PEM) to trust beside the system's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Who may use the image.
    #[serde(default)]
    pub visibility: Visibility,
}

/// What `POST /v1/images/oci` takes: an OCI image whose layers the client
/// uploaded to the pool (`PUT /v1/blobs/{digest}`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OciImport {
    /// `NAME:TAG` to register it as.
    pub name: String,
    /// Where it came from, for the record (`oci-layout:PATH`, …).
    pub source: String,
    /// Its manifest's digest there.
    pub manifest_digest: String,
    /// Its config's digest (the config uploaded to the pool).
    pub config_digest: String,
    /// Its layers, bottom first, each in the pool.
    pub layers: Vec<vws_oci::Layer>,
    /// Who may use the image.
    #[serde(default)]
    pub visibility: Visibility,
}

/// Where a pull's image comes from.
enum Source {
    /// A registry.
    Registry(Box<vws_oci::Registry>),
    /// The pool, uploaded by the client.
    Uploaded(Box<vws_oci::Resolved>),
}

/// How often a pull's progress is written while layers stream.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

fn pool_name(req: &PullRequest) -> Result<(String, String), ServiceError> {
    if let Some(n) = &req.name {
        let (name, tag) = n.split_once(':').unwrap_or((n, "latest"));
        return Ok((name.to_string(), tag.to_string()));
    }
    let r: vws_oci::Reference = req
        .reference
        .parse()
        .map_err(|e| ServiceError::InvalidTerms(format!("reference {:?}: {e}", req.reference)))?;
    let name = r
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or("image")
        .to_string();
    Ok((name, r.tag().unwrap_or("latest").to_string()))
}

/// The registry a pull or a push speaks to; a reference or connection it
/// cannot use is 422 saying why.
pub(crate) fn open_registry(
    reference: &str,
    credentials: &Option<vws_oci::Credentials>,
    plain_http: bool,
    ca_pem: &Option<String>,
) -> Result<vws_oci::Registry, ServiceError> {
    vws_oci::Registry::new(
        reference,
        &credentials.clone().unwrap_or_default(),
        &vws_oci::Connection {
            plain_http,
            ca_pem: ca_pem.clone(),
        },
    )
    .map_err(|e| ServiceError::InvalidTerms(e.message))
}

impl Service {
    /// Starts a pull; answers its operation at once (202).
    pub(crate) async fn pull_image(
        self: &Arc<Self>,
        who: &Identity,
        req: PullRequest,
    ) -> Result<Operation, ServiceError> {
        let (name, tag) = pool_name(&req)?;
        vws_model::ImageRef::tagged(&name, &tag)
            .map_err(|e| ServiceError::InvalidTerms(format!("name {name}:{tag}: {e}")))?;
        self.check_publisher(who, &name).await?;
        let registry = open_registry(
            &req.reference,
            &req.credentials,
            req.plain_http,
            &req.ca_pem,
        )?;
        self.spawn_pull(
            who,
            &req.reference,
            Source::Registry(Box::new(registry)),
            name,
            tag,
            req.visibility,
        )
        .await
    }

    /// Registers an OCI image whose layers were uploaded to the pool (an
    /// OCI layout folder or a `docker save` archive read by the client),
    /// the same way as a pull.
    pub(crate) async fn import_oci(
        self: &Arc<Self>,
        who: &Identity,
        req: OciImport,
    ) -> Result<Operation, ServiceError> {
        let (name, tag) = req.name.split_once(':').unwrap_or((&req.name, "latest"));
        let (name, tag) = (name.to_string(), tag.to_string());
        vws_model::ImageRef::tagged(&name, &tag)
            .map_err(|e| ServiceError::InvalidTerms(format!("name {name}:{tag}: {e}")))?;
        self.check_publisher(who, &name).await?;
        let path = match self.blob_path(&req.config_digest).await {
            Ok(p) => p,
            Err(ServiceError::NotFound(_)) => {
                return Err(ServiceError::InvalidTerms(format!(
                    "config {} has not been uploaded (PUT /v1/blobs/{})",
                    req.config_digest, req.config_digest
                )))
            }
            Err(e) => return Err(e),
        };
        let text = tokio::fs::read(path).await.map_err(anyhow::Error::from)?;
        let config: vws_oci::ImageConfiguration = serde_json::from_slice(&text).map_err(|e| {
            ServiceError::InvalidTerms(format!(
                "config {}: not an OCI image config: {e}",
                req.config_digest
            ))
        })?;
        let resolved = vws_oci::Resolved {
            reference: req.source.clone(),
            manifest_digest: req.manifest_digest.clone(),
            config_digest: req.config_digest.clone(),
            config,
            layers: req.layers.clone(),
        };
        self.spawn_pull(
            who,
            &req.source,
            Source::Uploaded(Box::new(resolved)),
            name,
            tag,
            req.visibility,
        )
        .await
    }

    /// Records a pull's operation and runs it in the background; the
    /// operation as it starts.
    async fn spawn_pull(
        self: &Arc<Self>,
        who: &Identity,
        target: &str,
        source: Source,
        name: String,
        tag: String,
        visibility: Visibility,
    ) -> Result<Operation, ServiceError> {
        let phase = match source {
            Source::Registry(_) => "resolving",
            Source::Uploaded(_) => "layers",
        };
        let op = self.start_operation(who, "pull", target, phase).await?;
        let service = self.clone();
        let who = who.clone();
        let mut running = op.clone();
        tokio::spawn(async move {
            let done = service
                .run_pull(&who, &mut running, &source, &name, &tag, visibility)
                .await;
            service.end_operation(&mut running, done).await;
        });
        Ok(op)
    }

    async fn progress(&self, op: &mut Operation, phase: &str) -> Result<(), ServiceError> {
        op.phase = phase.into();
        op.modified_at = self.clock.now();
        Ok(self.store.put_operation(op, &self.instance).await?)
    }

    async fn run_pull(
        &self,
        who: &Identity,
        op: &mut Operation,
        source: &Source,
        name: &str,
        tag: &str,
        visibility: Visibility,
    ) -> Result<String, ServiceError> {
        let resolved = match source {
            Source::Registry(registry) => registry.resolve().await.map_err(|e| {
                if e.unauthorized {
                    ServiceError::Forbidden(e.to_string())
                } else {
                    ServiceError::Unavailable(e.to_string())
                }
            })?,
            Source::Uploaded(r) => (**r).clone(),
        };
        let (arch, os) = (
            resolved.config.architecture().to_string(),
            resolved.config.os().to_string(),
        );
        if arch != "amd64" || os != "linux" {
            return Err(ServiceError::InvalidTerms(format!(
                "{} is an image for {os}/{arch}; workspaces here run linux/amd64",
                op.target
            )));
        }
        let (mut origin, labels) = vws_oci::config::origin(&resolved);
        op.layers = Vec::new();
        for l in &resolved.layers {
            let cached = self.has_blob(&l.digest).await?.is_some();
            op.layers.push(LayerProgress {
                digest: l.digest.clone(),
                size: l.size,
                done: if cached { l.size } else { 0 },
                cached,
            });
        }
        // The same image pulled before: only the name is new.
        let known = self.store.list_images().await?.into_iter().find(|i| {
            i.manifest.oci.as_ref().is_some_and(|o| {
                o.manifest_digest == origin.manifest_digest && o.derived_from.is_none()
            })
        });
        if let Some(image) = known {
            origin.shell = image.manifest.oci.as_ref().is_some_and(|o| o.shell);
            if let Some(disk) = image.file(vws_model::node::BlobRole::Disk) {
                let req = ImportRequest {
                    name: name.into(),
                    tag: tag.into(),
                    disk: Some(disk.digest.clone()),
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    visibility,
                };
                self.import_image_with(who, req, Some((origin, labels)))
                    .await?;
                return Ok(format!("{name}:{tag}"));
            }
        }
        self.progress(op, "layers").await?;
        for (i, l) in resolved.layers.iter().enumerate() {
            if op.layers[i].cached {
                continue;
            }
            let Source::Registry(registry) = source else {
                return Err(ServiceError::InvalidTerms(format!(
                    "layer {} has not been uploaded (PUT /v1/blobs/{})",
                    l.digest, l.digest
                )));
            };
            let stream = registry
                .layer(l)
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
            let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let counted = {
                let moved = moved.clone();
                futures::StreamExt::map(stream.stream, move |chunk| {
                    let chunk = chunk.map_err(std::io::Error::other)?;
                    moved.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk)
                })
            };
            let reader = tokio_util::io::StreamReader::new(counted);
            let put = self.put_blob(&l.digest, reader);
            tokio::pin!(put);
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            let stored = loop {
                tokio::select! {
                    r = &mut put => break r,
                    _ = tick.tick() => {
                        op.layers[i].done = moved.load(std::sync::atomic::Ordering::Relaxed);
                        self.progress(op, "layers").await?;
                    }
                }
            };
            stored.map_err(|e| match e {
                ServiceError::Integrity(m) => {
                    ServiceError::Integrity(format!("layer {}: {m}", l.digest))
                }
                ServiceError::Internal(e) => ServiceError::Unavailable(format!(
                    "layer {} broke off: {e:#}; the next pull goes on from the layers finished",
                    l.digest
                )),
                e => e,
            })?;
            op.layers[i].done = l.size;
        }
        self.progress(op, "applying").await?;
        let work = self.home.join("oci-work").join(&op.id);
        let built = self.build_root(&resolved, &work).await;
        let result = match built {
            Ok((file, shell)) => {
                origin.shell = shell;
                self.progress(op, "importing").await?;
                // Made beside the pool: moved in, not copied.
                let (digest, _) = self.blobs.adopt(&file).await?;
                let digest = digest.to_string();
                let req = ImportRequest {
                    name: name.into(),
                    tag: tag.into(),
                    disk: Some(digest),
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    visibility,
                };
                self.import_image_with(who, req, Some((origin, labels)))
                    .await
                    .map(|_| format!("{name}:{tag}"))
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_dir_all(&work).await;
        result
    }

    /// Applies the layers (from the pool) into a fresh folder and makes
    /// the ext4 image of it; its path.
    async fn build_root(
        &self,
        r: &vws_oci::Resolved,
        work: &std::path::Path,
    ) -> Result<(std::path::PathBuf, bool), ServiceError> {
        let root = work.join("root");
        let image = work.join("rootfs.img");
        let layers: Vec<(String, String, std::path::PathBuf)> = r
            .layers
            .iter()
            .map(|l| {
                let d: vws_store::Digest = l.digest.parse()?;
                Ok((l.digest.clone(), l.media_type.clone(), self.blobs.path(&d)))
            })
            .collect::<Result<_, vws_store::BlobError>>()?;
        let limits = vws_oci::layers::Limits {
            layer_bytes: self.policy.images.max_layer.0,
            image_bytes: self.policy.images.max_image.0,
        };
        let (root2, image2) = (root.clone(), image.clone());
        let shell = tokio::task::spawn_blocking(move || -> Result<bool, ServiceError> {
            let _ = std::fs::remove_dir_all(root2.parent().unwrap_or(&root2));
            std::fs::create_dir_all(&root2).map_err(anyhow::Error::from)?;
            let mut applier = vws_oci::layers::Applier::new(&root2, limits);
            for (digest, media_type, path) in layers {
                let f = std::fs::File::open(&path).map_err(anyhow::Error::from)?;
                applier
                    .apply(&digest, &media_type, std::io::BufReader::new(f))
                    .map_err(|e| match e {
                        vws_oci::layers::LayerError::Io { .. } => ServiceError::Internal(e.into()),
                        e => ServiceError::InvalidTerms(e.to_string()),
                    })?;
            }
            // A file or a symlink: whatever it names is inside the image.
            let shell = std::fs::symlink_metadata(root2.join("bin/sh")).is_ok();
            vws_oci::ext4::make(&root2, &image2).map_err(ServiceError::Internal)?;
            Ok(shell)
        })
        .await
        .map_err(anyhow::Error::from)??;
        Ok((image, shell))
    }
}
