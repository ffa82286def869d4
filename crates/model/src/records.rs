//! The records the API answers with: workspaces, their history, images,
//! jobs, address and account leases. The repository (`vws-store`) reads
//! and writes them; clients (`vws-client`) read them without a database
//! library.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Description, Placement, State};

/// Values the factory or a node chose within the description's ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// Bound vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Bound RAM in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u64>,
    /// Virtual size of the workspace disk in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Where each served port is reachable while the workspace runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<crate::node::Forward>,
}

/// A workspace as the repository keeps it and the API answers it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Workspace id (`ws-…`).
    pub id: String,
    /// Name, unique per owner.
    pub name: String,
    /// Owner's distinguished name.
    pub owner: String,
    /// The accepted description, without server-owned fields.
    pub description: Description,
    /// Values bound within the description's ranges.
    pub binding: Binding,
    /// Current state.
    pub state: State,
    /// In the repository or on a host.
    pub placement: Placement,
    /// The host it is deployed on.
    pub node: Option<String>,
    /// Who holds the check-out lock.
    pub lock_holder: Option<String>,
    /// Since when.
    #[serde(with = "time::serde::rfc3339::option")]
    pub lock_since: Option<OffsetDateTime>,
    /// The pool image it was cloned from (`sha256:…`).
    pub image_id: String,
    /// Its disk overlay in the repository, if it has one.
    pub disk_path: Option<String>,
    /// Why it is corrupted, when it is.
    pub reason: Option<String>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the reaper destroys it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub terminates_at: Option<OffsetDateTime>,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub modified_at: OffsetDateTime,
    /// Optimistic-concurrency counter, bumped by every update.
    pub version: i64,
    /// Pool images this workspace depends on besides `image_id` (devices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_images: Vec<String>,
}

impl WorkspaceRecord {
    /// RAM counted against the owner's quota: the top of the requested range.
    pub fn ram_quota(&self) -> u64 {
        self.description.hardware.ram.max.0
    }
}

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A workspace was created, changed state or place, or was destroyed
    /// (`data`: id, action, state, placement, node, actor).
    Workspace,
    /// A job was queued, started or ended (`data`: job, workspace, state,
    /// exit code).
    Job,
    /// A node came up or was lost (`data`: node, status).
    Node,
    /// An image was added or removed (`data`: image, name, tag, action).
    Image,
}

impl EventKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Workspace => "workspace",
            EventKind::Job => "job",
            EventKind::Node => "node",
            EventKind::Image => "image",
        }
    }

    /// The kind of a stored name.
    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Workspace,
            EventKind::Job,
            EventKind::Node,
            EventKind::Image,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One thing that happened, in the repository's global order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its place in the order: a client resumes after the last it saw.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What it is about.
    pub kind: EventKind,
    /// The id of what it is about (workspace, job, node, image).
    pub subject: String,
    /// The details, by kind.
    pub data: serde_json::Value,
}

/// One entry of a workspace's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Order within the workspace's history, from 1.
    pub seq: i64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What was done.
    pub action: HistoryAction,
    /// State before, if any.
    pub from_state: Option<String>,
    /// State after, if the workspace still exists.
    pub to_state: Option<String>,
    /// Placement after.
    pub placement: Option<String>,
    /// Who asked (a DN, or `reaper`).
    pub actor: String,
    /// Anything worth keeping (reason, node, …).
    pub detail: Option<String>,
}

/// One page of a list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Page<T> {
    /// The records.
    pub items: Vec<T>,
    /// Cursor for the next page, if there is one.
    pub next: Option<String>,
}

/// What an image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// A bootable disk image (raw or qcow2).
    Disk,
    /// A kernel and an initrd, booted directly.
    Kernel,
    /// A hot image: a paused workspace's memory and disk with its kernel and
    /// initrd; workspaces made from it are restored, not booted.
    Hot,
}

/// The machine a hot image was saved from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotMachine {
    /// RAM in bytes.
    pub ram: u64,
    /// vCPUs.
    pub cpus: u32,
}

impl ImageKind {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Disk => "disk",
            ImageKind::Kernel => "kernel",
            ImageKind::Hot => "hot",
        }
    }
}

