//! The workspace description (paper §2.1): what a client asks for.
//!
//! One model with three forms (XML, TOML, JSON). Server-owned fields (`EPR`,
//! `creationTime`, `lastModified`, `state`) are read so a written document parses
//! again, but the factory never trusts them.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use crate::size::ByteSize;
use crate::state::State;

/// A complete workspace description.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Description {
    /// What mechanism implements the workspace.
    pub category: Category,
    /// The virtual machine monitor, for `vm` workspaces only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<Vmm>,
    /// Current state; set by the service, ignored on create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Endpoint reference; set by the service, ignored on create.
    #[serde(default, rename = "EPR", skip_serializing_if = "Option::is_none")]
    pub epr: Option<Epr>,
    /// When the workspace was created; set by the service.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub creation_time: Option<OffsetDateTime>,
    /// Seconds the workspace is available for use from its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub life_cycle: Option<u64>,
    /// When the workspace's properties last changed; set by the service.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_modified: Option<OffsetDateTime>,
    /// The virtual resource the environment needs.
    #[serde(default)]
    pub hardware: Hardware,
    /// How the workspace is connected.
    #[serde(default)]
    pub network: Network,
    /// What software it carries.
    pub software: Software,
    /// What can be done with it once running.
    #[serde(default)]
    pub capability: Capability,
}

/// Workspace category (paper §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Category {
    /// A virtual machine.
    #[serde(rename = "vm")]
    Vm,
    /// A leased Unix account sandboxed on the host.
    #[serde(rename = "dynamic account")]
    DynamicAccount,
}

impl Category {
    /// The name used in every form of the description.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Vm => "vm",
            Category::DynamicAccount => "dynamic account",
        }
    }

    /// Reads a category name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "vm" => Some(Category::Vm),
            "dynamic account" => Some(Category::DynamicAccount),
            _ => None,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Virtual machine monitor of a `vm` workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// QEMU, with KVM when usable and TCG otherwise.
    #[default]
    Qemu,
}

impl Vmm {
    /// The name used in every form of the description.
    pub fn as_str(self) -> &'static str {
        "qemu"
    }
}

/// WS-Addressing style endpoint reference: where the workspace is managed and
/// the resource key that names it there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Epr {
    /// URL of the workspace resource on the service.
    pub address: String,
    /// Key derived from the owner's DN and the workspace id.
    pub resource_key: String,
}

/// An inclusive range of acceptable values; the factory binds one on placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Range<T> {
    /// Smallest acceptable value.
    pub min: T,
    /// Largest acceptable value.
    pub max: T,
}

impl<T: Copy> Range<T> {
    /// A range holding one value.
    pub fn exactly(v: T) -> Self {
        Range { min: v, max: v }
    }
}

impl<'de, T> Deserialize<'de> for Range<T>
where
    T: Deserialize<'de> + Copy,
{
    /// Accepts a scalar (`ram = "1GiB"`, meaning exactly that) or a table with
    /// `min` and/or `max`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Copy> Visitor<'de> for V<T> {
            type Value = Range<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a table with min and max")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Range<T>, E> {
                T::deserialize(de::value::U64Deserializer::new(v)).map(Range::exactly)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Range<T>, E> {
                T::deserialize(de::value::I64Deserializer::new(v)).map(Range::exactly)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Range<T>, E> {
                T::deserialize(de::value::StrDeserializer::new(v)).map(Range::exactly)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Range<T>, A::Error> {
                let (mut min, mut max) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "min" if min.is_none() => min = Some(map.next_value::<T>()?),
                        "max" if max.is_none() => max = Some(map.next_value::<T>()?),
                        "min" | "max" => return Err(de::Error::duplicate_field("min/max")),
                        other => return Err(de::Error::unknown_field(other, &["min", "max"])),
                    }
                }
                match (min, max) {
                    (Some(min), Some(max)) => Ok(Range { min, max }),
                    (Some(v), None) | (None, Some(v)) => Ok(Range::exactly(v)),
                    (None, None) => Err(de::Error::missing_field("min")),
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The virtual resource (paper §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hardware {
    /// Virtual CPUs.
    #[serde(default = "default_cpus")]
    pub cpus: Range<u32>,
    /// Guest memory.
    #[serde(default = "default_ram")]
    pub ram: Range<ByteSize>,
    /// The workspace's own disk; absent means the image's size (or no disk for a
    /// kernel image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Disk>,
    /// Extra devices such as CD-ROMs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
}

fn default_cpus() -> Range<u32> {
    Range::exactly(1)
}

fn default_ram() -> Range<ByteSize> {
    Range {
        min: ByteSize(128 * ByteSize::MIB),
        max: ByteSize(512 * ByteSize::MIB),
    }
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            cpus: default_cpus(),
            ram: default_ram(),
            disk: None,
            devices: Vec::new(),
        }
    }
}

/// The workspace disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// Virtual size.
    pub size: ByteSize,
    /// On-disk format of the workspace's overlay.
    #[serde(rename = "type", default)]
    pub kind: DiskType,
    /// Whether the guest may write.
    #[serde(default)]
    pub access: Access,
    /// Encrypted at rest (QEMU's LUKS in qcow2; the key stays with the
    /// service and goes to a node only while the workspace is deployed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// Disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskType {
    /// QEMU copy-on-write format; the only one a clone of a pool image can use.
    #[default]
    Qcow2,
    /// Raw bytes.
    Raw,
}

impl DiskType {
    /// The name used in every form and by `qemu-img`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Qcow2 => "qcow2",
            DiskType::Raw => "raw",
        }
    }
}

