//! Deploy, start, stop, pause, unpause and undeploy (paper §3.1): each action
//! is checked against the transition table, carried out by the workspace's
//! node, and only then written to the record.

use axum::http::StatusCode;
use vws_model::node::{BlobRef, BootKind, DeployRequest};
use vws_model::{transition, Action, Identity, ImageRef, Placement, State};
use vws_store::{Change, ImageKind, ImageRecord, NodeRecord, WorkspaceRecord};

use crate::command::Verb;
use crate::core::{Service, Workspace};
use crate::error::ServiceError;

impl Service {
    /// Asks a node for `verb` with the intent recorded around the call: a
    /// crash before the result is written leaves the intent for
    /// [`Service::reconcile`] to finish or forget by what the node reports.
    /// The change recording the result clears it; a refusal clears it here,
    /// and a node that could not answer leaves it to the reconciler.
    async fn intent<T>(
        &self,
        id: &str,
        verb: Verb,
        call: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        self.store
            .set_pending(id, self.intent_of(verb.action().into()))
            .await?;
        let out = call.await;
        match &out {
            // The node may have done it before it went: what it reports
            // when it is back decides.
            Err(e) if e.node_unreachable() => self.store.disown_pending(id).await?,
            Err(_) => self.store.clear_pending(id).await?,
            Ok(_) => {}
        }
        out
    }

