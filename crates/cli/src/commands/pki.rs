//! `vws ca` and `vws cert`. The certificates `vws up`, `vws serve` and
//! `vws node` make for themselves are `vws_pki::home`'s.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use vws_pki::{Ca, Credentials, Kind, Request};

use crate::Globals;

/// The credentials a client command presents: `--cert`/`--key` (with
/// `--ca`, or the `ca.pem` beside the certificate, or the local CA), else
/// the administrator's from `vws up`.
pub fn client_credentials(g: &Globals) -> anyhow::Result<Credentials> {
    let (cert, key) = match (&g.cert, &g.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let dir = g.home.join("pki/admin");
            (dir.join("cert.pem"), dir.join("key.pem"))
        }
        _ => anyhow::bail!("--cert and --key (VWS_CERT, VWS_KEY) go together"),
    };
    let ca = g.ca.clone().unwrap_or_else(|| {
        let beside = cert.with_file_name("ca.pem");
        if beside.exists() {
            beside
        } else {
            vws_pki::home::ca_dir(&g.home).join("ca.pem")
        }
    });
    Credentials::read(&cert, &key, &ca).with_context(|| {
        format!(
            "no client certificate at {} (start the service once with `vws up`, or pass --cert/--key)",
            cert.display()
        )
    })
}

/// `vws ca`.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make the certificate authority in VWS_HOME/pki/ca (vws up does it on first run)
    Init {
        /// The CA's common name
        #[arg(long, default_value = "vws CA")]
        name: String,
    },
}

/// `vws cert`.
#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Issue a client certificate (--dn) or a node/service certificate (--host)
    Issue(IssueArgs),
    /// Refuse a certificate from now on (a cert.pem file or a serial number)
    Revoke {
        /// cert.pem or a hex serial
        what: String,
    },
    /// Print the identity in a certificate [default: the one this CLI presents]
    Show {
        /// A cert.pem
        file: Option<PathBuf>,
    },
}

/// `vws cert issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Subject of a client certificate, e.g. "/O=Grid/OU=bio/CN=Alice"
    #[arg(long, conflicts_with = "host", required_unless_present = "host")]
    dn: Option<String>,
    /// Attribute KEY=VALUE carried in the certificate (repeatable), e.g. vo=bio, role=admin
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    attrs: Vec<String>,
    /// A node certificate for host NAME (with --service: the service's)
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// With --host: a service certificate instead of a node's
    #[arg(long, requires = "host")]
    service: bool,
    /// With --host: another name or IP address the certificate is valid
    /// for (repeatable), e.g. a node's address, or a load balancer's name
    /// in front of several service replicas
    #[arg(long, requires = "host", value_name = "NAME|IP")]
    san: Vec<String>,
    /// Days of validity (0: expires at once)
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Folder to write cert.pem, key.pem and ca.pem [default: VWS_HOME/pki/issued/CN]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Runs `vws ca …`.
pub fn ca(g: &Globals, c: CaCommand) -> anyhow::Result<()> {
    match c {
        CaCommand::Init { name } => {
            let ca = Ca::init(&vws_pki::home::ca_dir(&g.home), &name)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "dir": vws_pki::home::ca_dir(&g.home), "cert": ca.cert_pem() })
                );
            } else {
                eprintln!(
                    "certificate authority made in {}",
                    vws_pki::home::ca_dir(&g.home).display()
                );
            }
            Ok(())
        }
    }
}

/// Runs `vws cert …`.
pub fn cert(g: &Globals, c: CertCommand) -> anyhow::Result<()> {
    match c {
        CertCommand::Issue(a) => issue(g, a),
        CertCommand::Revoke { what } => {
            let ca = Ca::open(&vws_pki::home::ca_dir(&g.home))?;
            let text = match std::fs::read_to_string(&what) {
                Ok(t) => t,
                Err(_) => what.clone(),
            };
            let serial = ca.revoke(&text)?;
            eprintln!("revoked serial {serial}");
            Ok(())
        }
        CertCommand::Show { file } => {
            let pem = match file {
                Some(f) => std::fs::read_to_string(&f).with_context(|| f.display().to_string())?,
                None => client_credentials(g)?.cert_pem,
            };
            let peer = vws_pki::peer_of(&vws_pki::first_cert_der(&pem)?)?;
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "dn": peer.identity.dn, "attributes": peer.identity.attributes, "kind": peer.kind, "serial": peer.serial })
                );
            } else {
                println!("{}", peer.identity.dn);
                for (k, v) in &peer.identity.attributes {
                    println!("  {k}={v}");
                }
                println!("  kind {}, serial {}", peer.kind.as_str(), peer.serial);
            }
            Ok(())
        }
    }
}

fn issue(g: &Globals, a: IssueArgs) -> anyhow::Result<()> {
    let ca = Ca::open(&vws_pki::home::ca_dir(&g.home))?;
    let mut req = match &a.host {
        Some(h) => vws_pki::home::node_request(h),
        None => Request {
            dn: a.dn.clone().unwrap_or_default(),
            attributes: vec![],
            kind: Kind::Client,
            hosts: vec![],
            days: a.days,
        },
    };
    if a.service {
        req.kind = Kind::Service;
        req.dn = format!(
            "/O=vws/OU=services/CN={}",
            a.host.clone().unwrap_or_default()
        );
    }
    req.days = a.days;
    for san in &a.san {
        if !req.hosts.contains(san) {
            req.hosts.push(san.clone());
        }
    }
    for attr in &a.attrs {
        let (k, v) = attr
            .split_once('=')
            .with_context(|| format!("--attr {attr:?}: expected KEY=VALUE"))?;
        req.attributes.push((k.to_string(), v.to_string()));
    }
    let issued = ca.issue(&req)?;
    let cn = vws_pki::parse_dn(&req.dn)?
        .into_iter()
        .rev()
        .find(|(k, _)| k == "CN")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let out = a.out.unwrap_or_else(|| {
        let safe: String = cn
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        g.home.join("pki/issued").join(safe)
    });
    issued.write(&out, ca.cert_pem())?;
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "dn": req.dn, "kind": req.kind, "serial": issued.serial, "dir": out })
        );
    } else {
        eprintln!(
            "issued {} ({} certificate, serial {}): {}/cert.pem, key.pem, ca.pem",
            req.dn,
            req.kind.as_str(),
            issued.serial,
            out.display()
        );
    }
    Ok(())
}