/// One file of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    /// What it is.
    pub role: crate::node::BlobRole,
    /// Its blob.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An image in the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Content id (`sha256:…`): the disk's digest, or the digest of the
    /// kernel/initrd manifest.
    pub id: String,
    /// What it holds.
    pub kind: ImageKind,
    /// Disk format (`raw`, `qcow2`), for disk images.
    pub format: Option<String>,
    /// Size the guest sees (disk images), or 0.
    pub virtual_size: u64,
    /// Bytes stored.
    pub stored_size: u64,
    /// Its files.
    pub files: Vec<ImageFile>,
    /// Kernel command line, for kernel images.
    pub cmdline: Option<String>,
    /// Who imported it.
    pub owner: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Its `name:tag` names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// For hot images: the machine they were saved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<HotMachine>,
    /// DN of whoever signed its content id, if anyone did (verified by the
    /// service against the CA when the signature was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Who may use it: every client, or its owner and administrators.
    #[serde(default)]
    pub visibility: Visibility,
    /// What it holds (distribution, packages, C library, kernel), read
    /// from the image at import.
    #[serde(default)]
    pub manifest: crate::software::Manifest,
}

/// Who may use an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Every client (the site's pool images).
    #[default]
    Public,
    /// Its owner and administrators (the default for hot images, which
    /// hold a workspace's memory).
    Private,
}

impl Visibility {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }
}

impl ImageRecord {
    /// Whether `dn` (an administrator if `admin`) may use the image.
    pub fn usable_by(&self, dn: &str, admin: bool) -> bool {
        admin || self.visibility == Visibility::Public || self.owner == dn
    }

    /// The file with a role.
    pub fn file(&self, role: crate::node::BlobRole) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A job as the repository keeps it and the API answers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    /// Job id (`job-…`).
    pub id: String,
    /// Workspace it runs in.
    pub workspace_id: String,
    /// Who submitted it.
    pub owner: String,
    /// Node it ran on.
    pub node: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Where it is in its life.
    pub state: JobState,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
    /// Killed by its timeout.
    pub timed_out: bool,
    /// Why it failed.
    pub message: Option<String>,
    /// A cancel was asked for.
    pub cancelled: bool,
    /// Bytes of output.
    pub output_bytes: u64,
    /// Submission time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// End time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
}

/// One address in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Network name.
    pub network: String,
    /// The address (IPv4, dotted).
    pub address: String,
    /// Holder.
    pub workspace_id: String,
    /// Interface name in the workspace.
    pub nic: String,
    /// Its MAC address.
    pub mac: String,
    /// When it was allocated.
    #[serde(with = "time::serde::rfc3339")]
    pub allocated_at: OffsetDateTime,
}

/// One uid leased to a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLease {
    /// Node the uid is on.
    pub node: String,
    /// The uid (and gid).
    pub uid: u32,
    /// Holder.
    pub workspace_id: String,
    /// Since when.
    #[serde(with = "time::serde::rfc3339")]
    pub leased_at: OffsetDateTime,
}

/// A workspace as clients see it: its record and its endpoint reference.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workspace {
    /// The record.
    #[serde(flatten)]
    pub record: WorkspaceRecord,
    /// Endpoint reference.
    pub epr: crate::Epr,
    /// Addresses it holds from network pools (shown by `show`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<Address>,
    /// The Unix account a dynamic account holds on its node (shown by `show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountLease>,
    /// What a running workspace uses, as its node last reported (shown by
    /// `show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::node::Usage>,
}

