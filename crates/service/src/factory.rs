//! The VW Factory (paper §3.1, §3.2): validates a description against the pool
//! and the policy, clones the pool image copy-on-write, and registers the new
//! workspace with the repository.

use std::path::Path;

use time::Duration;
use vws_model::validate::{Path as DescPath, Seg};
use vws_model::{
    Category, Description, Form, Identity, ImageRef, InvalidDescription, Placement, State,
};
use vws_store::{Binding, Change, ImageKind, ImageRecord, WorkspaceRecord};

use crate::core::{Service, Workspace};
use crate::error::ServiceError;
use crate::matching::label;
use crate::policy::glob;

/// Why a name was refused.
fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "{name:?} is not a workspace name: 1 to 63 letters, digits, '.', '_', '-', starting with a letter or digit"
        )))
    }
}

/// An OCI image's config as the description's defaults: `Entrypoint` and
/// `Cmd` become the startup program, `ExposedPorts` the served ports,
/// where the description names none (docs/images.md).
fn oci_defaults(d: &mut Description, oci: &vws_model::software::OciOrigin) {
    if d.capability.startup.is_none() {
        d.capability.startup = vws_oci::config::startup(oci);
    }
    if d.capability.services.is_empty() {
        d.capability.services = oci
            .exposed_ports
            .iter()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                Some(vws_model::Service {
                    port: port.parse().ok()?,
                    protocol: match proto {
                        "udp" => vws_model::Protocol::Udp,
                        _ => vws_model::Protocol::Tcp,
                    },
                })
            })
            .collect();
    }
}

