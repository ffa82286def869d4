//! The front-end's settings: the region and zone it calls itself, and the
//! instance types it offers (names mapped to vCPUs and RAM), read from the
//! `[ec2]` table of `VWS_HOME/config.toml` (docs/ec2.md).

use serde::Deserialize;

/// An instance type: a name for a machine shape.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct InstanceType {
    /// Its name (`vws.small`).
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub ram_mib: u64,
}

/// The front-end's settings.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The region name clients sign for (`--region`).
    pub region: String,
    /// Its one availability zone.
    pub zone: String,
    /// The instance type RunInstances uses when none is named.
    pub default_type: String,
    /// The types offered.
    pub instance_types: Vec<InstanceType>,
}

impl Default for Config {
    fn default() -> Self {
        let t = |name: &str, vcpus, ram_mib| InstanceType {
            name: name.into(),
            vcpus,
            ram_mib,
        };
        Config {
            region: vws_service::DEFAULT_REGION.into(),
            zone: vws_service::DEFAULT_ZONE.into(),
            default_type: "vws.small".into(),
            instance_types: vec![
                t("vws.nano", 1, 128),
                t("vws.micro", 1, 256),
                t("vws.small", 1, 512),
                t("vws.medium", 2, 1024),
                t("vws.large", 2, 2048),
                t("vws.xlarge", 4, 4096),
            ],
        }
    }
}

impl Config {
    /// A type by name.
    pub fn instance_type(&self, name: &str) -> Option<&InstanceType> {
        self.instance_types.iter().find(|t| t.name == name)
    }

    /// Checks the table: names unique, the default among them, sizes real.
    pub fn check(&self) -> Result<(), String> {
        for (i, t) in self.instance_types.iter().enumerate() {
            if self.instance_types[..i].iter().any(|o| o.name == t.name) {
                return Err(format!("ec2.instance_types: {} is listed twice", t.name));
            }
            if t.vcpus == 0 || t.ram_mib < 16 {
                return Err(format!(
                    "ec2.instance_types: {} needs at least 1 vCPU and 16 MiB",
                    t.name
                ));
            }
        }
        if self.instance_type(&self.default_type).is_none() {
            return Err(format!(
                "ec2.default_type {} is not among ec2.instance_types",
                self.default_type
            ));
        }
        if self.region.is_empty() || self.zone.is_empty() {
            return Err("ec2.region and ec2.zone must not be empty".into());
        }
        Ok(())
    }
}
