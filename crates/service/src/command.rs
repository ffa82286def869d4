//! The core's one door for clients: every action a client can ask for is a
//! [`Command`], and [`Service::execute`] is the only way to run one. It
//! checks the ACL class the command needs ([`CommandKind::class`], an
//! exhaustive match, so a new command cannot forget it) before anything
//! else; the methods it dispatches to check the caller's right to see the
//! workspace or image and the lifecycle table. A front-end (the REST API,
//! and any other) parses its requests into commands and renders the
//! [`Reply`]: it gets the same checks without knowing them.
//!
//! Node-facing calls (registration, heartbeats, events, job reports, disk
//! and memory a node stages or returns) are not commands: they are the node
//! protocol, admitted by `routes::Rule::SelfNode` and `HoldingNode`.

use std::path::PathBuf;
use std::sync::Arc;

use vws_model::{Description, Form, Identity};
use vws_store::{Filter, ImageRecord, JobRecord, Page, TransitionRecord};

use crate::acl::Class;
use crate::core::{Service, Workspace};
use crate::error::ServiceError;
use crate::jobs::Submit;
use crate::matching::Match;
use crate::nodes::NodeView;
use crate::pool::ImportRequest;

pub use vws_model::Verb;

/// Everything a client can ask the core to do.
#[derive(strum::EnumDiscriminants)]
#[strum_discriminants(
    name(CommandKind),
    derive(strum::EnumIter, strum::IntoStaticStr, Hash),
    strum(serialize_all = "kebab-case"),
    doc = "A command without its arguments: what the ACL and the route table name."
)]
pub enum Command {
    /// The caller's workspaces (everyone's for an administrator), a page.
    ListWorkspaces(Filter),
    /// One workspace, with its addresses and account.
    ShowWorkspace {
        /// Workspace id.
        id: String,
    },
    /// A workspace's transitions.
    History {
        /// Workspace id.
        id: String,
    },
    /// The pool's images judged against a description (a dry run of create).
    Match {
        /// The description, server fields dropped.
        description: Description,
        /// The form it came in.
        form: Form,
    },
    /// A new workspace from a description (paper §3.1: the factory).
    Create {
        /// What the client asks for.
        description: Description,
        /// The form it came in (errors name its elements).
        form: Form,
        /// A name of the client's choosing.
        name: Option<String>,
    },
    /// A new workspace from an existing one's description, changed.
    Clone {
        /// The source workspace.
        id: String,
        /// The clone's name.
        name: Option<String>,
        /// A JSON merge patch over the source's description.
        changes: Option<serde_json::Value>,
    },
    /// A new termination time.
    Renew {
        /// Workspace id.
        id: String,
        /// Seconds from now.
        lifetime: u64,
    },
    /// Ends a workspace and removes its disk.
    Destroy {
        /// Workspace id.
        id: String,
    },
    /// Stages a workspace onto a node.
    Deploy {
        /// Workspace id.
        id: String,
        /// The node to use, if the caller names one.
        host: Option<String>,
    },
    /// A lifecycle verb on a deployed workspace.
    Transition {
        /// Workspace id.
        id: String,
        /// What to do.
        verb: Verb,
    },
    /// Progress of a deploy's staging.
    Staging {
        /// Workspace id.
        id: String,
    },
    /// The workspace's console, streamed from its node.
    Console {
        /// Workspace id.
        id: String,
        /// Keep streaming as it grows.
        follow: bool,
    },
    /// A hot (or disk) image of the workspace, into the pool.
    Snapshot {
        /// Workspace id.
        id: String,
        /// Image name.
        name: String,
        /// Image tag.
        tag: String,
    },
    /// Live migration to another node.
    Migrate {
        /// Workspace id.
        id: String,
        /// Target node's name.
        to: String,
    },
    /// Progress of a live migration.
    Migration {
        /// Workspace id.
        id: String,
    },
    /// A job in a running workspace.
    SubmitJob {
        /// Workspace id.
        id: String,
        /// The job.
        job: Submit,
    },
    /// Many jobs, run at most `concurrency` at a time.
    SubmitBatch {
        /// Workspace id.
        id: String,
        /// The jobs.
        jobs: Vec<Submit>,
        /// How many run at once.
        concurrency: usize,
    },
    /// The jobs a workspace ran.
    Jobs {
        /// Workspace id.
        id: String,
    },
    /// One job.
    Job {
        /// Job id.
        job: String,
    },
    /// A job's output, streamed from its node.
    JobOutput {
        /// Job id.
        job: String,
        /// Keep streaming until it ends.
        follow: bool,
    },
    /// Cancels a running job.
    CancelJob {
        /// Job id.
        job: String,
    },
    /// Writes a file into a running workspace.
    PutFile {
        /// Workspace id.
        id: String,
        /// Absolute path inside the workspace.
        path: String,
        /// Its content.
        data: Vec<u8>,
    },
    /// Reads a file out of a running workspace.
    GetFile {
        /// Workspace id.
        id: String,
        /// Absolute path inside the workspace.
        path: String,
    },
    /// The images the caller may use.
    Images,
    /// One image.
    Image {
        /// `name:tag` or a content id.
        reference: String,
    },
    /// A new image from uploaded blobs.
    ImportImage(ImportRequest),
    /// Removes an image (its blobs go when nothing uses them).
    RemoveImage {
        /// `name:tag` or a content id.
        reference: String,
    },
    /// Pulls an OCI image from a registry into the pool: a long-running
    /// operation (docs/images.md).
    PullImage(crate::oci_pull::PullRequest),
    /// Pushes a root filesystem image to a registry as an OCI image: a
    /// long-running operation.
    PushImage {
        /// `name:tag` or a content id.
        reference: String,
        /// Where to, and how.
        push: crate::oci_push::PushRequest,
    },
    /// Registers an OCI image whose config and layers were uploaded (a
    /// layout folder or a `docker save` archive): a long-running operation.
    ImportOci(crate::oci_pull::OciImport),
    /// How far a long-running operation has come.
    Operation {
        /// Operation id.
        id: String,
    },
    /// Attaches a signature to an image.
    SignImage {
        /// `name:tag` or a content id.
        reference: String,
        /// The signer's certificate, PEM.
        certificate: String,
        /// Base64 signature over the image's content id.
        signature: String,
    },
    /// The size of a pool blob, if the pool has it.
    HasBlob {
        /// `sha256:…`.
        digest: String,
    },
    /// Stores a blob, checked against its digest as it streams.
    PutBlob {
        /// `sha256:…`.
        digest: String,
        /// Its bytes.
        body: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    },
    /// Where a blob the caller may read is, to be served with ranges.
    ReadBlob {
        /// `sha256:…`.
        digest: String,
    },
    /// A blob's chunk manifest (for resumable, checked staging).
    BlobChunks {
        /// `sha256:…`.
        digest: String,
    },
    /// The nodes, with capacity and health.
    Nodes,
    /// A one-time link that signs a browser in to the dashboard as the
    /// caller.
    SignInLink,
    /// Events the caller may see after `after` (none: from now on).
    Events {
        /// The last sequence number seen.
        after: Option<i64>,
    },
    /// The networks and their pools' use.
    Networks,
    /// One network (administrators also see its leases).
    Network {
        /// Network name.
        name: String,
    },
    /// A new access key for signed requests (the EC2 front-end), for the
    /// caller or, by an administrator, for another identity.
    CreateAccessKey {
        /// Whom it acts as (none: the caller).
        identity: Option<Identity>,
    },
    /// The caller's access keys (everyone's for an administrator).
    AccessKeys,
    /// Revokes an access key.
    RevokeAccessKey {
        /// Its id.
        id: String,
    },
    /// Asks for capacity now or later (docs/agreements.md): an offer, or a
    /// refusal with the earliest start that could be met.
    OfferAgreement(vws_model::agreement::AgreementRequest),
    /// The caller's agreements (everyone's for an administrator).
    Agreements,
    /// One agreement, with its history.
    ShowAgreement {
        /// Agreement id.
        id: String,
    },
    /// Makes an offer a binding reservation.
    AcceptAgreement {
        /// Agreement id.
        id: String,
    },
    /// Rejects an offer, or releases a reservation.
    CancelAgreement {
        /// Agreement id.
        id: String,
    },
    /// A new offer against an existing agreement (extend, shrink, move).
    Renegotiate {
        /// Agreement id.
        id: String,
        /// What changes.
        change: vws_model::agreement::Renegotiation,
    },
}

