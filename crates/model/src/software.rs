//! What an image holds (its catalogue entry, read from the image at import)
//! and whether it meets a description's software requirements (paper §2:
//! "find, configure, and provide an environment best matching those
//! requirements"). Requirements first, then rank, as in HTCondor's ClassAd
//! matchmaking: [`unmet`] says what an image lacks, and the factory ranks
//! the images that lack nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::description::Software;
use crate::validate::Seg;
pub use crate::version::{is_distribution, is_version, version_cmp, version_has_prefix};

/// What an image holds, read from the image itself without booting it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Machine architecture (Debian's name: `amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// os-release's `ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// os-release's `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// os-release's `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// The kernel the image brings (kernel and hot images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The C library's version: the paper's "library signature".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libc: Option<String>,
    /// Installed packages and their versions (the dpkg database), or a
    /// busybox image's applets with busybox's version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, String>,
    /// What the image has instead of a package database, if it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The OCI image's labels (`org.opencontainers.image.*` and others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The OCI image it was pulled from, and what its config says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciOrigin>,
}

/// The OCI image an image of the pool was pulled from, and its config:
/// what workspaces made from it run and how, unless their description
/// says otherwise (docs/images.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciOrigin {
    /// The reference it was pulled by.
    pub reference: String,
    /// Its image manifest's digest.
    pub manifest_digest: String,
    /// Its config's digest.
    pub config_digest: String,
    /// Its layers' digests, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// `amd64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `Entrypoint`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `Env`, `KEY=VALUE` each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// `WorkingDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `User`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ExposedPorts`: `80/tcp`, `53/udp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
    /// Whether the applied layers hold `/bin/sh` (jobs and the startup
    /// program run through it).
    #[serde(default)]
    pub shell: bool,
    /// For an image saved from a workspace (its disk), the pool image it
    /// was made from: a push sends that image's layers and one more, what
    /// the workspace changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<String>,
}

/// A requirement an image does not meet: where it is in the description,
/// and what the image has instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmet {
    /// The requirement's place in the description.
    pub at: Vec<Seg>,
    /// What the image has instead.
    pub message: String,
}

/// Every requirement of `sw` that an image holding `m` does not meet.
pub fn unmet(sw: &Software, m: &Manifest) -> Vec<Unmet> {
    let mut out = Vec::new();
    let software = || vec![Seg::Key("software")];
    if let Some(os) = &sw.os {
        let at = |key| {
            let mut p = software();
            p.extend([Seg::Key("os"), Seg::Key(key)]);
            p
        };
        if let Some(want) = &os.distribution {
            let id = m.distribution.as_deref().unwrap_or("");
            let full = format!("{id}-{}", m.release.as_deref().unwrap_or(""));
            if !(id == want || version_has_prefix(&full, want) && !id.is_empty()) {
                out.push(Unmet {
                    at: at("distribution"),
                    message: format!(
                        "{want} is required; the image has {}",
                        m.pretty_name
                            .clone()
                            .or_else(|| m.distribution.clone())
                            .unwrap_or_else(|| "no os-release".into())
                    ),
                });
            }
        }
        if os.init.as_deref() == Some("systemd") && !m.packages.contains_key("systemd") {
            out.push(Unmet {
                at: at("init"),
                message: "systemd as init is required; the image has no systemd package".into(),
            });
        }
        if let Some(want) = &os.kernel {
            match &m.kernel {
                Some(k) if version_has_prefix(k, want) => {}
                Some(k) => out.push(Unmet {
                    at: at("kernel"),
                    message: format!("kernel {want} is required; the image has {k}"),
                }),
                None => out.push(Unmet {
                    at: at("kernel"),
                    message: format!("kernel {want} is required; the image brings no kernel"),
                }),
            }
        }
    }
    for (i, p) in sw.programs.iter().enumerate() {
        let mut at = software();
        at.extend([Seg::Key("programs"), Seg::Index(i)]);
        let Some(have) = m.packages.get(&p.name) else {
            out.push(Unmet {
                at,
                message: format!(
                    "{} is required; the image has no such package{}",
                    p.name,
                    m.note
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                ),
            });
            continue;
        };
        let mut wrong = Vec::new();
        if let Some(v) = p
            .version
            .as_deref()
            .filter(|v| !version_has_prefix(have, v))
        {
            wrong.push(format!("version {v}"));
        }
        if let Some(lo) = p.min.as_deref() {
            if version_cmp(have, lo) == Some(Ordering::Less) {
                wrong.push(format!("at least {lo}"));
            }
        }
        if let Some(hi) = p.max.as_deref() {
            if version_cmp(have, hi) == Some(Ordering::Greater) {
                wrong.push(format!("at most {hi}"));
            }
        }
        if !wrong.is_empty() {
            out.push(Unmet {
                at,
                message: format!(
                    "{} {} is required; the image has {} {have}",
                    p.name,
                    wrong.join(" and "),
                    p.name
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::description::{Os, Program};

    fn debian() -> Manifest {
        Manifest {
            distribution: Some("debian".into()),
            release: Some("12".into()),
            pretty_name: Some("Debian GNU/Linux 12 (bookworm)".into()),
            packages: [("emboss", "6.6.0+dfsg-12"), ("libc6", "2.36-9+deb12u9")]
                .into_iter()
                .map(|(a, b)| (a.into(), b.into()))
                .collect(),
            ..Default::default()
        }
    }

    fn program(name: &str, version: Option<&str>, min: Option<&str>, max: Option<&str>) -> Program {
        Program {
            name: name.into(),
            version: version.map(Into::into),
            min: min.map(Into::into),
            max: max.map(Into::into),
        }
    }

    fn sw(os: Option<Os>, programs: Vec<Program>) -> Software {
        Software {
            image: None,
            os,
            programs,
        }
    }

    #[test]
    fn versions_compare_in_debians_order_and_match_by_components() {
        assert_eq!(version_cmp("6.6.0+dfsg-12", "6.5"), Some(Ordering::Greater));
        assert_eq!(version_cmp("1.0~rc1", "1.0"), Some(Ordering::Less));
        assert!(version_has_prefix("6.6.0+dfsg-12", "6.6"));
        assert!(!version_has_prefix("6.60", "6.6"));
        assert!(version_has_prefix("1:2.3-1", "2.3"));
        assert!(is_version("6.6") && !is_version("") && !is_version("not a version!"));
        assert!(is_distribution("debian-12") && !is_distribution("Debian 12"));
    }

    #[test]
    fn programs_and_os_are_requirements() {
        let m = debian();
        let ok = sw(
            Some(Os {
                kernel: None,
                distribution: Some("debian-12".into()),
                init: None,
            }),
            vec![program("emboss", Some("6.6"), Some("6.5"), Some("7"))],
        );
        assert!(unmet(&ok, &m).is_empty());
        let bad = sw(
            Some(Os {
                kernel: Some("6.1".into()),
                distribution: Some("ubuntu".into()),
                init: None,
            }),
            vec![
                program("emboss", None, Some("6.7"), None),
                program("water", None, None, None),
            ],
        );
        let u = unmet(&bad, &m);
        let said: Vec<&str> = u.iter().map(|u| u.message.as_str()).collect();
        assert_eq!(u.len(), 4, "{said:?}");
        assert!(said[0].contains("Debian GNU/Linux 12"), "{said:?}");
        assert!(said[1].contains("brings no kernel"), "{said:?}");
        assert!(said[2].contains("emboss 6.6.0+dfsg-12"), "{said:?}");
        assert_eq!(
            u[3].at,
            [Seg::Key("software"), Seg::Key("programs"), Seg::Index(1)]
        );
    }
}
