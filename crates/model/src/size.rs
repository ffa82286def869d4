//! Byte sizes as users write them: `256MiB`, `2GiB`, `1G`, `512000000`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A number of bytes. Parses IEC units (`KiB`…`TiB`, and `K`/`M`/`G`/`T` as QEMU
/// reads them) and SI units (`KB`…`TB`); displays in the largest exact IEC unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// A size string that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Not a number with a unit.
    #[error("{0:?} is not a size: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, K, M, G, T, KB, MB, GB, TB), e.g. \"256MiB\"")]
    Malformed(String),
    /// A size, but more bytes than can be counted.
    #[error("{0:?} is too large: sizes go up to 16 EiB (2^64 - 1 bytes)")]
    TooLarge(String),
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("B", 1),
    ("K", 1 << 10),
    ("KiB", 1 << 10),
    ("M", 1 << 20),
    ("MiB", 1 << 20),
    ("G", 1 << 30),
    ("GiB", 1 << 30),
    ("T", 1 << 40),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
];

impl ByteSize {
    /// One mebibyte.
    pub const MIB: u64 = 1 << 20;
    /// One gibibyte.
    pub const GIB: u64 = 1 << 30;

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// A short human form with one decimal where needed (`1.5 GiB`), for tables.
    pub fn human(self) -> String {
        const NAMES: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < NAMES.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{} B", self.0)
        } else if value.fract() < 0.05 {
            format!("{value:.0} {}", NAMES[unit])
        } else {
            format!("{value:.1} {}", NAMES[unit])
        }
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SizeError::Malformed(s.to_string());
        let huge = || SizeError::TooLarge(s.to_string());
        let trimmed = s.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(bad());
        }
        // Digits only by now: a number that does not parse overflowed.
        let number: u64 = number.parse().map_err(|_| huge())?;
        let unit = unit.trim();
        let factor = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(bad)?;
        number.checked_mul(factor).map(ByteSize).ok_or_else(huge)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, factor) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{name}", self.0 / factor);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is not a size: sizes cannot be negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("256MiB".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("1G".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("2 GiB".parse(), Ok(ByteSize(2 << 30)));
        assert_eq!("1000".parse(), Ok(ByteSize(1000)));
        assert_eq!("1GB".parse(), Ok(ByteSize(1_000_000_000)));
    }

    #[test]
    fn refuses_bad_units_and_overflow() {
        for bad in [
            "",
            "MiB",
            "12 parsecs",
            "1.5GiB",
            "-1",
            "99999999999TiB",
            "1 GiBs",
        ] {
            assert!(
                bad.parse::<ByteSize>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn an_overflow_is_called_too_large_not_malformed() {
        for huge in ["1000000000000GiB", "99999999999TiB", "99999999999999999999"] {
            assert_eq!(
                huge.parse::<ByteSize>(),
                Err(SizeError::TooLarge(huge.into())),
                "{huge}"
            );
        }
        assert!(matches!(
            "12 parsecs".parse::<ByteSize>(),
            Err(SizeError::Malformed(_))
        ));
        assert!(SizeError::TooLarge("x".into())
            .to_string()
            .contains("too large"));
    }

    #[test]
    fn displays_exact_units_and_human_form() {
        assert_eq!(ByteSize(256 << 20).to_string(), "256MiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
        assert_eq!(ByteSize(1536 << 20).human(), "1.5 GiB");
        assert_eq!(ByteSize(12).human(), "12 B");
    }
}
