//! Versions and distribution names as requirements compare them: Debian's
//! version order (the debversion crate), prefixes by components.

use std::cmp::Ordering;
use std::str::FromStr;

/// Whether `v` is a version Debian's order can compare.
pub fn is_version(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && debversion::Version::from_str(v).is_ok()
}

/// Compares two versions in Debian's order (none: one is not a version).
pub fn version_cmp(a: &str, b: &str) -> Option<Ordering> {
    let a = debversion::Version::from_str(a).ok()?;
    let b = debversion::Version::from_str(b).ok()?;
    Some(a.cmp(&b))
}

/// Whether `v` is `prefix` or starts with it at a component boundary
/// (`6.6` is met by `6.6`, `6.6.0+dfsg-12`, `1:6.6-1` but not by `6.60`).
pub fn version_has_prefix(v: &str, prefix: &str) -> bool {
    let v = v.split_once(':').map_or(v, |(_, rest)| rest);
    let prefix = prefix.split_once(':').map_or(prefix, |(_, rest)| rest);
    v == prefix
        || v.strip_prefix(prefix)
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| !c.is_ascii_alphanumeric())
}

/// Whether `d` is an os-release `ID` or `ID-VERSION_ID`.
pub fn is_distribution(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 64
        && d.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && d.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}
