//! What the service and the nodes say to each other (wire types, no I/O).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a file of an image or a deployment is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum BlobRole {
    /// A disk image (the image's, booting by itself or a root filesystem).
    Disk,
    /// A kernel, booted directly.
    Kernel,
    /// Its initrd.
    Initrd,
    /// A read-only CD-ROM image.
    Cdrom,
    /// A workspace's own disk overlay, staged from the repository.
    Workspace,
    /// Saved device (and RAM) state of a paused workspace or hot image.
    Memory,
    /// A hot image's guest RAM as a file of its own.
    Ram,
}

impl BlobRole {
    /// Its name on the wire and in the repository.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobRole::Disk => "disk",
            BlobRole::Kernel => "kernel",
            BlobRole::Initrd => "initrd",
            BlobRole::Cdrom => "cdrom",
            BlobRole::Workspace => "workspace",
            BlobRole::Memory => "memory",
            BlobRole::Ram => "ram",
        }
    }
}

impl std::fmt::Display for BlobRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file the node must have, by digest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    /// What it is.
    pub role: BlobRole,
    /// Content digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// How a VM workspace boots.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BootKind {
    /// A kernel and initrd given to QEMU (microvm).
    Kernel,
    /// The disk boots by itself (q35 with firmware).
    Disk,
}

/// Service → node: stage this workspace here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeployRequest {
    /// Workspace id.
    pub id: String,
    /// Guest hostname.
    pub hostname: String,
    /// Bound vCPUs.
    pub cpus: u32,
    /// Bound RAM in bytes.
    pub ram: u64,
    /// How it boots.
    pub boot: BootKind,
    /// Kernel command line of a kernel image.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Pool files the workspace uses (kernel, initrd, backing disk, CD-ROMs).
    pub blobs: Vec<BlobRef>,
    /// The workspace's own disk overlay, served by the repository.
    #[serde(default)]
    pub disk: Option<BlobRef>,
    /// Saved memory state of a paused workspace, served by the repository.
    #[serde(default)]
    pub memory: Option<BlobRef>,
    /// Format of the disk overlay's backing image, if it has one.
    #[serde(default)]
    pub backing_format: Option<String>,
    /// Network interfaces: (name, method).
    #[serde(default)]
    pub nics: Vec<(String, crate::NicMethod)>,
    /// Startup program.
    #[serde(default)]
    pub startup: Option<String>,
    /// Served ports (guest port, protocol) to forward from the host.
    #[serde(default)]
    pub services: Vec<(u16, String)>,
    /// Base URL of the repository to fetch from and return to.
    pub repository: String,
    /// Passphrase of an encrypted disk, for the life of the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_key: Option<String>,
    /// Addresses of `pool` interfaces.
    #[serde(default)]
    pub addresses: Vec<NicAddress>,
    /// For a `dynamic account` workspace: the Unix account leased to it on
    /// this node (absent for VMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountLease>,
}

impl DeployRequest {
    /// The category of the workspace it stages (an account lease makes it
    /// a dynamic account), which picks the node's driver.
    pub fn category(&self) -> crate::Category {
        match self.account {
            Some(_) => crate::Category::DynamicAccount,
            None => crate::Category::Vm,
        }
    }
}

/// A uid/gid pair leased from a node's account pool for one workspace.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountLease {
    /// The workspace's uid (and, equal to it, its gid).
    pub uid: u32,
}

/// The uids a node reserves for dynamic accounts: `first ..= last`, none
/// of them an existing account on the node.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountRange {
    /// Lowest uid of the pool.
    pub first: u32,
    /// Highest uid of the pool.
    pub last: u32,
}

impl std::str::FromStr for AccountRange {
    type Err = String;

    /// Reads `FIRST-LAST`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 1000000000-1000000999"))?;
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|e| format!("{s:?}: {x:?} is not a uid: {e}"))
        };
        let (first, last) = (num(a)?, num(b)?);
        if first == 0 || first > last || last >= u32::MAX - 1 {
            return Err(format!(
                "{s:?}: the range must be non-empty, above 0 and below 4294967294"
            ));
        }
        Ok(AccountRange { first, last })
    }
}