fn new_id() -> String {
    format!("ws-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn at(form: Form, segs: &[Seg]) -> String {
    DescPath(segs.to_vec()).render(form)
}

/// The kernel command line a root filesystem boots with as a VM: the boot
/// image's, and `vws.root=vda` (the workspace's overlay of the image is its
/// first disk; guest/init runs its userland).
pub(crate) fn rootfs_cmdline(boot: &ImageRecord) -> String {
    format!(
        "{} vws.root=vda",
        boot.cmdline.as_deref().unwrap_or_default()
    )
    .trim()
    .to_string()
}

/// A dynamic account's writable layer when the description gives no disk.
pub const DEFAULT_ACCOUNT_DISK: u64 = 256 << 20;

/// What a `dynamic account` description must be: a filesystem image under
/// it, loopback networking, no encryption (the node holds the mount).
fn check_account(d: &Description, image: &ImageRecord, form: Form) -> Result<(), ServiceError> {
    let mut errors = Vec::new();
    if image.kind != ImageKind::Disk || image.format.as_deref() != Some("raw") {
        errors.push(vws_model::FieldError {
            path: at(form, &[Seg::Key("software"), Seg::Key("image")]),
            message: format!(
                "a dynamic account runs on a filesystem image (a raw disk image such as `vws image build debian` makes); {} is a {} image{}",
                d.software.image.as_deref().unwrap_or_default(),
                image.kind.as_str(),
                image.format.as_deref().map(|f| format!(" ({f})")).unwrap_or_default()
            ),
        });
    }
    let mut user = None;
    for (i, nic) in d.network.nics.iter().enumerate() {
        let path = at(
            form,
            &[
                Seg::Key("network"),
                Seg::Key("nics"),
                Seg::Index(i),
                Seg::Key("method"),
            ],
        );
        match nic.method {
            vws_model::NicMethod::Dhcp => {
                errors.push(vws_model::FieldError {
                    path,
                    message: "a dynamic account has no DHCP client: use method pool (the same address from the network's pool, set by the node), user or none".into(),
                });
            }
            vws_model::NicMethod::User => match user {
                None => user = Some(i),
                Some(first) => errors.push(vws_model::FieldError {
                    path,
                    message: format!(
                        "a dynamic account has one user-mode interface (eth0), and nics[{first}] is it already"
                    ),
                }),
            },
            _ => {}
        }
    }
    if d.hardware.disk.as_ref().is_some_and(|x| x.encrypted) {
        errors.push(vws_model::FieldError {
            path: at(
                form,
                &[
                    Seg::Key("hardware"),
                    Seg::Key("disk"),
                    Seg::Key("encrypted"),
                ],
            ),
            message: "encrypted disks are only available to category \"vm\"".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidDescription(errors).into())
    }
}

impl Service {
    async fn resolve_image(
        &self,
        who: &Identity,
        reference: &str,
        form: Form,
        segs: &[Seg],
    ) -> Result<ImageRecord, ServiceError> {
        let parsed: ImageRef =
            reference
                .parse()
                .map_err(|e: vws_model::image_ref::ImageRefError| {
                    InvalidDescription::one(at(form, segs), e.to_string())
                })?;
        // Someone else's private image reads as absent.
        let found = self
            .store
            .image(&parsed)
            .await?
            .filter(|i| i.usable_by(&who.dn, who.is_admin()));
        found.ok_or_else(|| {
            InvalidDescription::one(
                at(form, segs),
                format!("image {reference} is not in the pool (see `vws image list`; add it with `vws image import`)"),
            )
            .into()
        })
    }

    /// Creates a workspace from a description (paper §3.1): the accepted
    /// record, or the reason it was refused.
    pub(crate) async fn create(
        &self,
        who: &Identity,
        description: Description,
        form: Form,
        name: Option<String>,
    ) -> Result<Workspace, ServiceError> {
        self.create_with(who, description, form, name, None).await
    }

    pub(crate) async fn create_with(
        &self,
        who: &Identity,
        description: Description,
        form: Form,
        name: Option<String>,
        origin: Option<&str>,
    ) -> Result<Workspace, ServiceError> {
        if description.state.is_some()
            || description.epr.is_some()
            || description.creation_time.is_some()
        {
            tracing::debug!("ignoring server-owned fields in a submitted description");
        }
        let mut d = description.without_server_fields();
        vws_model::validate::validate(&d, form)?;
        if let Some(n) = &name {
            check_name(n)?;
        }
        let mut device_images = Vec::new();
        for (i, dev) in d.hardware.devices.iter().enumerate() {
            let segs = [
                Seg::Key("hardware"),
                Seg::Key("devices"),
                Seg::Index(i),
                Seg::Key("image"),
            ];
            device_images.push(self.resolve_image(who, &dev.image, form, &segs).await?.id);
        }

        // The image named, if it meets the software requirements; or the
        // best image of the pool that does (paper §2: workspaces found by
        // what they need), the choice recorded in the history.
        let (image, chosen) = match d.software.image.clone() {
            Some(reference) => {
                let image = self
                    .resolve_image(
                        who,
                        &reference,
                        form,
                        &[Seg::Key("software"), Seg::Key("image")],
                    )
                    .await?;
                let unmet = vws_model::software::unmet(
                    &d.software,
                    &self.effective_manifest(&d, &image).await?,
                );
                if !unmet.is_empty() {
                    return Err(InvalidDescription(
                        unmet
                            .into_iter()
                            .map(|u| vws_model::FieldError {
                                path: at(form, &u.at),
                                message: format!("image {reference}: {}", u.message),
                            })
                            .collect(),
                    )
                    .into());
                }
                (image, None)
            }
            None => {
                let (image, why) = self.choose_image(who, &d, form).await?;
                d.software.image = Some(label(&image));
                (image, Some(why))
            }
        };
        let image_name = d.software.image.clone().unwrap_or_default();
        if let Some(oci) = &image.manifest.oci {
            if !oci.shell {
                return Err(InvalidDescription::one(
                    at(form, &[Seg::Key("software"), Seg::Key("image")]),
                    format!(
                        "image {image_name} (from {}) has no /bin/sh: the agent's jobs and the startup program run through it, in either category",
                        oci.reference
                    ),
                )
                .into());
            }
            oci_defaults(&mut d, oci);
        }
        // Policy: what this owner may ask for.
        let limits = self.policy.limits_for(&who.dn);
        limits
            .check_category(d.category, &who.dn)
            .map_err(ServiceError::Policy)?;
        let names: Vec<&str> = std::iter::once(image.id.as_str())
            .chain(image.tags.iter().map(String::as_str))
            .collect();
        if !limits
            .allowed_images
            .iter()
            .any(|p| names.iter().any(|n| glob(p, n)))
        {
            return Err(ServiceError::Policy(format!(
                "image {} is not allowed for {}",
                image_name, who.dn
            )));
        }
        if limits.require_signed_images && image.signer.is_none() {
            return Err(ServiceError::Policy(format!(
                "image {} is not signed, and the policy requires signed images for {}",
                image_name, who.dn
            )));
        }
        let lifetime = d
            .life_cycle
            .unwrap_or(limits.default_lifetime.min(limits.max_lifetime));
        if lifetime > limits.max_lifetime {
            return Err(ServiceError::Policy(format!(
                "lifeCycle {lifetime}s is longer than the {}s allowed for {}",
                limits.max_lifetime, who.dn
            )));
        }
        match d.category {
            Category::Vm => {
                self.check_disk_fits(&d, &image, form)?;
                self.check_vm_boots(&d, &image, form).await?;
            }
            Category::DynamicAccount => check_account(&d, &image, form)?,
        }
        if let Some(m) = &image.machine {
            // A restore needs the machine the memory was saved from.
            let ram = d.hardware.ram;
            if m.ram < ram.min.0 || m.ram > ram.max.0 {
                return Err(InvalidDescription::one(
                    at(form, &[Seg::Key("hardware"), Seg::Key("ram")]),
                    format!(
                        "hot image {} was saved with {} of RAM, outside this range",
                        image_name,
                        vws_model::ByteSize(m.ram)
                    ),
                )
                .into());
            }
        }

        // A first look at the quota, for a quick refusal; the insert below
        // decides, in the database's transaction (any number of service
        // processes may be creating for this owner), and finds the image
        // still there or refuses.
        let (count, ram) = self.store.owner_usage(&who.dn).await?;
        if count + 1 > limits.max_workspaces {
            return Err(ServiceError::Policy(format!(
                "{} already has {count} workspaces; the limit is {}",
                who.dn, limits.max_workspaces
            )));
        }
        let wanted = d.hardware.ram.max.0;
        if ram + wanted > limits.max_total_ram.0 {
            return Err(ServiceError::Policy(format!(
                "{} would use {} of RAM with this workspace; the limit is {}",
                who.dn,
                vws_model::ByteSize(ram + wanted).human(),
                limits.max_total_ram.human()
            )));
        }

        let id = new_id();
        self.allocate_addresses(&id, &d, form).await?;
        let disk = match self.make_disk(&id, &d, &image).await {
            Ok(disk) => disk,
            Err(e) => {
                let _ = self.store.release_addresses(&id).await;
                return Err(e);
            }
        };
        let now = self.clock.now();
        let record = WorkspaceRecord {
            name: name.unwrap_or_else(|| id.clone()),
            owner: who.dn.clone(),
            binding: Binding {
                cpus: None,
                ram: None,
                disk: disk.as_ref().map(|(_, size)| *size),
                forwards: Vec::new(),
            },
            state: State::Shutdown,
            placement: Placement::Repository,
            node: None,
            lock_holder: None,
            lock_since: None,
            image_id: image.id.clone(),
            disk_path: disk.as_ref().map(|(p, _)| p.clone()),
            reason: None,
            created_at: now,
            terminates_at: Some(now + Duration::seconds(lifetime as i64)),
            modified_at: now,
            version: 1,
            device_images,
            description: d,
            id,
        };
        let change = Change {
            action: vws_model::records::HistoryAction::Create,
            actor: &who.dn,
            detail: match (origin, chosen) {
                (Some(o), Some(c)) => Some(format!("clone of {o}; {c}")),
                (Some(o), None) => Some(format!("clone of {o}")),
                (None, c) => c,
            },
        };
        let quota = vws_store::Quota {
            max_workspaces: limits.max_workspaces,
            max_ram: limits.max_total_ram.0,
        };
        if let Err(e) = self
            .store
            .insert_workspace_admitted(&record, change, Some(quota))
            .await
        {
            // The record is the source of truth: without it the disk and the
            // addresses must go.
            if let Some(p) = &record.disk_path {
                let _ = tokio::fs::remove_file(p).await;
            }
            let _ = self.store.release_addresses(&record.id).await;
            return Err(e.into());
        }
        tracing::info!(id = %record.id, owner = %who.dn, image = %record.image_id, "workspace created");
        Ok(self.view(record))
    }

    /// Takes an address from its network's pool for every `pool` interface
    /// (all or none: a refusal gives back what was taken).
    async fn allocate_addresses(
        &self,
        id: &str,
        d: &Description,
        form: Form,
    ) -> Result<(), ServiceError> {
        for (i, nic) in d.network.nics.iter().enumerate() {
            // A dhcp interface's address comes from the same pool: the
            // node's dnsmasq hands out exactly that one.
            if !matches!(
                nic.method,
                vws_model::NicMethod::Pool | vws_model::NicMethod::Dhcp
            ) {
                continue;
            }
            let name = nic.network.as_deref().unwrap_or("default");
            let Some(net) = self.networks.get(name) else {
                let _ = self.store.release_addresses(id).await;
                return Err(vws_model::InvalidDescription(vec![vws_model::FieldError {
                    path: at(
                        form,
                        &[
                            Seg::Key("network"),
                            Seg::Key("nics"),
                            Seg::Index(i),
                            Seg::Key("network"),
                        ],
                    ),
                    message: format!(
                        "no network named {name:?} (known: {})",
                        self.networks
                            .0
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }])
                .into());
            };
            let candidates = net.candidates().map_err(|e| anyhow::anyhow!(e))?;
            let got = self
                .store
                .allocate_address(
                    name,
                    &candidates,
                    id,
                    &nic.name,
                    &net.mac(id, &nic.name),
                    self.clock.now(),
                )
                .await;
            match got {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = self.store.release_addresses(id).await;
                    return Err(ServiceError::Unavailable(format!(
                        "network {name} has no free address: all {} of {} are in use",
                        candidates.len(),
                        net.cidr
                    )));
                }
                Err(e) => {
                    let _ = self.store.release_addresses(id).await;
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// A `vm` workspace's image must boot: by itself (a boot sector), as a
    /// root filesystem under the pool's boot kernel, or as a kernel or hot
    /// image. Refused at create, naming `sw:image`, rather than 90 s into
    /// start with "No bootable device".
    async fn check_vm_boots(
        &self,
        d: &Description,
        image: &ImageRecord,
        form: Form,
    ) -> Result<(), ServiceError> {
        let path = at(form, &[Seg::Key("software"), Seg::Key("image")]);
        match self.disk_content(image).await? {
            Some(vws_qemu::img::Content::Unknown) => Err(InvalidDescription::one(
                path,
                format!(
                    "image {} cannot boot as a VM: it has no boot sector and is not a root filesystem (ext2/3/4)",
                    d.software.image.as_deref().unwrap_or_default()
                ),
            )
            .into()),
            Some(vws_qemu::img::Content::RootFs) => match self.boot_image().await? {
                Some(_) => Ok(()),
                None => Err(InvalidDescription::one(
                    path,
                    format!(
                        "image {} is a root filesystem, which boots as a VM with the kernel of the boot image {}; that image is not in the pool (import it, e.g. as scripts/run does)",
                        d.software.image.as_deref().unwrap_or_default(),
                        self.boot_image
                    ),
                )
                .into()),
            },
            _ => Ok(()),
        }
    }

    /// What a raw disk image holds (none: not a raw disk image).
    pub(crate) async fn disk_content(
        &self,
        image: &ImageRecord,
    ) -> Result<Option<vws_qemu::img::Content>, ServiceError> {
        if image.kind != ImageKind::Disk || image.format.as_deref() != Some("raw") {
            return Ok(None);
        }
        let Some(file) = image.file(vws_model::node::BlobRole::Disk) else {
            return Ok(None);
        };
        let path = self.blobs.path(&file.digest.parse()?);
        let content = tokio::task::spawn_blocking(move || vws_qemu::img::content(&path))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
        Ok(Some(content))
    }

    /// The kernel image root filesystems boot with as VMs, if it is in the
    /// pool.
    pub(crate) async fn boot_image(&self) -> Result<Option<ImageRecord>, ServiceError> {
        let r: ImageRef = self.boot_image.parse().map_err(|e| {
            ServiceError::Internal(anyhow::anyhow!("boot image {:?}: {e}", self.boot_image))
        })?;
        Ok(self
            .store
            .image(&r)
            .await?
            .filter(|i| i.kind == ImageKind::Kernel))
    }

    fn check_disk_fits(
        &self,
        d: &Description,
        image: &ImageRecord,
        form: Form,
    ) -> Result<(), ServiceError> {
        let disk_at = |attr| {
            at(
                form,
                &[Seg::Key("hardware"), Seg::Key("disk"), Seg::Key(attr)],
            )
        };
        match (&d.hardware.disk, image.kind) {
            (Some(disk), ImageKind::Disk | ImageKind::Hot)
                if disk.kind != vws_model::DiskType::Qcow2 =>
            {
                Err(InvalidDescription::one(
                    disk_at("type"),
                    "a workspace cloned from a disk image has a qcow2 overlay; use type qcow2",
                )
                .into())
            }
            (Some(disk), ImageKind::Disk | ImageKind::Hot) if disk.size.0 < image.virtual_size => {
                Err(InvalidDescription::one(
                    disk_at("size"),
                    format!(
                        "disk size {} is smaller than image {} ({})",
                        disk.size,
                        d.software.image.as_deref().unwrap_or_default(),
                        vws_model::ByteSize(image.virtual_size)
                    ),
                )
                .into())
            }
            _ => Ok(()),
        }
    }

    /// The workspace's own disk: a copy-on-write overlay of a disk image (O(1)
    /// in the image's size), or a blank disk for kernel images that ask for one.
    async fn make_disk(
        &self,
        id: &str,
        d: &Description,
        image: &ImageRecord,
    ) -> Result<Option<(String, u64)>, ServiceError> {
        let path = self.disks.join(format!("{id}.qcow2"));
        let result = match image.kind {
            // A dynamic account's disk is the upper layer over the image:
            // blank, formatted by the node on first use.
            _ if d.category == Category::DynamicAccount => {
                let size = d
                    .hardware
                    .disk
                    .as_ref()
                    .map_or(DEFAULT_ACCOUNT_DISK, |x| x.size.0);
                self.templates
                    .blank(&path, "qcow2", size)
                    .await
                    .map(|()| size)
            }
            ImageKind::Hot if image.file(vws_model::node::BlobRole::Disk).is_none() => {
                return Ok(None)
            }
            _ if d.hardware.disk.as_ref().is_some_and(|x| x.encrypted) => {
                // Encrypted at rest: a random passphrase, kept by the service
                // only (0600), handed to a node only while deployed.
                let key_file = self.disk_key_path(id);
                let key: String = {
                    use base64::Engine;
                    let bytes: [u8; 32] = rand::random();
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                };
                write_private(&key_file, &key).await?;
                let size = d
                    .hardware
                    .disk
                    .as_ref()
                    .map_or(0, |x| x.size.0)
                    .max(image.virtual_size);
                let backing = match image.file(vws_model::node::BlobRole::Disk) {
                    Some(f) => Some((
                        self.blobs.path(&f.digest.parse()?),
                        image.format.clone().unwrap_or_else(|| "raw".into()),
                    )),
                    None => None,
                };
                let made = vws_qemu::img::create_encrypted(
                    &path,
                    size,
                    backing.as_ref().map(|(p, f)| (p.as_path(), f.as_str())),
                    &key_file,
                )
                .await
                .map(|()| size);
                if made.is_err() {
                    let _ = tokio::fs::remove_file(&key_file).await;
                }
                made
            }
            ImageKind::Disk | ImageKind::Hot => {
                let file = image
                    .file(vws_model::node::BlobRole::Disk)
                    .ok_or_else(|| anyhow::anyhow!("image {} has no disk file", image.id))?;
                let backing = self.blobs.path(&file.digest.parse()?);
                let format = image.format.as_deref().unwrap_or("raw");
                let size = d
                    .hardware
                    .disk
                    .as_ref()
                    .map_or(image.virtual_size, |x| x.size.0)
                    .max(image.virtual_size);
                self.templates
                    .overlay(&backing, format, &path, size)
                    .await
                    .map(|()| size)
            }
            ImageKind::Kernel => match &d.hardware.disk {
                Some(disk) => self
                    .templates
                    .blank(&path, disk.kind.as_str(), disk.size.0)
                    .await
                    .map(|()| disk.size.0),
                None => return Ok(None),
            },
        };
        match result {
            Ok(size) => Ok(Some((path_string(&path), size))),
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                Err(anyhow::Error::from(e)
                    .context("making the workspace disk")
                    .into())
            }
        }
    }

    /// Clones a workspace (paper §2.1): a new name, a new resource with its own
    /// disk cloned from the same pool image, and a copy of the description.
    pub(crate) async fn clone_workspace(
        &self,
        who: &Identity,
        id: &str,
        name: Option<String>,
        changes: Option<&serde_json::Value>,
    ) -> Result<Workspace, ServiceError> {
        let source = self.visible(who, id).await?;
        let description = match changes {
            None => source.description,
            // Refining (paper §2): the source's description with a JSON
            // merge patch (RFC 7386) applied — narrow a range, add a
            // requirement, name another image, or drop the image (null) to
            // have one chosen — then checked as any create is.
            Some(patch) => {
                let mut doc = serde_json::to_value(&source.description)
                    .map_err(|e| ServiceError::Internal(e.into()))?;
                json_patch::merge(&mut doc, patch);
                vws_model::parse(&doc.to_string(), Form::Json)?
            }
        };
        self.create_with(who, description, Form::Json, name, Some(&source.id))
            .await
    }
}

fn path_string(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes a secret file readable by its owner only.
async fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let (path, text) = (path.to_path_buf(), text.to_string());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })
    .await??;
    Ok(())
}