/// Access mode of a disk or device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Access {
    /// Read and write.
    #[default]
    #[serde(rename = "rw")]
    ReadWrite,
    /// Read only.
    #[serde(rename = "ro")]
    ReadOnly,
}

impl Access {
    /// The name used in every form.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "rw",
            Access::ReadOnly => "ro",
        }
    }
}

/// A device attached to the workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    /// Device kind.
    #[serde(rename = "type")]
    pub kind: DeviceType,
    /// Pool image it presents.
    pub image: String,
}

/// Kinds of device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceType {
    /// A read-only virtual CD-ROM drive.
    Cdrom,
}

impl DeviceType {
    /// The name used in every form.
    pub fn as_str(self) -> &'static str {
        "cdrom"
    }
}

/// Network configuration (paper §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Network {
    /// Network interfaces, in guest order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nic {
    /// Interface name inside the workspace.
    pub name: String,
    /// How it gets an address.
    pub method: NicMethod,
    /// The network its address comes from (`pool` and `dhcp`; default:
    /// the network named `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

/// How an interface obtains its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicMethod {
    /// A static address from the pre-reserved pool (paper §3.2).
    Pool,
    /// DHCP on the node's bridge.
    Dhcp,
    /// User-mode NAT with host port forwards.
    User,
    /// Not connected.
    None,
}

impl NicMethod {
    /// The name used in every form.
    pub fn as_str(self) -> &'static str {
        match self {
            NicMethod::Pool => "pool",
            NicMethod::Dhcp => "dhcp",
            NicMethod::User => "user",
            NicMethod::None => "none",
        }
    }
}

/// Software configuration (paper §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Software {
    /// Pool image: `name:tag` or `sha256:<digest>`; none: the factory picks
    /// the best image that meets the requirements below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Operating system the image carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Os>,
    /// Programs installed in the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub programs: Vec<Program>,
}

/// Operating system of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Os {
    /// Kernel version (a prefix by components: `6.1` is met by
    /// `6.1.0-57-cloud-amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Distribution, as os-release's `ID` or `ID-VERSION_ID` (`debian`,
    /// `debian-12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// What runs as PID 1 of a VM booted from a root filesystem: `vws` (the
    /// default: the vws guest's init, no systemd, fastest) or `systemd`
    /// (the image's own `/sbin/init`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
}

/// An installed program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Program {
    /// Program name: a package of the image (dpkg's name), or a busybox
    /// applet in an image without a package database.
    pub name: String,
    /// Exact version, or its prefix by components (`6.6` is met by
    /// `6.6.0+dfsg-12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Lowest version accepted (Debian's version order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// Highest version accepted (Debian's version order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
}

/// What the running workspace does (paper §2.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capability {
    /// Command run at startup (a shell command line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<String>,
    /// Ports the workspace serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// A served port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// Port number inside the workspace.
    pub port: u16,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a served port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The name used in every form.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl Description {
    /// The description as a client should resubmit it: server-owned fields cleared.
    pub fn without_server_fields(mut self) -> Self {
        self.state = None;
        self.epr = None;
        self.creation_time = None;
        self.last_modified = None;
        self
    }
}

/// Whether `s` can name a network: 1 to 32 letters, digits, `_`, `-`.
pub fn is_network_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}
