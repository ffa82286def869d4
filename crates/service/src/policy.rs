//! Factory policy (paper §3.2: a request is accepted or rejected based on
//! existing policies), read from a TOML file.
//!
//! ```toml
//! [defaults]
//! max_workspaces = 100
//! max_total_ram = "64GiB"
//! max_lifetime = 604800        # seconds
//! default_lifetime = 86400     # when a description has no lifeCycle
//! allowed_images = ["*"]
//! allowed_categories = ["vm", "dynamic account"]
//! require_signed_images = false   # true: only images with a verified signature
//!
//! [agreements]                 # advance reservations (docs/agreements.md)
//! offer_valid_for = 300        # seconds an offer holds its capacity
//! stage_ahead = 900            # seconds before a start that images are staged
//! make_room_ahead = 10         # seconds before a start that best-effort work is suspended
//! suspend_first = "newest"     # best-effort workspaces suspended first: newest, oldest, smallest, largest
//! accounts = "stop"            # dynamic accounts in the way: "stop" (checked in, started again later) or "spare"
//!
//! [images]                     # OCI pulls and imports (docs/images.md)
//! max_layer = "8GiB"           # most file content one layer may hold
//! max_image = "16GiB"          # most file content all layers together may hold
//!
//! [[owner]]                    # first matching rule wins; fields it omits come from [defaults]
//! dn = "/O=Grid/OU=guests/*"
//! max_workspaces = 2
//! allowed_images = ["minimal:*"]
//! ```

use serde::Deserialize;
use vws_model::{ByteSize, Category};

/// Limits for one owner.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Most workspaces at once.
    pub max_workspaces: u64,
    /// Most RAM over all workspaces (counting the top of each RAM range).
    pub max_total_ram: ByteSize,
    /// Longest lifetime, in seconds, at creation and on renewal.
    pub max_lifetime: u64,
    /// Lifetime of a workspace whose description has no lifeCycle.
    pub default_lifetime: u64,
    /// Image patterns (`*` matches any run of characters) over `name:tag` or digests.
    pub allowed_images: Vec<String>,
    /// Categories that may be created.
    pub allowed_categories: Vec<String>,
    /// Only images whose content id carries a verified signature.
    pub require_signed_images: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_workspaces: 100,
            max_total_ram: ByteSize(64 << 30),
            max_lifetime: 7 * 24 * 3600,
            default_lifetime: 24 * 3600,
            allowed_images: vec!["*".into()],
            allowed_categories: vec!["vm".into(), "dynamic account".into()],
            require_signed_images: false,
        }
    }
}

impl Limits {
    /// Refuses a category this owner may not have (`dn` names them).
    pub fn check_category(&self, category: Category, dn: &str) -> Result<(), String> {
        if self
            .allowed_categories
            .iter()
            .any(|c| c == category.as_str())
        {
            return Ok(());
        }
        Err(format!(
            "category {:?} is not allowed for {dn} (allowed: {})",
            category.as_str(),
            self.allowed_categories.join(", ")
        ))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialLimits {
    max_workspaces: Option<u64>,
    max_total_ram: Option<ByteSize>,
    max_lifetime: Option<u64>,
    default_lifetime: Option<u64>,
    allowed_images: Option<Vec<String>>,
    allowed_categories: Option<Vec<String>>,
    require_signed_images: Option<bool>,
}

// Spelled out rather than flattened: serde cannot deny unknown fields through
// a flatten, and a misspelt limit must be an error, not silently ignored.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerRule {
    dn: String,
    max_workspaces: Option<u64>,
    max_total_ram: Option<ByteSize>,
    max_lifetime: Option<u64>,
    default_lifetime: Option<u64>,
    allowed_images: Option<Vec<String>>,
    allowed_categories: Option<Vec<String>>,
    require_signed_images: Option<bool>,
}

/// Which best-effort workspaces are suspended first when a reservation
/// needs their node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuspendFirst {
    /// The most recently created first (the longest-running go on).
    #[default]
    Newest,
    /// The oldest first.
    Oldest,
    /// The one with least RAM first (fewest bytes to check in).
    Smallest,
    /// The one with most RAM first (fewest workspaces disturbed).
    Largest,
}

impl SuspendFirst {
    /// Its name in the policy file and in histories.
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendFirst::Newest => "newest",
            SuspendFirst::Oldest => "oldest",
            SuspendFirst::Smallest => "smallest",
            SuspendFirst::Largest => "largest",
        }
    }
}

/// What happens to a dynamic account in a reservation's way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccountsInTheWay {
    /// Stopped and checked in (an account's processes cannot be checked
    /// in), and started again when room returns.
    #[default]
    Stop,
    /// Left alone: only VMs are suspended.
    Spare,
}

/// How agreements are offered and kept (`[agreements]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgreementPolicy {
    /// Seconds an offer holds its capacity before it expires.
    pub offer_valid_for: u64,
    /// Seconds before a reservation's start that its images are staged to
    /// its nodes.
    pub stage_ahead: u64,
    /// Seconds before a reservation's start that best-effort workspaces in
    /// its way are suspended (a check-in with memory takes seconds), and
    /// from which its room is kept from others.
    pub make_room_ahead: u64,
    /// Which best-effort workspaces go first.
    pub suspend_first: SuspendFirst,
    /// Dynamic accounts in the way.
    pub accounts: AccountsInTheWay,
}