impl CommandKind {
    /// The ACL class a command needs (docs/security.md). Exhaustive: a new
    /// command does not compile until it has one.
    pub fn class(self) -> Class {
        use CommandKind as K;
        match self {
            K::ListWorkspaces
            | K::ShowWorkspace
            | K::History
            | K::Match
            | K::Staging
            | K::Console
            | K::Migration
            | K::Jobs
            | K::Job
            | K::JobOutput
            | K::Images
            | K::Image
            | K::ReadBlob
            | K::BlobChunks
            | K::Networks
            | K::Network
            | K::Events
            | K::SignInLink
            | K::CreateAccessKey
            | K::AccessKeys
            | K::RevokeAccessKey
            | K::Agreements
            | K::ShowAgreement
            | K::Operation => Class::Read,
            K::Create | K::Clone | K::OfferAgreement | K::AcceptAgreement | K::Renegotiate => {
                Class::Create
            }
            K::Renew | K::Destroy | K::Deploy | K::Transition | K::CancelAgreement => Class::Manage,
            K::Snapshot | K::Migrate => Class::Move,
            K::SubmitJob | K::SubmitBatch | K::CancelJob | K::PutFile | K::GetFile => Class::Run,
            K::ImportImage
            | K::PullImage
            | K::ImportOci
            | K::PushImage
            | K::RemoveImage
            | K::SignImage
            | K::HasBlob
            | K::PutBlob => Class::Image,
            K::Nodes => Class::Admin,
        }
    }

