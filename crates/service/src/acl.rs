//! Access control lists over distinguished names and attributes (paper
//! §3.2), read from a TOML file (`VWS_HOME/acl.toml` or `--acl`):
//!
//! ```toml
//! [[rule]]
//! name = "guests run no jobs"        # shown in the log when it refuses
//! actions = ["run"]                   # classes below, or "*"
//! dn = "/O=Grid/OU=guests/*"          # `*` matches any run of characters
//! effect = "deny"
//!
//! [[rule]]
//! name = "the bio VO may do the rest"
//! actions = ["*"]
//! attributes = { vo = "bio" }         # every one must be carried
//! effect = "allow"
//! ```
//!
//! The first rule whose actions, DN pattern and attributes all match
//! decides. With no match, everything is allowed except the `admin` class,
//! which needs the `role=admin` attribute. Independently of the ACL, a
//! workspace belongs to its owner: someone else's is not found (404) unless
//! the caller is an administrator.

use serde::Deserialize;
use vws_model::Identity;

use crate::error::ServiceError;
use crate::policy::glob;

/// The action classes rules name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Reading records, history, consoles, job output.
    Read,
    /// Creating and cloning workspaces.
    Create,
    /// Deploy, start, stop, pause, unpause, undeploy, renew, destroy.
    Manage,
    /// Running jobs and copying files in and out.
    Run,
    /// Snapshots (hot images) and migration.
    Move,
    /// Importing and removing images.
    Image,
    /// Node lists and anything across owners.
    Admin,
}

impl Class {
    /// Its name in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Create => "create",
            Class::Manage => "manage",
            Class::Run => "run",
            Class::Move => "move",
            Class::Image => "image",
            Class::Admin => "admin",
        }
    }

    /// Every class.
    pub const ALL: [Class; 7] = [
        Class::Read,
        Class::Create,
        Class::Manage,
        Class::Run,
        Class::Move,
        Class::Image,
        Class::Admin,
    ];
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    name: Option<String>,
    actions: Vec<String>,
    #[serde(default = "any")]
    dn: String,
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
    effect: Effect,
}

fn any() -> String {
    "*".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// The rules, in order.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

/// A refused ACL file.
#[derive(Debug, thiserror::Error)]
#[error("access control list: {0}")]
pub struct AclError(String);

impl Acl {
    /// Parses the TOML form; unknown classes are refused by name.
    pub fn from_toml(text: &str) -> Result<Acl, AclError> {
        let file: File = toml::from_str(text).map_err(|e| AclError(e.to_string()))?;
        for (i, r) in file.rule.iter().enumerate() {
            if r.actions.is_empty() {
                return Err(AclError(format!("rule {} names no actions", i + 1)));
            }
            for a in &r.actions {
                if a != "*" && !Class::ALL.iter().any(|c| c.as_str() == a) {
                    return Err(AclError(format!(
                        "rule {}: unknown action class {a:?} (read, create, manage, run, move, image, admin or *)",
                        i + 1
                    )));
                }
            }
        }
        Ok(Acl { rules: file.rule })
    }

    /// Reads a file.
    pub fn load(path: &std::path::Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AclError(format!("{}: {e}", path.display())))?;
        Acl::from_toml(&text).map_err(|e| AclError(format!("{}: {}", path.display(), e.0)))
    }

    /// Whether `who` may do `class`; a refusal names the rule (logged) and
    /// says what was refused (to the caller).
    pub fn check(&self, who: &Identity, class: Class) -> Result<(), ServiceError> {
        let hit = self.rules.iter().enumerate().find(|(_, r)| {
            r.actions.iter().any(|a| a == "*" || a == class.as_str())
                && glob(&r.dn, &who.dn)
                && r.attributes.iter().all(|(k, v)| who.has(k, v))
        });
        let refused_by = match hit {
            Some((_, r)) if r.effect == Effect::Allow => return Ok(()),
            Some((i, r)) => r.name.clone().unwrap_or_else(|| format!("rule {}", i + 1)),
            None if class != Class::Admin || who.is_admin() => return Ok(()),
            None => "default: admin actions need role=admin".into(),
        };
        tracing::warn!(dn = %who.dn, action = class.as_str(), rule = %refused_by, "refused by the access control list");
        Err(ServiceError::Forbidden(format!(
            "{} may not {} (access control list)",
            who.dn,
            match class {
                Class::Read => "read workspaces",
                Class::Create => "create workspaces",
                Class::Manage => "manage workspaces",
                Class::Run => "run jobs",
                Class::Move => "snapshot or migrate workspaces",
                Class::Image => "change the image pool",
                Class::Admin => "do administrative actions",
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(dn: &str, attrs: &[(&str, &str)]) -> Identity {
        Identity {
            dn: dn.into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn first_match_wins_and_admin_needs_the_attribute() {
        let acl = Acl::from_toml(
            r#"
            [[rule]]
            name = "guests run no jobs"
            actions = ["run"]
            dn = "/O=Grid/OU=guests/*"
            effect = "deny"
            [[rule]]
            actions = ["*"]
            attributes = { vo = "bio" }
            effect = "allow"
            [[rule]]
            actions = ["create", "image"]
            effect = "deny"
            "#,
        )
        .unwrap();
        let guest = who("/O=Grid/OU=guests/CN=G", &[("vo", "bio")]);
        let err = acl.check(&guest, Class::Run).unwrap_err();
        assert!(err.to_string().contains("may not run jobs"), "{err}");
        assert!(
            acl.check(&guest, Class::Create).is_ok(),
            "the bio rule allows"
        );
        let alice = who("/O=Grid/OU=bio/CN=Alice", &[]);
        assert!(acl.check(&alice, Class::Create).is_err(), "third rule");
        assert!(acl.check(&alice, Class::Run).is_ok(), "no rule: allowed");
        assert!(acl.check(&alice, Class::Admin).is_err());
        assert!(acl
            .check(&who("/CN=root", &[("role", "admin")]), Class::Admin)
            .is_ok());
        assert!(Acl::default().check(&alice, Class::Move).is_ok());
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        let e = Acl::from_toml("[[rule]]\nactions = [\"fly\"]\neffect = \"deny\"\n").unwrap_err();
        assert!(e.to_string().contains("\"fly\""), "{e}");
        assert!(Acl::from_toml("[[rule]]\nactions = []\neffect = \"deny\"\n").is_err());
        assert!(Acl::from_toml("[[rule]]\nactions = [\"*\"]\neffect = \"maybe\"\n").is_err());
        assert!(Acl::from_toml("[[rules]]\n").is_err());
    }
}