impl Default for AgreementPolicy {
    fn default() -> Self {
        AgreementPolicy {
            offer_valid_for: 300,
            stage_ahead: 900,
            make_room_ahead: 10,
            suspend_first: SuspendFirst::Newest,
            accounts: AccountsInTheWay::Stop,
        }
    }
}

/// Limits on what an OCI image's layers may write (`[images]`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagePolicy {
    /// Most bytes of file content one layer may hold.
    pub max_layer: ByteSize,
    /// Most bytes of file content all layers together may hold.
    pub max_image: ByteSize,
}

impl Default for ImagePolicy {
    fn default() -> Self {
        ImagePolicy {
            max_layer: ByteSize(8 << 30),
            max_image: ByteSize(16 << 30),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    defaults: PartialLimits,
    #[serde(default)]
    images: ImagePolicy,
    #[serde(default)]
    agreements: AgreementPolicy,
    #[serde(default)]
    owner: Vec<OwnerRule>,
}

/// The factory's policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    defaults: Limits,
    rules: Vec<(String, Limits)>,
    /// How agreements are offered and kept.
    pub agreements: AgreementPolicy,
    /// What OCI images' layers may write.
    pub images: ImagePolicy,
}

/// A policy file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("policy: {0}")]
pub struct PolicyError(String);

fn merge(base: &Limits, p: &PartialLimits) -> Limits {
    Limits {
        max_workspaces: p.max_workspaces.unwrap_or(base.max_workspaces),
        max_total_ram: p.max_total_ram.unwrap_or(base.max_total_ram),
        max_lifetime: p.max_lifetime.unwrap_or(base.max_lifetime),
        default_lifetime: p.default_lifetime.unwrap_or(base.default_lifetime),
        allowed_images: p
            .allowed_images
            .clone()
            .unwrap_or_else(|| base.allowed_images.clone()),
        allowed_categories: p
            .allowed_categories
            .clone()
            .unwrap_or_else(|| base.allowed_categories.clone()),
        require_signed_images: p
            .require_signed_images
            .unwrap_or(base.require_signed_images),
    }
}

fn check_categories(limits: &Limits, place: &str) -> Result<(), PolicyError> {
    match limits
        .allowed_categories
        .iter()
        .find(|c| Category::parse(c).is_none())
    {
        Some(bad) => Err(PolicyError(format!(
            "unknown category {bad:?} in {place} (expected \"vm\" or \"dynamic account\")"
        ))),
        None => Ok(()),
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

impl Policy {
    /// Reads a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        let defaults = merge(&Limits::default(), &file.defaults);
        check_categories(&defaults, "[defaults]")?;
        let mut rules = Vec::new();
        for rule in file.owner {
            let partial = PartialLimits {
                max_workspaces: rule.max_workspaces,
                max_total_ram: rule.max_total_ram,
                max_lifetime: rule.max_lifetime,
                default_lifetime: rule.default_lifetime,
                allowed_images: rule.allowed_images,
                allowed_categories: rule.allowed_categories,
                require_signed_images: rule.require_signed_images,
            };
            let limits = merge(&defaults, &partial);
            check_categories(&limits, &format!("the rule for {:?}", rule.dn))?;
            rules.push((rule.dn, limits));
        }
        Ok(Policy {
            defaults,
            rules,
            agreements: file.agreements,
            images: file.images,
        })
    }

    /// Reads a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError(format!("{}: {e}", path.display())))?;
        Policy::from_toml(&text)
    }

    /// The limits that apply to an owner.
    pub fn limits_for(&self, dn: &str) -> &Limits {
        self.rules
            .iter()
            .find(|(pattern, _)| glob(pattern, dn))
            .map(|(_, l)| l)
            .unwrap_or(&self.defaults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("minimal:*", "minimal:1"));
        assert!(!glob("minimal:*", "debian:12"));
        assert!(glob("/O=Grid/*/CN=Alice", "/O=Grid/OU=bio/CN=Alice"));
        assert!(!glob("/O=Grid/*/CN=Alice", "/O=Grid/OU=bio/CN=Bob"));
        assert!(glob("a*b*c", "abc"));
        assert!(!glob("a*a", "a"));
    }

    #[test]
    fn first_matching_rule_wins_over_defaults() {
        let p = Policy::from_toml(
            r#"
            [defaults]
            max_workspaces = 10
            [[owner]]
            dn = "/O=Grid/OU=guests/*"
            max_workspaces = 1
            allowed_images = ["minimal:*"]
            [[owner]]
            dn = "/O=Grid/*"
            max_total_ram = "1GiB"
            "#,
        )
        .unwrap();
        let guest = p.limits_for("/O=Grid/OU=guests/CN=Eve");
        assert_eq!(guest.max_workspaces, 1);
        assert_eq!(guest.allowed_images, ["minimal:*"]);
        let grid = p.limits_for("/O=Grid/OU=bio/CN=Alice");
        assert_eq!(
            (grid.max_workspaces, grid.max_total_ram),
            (10, ByteSize(1 << 30))
        );
        assert_eq!(p.limits_for("/O=Other/CN=x").max_workspaces, 10);
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::from_toml("[defaults]\nmax_workspaces = \"many\"").is_err());
        assert!(Policy::from_toml("[defaults]\nmax_wrkspaces = 1").is_err());
        assert!(
            Policy::from_toml("[[owner]]\ndn = \"*\"\nallowed_categories = [\"container\"]")
                .is_err()
        );
    }
}