    /// Its name in logs and docs.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Command {
    /// What it is, without its arguments.
    pub fn kind(&self) -> CommandKind {
        self.into()
    }
}

/// What a command answers.
pub enum Reply {
    /// A workspace (created, changed or shown).
    Workspace(Box<Workspace>),
    /// A page of workspaces.
    Workspaces(Page<Workspace>),
    /// The images judged against a description.
    Match(Match),
    /// A workspace's transitions.
    History(Vec<TransitionRecord>),
    /// How far a deploy's staging has come.
    Staging(vws_model::node::StagingProgress),
    /// How far a live migration has come.
    Migration(vws_model::node::MigrationProgress),
    /// A summary document (networks).
    Document(serde_json::Value),
    /// A node's streamed answer (console, job output).
    Stream {
        /// The node's response, relayed as it arrives.
        body: reqwest::Response,
        /// Its media type.
        content_type: &'static str,
    },
    /// Jobs.
    Jobs(Vec<JobRecord>),
    /// A job.
    Job(JobRecord),
    /// A file's bytes.
    Bytes(Vec<u8>),
    /// An image.
    Image(Box<ImageRecord>),
    /// Images.
    Images(Vec<ImageRecord>),
    /// A stored blob.
    Blob {
        /// Its digest.
        digest: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A file on the service's disk to serve (with ranges).
    File(PathBuf),
    /// A chunk manifest.
    Chunks(vws_model::node::Manifest),
    /// The nodes.
    Nodes(Vec<NodeView>),
    /// Events, oldest first, and the sequence number to resume after.
    Events {
        /// The events.
        events: Vec<vws_model::records::Event>,
        /// The last one's, or where the read started if there were none.
        last: i64,
    },
    /// A long-running operation.
    Operation(Box<vws_model::records::Operation>),
    /// An agreement.
    Agreement(Box<vws_model::agreement::Agreement>),
    /// Agreements.
    Agreements(Vec<vws_model::agreement::Agreement>),
    /// Done; nothing to show.
    Done,
}

impl Reply {
    /// The workspace a create, clone or lifecycle command answered.
    pub fn into_workspace(self) -> Result<Workspace, ServiceError> {
        match self {
            Reply::Workspace(ws) => Ok(*ws),
            _ => Err(ServiceError::Internal(anyhow::anyhow!(
                "the command did not answer a workspace"
            ))),
        }
    }
}

fn workspace(ws: Workspace) -> Reply {
    Reply::Workspace(Box::new(ws))
}

fn agreement(a: vws_model::agreement::Agreement) -> Reply {
    Reply::Agreement(Box::new(a))
}

impl Service {
    /// Runs a client's command: the ACL class first, then the command
    /// (which checks what the caller may see and the lifecycle table).
    pub async fn execute(
        self: &Arc<Self>,
        who: &Identity,
        command: Command,
    ) -> Result<Reply, ServiceError> {
        let kind = command.kind();
        self.authorize(who, kind.class())?;
        tracing::debug!(command = kind.as_str(), who = %who.dn, "command");
        use Command as C;
        Ok(match command {
            C::ListWorkspaces(filter) => Reply::Workspaces(self.list(who, filter).await?),
            C::ShowWorkspace { id } => {
                let mut ws = self.workspace(who, &id).await?;
                ws.addresses = self.store().addresses_of(&id).await?;
                ws.account = self.store().account_of(&id).await?;
                if let Some(node) = ws.record.node.as_deref() {
                    ws.usage = self
                        .store()
                        .node(node)
                        .await?
                        .and_then(|n| n.report.usage.get(&id).cloned());
                }
                workspace(ws)
            }
            C::History { id } => Reply::History(self.history(who, &id).await?),
            C::Match { description, form } => {
                Reply::Match(self.match_description(who, &description, form).await?)
            }
            C::Create {
                description,
                form,
                name,
            } => workspace(self.create(who, description, form, name).await?),
            C::Clone { id, name, changes } => workspace(
                self.clone_workspace(who, &id, name, changes.as_ref())
                    .await?,
            ),
            C::Renew { id, lifetime } => workspace(self.renew(who, &id, lifetime).await?),
            C::Destroy { id } => {
                self.destroy(who, &id).await?;
                Reply::Done
            }
            C::Deploy { id, host } => workspace(self.deploy(who, &id, host.as_deref()).await?),
            C::Transition { id, verb } => workspace(match verb {
                Verb::Start => self.start(who, &id).await?,
                Verb::Stop => self.stop(who, &id).await?,
                Verb::Pause => self.pause(who, &id).await?,
                Verb::Unpause => self.unpause(who, &id).await?,
                Verb::Undeploy => self.undeploy(who, &id).await?,
            }),
            C::Staging { id } => Reply::Staging(self.staging(who, &id).await?),
            C::Console { id, follow } => Reply::Stream {
                body: self.console(who, &id, follow).await?,
                content_type: "text/plain; charset=utf-8",
            },
            C::Snapshot { id, name, tag } => {
                Reply::Image(Box::new(self.snapshot(who, &id, &name, &tag).await?))
            }
            C::Migrate { id, to } => workspace(self.migrate(who, &id, &to).await?),
            C::Migration { id } => Reply::Migration(self.migration(who, &id).await?),
            C::SubmitJob { id, job } => Reply::Job(self.submit_job(who, &id, job).await?),
            C::SubmitBatch {
                id,
                jobs,
                concurrency,
            } => Reply::Jobs(self.submit_batch(who, &id, jobs, concurrency).await?),
            C::Jobs { id } => Reply::Jobs(self.jobs(who, &id).await?),
            C::Job { job } => Reply::Job(self.job(who, &job).await?),
            C::JobOutput { job, follow } => Reply::Stream {
                body: self.job_output(who, &job, follow).await?,
                content_type: "application/x-ndjson",
            },
            C::CancelJob { job } => Reply::Job(self.cancel_job(who, &job).await?),
            C::PutFile { id, path, data } => {
                self.put_file(who, &id, &path, data).await?;
                Reply::Done
            }
            C::GetFile { id, path } => Reply::Bytes(self.get_file(who, &id, &path).await?),
            C::Images => Reply::Images(self.images(who).await?),
            C::Image { reference } => Reply::Image(Box::new(self.image(who, &reference).await?)),
            C::ImportImage(req) => Reply::Image(Box::new(self.import_image(who, req).await?)),
            C::PullImage(req) => Reply::Operation(Box::new(self.pull_image(who, req).await?)),
            C::PushImage { reference, push } => {
                Reply::Operation(Box::new(self.push_image(who, &reference, push).await?))
            }
            C::ImportOci(req) => Reply::Operation(Box::new(self.import_oci(who, req).await?)),
            C::Operation { id } => Reply::Operation(Box::new(self.operation(who, &id).await?)),
            C::RemoveImage { reference } => {
                self.remove_image(who, &reference).await?;
                Reply::Done
            }
            C::SignImage {
                reference,
                certificate,
                signature,
            } => Reply::Image(Box::new(
                self.sign_image(who, &reference, &certificate, &signature)
                    .await?,
            )),
            C::HasBlob { digest } => match self.has_blob(&digest).await? {
                Some(size) => Reply::Blob { digest, size },
                None => return Err(ServiceError::NotFound(format!("blob {digest} not found"))),
            },
            C::PutBlob { digest, body } => {
                let (d, size) = self.put_blob(&digest, body).await?;
                Reply::Blob {
                    digest: d.to_string(),
                    size,
                }
            }
            C::ReadBlob { digest } => {
                self.check_blob_readable(who, &digest).await?;
                Reply::File(self.blob_path(&digest).await?)
            }
            C::BlobChunks { digest } => {
                self.check_blob_readable(who, &digest).await?;
                Reply::Chunks(self.blob_manifest(&digest).await?)
            }
            C::Nodes => Reply::Nodes(self.nodes().await?),
            C::SignInLink => {
                let (token, expires) = self.sign_in_link(who).await?;
                Reply::Document(serde_json::json!({
                    "token": token,
                    "expires_at": expires
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                }))
            }
            C::Events { after } => {
                let (events, last) = self.events(who, after).await?;
                Reply::Events { events, last }
            }
            C::Networks => Reply::Document(serde_json::Value::Array(self.networks().await?)),
            C::Network { name } => Reply::Document(self.network(who, &name).await?),
            C::CreateAccessKey { identity } => Reply::Document(
                serde_json::to_value(self.create_access_key(who, identity).await?)
                    .map_err(anyhow::Error::from)?,
            ),
            C::AccessKeys => Reply::Document(
                serde_json::to_value(self.list_access_keys(who).await?)
                    .map_err(anyhow::Error::from)?,
            ),
            C::RevokeAccessKey { id } => {
                self.revoke_access_key(who, &id).await?;
                Reply::Done
            }
            C::OfferAgreement(req) => agreement(self.offer(who, req).await?),
            C::Agreements => Reply::Agreements(self.agreements(who).await?),
            C::ShowAgreement { id } => agreement(self.agreement(who, &id).await?),
            C::AcceptAgreement { id } => agreement(self.accept_agreement(who, &id).await?),
            C::CancelAgreement { id } => agreement(self.cancel_agreement(who, &id).await?),
            C::Renegotiate { id, change } => agreement(self.renegotiate(who, &id, change).await?),
        })
    }
}
