//! EC2's identifiers over vws's: an instance id is its workspace's
//! (`ws-0123456789ab` is `i-0123456789ab`), an image id is the first 17
//! hex digits of the image's content digest (`ami-…`), an owner id is 12
//! digits derived from the owner's DN.

use sha2::{Digest, Sha256};

use crate::error::Ec2Error;

pub use vws_model::cloud_ids::{image_id, instance_id};

/// The workspace an instance id names, or `InvalidInstanceID.Malformed`.
pub fn workspace_of(instance: &str) -> Result<String, Ec2Error> {
    match instance.strip_prefix("i-") {
        Some(h)
            if h.len() == 12
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(format!("ws-{h}"))
        }
        _ => Err(Ec2Error::client(
            "InvalidInstanceID.Malformed",
            format!("Invalid id: \"{instance}\" (expecting \"i-...\")"),
        )),
    }
}

/// Whether an image id is well formed.
pub fn check_image_id(id: &str) -> Result<(), Ec2Error> {
    match id.strip_prefix("ami-") {
        Some(h) if h.len() == 17 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(Ec2Error::client(
            "InvalidAMIID.Malformed",
            format!("Invalid id: \"{id}\" (expecting \"ami-...\")"),
        )),
    }
}

/// The 12-digit account id of an owner's DN.
pub fn owner_id(dn: &str) -> String {
    let d = Sha256::digest(dn.as_bytes());
    let n = u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) % 1_000_000_000_000;
    format!("{n:012}")
}

/// A fresh id with EC2's 17 hex digits: `r-…`, `key-…`.
pub fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{:017x}",
        rand::random::<u128>() & 0xf_ffff_ffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways() {
        assert_eq!(instance_id("ws-0123456789ab"), "i-0123456789ab");
        assert_eq!(workspace_of("i-0123456789ab").unwrap(), "ws-0123456789ab");
        for bad in ["i-123", "ws-0123456789ab", "i-0123456789AB", "i-../../etc"] {
            assert_eq!(
                workspace_of(bad).unwrap_err().code,
                "InvalidInstanceID.Malformed"
            );
        }
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(image_id(&digest), format!("ami-{}", &"ab".repeat(32)[..17]));
        check_image_id(&image_id(&digest)).unwrap();
        assert!(check_image_id("ami-12").is_err());
        assert_eq!(owner_id("/O=Grid/CN=Alice").len(), 12);
        assert_ne!(owner_id("/O=Grid/CN=Alice"), owner_id("/O=Grid/CN=Bob"));
        assert_eq!(fresh("r").len(), 19);
    }
}