    /// An intent of this service process.
    pub(crate) fn intent_of(
        &self,
        action: vws_model::records::HistoryAction,
    ) -> vws_store::Intent<'_> {
        vws_store::Intent {
            action,
            by: &self.instance,
            to: None,
        }
    }

    /// Ends a check-out that did not happen: the lock and the account
    /// lease go, and the history says why.
    pub(crate) async fn checkout_failed(
        &self,
        mut r: WorkspaceRecord,
        actor: &str,
        why: String,
    ) -> Result<(), ServiceError> {
        self.store.release_account(&r.id).await?;
        r.lock_holder = None;
        r.lock_since = None;
        r.modified_at = self.clock.now();
        let change = Change {
            action: vws_model::records::HistoryAction::CheckoutFailed,
            actor,
            detail: Some(why),
        };
        self.store.update_workspace(&mut r, change).await?;
        Ok(())
    }

    async fn checked(
        &self,
        who: &Identity,
        id: &str,
        action: Action,
    ) -> Result<WorkspaceRecord, ServiceError> {
        let r = self.visible(who, id).await?;
        transition(r.state, r.placement, action)?;
        Ok(r)
    }

    /// The live node a deployed workspace is on.
    pub(crate) async fn node_of(&self, r: &WorkspaceRecord) -> Result<NodeRecord, ServiceError> {
        let name = r.node.as_deref().ok_or_else(|| {
            ServiceError::Conflict(format!("workspace {} is not on a node", r.id))
        })?;
        self.settled(r).await?;
        self.live_node(name).await
    }

    /// Refuses to act on a workspace another replica is acting on, or
    /// whose action a killed replica left (settled, finished or rolled
    /// back, by what its node reports once that replica's lease has run
    /// out: within seconds), and on one whose migration is in doubt.
    pub(crate) async fn settled(&self, r: &WorkspaceRecord) -> Result<(), ServiceError> {
        match self.store.pending(&r.id).await? {
            Some((action, by)) if by != self.instance => {
                let (what, whose) = match action {
                    vws_model::records::HistoryAction::Migrate => ("migration", "its nodes"),
                    _ if by.is_empty() => return Ok(()),
                    _ => (action.as_str(), "its node"),
                };
                Err(ServiceError::Settling(format!(
                    "workspace {}: a {what} by another service replica is in flight or being settled with {whose}; retry in a moment",
                    r.id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Writes the outcome of an action that happened.
    pub(crate) async fn commit(
        &self,
        mut r: WorkspaceRecord,
        action: Action,
        actor: &str,
        detail: Option<String>,
    ) -> Result<Workspace, ServiceError> {
        if let vws_model::Outcome::To(state, placement) = transition(r.state, r.placement, action)?
        {
            r.state = state;
            r.placement = placement;
        }
        r.modified_at = self.clock.now();
        self.store
            .update_workspace(
                &mut r,
                Change {
                    action: action.into(),
                    actor,
                    detail,
                },
            )
            .await?;
        Ok(self.view(r))
    }

    /// Check-out (paper §3.1): places the workspace on a node (or `host`),
    /// locks it, and has the node stage the image and the disk.
    pub(crate) async fn deploy(
        &self,
        who: &Identity,
        id: &str,
        host: Option<&str>,
    ) -> Result<Workspace, ServiceError> {
        self.deploy_to(who, id, host.map(Target::Host)).await
    }

    /// Deploys onto capacity an agreement reserved: that node and that
    /// binding, whatever runs there now (the agreement's start makes room).
    pub(crate) async fn deploy_reserved(
        &self,
        who: &Identity,
        id: &str,
        slot: &vws_model::agreement::Slot,
    ) -> Result<Workspace, ServiceError> {
        self.deploy_to(who, id, Some(Target::Reserved(slot))).await
    }

    async fn deploy_to(
        &self,
        who: &Identity,
        id: &str,
        target: Option<Target<'_>>,
    ) -> Result<Workspace, ServiceError> {
        let mut r = self.checked(who, id, Action::Deploy).await?;
        let memory_file = self.memory_path(id);
        if r.state == State::Paused && !memory_file.exists() {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is paused but its memory state is missing"
            )));
        }
        let reserved = matches!(target, Some(Target::Reserved(_)));
        let (node, mut binding) = match target {
            Some(Target::Reserved(slot)) => (
                self.live_node(&slot.node).await?,
                vws_model::records::Binding {
                    cpus: Some(slot.cpus),
                    ram: Some(slot.ram),
                    ..Default::default()
                },
            ),
            Some(Target::Host(h)) => self.place(&r, Some(h)).await?,
            None => self.place(&r, None).await?,
        };
        let image = self
            .store
            .image(&ImageRef::Digest(r.image_id.clone()))
            .await?
            .ok_or_else(|| {
                ServiceError::Internal(anyhow::anyhow!(
                    "image {} of workspace {id} is missing from the pool",
                    r.image_id
                ))
            })?;
        if let Some(m) = &image.machine {
            // A restore needs exactly the machine the memory was saved from.
            let room = node.report.ram_free.saturating_sub(256 << 20);
            if !reserved && (room < m.ram || node.report.cores < m.cpus) {
                return Err(ServiceError::Unavailable(format!(
                    "node {} has no room for the hot image's {} of RAM and {} cpus",
                    node.name,
                    vws_model::ByteSize(m.ram).human(),
                    m.cpus
                )));
            }
            binding.ram = Some(m.ram);
            binding.cpus = Some(m.cpus);
        }
        let mut request = self
            .deploy_request(
                &r,
                &image,
                binding.cpus.unwrap_or(1),
                binding.ram.unwrap_or(r.description.hardware.ram.min.0),
                true,
            )
            .await?;

        // The check-out lock goes on before anything moves, with the
        // deploy's intent: a service killed while the node stages leaves it
        // for the next one to roll back (`reconcile`).
        let now = self.clock.now();
        r.lock_holder = Some(node.name.clone());
        r.lock_since = Some(now);
        r.modified_at = now;
        self.store
            .update_workspace_intending(
                &mut r,
                Change {
                    action: vws_model::records::HistoryAction::Checkout,
                    actor: &who.dn,
                    detail: Some(format!("to {}", node.name)),
                },
                Some(self.intent_of(vws_model::records::HistoryAction::Deploy)),
            )
            .await?;
        let leased = match node.report.accounts {
            Some(range) if r.description.category == vws_model::Category::DynamicAccount => self
                .store
                .lease_account(&node.name, range.first, range.last, id, self.clock.now())
                .await
                .map_err(ServiceError::from)
                .and_then(|uid| {
                    uid.ok_or_else(|| {
                        ServiceError::Unavailable(format!(
                            "node {} has no free account: all {} uids of {}-{} are leased",
                            node.name,
                            range.last - range.first + 1,
                            range.first,
                            range.last
                        ))
                    })
                })
                .map(Some),
            _ => Ok(None),
        };
        request.account = leased?.map(|uid| vws_model::node::AccountLease { uid });
        let staged = self.nodes.deploy(&node, &request).await;
        let moved = match staged {
            Ok(d) => {
                self.metrics.staged_bytes(d.moved);
                d.moved
            }
            Err(e) => {
                self.checkout_failed(r, &who.dn, e.to_string()).await?;
                return Err(e);
            }
        };
        r.node = Some(node.name.clone());
        r.binding.cpus = binding.cpus;
        r.binding.ram = binding.ram;
        let mut detail = format!(
            "on {}: {} cpus, {}; {moved} bytes staged ({})",
            node.name,
            request.cpus,
            vws_model::ByteSize(request.ram).human(),
            vws_model::ByteSize(moved).human()
        );
        if let Some(a) = request.account {
            detail.push_str(&format!("; uid {}", a.uid));
        }
        self.commit(r, Action::Deploy, &who.dn, Some(detail)).await
    }
}

/// Where a deploy goes.
enum Target<'a> {
    /// The node named, with room checked.
    Host(&'a str),
    /// An agreement's slot.
    Reserved(&'a vws_model::agreement::Slot),
}

impl Service {
    /// What a node needs to stage a workspace: pool files, and (`with_state`)
    /// the repository's copy of its disk and saved memory.
    async fn deploy_request(
        &self,
        r: &WorkspaceRecord,
        image: &ImageRecord,
        cpus: u32,
        ram: u64,
        with_state: bool,
    ) -> Result<DeployRequest, ServiceError> {
        let mut blobs: Vec<BlobRef> = image
            .files
            .iter()
            .map(|f| BlobRef {
                role: f.role,
                digest: f.digest.clone(),
                size: f.size,
            })
            .collect();
        for dev in &r.device_images {
            if let Some(cd) = self.store.image(&ImageRef::Digest(dev.clone())).await? {
                blobs.extend(cd.files.iter().map(|f| BlobRef {
                    role: vws_model::node::BlobRole::Cdrom,
                    digest: f.digest.clone(),
                    size: f.size,
                }));
            }
        }
        let disk = match &r.disk_path {
            Some(p) if with_state => {
                let path = std::path::PathBuf::from(p);
                let m = tokio::task::spawn_blocking(move || vws_store::manifest(&path))
                    .await
                    .map_err(anyhow::Error::from)?
                    .map_err(anyhow::Error::from)?;
                Some(BlobRef {
                    role: vws_model::node::BlobRole::Workspace,
                    digest: m.digest,
                    size: m.size,
                })
            }
            _ => None,
        };
        let memory = if with_state && r.state == State::Paused {
            let path = self.memory_path(&r.id);
            let m = tokio::task::spawn_blocking(move || vws_store::manifest(&path))
                .await
                .map_err(anyhow::Error::from)?
                .map_err(anyhow::Error::from)?;
            Some(BlobRef {
                role: vws_model::node::BlobRole::Memory,
                digest: m.digest,
                size: m.size,
            })
        } else {
            None
        };
        // A root filesystem boots as a VM under the boot image's kernel and
        // init, with the workspace's overlay of it as the root disk.
        let rootfs_vm = !is_account(r)
            && self.disk_content(image).await? == Some(vws_qemu::img::Content::RootFs);
        let (boot, cmdline) = if rootfs_vm {
            let kernel = self.boot_image().await?.ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "the boot image {} of root filesystem images is not in the pool",
                    self.boot_image
                ))
            })?;
            blobs.extend(
                kernel
                    .files
                    .iter()
                    .filter(|f| {
                        f.role == vws_model::node::BlobRole::Kernel
                            || f.role == vws_model::node::BlobRole::Initrd
                    })
                    .map(|f| BlobRef {
                        role: f.role,
                        digest: f.digest.clone(),
                        size: f.size,
                    }),
            );
            let mut cmdline = crate::factory::rootfs_cmdline(&kernel);
            if r.description
                .software
                .os
                .as_ref()
                .and_then(|o| o.init.as_deref())
                == Some("systemd")
            {
                // The image's own init after the root is ready.
                cmdline.push_str(" vws.init=image");
            }
            (BootKind::Kernel, Some(cmdline))
        } else if image.kind == ImageKind::Disk {
            (BootKind::Disk, image.cmdline.clone())
        } else {
            (BootKind::Kernel, image.cmdline.clone())
        };
        Ok(DeployRequest {
            id: r.id.clone(),
            hostname: r.id.clone(),
            cpus,
            ram,
            boot,
            cmdline,
            blobs,
            disk,
            memory,
            // A dynamic account's disk is its own upper layer, over nothing.
            backing_format: if image.file(vws_model::node::BlobRole::Disk).is_some()
                && !is_account(r)
            {
                image.format.clone()
            } else {
                None
            },
            nics: r
                .description
                .network
                .nics
                .iter()
                .map(|n| (n.name.clone(), n.method))
                .collect(),
            // Runs as a job once the agent answers (see `start`), not from the kernel command line.
            startup: None,
            services: r
                .description
                .capability
                .services
                .iter()
                .map(|s| (s.port, s.protocol.as_str().to_string()))
                .collect(),
            repository: self.public_url.clone(),
            disk_key: std::fs::read_to_string(self.disk_key_path(&r.id)).ok(),
            addresses: self.nic_addresses(r).await?,
            account: None,
        })
    }

    /// Staging progress of a deploy in flight.
    pub(crate) async fn staging(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<vws_model::node::StagingProgress, ServiceError> {
        let r = self.visible(who, id).await?;
        let holder = r.lock_holder.clone().ok_or_else(|| {
            ServiceError::NotFound(format!("workspace {id} is not being deployed"))
        })?;
        let node = self.live_node(&holder).await?;
        self.nodes.staging(&node, id).await
    }

    async fn simple(
        &self,
        who: &Identity,
        id: &str,
        verb: Verb,
    ) -> Result<Workspace, ServiceError> {
        let action = verb.action();
        let mut r = self.checked(who, id, action).await?;
        let node = self.node_of(&r).await?;
        self.intent(id, verb, self.nodes.transition(&node, id, verb, None))
            .await?;
        if action == Action::Stop {
            // Forwards live as long as the VM.
            r.binding.forwards.clear();
        }
        self.commit(r, action, &who.dn, None).await
    }

    /// Asks the node to start or unpause; a QEMU launched for it (boot or
    /// restore) comes back with where the served ports are reachable.
    async fn launch_on_node(
        &self,
        r: &WorkspaceRecord,
        action: Action,
    ) -> Result<Option<Vec<vws_model::node::Forward>>, ServiceError> {
        let node = self.node_of(r).await?;
        let verb = match action {
            Action::Start => Verb::Start,
            _ => Verb::Unpause,
        };
        // At start, and at an unpause after a snapshot rotated the old one.
        let rotated = !self.credentials_dir(&r.id).join("cert.pem").exists();
        let body = if verb == Verb::Start || rotated {
            Some(vws_model::node::StartRequest {
                credentials: self.workspace_credentials(r).await?,
            })
        } else {
            None
        };
        let asked = self.nodes.transition(&node, &r.id, verb, body.as_ref());
        let done = self.intent(&r.id, verb, asked).await?;
        Ok(done.forwards)
    }

    /// A workspace's own certificate and key (paper §3.2), issued by the
    /// CA on its first start: the DN is the owner's organisation with the
    /// workspace id as CN, and the owner and id ride as attributes. Kept
    /// under `VWS_HOME/credentials/ID` (key 0600) until the workspace is
    /// destroyed. None when the service has no CA (in-process tests).
    async fn workspace_credentials(
        &self,
        r: &WorkspaceRecord,
    ) -> Result<Option<vws_model::node::WorkspaceCredentials>, ServiceError> {
        let Some(ca_dir) = &self.ca_dir else {
            return Ok(None);
        };
        let dir = self.credentials_dir(&r.id);
        if !dir.join("cert.pem").exists() {
            let ca = vws_pki::Ca::open(ca_dir).map_err(anyhow::Error::from)?;
            let mut dn: String = vws_pki::parse_dn(&r.owner)
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k != "CN")
                .map(|(k, v)| format!("/{k}={v}"))
                .collect();
            dn.push_str(&format!("/CN={}", r.id));
            let issued = ca
                .issue(&vws_pki::Request {
                    dn,
                    attributes: vec![
                        ("owner".into(), r.owner.clone()),
                        ("workspace".into(), r.id.clone()),
                    ],
                    kind: vws_pki::Kind::Workspace,
                    hosts: vec![r.id.clone()],
                    days: 3650,
                })
                .map_err(anyhow::Error::from)?;
            issued
                .write(&dir, ca.cert_pem())
                .map_err(anyhow::Error::from)?;
        }
        let c = vws_pki::Credentials::from_dir(&dir).map_err(anyhow::Error::from)?;
        Ok(Some(vws_model::node::WorkspaceCredentials {
            cert: c.cert_pem,
            key: c.key_pem,
            ca: c.ca_pem,
            metadata: Some(self.instance_metadata(r).await?),
        }))
    }

    /// What a workspace is told about itself by the metadata service inside
    /// it: its ids, host name, first address and placement, and, for an
    /// instance the EC2 front-end launched, its type, key pair and user data.
    async fn instance_metadata(
        &self,
        r: &WorkspaceRecord,
    ) -> Result<vws_model::node::InstanceMetadata, ServiceError> {
        let address = self
            .store
            .addresses_of(&r.id)
            .await?
            .into_iter()
            .next()
            .map(|a| a.address)
            .or_else(|| {
                let user = r.description.network.nics.first();
                user.filter(|n| n.method == vws_model::NicMethod::User)
                    .map(|_| "10.0.2.15".to_string())
            });
        let launched = self.store.ec2_instance(&r.id).await?;
        let mut public_keys = Vec::new();
        if let Some(name) = launched.as_ref().and_then(|l| l.key_name.as_deref()) {
            if let Some(k) = self
                .store
                .key_pairs(&r.owner)
                .await?
                .into_iter()
                .find(|k| k.name == name)
            {
                public_keys.push((k.name, k.public_key));
            }
        }
        Ok(vws_model::node::InstanceMetadata {
            instance_id: vws_model::cloud_ids::instance_id(&r.id),
            ami_id: vws_model::cloud_ids::image_id(&r.image_id),
            instance_type: launched.as_ref().map(|l| l.instance_type.clone()),
            local_hostname: r.id.clone(),
            local_ipv4: address,
            availability_zone: self.region.1.clone(),
            region: self.region.0.clone(),
            public_keys,
            user_data: launched.and_then(|l| l.user_data),
        })
    }

    /// Where each `pool` interface sits: address, gateway, MAC, and the
    /// layer-2 segment (per owner unless the network is shared).
    async fn nic_addresses(
        &self,
        r: &WorkspaceRecord,
    ) -> Result<Vec<vws_model::node::NicAddress>, ServiceError> {
        let mut out = Vec::new();
        for a in self.store.addresses_of(&r.id).await? {
            let Some(net) = self.networks.get(&a.network) else {
                return Err(ServiceError::Conflict(format!(
                    "workspace {} holds an address on network {}, which is no longer configured",
                    r.id, a.network
                )));
            };
            let (_, prefix_len) = net.prefix().map_err(|e| anyhow::anyhow!(e))?;
            let dhcp = r
                .description
                .network
                .nics
                .iter()
                .any(|n| n.name == a.nic && n.method == vws_model::NicMethod::Dhcp);
            out.push(vws_model::node::NicAddress {
                nic: a.nic,
                network: a.network.clone(),
                address: a.address,
                prefix_len,
                gateway: net.gateway.clone(),
                mac: a.mac,
                dhcp,
                segment: if net.shared {
                    a.network
                } else {
                    format!("{}/{}", a.network, r.owner)
                },
            });
        }
        Ok(out)
    }

    /// Where the passphrase of an encrypted workspace disk is kept.
    pub(crate) fn disk_key_path(&self, id: &str) -> std::path::PathBuf {
        self.home.join("keys").join(format!("{id}.key"))
    }

    /// Refuses what encrypted disks cannot do yet.
    pub(crate) fn plain_disk_only(&self, id: &str, what: &str) -> Result<(), ServiceError> {
        if self.disk_key_path(id).exists() {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} has an encrypted disk; {what} of encrypted workspaces is not supported yet"
            )));
        }
        Ok(())
    }

    pub(crate) fn credentials_dir(&self, id: &str) -> std::path::PathBuf {
        self.home.join("credentials").join(id)
    }

    /// Boots a deployed workspace; returns once its guest agent answers,
    /// with where its served ports are reachable.
    pub(crate) async fn start(&self, who: &Identity, id: &str) -> Result<Workspace, ServiceError> {
        let mut r = self.checked(who, id, Action::Start).await?;
        r.binding.forwards = self
            .launch_on_node(&r, Action::Start)
            .await?
            .unwrap_or_default();
        let startup = r.description.capability.startup.clone();
        let owner = Identity::new(r.owner.clone());
        let ws = self.commit(r, Action::Start, &who.dn, None).await?;
        // The capability's startup program runs as a job of the owner, so its
        // output and status are there to see like any other job's.
        if let Some(program) = startup {
            let submit = crate::jobs::Submit {
                argv: vec!["/bin/sh".into(), "-c".into(), program],
                env: vec![],
                cwd: None,
                stdin: None,
                timeout: None,
            };
            match self.submit_job(&owner, id, submit).await {
                Ok(job) => tracing::info!(%id, job = %job.id, "startup program started"),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "the startup program could not be started")
                }
            }
        }
        Ok(ws)
    }

    /// Shuts a workspace down (gracefully, then hard).
    pub(crate) async fn stop(&self, who: &Identity, id: &str) -> Result<Workspace, ServiceError> {
        self.simple(who, id, Verb::Stop).await
    }

    /// Freezes a running workspace.
    pub(crate) async fn pause(&self, who: &Identity, id: &str) -> Result<Workspace, ServiceError> {
        self.simple(who, id, Verb::Pause).await
    }

    /// Thaws a paused workspace. One deployed from the repository while
    /// paused is restored from its memory state: its computation goes on
    /// where it stopped.
    pub(crate) async fn unpause(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Workspace, ServiceError> {
        let mut r = self.checked(who, id, Action::Unpause).await?;
        if let Some(forwards) = self.launch_on_node(&r, Action::Unpause).await? {
            r.binding.forwards = forwards;
        }
        self.commit(r, Action::Unpause, &who.dn, None).await
    }

    /// Check-in (paper §3.1): the node sends the disk back (and, for a paused
    /// workspace, its memory state), the lock is released.
    pub(crate) async fn undeploy(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Workspace, ServiceError> {
        let r = self.checked(who, id, Action::Undeploy).await?;
        if is_account(&r) && r.state != State::Shutdown {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is a dynamic account and {}; stop it before undeploying (an account's processes cannot be checked in)",
                r.state
            )));
        }
        if r.state == State::Shutdown {
            // A memory state from an earlier pause is stale once the workspace has shut down.
            let _ = tokio::fs::remove_file(self.memory_path(id)).await;
        }
        let node = self.node_of(&r).await?;
        let asked = self.nodes.transition(&node, id, Verb::Undeploy, None);
        self.intent(id, Verb::Undeploy, asked).await?;
        self.finish_undeploy(id, &who.dn).await
    }

    /// Records a check-in the node completed (its disk, and memory when
    /// paused, are back in the repository, and it let the workspace go).
    pub(crate) async fn finish_undeploy(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<Workspace, ServiceError> {
        // Every file and process of the account went with the check-in.
        self.store.release_account(id).await?;
        // Re-read: the disk's return updated nothing in the record, but be exact.
        let mut r = self.record(id).await?;
        let from = r.node.take();
        r.lock_holder = None;
        r.lock_since = None;
        self.commit(
            r,
            Action::Undeploy,
            actor,
            from.map(|n| format!("from {n}")),
        )
        .await
    }

    /// Removes a deployed workspace from its node (for destroy): best effort
    /// when the node is lost, since the record is going anyway.
    pub(crate) async fn unstage_for_destroy(
        &self,
        r: &WorkspaceRecord,
    ) -> Result<(), ServiceError> {
        let Some(name) = r.node.as_deref().or(r.lock_holder.as_deref()) else {
            return Ok(());
        };
        match self.live_node(name).await {
            Ok(node) => match self.nodes.remove(&node, &r.id).await {
                Ok(_) => Ok(()),
                Err(ServiceError::Node {
                    status: StatusCode::BAD_GATEWAY,
                    ..
                }) => Ok(()),
                Err(e) => Err(e),
            },
            Err(e) => {
                tracing::warn!(id = %r.id, error = %e, "destroying a workspace whose node is unreachable");
                Ok(())
            }
        }
    }

    /// The workspace's console, as a byte stream (following it if asked).
    pub(crate) async fn console(
        &self,
        who: &Identity,
        id: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        let r = self.visible(who, id).await?;
        if r.placement != Placement::Host {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is in the repository; its console lives on a node"
            )));
        }
        let node = self.node_of(&r).await?;
        self.nodes.console(&node, id, follow).await
    }

    /// The disk a node stages (served while the workspace is checked out).
    pub async fn disk_path(&self, id: &str) -> Result<std::path::PathBuf, ServiceError> {
        let r = self.record(id).await?;
        match (&r.disk_path, &r.lock_holder) {
            (Some(p), Some(_)) => Ok(p.into()),
            (None, _) => Err(ServiceError::NotFound(format!(
                "workspace {id} has no disk"
            ))),
            (_, None) => Err(ServiceError::Conflict(format!(
                "workspace {id} is not checked out"
            ))),
        }
    }

    /// A workspace's record, whoever owns it (for node-side calls).
    pub(crate) async fn record(&self, id: &str) -> Result<WorkspaceRecord, ServiceError> {
        self.store
            .workspace(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("workspace {id} not found")))
    }

    /// A node returns a workspace's disk: verified against its digest, pointed
    /// back at the repository's copy of its backing image, and swapped in
    /// atomically.
    pub async fn receive_disk(
        &self,
        id: &str,
        digest: &str,
        body: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), ServiceError> {
        let r = self.record(id).await?;
        let (Some(path), Some(_)) = (&r.disk_path, &r.lock_holder) else {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is not checked out"
            )));
        };
        let image = self
            .store
            .image(&ImageRef::Digest(r.image_id.clone()))
            .await?;
        // The overlay goes back onto the repository's copy of its backing file.
        let backing = match image.as_ref().filter(|_| !is_account(&r)).and_then(|i| {
            i.file(vws_model::node::BlobRole::Disk)
                .map(|f| (f.digest.clone(), i.format.clone()))
        }) {
            Some((digest, format)) => Some((
                self.blobs.path(&digest.parse()?),
                format.unwrap_or_else(|| "raw".into()),
            )),
            None => None,
        };
        self.receive_file(
            id,
            "disk",
            std::path::Path::new(path),
            backing,
            digest,
            body,
        )
        .await
    }

    /// A node returns a paused workspace's memory state at check-in.
    pub async fn receive_memory(
        &self,
        id: &str,
        digest: &str,
        body: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), ServiceError> {
        let r = self.record(id).await?;
        if r.lock_holder.is_none() {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is not checked out"
            )));
        }
        tokio::fs::create_dir_all(&self.memory)
            .await
            .map_err(anyhow::Error::from)?;
        self.receive_file(
            id,
            "memory state",
            &self.memory_path(id),
            None,
            digest,
            body,
        )
        .await
    }

    /// Where a paused workspace's memory state is kept while checked in.
    pub(crate) fn memory_path(&self, id: &str) -> std::path::PathBuf {
        self.memory.join(format!("{id}.state"))
    }

    /// Receives a file into `path`: hashed on the way in, checked against
    /// `digest`, synced, optionally rebased onto `backing`, renamed into place.
    async fn receive_file(
        &self,
        id: &str,
        what: &str,
        path: &std::path::Path,
        backing: Option<(std::path::PathBuf, String)>,
        digest: &str,
        body: impl tokio::io::AsyncRead + Unpin,
    ) -> Result<(), ServiceError> {
        let expected: vws_store::Digest = digest.parse()?;
        let tmp = std::path::PathBuf::from(format!("{}.incoming", path.display()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp)
                .await
                .map_err(anyhow::Error::from)?;
            let mut hashing = HashingReader::new(body);
            tokio::io::copy(&mut hashing, &mut file)
                .await
                .map_err(anyhow::Error::from)?;
            file.sync_all().await.map_err(anyhow::Error::from)?;
            let actual = hashing.digest();
            if actual != expected.as_str() {
                return Err(ServiceError::Integrity(format!(
                    "returned {what} of {id} does not match {expected}: got {actual}"
                )));
            }
            if let Some((blob, format)) = &backing {
                vws_qemu::img::rebase_unsafe(&tmp, blob, format)
                    .await
                    .map_err(anyhow::Error::from)?;
            }
            tokio::fs::rename(&tmp, path)
                .await
                .map_err(anyhow::Error::from)?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
        }
    }

    fn digest(self) -> String {
        format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::finalize(self.hasher))
        )
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HashingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &poll {
            let fresh = buf.filled()[before..].to_vec();
            <sha2::Sha256 as sha2::Digest>::update(&mut self.hasher, &fresh);
        }
        poll
    }
}