impl Workspace {
    /// The description with every server-owned field filled in, as the XML
    /// form shows it.
    pub fn full_description(&self) -> Description {
        let mut d = self.record.description.clone();
        d.state = Some(self.record.state);
        d.epr = Some(self.epr.clone());
        d.creation_time = Some(self.record.created_at);
        d.last_modified = Some(self.record.modified_at);
        d
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted in a batch, not yet sent to its node.
    Queued,
    /// Sent to its node and not ended.
    Running,
    /// Its program exited (with a code or a signal).
    Exited,
    /// It could not run, or was lost with its workspace.
    Failed,
    /// It ended after a cancel was asked for.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Exited,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// Its name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Exited => "exited",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a history entry records: a lifecycle action, or a step of one
/// that the record keeps (a check-out, a failed deploy or migration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HistoryAction {
    /// The workspace was made (factory).
    Create,
    /// The check-out lock was taken for a deploy.
    Checkout,
    /// A deploy failed; the lock was released.
    CheckoutFailed,
    /// The lifecycle action of that name.
    Deploy,
    /// The lifecycle action of that name.
    Undeploy,
    /// The lifecycle action of that name.
    Start,
    /// The lifecycle action of that name.
    Stop,
    /// The lifecycle action of that name.
    Pause,
    /// The lifecycle action of that name.
    Unpause,
    /// The lifecycle action of that name.
    Snapshot,
    /// The lifecycle action of that name.
    Migrate,
    /// A migration failed before its switch-over; the workspace stayed.
    MigrateFailed,
    /// A new termination time.
    Renew,
    /// The lifecycle action of that name.
    Corrupt,
    /// The lifecycle action of that name.
    Destroy,
    /// Chosen to make room for an agreement (the pause and check-in follow).
    Suspend,
    /// Deployed again after a suspension.
    Resume,
}

impl HistoryAction {
    /// Every entry kind.
    pub const ALL: [HistoryAction; 17] = [
        HistoryAction::Create,
        HistoryAction::Checkout,
        HistoryAction::CheckoutFailed,
        HistoryAction::Deploy,
        HistoryAction::Undeploy,
        HistoryAction::Start,
        HistoryAction::Stop,
        HistoryAction::Pause,
        HistoryAction::Unpause,
        HistoryAction::Snapshot,
        HistoryAction::Migrate,
        HistoryAction::MigrateFailed,
        HistoryAction::Renew,
        HistoryAction::Corrupt,
        HistoryAction::Destroy,
        HistoryAction::Suspend,
        HistoryAction::Resume,
    ];

    /// Its name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryAction::Create => "create",
            HistoryAction::Checkout => "checkout",
            HistoryAction::CheckoutFailed => "checkout-failed",
            HistoryAction::Deploy => "deploy",
            HistoryAction::Undeploy => "undeploy",
            HistoryAction::Start => "start",
            HistoryAction::Stop => "stop",
            HistoryAction::Pause => "pause",
            HistoryAction::Unpause => "unpause",
            HistoryAction::Snapshot => "snapshot",
            HistoryAction::Migrate => "migrate",
            HistoryAction::MigrateFailed => "migrate-failed",
            HistoryAction::Renew => "renew",
            HistoryAction::Corrupt => "corrupt",
            HistoryAction::Destroy => "destroy",
            HistoryAction::Suspend => "suspend",
            HistoryAction::Resume => "resume",
        }
    }

    /// The entry kind named `s`.
    pub fn parse(s: &str) -> Option<HistoryAction> {
        HistoryAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl From<crate::Action> for HistoryAction {
    fn from(a: crate::Action) -> Self {
        use crate::Action as A;
        match a {
            A::Deploy => HistoryAction::Deploy,
            A::Undeploy => HistoryAction::Undeploy,
            A::Start => HistoryAction::Start,
            A::Stop => HistoryAction::Stop,
            A::Pause => HistoryAction::Pause,
            A::Unpause => HistoryAction::Unpause,
            A::Snapshot => HistoryAction::Snapshot,
            A::Migrate => HistoryAction::Migrate,
            A::Corrupt => HistoryAction::Corrupt,
            A::Destroy => HistoryAction::Destroy,
        }
    }
}

impl std::fmt::Display for HistoryAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Long-running operations (an image pull): kept in the repository, so
// any replica answers how far one has come.

/// Where an operation is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    /// Under way.
    Running,
    /// Finished; `image` names what it made.
    Done,
    /// Failed; `error` says why, and nothing half-made was registered.
    Failed,
}

/// One layer's progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerProgress {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes in all.
    pub size: u64,
    /// Bytes moved so far.
    pub done: u64,
    /// The pool had it already: nothing moved.
    pub cached: bool,
}

/// A long-running operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Operation {
    /// `op-` and 16 hex digits.
    pub id: String,
    /// Who asked.
    pub owner: String,
    /// `pull`.
    pub kind: String,
    /// What it is about (the image reference).
    pub target: String,
    /// Where it is.
    pub state: OperationState,
    /// Its step: `resolving`, `layers`, `applying`, `importing`, `done`.
    pub phase: String,
    /// Per layer.
    #[serde(default)]
    pub layers: Vec<LayerProgress>,
    /// The image it made (`name:tag`), once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was asked for.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it last moved.
    #[serde(with = "time::serde::rfc3339")]
    pub modified_at: OffsetDateTime,
}
