//! The NoCloud seed of a disk-booted VM: an ISO 9660 image labelled
//! `cidata` with `meta-data` (instance id, host name, public keys) and
//! `user-data` (the launch's), made by genisoimage and attached read-only.
//! cloud-init in a stock cloud image reads it at boot. A seed, not the
//! metadata service, because such an image has no vws agent to serve
//! 169.254.169.254 inside it, and QEMU's user network forwards only
//! addresses inside its own 10.0.2.0/24: a seed is the VM's own, needs no
//! network, and cannot be read by another.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use vws_model::node::InstanceMetadata;

use crate::driver::DriverError;

/// The seed's file name in the VM's folder.
pub const FILE: &str = "seed.iso";

/// `meta-data` and `user-data` of a workspace (JSON strings are YAML).
pub fn documents(id: &str, hostname: &str, m: Option<&InstanceMetadata>) -> (String, Vec<u8>) {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let instance = m
        .map(|m| m.instance_id.clone())
        .unwrap_or_else(|| vws_model::cloud_ids::instance_id(id));
    let mut meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&instance),
        q(hostname)
    );
    if let Some(m) = m.filter(|m| !m.public_keys.is_empty()) {
        meta.push_str("public-keys:\n");
        for (_, key) in &m.public_keys {
            meta.push_str(&format!("  - {}\n", q(key)));
        }
    }
    let user = m
        .and_then(|m| m.user_data.as_deref())
        .and_then(|u| {
            base64::engine::general_purpose::STANDARD
                .decode(u.trim())
                .ok()
        })
        .unwrap_or_else(|| b"#cloud-config\n{}\n".to_vec());
    (meta, user)
}

/// Writes the seed into `dir`; returns its path.
pub fn write(
    dir: &Path,
    id: &str,
    hostname: &str,
    m: Option<&InstanceMetadata>,
) -> Result<PathBuf, DriverError> {
    let (meta, user) = documents(id, hostname, m);
    let files = dir.join("seed");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("meta-data"), meta)?;
    std::fs::write(files.join("user-data"), user)?;
    let out = dir.join(FILE);
    let tmp = dir.join("seed.iso.tmp");
    let made = Command::new("genisoimage")
        .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&tmp)
        .arg(files.join("meta-data"))
        .arg(files.join("user-data"))
        .output();
    let _ = std::fs::remove_dir_all(&files);
    match made {
        Ok(o) if o.status.success() => {
            std::fs::rename(&tmp, &out)?;
            Ok(out)
        }
        Ok(o) => Err(DriverError::Io(std::io::Error::other(format!(
            "genisoimage: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )))),
        Err(e) => Err(DriverError::Io(std::io::Error::other(format!(
            "genisoimage (apt-get install genisoimage): {e}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn meta_data_quotes_what_it_is_given() {
        let m = vws_model::node::InstanceMetadata {
            instance_id: "i-0123456789ab".into(),
            public_keys: vec![("k".into(), "ssh-ed25519 AAAA me: \"x\"".into())],
            user_data: Some("I2Nsb3VkLWNvbmZpZwo=".into()),
            ..Default::default()
        };
        let (meta, user) = super::documents("ws-0123456789ab", "ws-0123456789ab", Some(&m));
        assert_eq!(
            meta,
            "instance-id: \"i-0123456789ab\"\nlocal-hostname: \"ws-0123456789ab\"\npublic-keys:\n  - \"ssh-ed25519 AAAA me: \\\"x\\\"\"\n"
        );
        assert_eq!(user, b"#cloud-config\n");
        let (meta, user) = super::documents("ws-0123456789ab", "h", None);
        assert!(meta.starts_with("instance-id: \"i-0123456789ab\""));
        assert_eq!(user, b"#cloud-config\n{}\n");
    }
}