/// A `pool` interface's place on the network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NicAddress {
    /// Interface name.
    pub nic: String,
    /// Network name.
    pub network: String,
    /// Its address.
    pub address: String,
    /// Prefix length of the network.
    pub prefix_len: u8,
    /// Gateway for the guest.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Its MAC address.
    pub mac: String,
    /// The layer-2 segment it joins: the network for a shared one, the
    /// network and owner otherwise (owners are kept apart by bridges).
    pub segment: String,
    /// The guest asks for it by DHCP (the node serves it with dnsmasq).
    #[serde(default)]
    pub dhcp: bool,
}

/// A node's state as it reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct NodeReport {
    /// CPU cores.
    pub cores: u32,
    /// Total RAM.
    pub ram_total: u64,
    /// RAM available for new workspaces.
    pub ram_free: u64,
    /// Free disk in the node's state folder.
    pub disk_free: u64,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Why that accelerator.
    pub accel_reason: String,
    /// Digests in the node's image cache.
    pub images: Vec<String>,
    /// Workspaces here and their state as the driver sees it.
    pub workspaces: BTreeMap<String, String>,
    /// `ok`, or what is wrong.
    pub health: String,
    /// The account pool for `dynamic account` workspaces; absent when this
    /// node cannot run that category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<AccountRange>,
    /// What each running workspace uses, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, Usage>,
    /// Workspaces the node is acting on now (id → the action: deploy,
    /// start, migrate, …). A service that restarted leaves their
    /// interrupted actions alone until the node is done with them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub busy: BTreeMap<String, String>,
    /// The node's warm pool of VMMs waiting for hot starts; absent when it
    /// has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
}

/// A node's warm pool: QEMU processes started ahead of hot starts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WarmPool {
    /// How many it keeps when hot starts have been asked for.
    pub size: u32,
    /// How many wait now.
    pub waiting: u32,
    /// The memory they hold beyond what they share (their PSS), in bytes.
    pub memory_bytes: u64,
}

/// What a running workspace uses, as its node measures it: its QEMU
/// process (VMs) or its cgroup (dynamic accounts).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    /// CPU time used since it started, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub memory_bytes: u64,
    /// Bytes read from its disks since it started.
    #[serde(default)]
    pub block_read_bytes: u64,
    /// Bytes written to its disks since it started.
    #[serde(default)]
    pub block_write_bytes: u64,
    /// Bytes its interfaces received (loopback aside).
    #[serde(default)]
    pub net_rx_bytes: u64,
    /// Bytes its interfaces sent (loopback aside).
    #[serde(default)]
    pub net_tx_bytes: u64,
}

/// Node → service: here I am.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Registration {
    /// Node name, unique per service.
    pub name: String,
    /// Base URL of the node's API.
    pub url: String,
    /// Its state.
    pub report: NodeReport,
}

/// Node → service: something happened to a workspace unasked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeEvent {
    /// Workspace id.
    pub id: String,
    /// What happened.
    pub reason: String,
}

/// Staging progress of a deploy.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct StagingProgress {
    /// Bytes in place.
    pub done: u64,
    /// Bytes to have.
    pub total: u64,
    /// Bytes that crossed the network.
    pub moved: u64,
}

/// Size of a staging chunk.
pub const CHUNK: u64 = 4 << 20;

/// What the repository publishes about a file it serves for staging.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Digest of the whole file.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Digest of each chunk, in order.
    pub chunks: Vec<String>,
}

/// Service → node: run a job in a workspace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Job id.
    pub job: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Standard input (base64).
    #[serde(default)]
    pub stdin: Option<String>,
    /// The guest user it runs as (a VM's: an OCI image's `User`); none:
    /// root in a VM, the leased uid in a dynamic account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Seconds before the job is killed.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// Node → service: a job ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobReport {
    /// `exited` or `failed`.
    pub outcome: String,
    /// Exit code.
    #[serde(default)]
    pub code: Option<i32>,
    /// Killing signal.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Killed by its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// Why it failed.
    #[serde(default)]
    pub message: Option<String>,
    /// Bytes of output.
    pub output_bytes: u64,
}

/// A served port as reachable from the host.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forward {
    /// Port in the workspace.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `address:port` on the host.
    pub host: String,
}

