//! References to images in the pool: `name:tag` or `sha256:<64 hex>`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A parsed image reference. Names and tags are restricted so they can never
/// traverse paths or smuggle shell syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A name and tag, e.g. `minimal:1`.
    Tag {
        /// Image name: lowercase letters, digits, `.`, `_`, `-`; starts with a letter or digit.
        name: String,
        /// Tag: letters, digits, `.`, `_`, `-`.
        tag: String,
    },
    /// A content digest, e.g. `sha256:ab…`.
    Digest(String),
}

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an image reference: expected NAME:TAG (name of lowercase letters, digits, '.', '_', '-', up to 64 characters) or sha256:<64 hex digits>")]
pub struct ImageRefError(pub String);

/// Checks a digest string `sha256:<64 lowercase hex>`.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn valid_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sha256:") {
            return if is_digest(s) {
                Ok(ImageRef::Digest(s.to_string()))
            } else {
                Err(ImageRefError(s.into()))
            };
        }
        match s.split_once(':') {
            Some((name, tag)) if valid_name(name) && valid_tag(tag) => Ok(ImageRef::Tag {
                name: name.into(),
                tag: tag.into(),
            }),
            None if valid_name(s) => Ok(ImageRef::Tag {
                name: s.into(),
                tag: "latest".into(),
            }),
            _ => Err(ImageRefError(s.into())),
        }
    }
}

impl ImageRef {
    /// Builds a `name:tag` reference, checking both parts.
    pub fn tagged(name: &str, tag: &str) -> Result<Self, ImageRefError> {
        format!("{name}:{tag}").parse()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Tag { name, tag } => write!(f, "{name}:{tag}"),
            ImageRef::Digest(d) => f.write_str(d),
        }
    }
}

impl Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "minimal:1".parse(),
            Ok(ImageRef::Tag {
                name: "minimal".into(),
                tag: "1".into()
            })
        );
        assert_eq!(
            "debian".parse(),
            Ok(ImageRef::Tag {
                name: "debian".into(),
                tag: "latest".into()
            })
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(d.parse(), Ok(ImageRef::Digest(d.clone())));
        for bad in [
            "",
            ":1",
            "../etc:1",
            "a/b:1",
            "Minimal:1",
            "x:",
            "x:../y",
            "sha256:abc",
            "x:1:2",
            "a b:1",
            ".hidden:1",
        ] {
            assert!(
                bad.parse::<ImageRef>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
