//! The Query API's parameters: `Action=…&InstanceId.1=…&Filter.1.Name=…`,
//! read from a form body or the query string. Unknown parameters are left
//! alone (EC2 ignores them).

use std::collections::BTreeMap;

use crate::error::Ec2Error;

/// A request's parameters, in the order they came.
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<(String, String)>);

/// A `Filter.N`: its name and values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// `instance-state-name`, `tag:Name`, …
    pub name: String,
    /// Any of these matches.
    pub values: Vec<String>,
}

impl Params {
    /// From `application/x-www-form-urlencoded` bytes.
    pub fn parse(bytes: &[u8]) -> Params {
        Params(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// One parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// One parameter that must be there.
    pub fn require(&self, name: &str) -> Result<&str, Ec2Error> {
        self.get(name).ok_or_else(|| Ec2Error::missing(name))
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<Option<i64>, Ec2Error> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Ec2Error::invalid(format!("{name} {v:?} is not an integer")))
            })
            .transpose()
    }

    /// A boolean parameter (`true`/`false`).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, Ec2Error> {
        self.get(name)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(Ec2Error::invalid(format!(
                    "{name} {v:?} is not true or false"
                ))),
            })
            .transpose()
    }

    /// The members `PREFIX.N.REST`, grouped by N in numeric order, each as
    /// its own parameters (`REST=…`).
    pub fn members(&self, prefix: &str) -> Vec<Params> {
        let mut by_index: BTreeMap<u32, Params> = BTreeMap::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
            if let Ok(n) = n.parse::<u32>() {
                by_index
                    .entry(n)
                    .or_default()
                    .0
                    .push((tail.to_string(), v.clone()));
            }
        }
        by_index.into_values().collect()
    }

    /// A list `PREFIX.1=…&PREFIX.2=…`, in numeric order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        self.members(prefix)
            .into_iter()
            .filter_map(|m| m.get("").map(str::to_string))
            .collect()
    }

    /// `Filter.N.Name` with `Filter.N.Value.M`.
    pub fn filters(&self) -> Result<Vec<Filter>, Ec2Error> {
        self.members("Filter")
            .into_iter()
            .map(|m| {
                let name = m
                    .get("Name")
                    .ok_or_else(|| Ec2Error::missing("Filter.N.Name"))?
                    .to_string();
                Ok(Filter {
                    name,
                    values: m.list("Value"),
                })
            })
            .collect()
    }

    /// `PREFIX.N.Key` with `PREFIX.N.Value` (tags).
    pub fn tags(&self, prefix: &str) -> Result<Vec<(String, Option<String>)>, Ec2Error> {
        self.members(prefix)
            .into_iter()
            .map(|m| {
                let key = m
                    .get("Key")
                    .ok_or_else(|| Ec2Error::missing(&format!("{prefix}.N.Key")))?;
                if key.is_empty() || key.len() > 128 || key.starts_with("aws:") {
                    return Err(Ec2Error::client(
                        "InvalidParameterValue",
                        format!("tag key {key:?}: 1 to 128 characters, not starting with aws:"),
                    ));
                }
                let value = m.get("Value").map(str::to_string);
                if value.as_ref().is_some_and(|v| v.len() > 256) {
                    return Err(Ec2Error::invalid(format!(
                        "the value of tag {key:?} is longer than 256 characters"
                    )));
                }
                Ok((key.to_string(), value))
            })
            .collect()
    }
}

/// Whether a value matches a filter value, with EC2's `*` and `?`
/// wildcards.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    fn go(p: &[u8], v: &[u8]) -> bool {
        match (p.first(), v.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], v) || (!v.is_empty() && go(p, &v[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &v[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &v[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), value.as_bytes())
}

impl Filter {
    /// Whether any of the filter's values matches `value`.
    pub fn matches(&self, value: Option<&str>) -> bool {
        value.is_some_and(|v| self.values.iter().any(|p| wildcard(p, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_lists_and_filters() {
        let p = Params::parse(
            b"Action=DescribeInstances&InstanceId.2=i-b&InstanceId.1=i-a&InstanceId.10=i-c\
              &Filter.1.Name=tag%3AName&Filter.1.Value.1=web*&Filter.2.Name=instance-state-name\
              &Filter.2.Value.1=running&Filter.2.Value.2=stopped&Unknown=1",
        );
        assert_eq!(p.get("Action"), Some("DescribeInstances"));
        assert_eq!(p.list("InstanceId"), ["i-a", "i-b", "i-c"]);
        let f = p.filters().unwrap();
        assert_eq!(f[0].name, "tag:Name");
        assert_eq!(f[1].values, ["running", "stopped"]);
        assert!(f[0].matches(Some("web-1")) && !f[0].matches(Some("db")) && !f[0].matches(None));
        assert!(wildcard("a?c*", "abcdef") && !wildcard("a?c", "ac"));
        assert!(matches!(p.int("Action"), Err(e) if e.code == "InvalidParameterValue"));
        assert_eq!(p.require("MaxCount").unwrap_err().code, "MissingParameter");
    }
}