impl Service {
    /// Saves a paused workspace as a hot image `name:tag` in the pool: its
    /// memory and device state, its disk flattened, and its kernel and
    /// initrd. Workspaces created from it are restored, not booted.
    pub(crate) async fn snapshot(
        &self,
        who: &Identity,
        id: &str,
        name: &str,
        tag: &str,
    ) -> Result<ImageRecord, ServiceError> {
        let reference =
            ImageRef::tagged(name, tag).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        // A shut-down workspace has no memory to keep: its disk is saved.
        if self.workspace(who, id).await?.record.state == vws_model::State::Shutdown {
            return self.disk_image(who, id, name, tag).await;
        }
        let r = self.checked(who, id, Action::Snapshot).await?;
        vm_only(&r, "a snapshot")?;
        self.plain_disk_only(id, "a snapshot")?;
        self.check_publisher(who, name).await?;
        let base = self
            .store
            .image(&ImageRef::Digest(r.image_id.clone()))
            .await?
            .ok_or_else(|| {
                ServiceError::Internal(anyhow::anyhow!("image {} is missing", r.image_id))
            })?;
        // A root filesystem VM ran the boot image's kernel and initrd: the
        // hot image keeps those, and the command line that chose its root.
        let base = if self.disk_content(&base).await? == Some(vws_qemu::img::Content::RootFs) {
            let boot = self.boot_image().await?.ok_or_else(|| {
                ServiceError::Conflict(format!(
                    "the boot image {} of root filesystem images is not in the pool",
                    self.boot_image
                ))
            })?;
            let mut manifest = base.manifest.clone();
            manifest.kernel = boot.manifest.kernel.clone();
            ImageRecord {
                files: boot.files.clone(),
                cmdline: Some(crate::factory::rootfs_cmdline(&boot)),
                manifest,
                ..base
            }
        } else {
            base
        };
        let (Some(kernel), Some(initrd)) = (
            base.file(vws_model::node::BlobRole::Kernel).cloned(),
            base.file(vws_model::node::BlobRole::Initrd).cloned(),
        ) else {
            return Err(ServiceError::Conflict(
                "hot images are made from workspaces that boot a kernel and initrd".into(),
            ));
        };
        let node = self.node_of(&r).await?;
        let saved = self.nodes.snapshot(&node, id).await?;
        let file =
            |role: vws_model::node::BlobRole, b: vws_model::node::SentBlob| vws_store::ImageFile {
                role,
                digest: b.digest,
                size: b.size,
            };
        let mut files = vec![
            kernel,
            initrd,
            file(vws_model::node::BlobRole::Memory, saved.memory),
        ];
        files.extend(saved.ram.map(|b| file(vws_model::node::BlobRole::Ram, b)));
        let mut virtual_size = 0;
        if let Some(disk) = saved.disk.map(|b| file(vws_model::node::BlobRole::Disk, b)) {
            let info = vws_qemu::img::info(&self.blobs.path(&disk.digest.parse()?))
                .await
                .map_err(anyhow::Error::from)?;
            virtual_size = info.virtual_size;
            files.push(disk);
        }
        for f in &files {
            self.blobs.manifest(&f.digest.parse()?).await?;
        }
        let machine = vws_store::HotMachine {
            ram: r.binding.ram.unwrap_or(r.description.hardware.ram.min.0),
            cpus: r.binding.cpus.unwrap_or(1),
        };
        let content =
            serde_json::json!({ "files": files, "cmdline": base.cmdline, "machine": machine });
        let record = ImageRecord {
            id: vws_store::Digest::of(content.to_string().as_bytes()).to_string(),
            kind: ImageKind::Hot,
            format: files
                .iter()
                .any(|f| f.role == vws_model::node::BlobRole::Disk)
                .then(|| "qcow2".to_string()),
            virtual_size,
            stored_size: files.iter().map(|f| f.size).sum(),
            files,
            cmdline: base.cmdline.clone(),
            owner: who.dn.clone(),
            created_at: self.clock.now(),
            tags: vec![],
            machine: Some(machine),
            signer: None,
            // It holds the workspace's memory: its owner's alone.
            visibility: vws_store::Visibility::Private,
            // What the workspace was made from.
            manifest: base.manifest.clone(),
        };
        self.store
            .put_image(&record, name, tag, crate::pool::publisher(who))
            .await?;
        // The image holds the workspace's memory, and with it the workspace's
        // private key: that credential is revoked now, and the workspace gets
        // a new one when it runs again.
        let held = self.credentials_dir(id);
        if let (Some(ca_dir), Ok(cert)) =
            (&self.ca_dir, std::fs::read_to_string(held.join("cert.pem")))
        {
            let ca = vws_pki::Ca::open(ca_dir).map_err(anyhow::Error::from)?;
            let serial = ca.revoke(&cert).map_err(anyhow::Error::from)?;
            let _ = tokio::fs::remove_dir_all(&held).await;
            tracing::info!(%id, %serial, "workspace credential revoked: a hot image holds its memory");
        }
        self.commit(
            r,
            Action::Snapshot,
            &who.dn,
            Some(format!("as {reference} ({})", record.id)),
        )
        .await?;
        tracing::info!(%id, image = %record.id, "hot image saved");
        self.image(who, &reference.to_string()).await
    }
}

