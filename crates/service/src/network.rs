//! Networks and their address pools (paper §3.2: workspaces take IP
//! addresses from a pre-reserved pool), read from TOML
//! (`VWS_HOME/networks.toml` or `--networks`):
//!
//! ```toml
//! [[network]]
//! name = "lab"
//! cidr = "10.88.0.0/24"
//! gateway = "10.88.0.1"          # configured in the guest; never handed out
//! dns = ["10.88.0.1"]
//! exclude = ["10.88.0.2-10.88.0.9", "10.88.0.77"]
//! mac_prefix = "52:54:88"        # optional: MACs are this prefix + 3 bytes
//! shared = false                 # true: owners' workspaces reach each other
//! ```
//!
//! Without a file there is one network, `default`, 10.77.0.0/24 with
//! gateway 10.77.0.1. A `pool` interface takes the lowest free address of
//! its network at create, for the workspace's life; destroy releases it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// One network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Name descriptions use (`network=` on a NIC).
    pub name: String,
    /// Address range, `a.b.c.d/len`.
    pub cidr: String,
    /// The gateway the guests route through.
    #[serde(default)]
    pub gateway: Option<String>,
    /// DNS servers for the guests.
    #[serde(default)]
    pub dns: Vec<String>,
    /// Addresses or `a-b` ranges never handed out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// First three bytes of the MACs of this network's interfaces.
    #[serde(default)]
    pub mac_prefix: Option<String>,
    /// Whether workspaces of different owners may reach each other.
    #[serde(default)]
    pub shared: bool,
}

/// A refused networks file.
#[derive(Debug, thiserror::Error)]
#[error("networks: {0}")]
pub struct NetworkError(pub String);

fn ip(s: &str, what: &str) -> Result<Ipv4Addr, NetworkError> {
    s.trim()
        .parse()
        .map_err(|_| NetworkError(format!("{what} {s:?} is not an IPv4 address")))
}

impl Network {
    /// Network address and prefix length.
    pub fn prefix(&self) -> Result<(Ipv4Addr, u8), NetworkError> {
        let (a, l) = self.cidr.split_once('/').ok_or_else(|| {
            NetworkError(format!(
                "{}: cidr {:?} is not a.b.c.d/len",
                self.name, self.cidr
            ))
        })?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| {
                NetworkError(format!("{}: prefix length {l:?} is not 8 to 30", self.name))
            })?;
        let base = u32::from(ip(a, "cidr")?) & (u32::MAX << (32 - len));
        Ok((Ipv4Addr::from(base), len))
    }

    /// Every address that may be handed out, lowest first.
    pub fn candidates(&self) -> Result<Vec<String>, NetworkError> {
        let (base, len) = self.prefix()?;
        let first = u32::from(base) + 1;
        let last = u32::from(base) + (1u32 << (32 - len)) - 2;
        let mut reserved = std::collections::HashSet::new();
        if let Some(g) = &self.gateway {
            reserved.insert(u32::from(ip(g, "gateway")?));
        }
        for d in &self.dns {
            reserved.insert(u32::from(ip(d, "dns")?));
        }
        for e in &self.exclude {
            let (a, b) = e.split_once('-').unwrap_or((e, e));
            let (a, b) = (u32::from(ip(a, "exclude")?), u32::from(ip(b, "exclude")?));
            if b < a || b - a > 1 << 20 {
                return Err(NetworkError(format!(
                    "{}: exclude range {e:?} is backwards or huge",
                    self.name
                )));
            }
            reserved.extend(a..=b);
        }
        Ok((first..=last)
            .filter(|a| !reserved.contains(a))
            .map(|a| Ipv4Addr::from(a).to_string())
            .collect())
    }

    /// The MAC of a workspace's interface on this network.
    pub fn mac(&self, workspace_id: &str, nic: &str) -> String {
        use sha2::Digest;
        let h = sha2::Sha256::digest(format!("{workspace_id}/{nic}").as_bytes());
        match &self.mac_prefix {
            Some(p) => format!("{p}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2]),
            // Locally administered, unicast.
            None => format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3]),
        }
    }
}

/// All networks.
#[derive(Clone, Debug, PartialEq)]
pub struct Networks(pub Vec<Network>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    network: Vec<Network>,
}

impl Default for Networks {
    fn default() -> Self {
        Networks(vec![Network {
            name: "default".into(),
            cidr: "10.77.0.0/24".into(),
            gateway: Some("10.77.0.1".into()),
            dns: vec![],
            exclude: vec![],
            mac_prefix: None,
            shared: false,
        }])
    }
}

impl Networks {
    /// Parses and checks the TOML form.
    pub fn from_toml(text: &str) -> Result<Networks, NetworkError> {
        let f: File = toml::from_str(text).map_err(|e| NetworkError(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for n in &f.network {
            if !vws_model::is_network_name(&n.name) {
                return Err(NetworkError(format!("{:?} is not a network name", n.name)));
            }
            if !seen.insert(n.name.clone()) {
                return Err(NetworkError(format!("network {} is defined twice", n.name)));
            }
            n.candidates()?;
            if let Some(p) = &n.mac_prefix {
                let ok = p.split(':').count() == 3
                    && p.split(':')
                        .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
                if !ok {
                    return Err(NetworkError(format!(
                        "{}: mac_prefix {p:?} is not aa:bb:cc",
                        n.name
                    )));
                }
            }
        }
        Ok(Networks(f.network))
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Networks, NetworkError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NetworkError(format!("{}: {e}", path.display())))?;
        Networks::from_toml(&text)
    }

    /// A network by name.
    pub fn get(&self, name: &str) -> Option<&Network> {
        self.0.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_skip_reserved_addresses() {
        let n = Networks::from_toml(
            "[[network]]\nname = \"lab\"\ncidr = \"10.88.0.0/29\"\ngateway = \"10.88.0.1\"\nexclude = [\"10.88.0.3-10.88.0.4\"]\n",
        )
        .unwrap();
        let lab = n.get("lab").unwrap();
        assert_eq!(
            lab.candidates().unwrap(),
            ["10.88.0.2", "10.88.0.5", "10.88.0.6"]
        );
        assert_eq!(lab.prefix().unwrap().1, 29);
        assert_ne!(lab.mac("ws-1", "eth0"), lab.mac("ws-2", "eth0"));
        for bad in [
            "[[network]]\nname = \"a b\"\ncidr = \"10.0.0.0/24\"\n",
            "[[network]]\nname = \"x\"\ncidr = \"10.0.0.0\"\n",
            "[[network]]\nname = \"x\"\ncidr = \"10.0.0.0/31\"\n",
            "[[network]]\nname = \"x\"\ncidr = \"10.0.0.0/24\"\nmac_prefix = \"zz:00:00\"\n",
            "[[network]]\nname = \"x\"\ncidr = \"10.0.0.0/24\"\n[[network]]\nname = \"x\"\ncidr = \"10.1.0.0/24\"\n",
        ] {
            assert!(Networks::from_toml(bad).is_err(), "{bad}");
        }
    }
}