/// Service → target node: get ready to receive a running workspace by live
/// migration. The pool files are staged as for a deploy; the disk is a blank
/// overlay of `disk_size` over the same backing image, filled by the source's
/// disk mirror.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IncomingRequest {
    /// What a deploy would stage (its `disk` and `memory` are not fetched).
    pub deploy: DeployRequest,
    /// Virtual size of the workspace disk, if it has one.
    #[serde(default)]
    pub disk_size: Option<u64>,
}

/// Target node → service → source node: where to send a migrating workspace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MigrationTarget {
    /// QEMU migration URI of the waiting target (`tcp:host:port`).
    pub migrate_uri: String,
    /// NBD URI of the target's disk export, if the workspace has a disk.
    #[serde(default)]
    pub nbd_uri: Option<String>,
    /// Where the target forwards the workspace's served ports.
    #[serde(default)]
    pub forwards: Vec<Forward>,
    /// When set, both streams go over TLS with the nodes' certificates and
    /// the target's must carry this name.
    #[serde(default)]
    pub tls_name: Option<String>,
}

/// A running job's output so far, handed from the source node to the target.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobHandoff {
    /// Job id.
    pub job: String,
    /// Its event log (NDJSON) so far.
    pub log: String,
    /// Output bytes counted so far.
    pub bytes: u64,
}

/// Source node → service → target node: the migration completed; these jobs
/// run on in the guest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrationDone {
    /// Jobs still running in the workspace.
    pub jobs: Vec<JobHandoff>,
    /// Whether the workspace was running (else it stays paused).
    #[serde(default)]
    pub running: bool,
}

/// How far a migration has come (reported by the source node).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MigrationProgress {
    /// `disk` (mirroring the disk), `memory` (copying RAM), `done` or `failed`.
    pub phase: String,
    /// Bytes done in this phase.
    pub done: u64,
    /// Bytes in this phase (an estimate while the guest dirties memory).
    pub total: u64,
}

/// A workspace's own credential (paper §3.2), handed to the node at start
/// and written into the guest by the agent; the node keeps no copy.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkspaceCredentials {
    /// Certificate, PEM.
    pub cert: String,
    /// Private key, PEM.
    pub key: String,
    /// The CA that issued it, PEM.
    pub ca: String,
    /// What the workspace is told about itself at 169.254.169.254 (the
    /// instance metadata service), written beside the credential.
    #[serde(default)]
    pub metadata: Option<InstanceMetadata>,
}

/// A workspace's instance metadata: its own facts only, served inside the
/// workspace (never over a network it shares), so no workspace can ask for
/// another's by posing as its address.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `i-…`.
    pub instance_id: String,
    /// `ami-…` of the image it was made from.
    pub ami_id: String,
    /// The instance type it was launched as (EC2 front-end), if any.
    #[serde(default)]
    pub instance_type: Option<String>,
    /// Its host name.
    pub local_hostname: String,
    /// Its first address, if it has one.
    #[serde(default)]
    pub local_ipv4: Option<String>,
    /// Its availability zone.
    pub availability_zone: String,
    /// Its region.
    pub region: String,
    /// Public keys: (key pair name, OpenSSH public key).
    #[serde(default)]
    pub public_keys: Vec<(String, String)>,
    /// User data, base64 as given at launch.
    #[serde(default)]
    pub user_data: Option<String>,
}

impl std::fmt::Debug for WorkspaceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never printed, never logged.
        f.write_str("WorkspaceCredentials { .. }")
    }
}

/// Service → node: start a deployed workspace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StartRequest {
    /// The workspace's credential to put in the guest.
    #[serde(default)]
    pub credentials: Option<WorkspaceCredentials>,
}

#[cfg(test)]
mod tests {
    use super::AccountRange;

    #[test]
    fn account_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            "1000-1999".parse::<AccountRange>(),
            Ok(AccountRange {
                first: 1000,
                last: 1999
            })
        );
        for bad in ["", "5", "10-5", "0-10", "a-b", "1-4294967295", "-3-4"] {
            assert!(bad.parse::<AccountRange>().is_err(), "{bad:?}");
        }
    }
}

/// Node → service: a deploy's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Deployed {
    /// Bytes that crossed the network (the rest was in the node's cache).
    pub moved: u64,
}

/// Node → service: the answer to a lifecycle verb.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Transitioned {
    /// The workspace's state on the node afterwards (`running`, …).
    #[serde(default)]
    pub state: String,
    /// Where its served ports are reachable, when the verb launched QEMU
    /// (start, and an unpause that restored it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwards: Option<Vec<Forward>>,
}

