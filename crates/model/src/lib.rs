//! The vws data model: workspace descriptions (paper §2.1) in XML, TOML and
//! JSON, their validation, image references, identities and the lifecycle
//! state machine. No I/O happens here.

pub mod agreement;
pub mod cloud_ids;
pub mod description;
pub mod form;
pub mod identity;
pub mod image_ref;
pub mod node;
pub mod records;
pub mod size;
pub mod software;
pub mod state;
pub mod validate;
pub mod version;
pub mod xml;

pub use description::*;
pub use form::{parse, write};
pub use identity::{resource_key, Identity};
pub use image_ref::{is_digest, ImageRef};
pub use size::ByteSize;
pub use state::{transition, Action, IllegalTransition, Outcome, Placement, State, Verb};
pub use validate::{FieldError, Form, InvalidDescription};
