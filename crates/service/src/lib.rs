//! The vws service (`vws serve`, and the service half of `vws up`): the VW
//! Factory and VW Repository of the paper (§3.1), their policy, the lifetime
//! reaper, and the REST API.

pub mod access_keys;
pub mod acl;
mod agreements;
pub mod api;
mod catalogue;
pub mod clock;
pub mod command;
mod core;
mod disk_images;
pub mod error;
pub mod events;
mod factory;
pub mod idempotency;
pub mod jobs;
mod lifecycle;
pub mod matching;
pub mod metrics;
pub mod network;
mod network_views;
pub mod node_client;
pub mod nodes;
pub mod oci_pull;
pub mod oci_push;
pub mod operations;
pub mod path_params;
pub mod policy;
pub mod pool;
mod recovery;
pub mod replicas;
pub mod repository;
mod request_metrics;
pub mod routes;
pub mod scheduler;
pub mod server;
mod singleton;
pub mod ui_sessions;

pub use crate::core::{
    Service, Settings, Workspace, DEFAULT_BOOT_IMAGE, DEFAULT_REGION, DEFAULT_ZONE,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::ServiceError;
pub use policy::Policy;
