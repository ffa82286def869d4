//! `vws image push` (docs/images.md): a root filesystem image of the pool
//! to a registry as an OCI image, a long-running operation as a pull is.
//! A pulled image goes as its own layers (the registry gets back what it
//! gave); one saved from a workspace made of a pulled image goes as that
//! image's layers and one more, what the workspace changed; any other
//! root filesystem goes as one layer of its whole tree. The image config
//! carries what the pulled image's did.

use std::sync::Arc;

use serde::Deserialize;
use vws_model::records::Operation;
use vws_model::Identity;

use crate::core::Service;
use crate::error::ServiceError;

/// What `POST /v1/images/{reference}/push` takes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Where to: `REGISTRY/REPOSITORY:TAG`.
    pub target: String,
    /// Credentials for the registry (never stored).
    #[serde(default)]
    pub credentials: Option<vws_oci::Credentials>,
    /// Plain HTTP to a registry that is not on loopback.
    #[serde(default)]
    pub plain_http: bool,
    /// A CA (PEM) to trust beside the system's roots.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A pool layer, with its media type (gzip or not, by its first bytes) and
/// its diff id (the digest of its uncompressed tar).
fn pool_layer(
    path: &std::path::Path,
    digest: &str,
) -> anyhow::Result<(vws_oci::Layer, Vec<u8>, String)> {
    use sha2::Digest as _;
    let data = std::fs::read(path)?;
    let gzip = data.starts_with(&[0x1f, 0x8b]);
    let diff_id = if gzip {
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut flate2_reader(&data), &mut HashWriter(&mut h))?;
        format!("sha256:{}", hex::encode(h.finalize()))
    } else {
        digest.to_string()
    };
    let layer = vws_oci::Layer {
        digest: digest.to_string(),
        size: data.len() as u64,
        media_type: if gzip { TAR_GZIP } else { TAR }.into(),
    };
    Ok((layer, data, diff_id))
}

