//! OCI images for vws (docs/images.md): the distribution protocol to
//! pull an image's manifest, config and layers; the layers applied
//! exactly, and hostile ones refused, into a root filesystem folder; that
//! folder made an ext4 image both workspace categories use; and the
//! image config read as the workspaces' defaults.

pub mod config;
pub mod export;
pub mod ext4;
pub mod layers;
pub mod registry;

pub use oci_client::Reference;
pub use oci_spec::image::ImageConfiguration;
pub use registry::{Connection, Credentials, Layer, Registry, RegistryError, Resolved};
