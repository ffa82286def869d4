//! The certificates `vws up`, `vws serve` and `vws node` make for
//! themselves on first run, under `VWS_HOME/pki`:
//!
//! ```text
//! pki/ca/         ca.pem, ca.key (0600), revoked (deny list of serials)
//! pki/service/    the service's certificate (cert.pem, key.pem, ca.pem)
//! pki/nodes/NAME/ each local node's certificate
//! pki/admin/      the administrator's client certificate the CLI uses by default
//! pki/issued/CN/  what `vws cert issue` wrote when no --out was given
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::{Ca, Credentials, Issued, Kind, Request};

/// Validity of the certificates made on first run.
pub const DAYS: u32 = 825;

/// The CA folder.
pub fn ca_dir(home: &Path) -> PathBuf {
    home.join("pki/ca")
}

fn write(issued: &Issued, ca: &Ca, dir: &Path) -> anyhow::Result<Credentials> {
    issued.write(dir, ca.cert_pem())?;
    Ok(Credentials::from_dir(dir)?)
}

/// The service's credentials; on first run makes the CA, the service's
/// certificate and the administrator's client certificate (CN `admin`,
/// `role=admin`).
pub fn provision_service(
    home: &Path,
    hosts: &[String],
    admin: &str,
) -> anyhow::Result<Credentials> {
    let (ca, made) = Ca::open_or_init(&ca_dir(home)).context("the certificate authority")?;
    if made {
        eprintln!(
            "made a certificate authority in {} (keep ca.key private)",
            ca_dir(home).display()
        );
    }
    let admin_dir = home.join("pki/admin");
    if !admin_dir.join("cert.pem").exists() {
        let issued = ca.issue(&Request {
            dn: format!("/O=vws/OU=local/CN={admin}"),
            attributes: vec![("role".into(), "admin".into())],
            kind: Kind::Client,
            hosts: vec![],
            days: DAYS,
        })?;
        write(&issued, &ca, &admin_dir)?;
    }
    let dir = home.join("pki/service");
    if dir.join("cert.pem").exists() {
        return Ok(Credentials::from_dir(&dir)?);
    }
    let mut all = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    all.extend(hosts.iter().cloned());
    all.sort();
    all.dedup();
    let issued = ca.issue(&Request {
        dn: "/O=vws/OU=services/CN=vws".into(),
        attributes: vec![],
        kind: Kind::Service,
        hosts: all,
        days: DAYS,
    })?;
    write(&issued, &ca, &dir)
}

/// A local node's credentials: `pki/nodes/NAME`, issued by the local CA on
/// first use. A node on another host is given its files with `--cert`,
/// `--key` and `--ca` (from `vws cert issue --host NAME --out DIR`).
pub fn node_credentials(home: &Path, name: &str) -> anyhow::Result<Credentials> {
    let dir = home.join("pki/nodes").join(name);
    if dir.join("cert.pem").exists() {
        return Ok(Credentials::from_dir(&dir)?);
    }
    let ca = Ca::open(&ca_dir(home)).with_context(|| {
        format!("no certificate for node {name}: give one with --cert/--key/--ca, or run the node where the CA is (VWS_HOME)")
    })?;
    let issued = ca.issue(&node_request(name))?;
    write(&issued, &ca, &dir)
}

/// What a node's certificate says: CN = its name, its name and loopback as
/// hosts.
pub fn node_request(name: &str) -> Request {
    Request {
        dn: format!("/O=vws/OU=nodes/CN={name}"),
        attributes: vec![],
        kind: Kind::Node,
        hosts: vec![name.to_string(), "localhost".into(), "127.0.0.1".into()],
        days: DAYS,
    }
}