impl Service {
    /// Live migration (paper §5's future work): moves a running or paused
    /// workspace to node `to` with QEMU's own migration — the disk mirrored
    /// over NBD, then memory and device state over TCP — and hands its
    /// running jobs over. Any failure before the switch-over leaves it
    /// running on its node as before.
    pub(crate) async fn migrate(
        &self,
        who: &Identity,
        id: &str,
        to: &str,
    ) -> Result<Workspace, ServiceError> {
        let mut r = self.checked(who, id, Action::Migrate).await?;
        vm_only(&r, "live migration")?;
        self.plain_disk_only(id, "live migration")?;
        let source = self.node_of(&r).await?;
        if source.name == to {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is already on {to}"
            )));
        }
        let target = self.live_node(to).await?;
        let ram = r.binding.ram.unwrap_or(r.description.hardware.ram.min.0);
        let cpus = r.binding.cpus.unwrap_or(1);
        if target
            .report
            .ram_free
            .saturating_sub(crate::nodes::HOST_RESERVE)
            < ram
        {
            return Err(ServiceError::Node {
                node: to.into(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "no_capacity".into(),
                message: format!(
                    "node {to} has no room for {} of RAM",
                    vws_model::ByteSize(ram).human()
                ),
            });
        }
        let image = self
            .store
            .image(&ImageRef::Digest(r.image_id.clone()))
            .await?
            .ok_or_else(|| anyhow::anyhow!("image {} is missing", r.image_id))?;
        let disk_size = match &r.disk_path {
            Some(p) => Some(
                vws_qemu::img::info(std::path::Path::new(p))
                    .await
                    .map_err(anyhow::Error::from)?
                    .virtual_size,
            ),
            None => None,
        };
        let incoming = vws_model::node::IncomingRequest {
            deploy: self.deploy_request(&r, &image, cpus, ram, false).await?,
            disk_size,
        };
        // The intent names the target: a service killed from here on leaves
        // the next one to roll back or finish on both nodes (`reconcile`).
        let intent = vws_store::Intent {
            to: Some(to),
            ..self.intent_of(vws_model::records::HistoryAction::Migrate)
        };
        self.store.set_pending(id, intent).await?;
        let target_at = match self.nodes.incoming(&target, &incoming).await {
            Ok(t) => t,
            Err(e) => {
                self.store.clear_pending(id).await?;
                return Err(e);
            }
        };
        let sent = self.nodes.migrate(&source, id, &target_at).await;
        let done = match sent {
            Ok(done) => done,
            Err(e) => {
                // Rolled back on the source; the target's waiting QEMU goes.
                let _ = self.nodes.remove(&target, id).await;
                r.modified_at = self.clock.now();
                let detail = Some(format!("to {to}: {e}"));
                let change = Change {
                    action: vws_model::records::HistoryAction::MigrateFailed,
                    actor: &who.dn,
                    detail,
                };
                self.store.update_workspace(&mut r, change).await?;
                return Err(e);
            }
        };
        let finished = self.nodes.finish_incoming(&target, id, &done).await;
        if let Err(e) = finished {
            // Past the switch-over there is no way back: the source has let go.
            r.node = Some(to.to_string());
            r.lock_holder = Some(to.to_string());
            r.modified_at = self.clock.now();
            let change = Change {
                action: vws_model::records::HistoryAction::Migrate,
                actor: &who.dn,
                detail: Some(format!("switched over to {to}")),
            };
            self.store.update_workspace(&mut r, change).await?;
            self.store.move_running_jobs(id, to).await?;
            let reason = format!("migration to {to} did not finish: {e}");
            self.corrupt(id, &reason, &who.dn).await?;
            return Err(e);
        }
        self.store.move_running_jobs(id, to).await?;
        r.node = Some(to.to_string());
        r.lock_holder = Some(to.to_string());
        r.binding.forwards = target_at.forwards;
        let detail = format!(
            "from {} to {to}; {} running job(s) handed over",
            source.name,
            done.jobs.len()
        );
        self.commit(r, Action::Migrate, &who.dn, Some(detail)).await
    }

    /// Progress of a migration in flight, as its source node reports it.
    pub(crate) async fn migration(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<vws_model::node::MigrationProgress, ServiceError> {
        let r = self.visible(who, id).await?;
        let node = self.node_of(&r).await?;
        self.nodes.migration(&node, id).await
    }
}

/// Whether a workspace is a dynamic account (paper §2.1).
pub(crate) fn is_account(r: &WorkspaceRecord) -> bool {
    r.description.category == vws_model::Category::DynamicAccount
}

/// Refuses what only the VM category can do: a dynamic account's
/// processes live in the host's kernel, with no machine state to save.
pub(crate) fn vm_only(r: &WorkspaceRecord, what: &str) -> Result<(), ServiceError> {
    if is_account(r) {
        return Err(ServiceError::Conflict(format!(
            "workspace {} is a dynamic account; {what} is only available to category \"vm\" (an account's processes cannot be saved or moved)",
            r.id
        )));
    }
    Ok(())
}
