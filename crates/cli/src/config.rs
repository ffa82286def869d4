//! Where vws keeps its state and how settings are layered: flags, then
//! environment variables (both through clap), then `VWS_HOME/config.toml`,
//! then built-in defaults.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The default service port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7480";

/// `VWS_HOME/config.toml`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Settings of `vws up` / `vws serve`.
    #[serde(default)]
    pub service: ServiceConfig,
    /// The EC2 front-end's region, zone and instance types (docs/ec2.md).
    #[serde(default)]
    pub ec2: vws_ec2::Config,
}

/// The `[service]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Database URL.
    pub database: Option<String>,
    /// Policy file.
    pub policy: Option<PathBuf>,
    /// Access control list file.
    pub acl: Option<PathBuf>,
    /// Networks file.
    pub networks: Option<PathBuf>,
    /// URL clients use, if not `http://LISTEN`.
    pub public_url: Option<String>,
    /// Seconds between reaper rounds.
    pub reap_interval: Option<u64>,
    /// The kernel image root filesystems boot with as VMs.
    pub boot_image: Option<String>,
    /// Where /metrics is served (`off`: nowhere).
    pub metrics_listen: Option<String>,
    /// Where the web dashboard is served (`off`: nowhere).
    #[serde(default)]
    pub ui_listen: Option<String>,
    /// Where the EC2 Query API is served (`off`: nowhere).
    #[serde(default)]
    pub ec2_listen: Option<String>,
}

/// The state folder: `--home`, `VWS_HOME`, or `~/.local/share/vws`.
pub fn home(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(h) = flag {
        return Ok(h);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .context("neither VWS_HOME nor HOME is set; pass --home")?;
    Ok(base.join("vws"))
}

/// Reads `config.toml` in the home folder, if there is one.
pub fn load(home: &Path) -> anyhow::Result<ConfigFile> {
    let path = home.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What `vws up` writes so clients in the same environment find it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerFile {
    /// Base URL of the API.
    pub url: String,
    /// Process id of the service.
    pub pid: u32,
    /// Where Prometheus scrapes it, if metrics are served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// The web dashboard's base URL, if it is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ui: Option<String>,
    /// The EC2 Query API's endpoint URL and region, if it is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Endpoint>,
}

/// Where the EC2 front-end answers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ec2Endpoint {
    /// `https://ADDR` (`aws --endpoint-url`).
    pub url: String,
    /// The region requests are signed for (`aws --region`).
    pub region: String,
}

/// Path of the server file.
pub fn server_file(home: &Path) -> PathBuf {
    home.join("server.json")
}

/// The service a client talks to: `--server`/`VWS_SERVER`, else the one
/// `vws up` recorded in the home folder.
pub fn server_url(flag: Option<String>, home: &Path) -> anyhow::Result<String> {
    if let Some(url) = flag {
        return Ok(url);
    }
    let path = server_file(home);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        anyhow::anyhow!(
            "no vws service found: {} does not exist. Start one with `vws up`, or point at one with --server URL (or VWS_SERVER)",
            path.display()
        )
    })?;
    let file: ServerFile =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(file.url)
}