/// A file a node uploaded to the repository's blob store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SentBlob {
    /// Its digest (`sha256:…`).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Node → service: what a snapshot (hot image) uploaded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// The device state (and RAM, unless `ram` holds it).
    pub memory: SentBlob,
    /// The guest RAM as a file of its own (shared-memory machines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<SentBlob>,
    /// The disk, flattened, if the workspace has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<SentBlob>,
}

/// The node API's routes, in the router's syntax: the node serves exactly
/// these and the service calls them through [`path`].
pub mod routes {
    /// Capacity and health.
    pub const HEALTH: &str = "/node/v1/health";
    /// A workspace on the node (`GET` its state, `DELETE` removes it).
    pub const VM: &str = "/node/v1/vms/{id}";
    /// Stage a workspace.
    pub const DEPLOY: &str = "/node/v1/vms/{id}/deploy";
    /// Staging progress.
    pub const STAGING: &str = "/node/v1/vms/{id}/staging";
    /// Lifecycle verbs.
    pub const START: &str = "/node/v1/vms/{id}/start";
    /// Shut down.
    pub const STOP: &str = "/node/v1/vms/{id}/stop";
    /// Pause.
    pub const PAUSE: &str = "/node/v1/vms/{id}/pause";
    /// Resume.
    pub const UNPAUSE: &str = "/node/v1/vms/{id}/unpause";
    /// Check the disk (and memory) back in, leave the node.
    pub const UNDEPLOY: &str = "/node/v1/vms/{id}/undeploy";
    /// The console log.
    pub const CONSOLE: &str = "/node/v1/vms/{id}/console";
    /// Start a job.
    pub const JOBS: &str = "/node/v1/vms/{id}/jobs";
    /// A hot image.
    pub const SNAPSHOT: &str = "/node/v1/vms/{id}/snapshot";
    /// Files in and out of a running workspace.
    pub const FILES: &str = "/node/v1/vms/{id}/files";
    /// Migration target: get ready.
    pub const INCOMING: &str = "/node/v1/vms/{id}/incoming";
    /// Migration target: take over.
    pub const INCOMING_FINISH: &str = "/node/v1/vms/{id}/incoming/finish";
    /// Migration source: send.
    pub const MIGRATE: &str = "/node/v1/vms/{id}/migrate";
    /// Migration progress.
    pub const MIGRATION: &str = "/node/v1/vms/{id}/migration";
    /// A job's output.
    pub const JOB_OUTPUT: &str = "/node/v1/jobs/{job}/output";
    /// Cancel a job.
    pub const CANCEL_JOB: &str = "/node/v1/jobs/{job}/cancel";

    /// A route with its one parameter (`{id}` or `{job}`) filled in.
    /// Parameters are the service's own ids (`ws-…`, `job-…`); anything
    /// else that could leave its segment is refused.
    pub fn path(route: &str, param: &str) -> Option<String> {
        let ok = !param.is_empty()
            && param
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let start = route.find('{')?;
        let end = route[start..].find('}')? + start;
        ok.then(|| format!("{}{param}{}", &route[..start], &route[end + 1..]))
    }
}

#[cfg(test)]
mod route_tests {
    use super::routes::*;

    #[test]
    fn paths_fill_their_parameter_and_refuse_what_leaves_it() {
        assert_eq!(
            path(INCOMING_FINISH, "ws-1a").as_deref(),
            Some("/node/v1/vms/ws-1a/incoming/finish")
        );
        assert_eq!(
            path(CANCEL_JOB, "job-9").as_deref(),
            Some("/node/v1/jobs/job-9/cancel")
        );
        for bad in ["", "..", "a/b", "ws-1?x=1", "ws 1", "%2e"] {
            assert_eq!(path(VM, bad), None, "{bad:?}");
        }
        assert_eq!(path(HEALTH, "ws-1"), None);
    }
}

/// A locally administered MAC address derived from the workspace id and the
/// interface's index: stable for a workspace, different between workspaces
/// (QEMU would give every guest 52:54:00:12:34:56). The node gives it to a
/// user NIC; front-ends show it.
pub fn mac_address(id: &str, index: usize) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{id}/{index}").as_bytes());
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3])
}