fn flate2_reader(data: &[u8]) -> impl std::io::Read + '_ {
    vws_oci::layers::gunzip(data)
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn digest_of(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

impl Service {
    /// Starts a push; answers its operation at once (202).
    pub(crate) async fn push_image(
        self: &Arc<Self>,
        who: &Identity,
        reference: &str,
        req: PushRequest,
    ) -> Result<Operation, ServiceError> {
        let image = self.image(who, reference).await?;
        if self.disk_content(&image).await? != Some(vws_qemu::img::Content::RootFs) {
            return Err(ServiceError::InvalidTerms(format!(
                "image {reference} is not a root filesystem image; only those go out as OCI images"
            )));
        }
        let registry = crate::oci_pull::open_registry(
            &req.target,
            &req.credentials,
            req.plain_http,
            &req.ca_pem,
        )?;
        let op = self
            .start_operation(who, "push", &req.target, "layers")
            .await?;
        let service = self.clone();
        let mut running = op.clone();
        tokio::spawn(async move {
            let done = service.run_push(&mut running, &image, &registry).await;
            service.end_operation(&mut running, done).await;
        });
        Ok(op)
    }

    async fn run_push(
        &self,
        op: &mut Operation,
        image: &vws_model::records::ImageRecord,
        registry: &vws_oci::Registry,
    ) -> Result<String, ServiceError> {
        let origin = image.manifest.oci.clone();
        let disk = image
            .file(vws_model::node::BlobRole::Disk)
            .ok_or_else(|| ServiceError::InvalidTerms("the image has no disk".into()))?;
        let disk_path = self.blobs.path(&disk.digest.parse()?);
        // The layers it goes as, bottom first.
        let mut layers: Vec<(vws_oci::Layer, Vec<u8>, String)> = Vec::new();
        let base_of = |o: &vws_model::software::OciOrigin| o.layers.clone();
        let from_pool = match &origin {
            Some(o) => base_of(o),
            None => Vec::new(),
        };
        for d in &from_pool {
            let path = self.blobs.path(&d.parse()?);
            let d = d.clone();
            layers.push(
                tokio::task::spawn_blocking(move || pool_layer(&path, &d))
                    .await
                    .map_err(anyhow::Error::from)??,
            );
        }
        let base_disk = match origin.as_ref().and_then(|o| o.derived_from.clone()) {
            Some(base) => {
                let b = self
                    .store
                    .image(&vws_model::ImageRef::Digest(base.clone()))
                    .await?
                    .ok_or_else(|| {
                        ServiceError::Conflict(format!(
                            "image {base} this one was saved over is gone from the pool; its layers cannot be told apart"
                        ))
                    })?;
                let f = b.file(vws_model::node::BlobRole::Disk).ok_or_else(|| {
                    ServiceError::InvalidTerms("the base image has no disk".into())
                })?;
                Some(self.blobs.path(&f.digest.parse()?))
            }
            None => None,
        };
        if origin.is_none() || base_disk.is_some() {
            // One more layer: the whole tree, or what changed over the base.
            let work = self.home.join("oci-work").join(&op.id);
            let made = {
                let (work, disk_path) = (work.clone(), disk_path.clone());
                tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
                    let new = work.join("new");
                    std::fs::create_dir_all(&new)?;
                    vws_oci::export::tree_of(&disk_path, &new)?;
                    match base_disk {
                        Some(base_disk) => {
                            let base = work.join("base");
                            std::fs::create_dir_all(&base)?;
                            vws_oci::export::tree_of(&base_disk, &base)?;
                            vws_oci::export::diff_layer(&base, &new)
                        }
                        None => vws_oci::export::whole_layer(&new),
                    }
                })
                .await
                .map_err(anyhow::Error::from)?
            };
            let _ = tokio::fs::remove_dir_all(&work).await;
            let data = made?;
            let digest = digest_of(&data);
            layers.push((
                vws_oci::Layer {
                    digest: digest.clone(),
                    size: data.len() as u64,
                    media_type: TAR.into(),
                },
                data,
                digest,
            ));
        }
        op.layers = layers
            .iter()
            .map(|(l, _, _)| vws_model::records::LayerProgress {
                digest: l.digest.clone(),
                size: l.size,
                done: 0,
                cached: false,
            })
            .collect();
        op.modified_at = self.clock.now();
        self.store.put_operation(op, &self.instance).await?;
        let o = origin.unwrap_or_default();
        let mut config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|(_, _, d)| d.clone()).collect::<Vec<_>>(),
            },
        });
        let c = &mut config["config"];
        if !o.env.is_empty() {
            c["Env"] = o.env.clone().into();
        }
        if !o.entrypoint.is_empty() {
            c["Entrypoint"] = o.entrypoint.clone().into();
        }
        if !o.cmd.is_empty() {
            c["Cmd"] = o.cmd.clone().into();
        }
        if let Some(w) = &o.working_dir {
            c["WorkingDir"] = w.clone().into();
        }
        if let Some(u) = &o.user {
            c["User"] = u.clone().into();
        }
        if !o.exposed_ports.is_empty() {
            c["ExposedPorts"] = o
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        if !image.manifest.labels.is_empty() {
            c["Labels"] =
                serde_json::to_value(&image.manifest.labels).map_err(anyhow::Error::from)?;
        }
        let config = serde_json::to_vec(&config).map_err(anyhow::Error::from)?;
        let uploads: Vec<(vws_oci::Layer, Vec<u8>)> =
            layers.into_iter().map(|(l, data, _)| (l, data)).collect();
        let digest = registry.push(&uploads, &config).await.map_err(|e| {
            if e.unauthorized {
                ServiceError::Forbidden(e.to_string())
            } else {
                ServiceError::Unavailable(e.to_string())
            }
        })?;
        for l in op.layers.iter_mut() {
            l.done = l.size;
        }
        Ok(format!("{}@{digest}", op.target))
    }
}
