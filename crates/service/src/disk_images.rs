//! Disk images of shut-down workspaces: a `vm` workspace that is shut
//! down and checked in (its disk back in the repository) is saved as a
//! self-contained raw disk image in the pool — its copy-on-write layer and
//! the image under it flattened by qemu-img — so that new workspaces boot
//! from what it had written. The workspace itself is unchanged. (A paused
//! workspace is saved as a hot image instead: `lifecycle.rs`.)

use vws_model::records::{ImageRecord, Visibility};
use vws_model::{Identity, Placement, State};

use crate::core::Service;
use crate::error::ServiceError;
use crate::pool::ImportRequest;

impl Service {
    /// Saves workspace `id`'s disk as image `name:tag`. It keeps the
    /// visibility of the image the workspace was made from.
    pub(crate) async fn disk_image(
        &self,
        who: &Identity,
        id: &str,
        name: &str,
        tag: &str,
    ) -> Result<ImageRecord, ServiceError> {
        let r = self.workspace(who, id).await?.record;
        crate::lifecycle::vm_only(&r, "a disk image")?;
        if r.state != State::Shutdown || r.placement != Placement::Repository {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is {} on {}: a disk image is made of a workspace that is shut down and checked in (vws stop, then vws undeploy); a paused one is saved as a hot image",
                r.state,
                r.placement.as_str()
            )));
        }
        self.plain_disk_only(id, "a disk image")?;
        let disk = r
            .disk_path
            .clone()
            .ok_or_else(|| ServiceError::Conflict(format!("workspace {id} has no disk to save")))?;
        self.check_publisher(who, name).await?;
        let base = self
            .store
            .image(&vws_model::ImageRef::Digest(r.image_id.clone()))
            .await?;
        // Beside the disks (a file a crash leaves there is removed with the
        // other strays at the next start).
        let flat = self
            .disks
            .join(format!(".disk-image-{:016x}.raw", rand::random::<u64>()));
        let stored = async {
            vws_qemu::img::flatten(std::path::Path::new(&disk), &flat, "raw")
                .await
                .map_err(anyhow::Error::from)?;
            Ok::<_, ServiceError>(self.blobs.put_file(&flat).await?)
        }
        .await;
        let _ = tokio::fs::remove_file(&flat).await;
        let (digest, _) = stored?;
        // Made from an OCI image: it is that image and one more layer.
        let derived = base.as_ref().and_then(|b| {
            let mut o = b.manifest.oci.clone()?;
            o.derived_from = Some(b.id.clone());
            Some((o, b.manifest.labels.clone()))
        });
        let image = self
            .import_image_with(
                who,
                ImportRequest {
                    name: name.into(),
                    tag: tag.into(),
                    disk: Some(digest.to_string()),
                    kernel: None,
                    initrd: None,
                    cmdline: None,
                    visibility: base.map(|b| b.visibility).unwrap_or(Visibility::Private),
                },
                derived,
            )
            .await?;
        tracing::info!(%id, image = %image.id, "disk image saved");
        Ok(image)
    }
}
