//! The VW Manager (paper §3.1, `vws node`): stages workspaces from the
//! repository onto this host and drives them through a [`driver::Driver`];
//! the QEMU driver runs VMs over QMP, the account driver runs dynamic
//! accounts in namespaces and cgroups.

pub mod accel;
pub mod account;
pub mod agent;
pub mod api;
pub mod cgroup;
pub mod driver;
pub mod loopback;
pub mod loopdev;
pub mod manager;
pub mod net;
pub mod on_demand;
pub mod qemu;
pub mod revocation;
pub mod sandbox;
pub mod seed;
pub mod server;
pub mod service_urls;
pub mod staging;
pub mod usage;

pub use manager::{Manager, NodeError};
