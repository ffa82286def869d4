//! Who is asking: a distinguished name plus attributes (paper §3.2: GSI DNs and
//! VOMS attributes). Every core call takes one.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An authenticated principal.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Distinguished name in the slash form, e.g. `/O=Grid/OU=bio/CN=Alice`.
    pub dn: String,
    /// Attributes such as `vo=bio` or `role=admin`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<(String, String)>,
}

impl Identity {
    /// An identity without attributes.
    pub fn new(dn: impl Into<String>) -> Self {
        Identity {
            dn: dn.into(),
            attributes: Vec::new(),
        }
    }

    /// The identity of a local OS user, used while the service listens on
    /// loopback only.
    pub fn local_user(name: &str) -> Self {
        Identity::new(format!("/O=vws/OU=local/CN={name}"))
    }

    /// Whether the identity carries `key=value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        self.attributes.iter().any(|(k, v)| k == key && v == value)
    }

    /// Administrators manage everything.
    pub fn is_admin(&self) -> bool {
        self.has("role", "admin")
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dn)
    }
}

/// The resource key of a workspace's EPR: derived from the owner's DN and the
/// workspace id, so it names the pair and cannot be guessed from either alone.
pub fn resource_key(owner_dn: &str, workspace_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(owner_dn.as_bytes());
    h.update([0]);
    h.update(workspace_id.as_bytes());
    hex::encode(&h.finalize()[..16])
}
