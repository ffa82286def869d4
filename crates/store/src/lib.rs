//! The VW Repository's persistence (paper §3.1): workspace records with their
//! history of transitions, the image pool's records, and the content-addressed
//! blob store that holds image and disk bytes.
//!
//! One [`Store`] speaks SQLite (the embedded default) or PostgreSQL through
//! sqlx's `Any` driver, with one set of portable migrations.

mod accounts;
mod addresses;
mod agreements;
mod blobs;
mod db;
mod ec2;
mod events;
mod idempotency;
mod images;
mod jobs;
mod leader;
mod nodes;
mod operations;
mod replicas;
mod ui_sessions;
mod workspaces;

pub use accounts::AccountLease;
pub use addresses::Address;
pub use agreements::Suspension;
pub use blobs::{manifest, BlobError, BlobStore, Digest};
pub use db::{from_millis, millis, Backend, Store, StoreError};
pub use ec2::{AccessKey, Ec2Instance, KeyPair, Tag};
pub use idempotency::{Claim, ABANDONED_AFTER};
pub use images::{HotMachine, ImageFile, ImageKind, ImageRecord, Publisher, Visibility};
pub use jobs::JobRecord;
pub use leader::Leadership;
pub use nodes::NodeRecord;
pub use replicas::ReplicaRecord;
pub use sqlx::Error as SqlxError;
pub use ui_sessions::UiSecret;
pub use workspaces::{
    Binding, Change, Filter, Intent, OrphanedIntent, Page, Quota, TransitionRecord, WorkspaceRecord,
};

#[cfg(feature = "testing")]
pub mod testing;
