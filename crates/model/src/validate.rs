//! Semantic checks on a parsed description. Every error carries the path of
//! the element at fault, rendered in the syntax of the form the client used.

use std::collections::HashSet;
use std::fmt;

use crate::description::{Category, Description};
use crate::image_ref::ImageRef;
use crate::size::ByteSize;

/// Bounds beyond which a request is refused as absurd.
pub mod limits {
    /// Most vCPUs a workspace may ask for.
    pub const MAX_CPUS: u32 = 256;
    /// Least RAM a workspace may ask for.
    pub const MIN_RAM: u64 = 16 << 20;
    /// Most RAM a workspace may ask for.
    pub const MAX_RAM: u64 = 1 << 40;
    /// Least disk size.
    pub const MIN_DISK: u64 = 1 << 20;
    /// Most disk size.
    pub const MAX_DISK: u64 = 64 << 40;
    /// Longest lifeCycle: ten years, in seconds.
    pub const MAX_LIFECYCLE: u64 = 10 * 365 * 24 * 3600;
    /// Most NICs, devices, programs or services in one list.
    pub const MAX_LIST: usize = 64;
    /// Longest free-text value (startup command, versions, names).
    pub const MAX_TEXT: usize = 4096;
}

/// The form a description was written in; decides how paths are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `/virtualWorkspace/hw:hardware/hw:ram/@min`
    Xml,
    /// `hardware.ram.min`
    Toml,
    /// `hardware.ram.min`
    Json,
}

/// One segment of a path into the description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A field, by its TOML/JSON name.
    Key(&'static str),
    /// An element of a list.
    Index(usize),
}

/// A path into the description, printable in each form's syntax.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Path(pub Vec<Seg>);

impl Path {
    fn child(&self, seg: Seg) -> Path {
        let mut p = self.clone();
        p.0.push(seg);
        p
    }

    /// Renders the path for a document of the given form.
    pub fn render(&self, form: Form) -> String {
        match form {
            Form::Toml | Form::Json => {
                let mut out = String::new();
                for seg in &self.0 {
                    match seg {
                        Seg::Key(k) => {
                            if !out.is_empty() {
                                out.push('.');
                            }
                            out.push_str(k);
                        }
                        Seg::Index(i) => out.push_str(&format!("[{i}]")),
                    }
                }
                if out.is_empty() {
                    "(document)".into()
                } else {
                    out
                }
            }
            Form::Xml => {
                let mut out = String::from("/virtualWorkspace");
                let mut depth = 0;
                for seg in &self.0 {
                    match seg {
                        Seg::Key(k) => {
                            out.push('/');
                            out.push_str(&xml_name(k, depth));
                            depth += 1;
                        }
                        // XPath positions count from 1.
                        Seg::Index(i) => out.push_str(&format!("[{}]", i + 1)),
                    }
                }
                out
            }
        }
    }
}

/// Maps a model field name to the XML element or attribute that carries it.
fn xml_name(key: &str, depth: usize) -> String {
    let element = match key {
        "hardware" => "hw:hardware",
        "cpus" => "hw:cpus",
        "ram" => "hw:ram",
        "disk" => "hw:disk",
        "devices" => "hw:device",
        "network" => "net:network",
        "nics" => "net:nic",
        "software" => "sw:software",
        "image" if depth == 1 => "sw:image",
        "os" => "sw:os",
        "programs" => "sw:program",
        "capability" => "cap:capability",
        "startup" => "cap:startup",
        "services" => "cap:service",
        "category" | "state" | "lifeCycle" | "EPR" | "creationTime" | "lastModified" => key,
        "vmm" => "category/@vmm",
        // Everything else is an attribute of its element.
        attr => return format!("@{attr}"),
    };
    element.to_string()
}

/// One problem found in a description.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// Where, in the syntax of the submitted form.
    pub path: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A description refused, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InvalidDescription(pub Vec<FieldError>);

impl fmt::Display for InvalidDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid description: {one}"),
            many => {
                write!(f, "invalid description ({} problems):", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl InvalidDescription {
    /// A refusal with one problem.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidDescription(vec![FieldError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

struct Checker {
    form: Form,
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.render(self.form),
            message: message.into(),
        });
    }

    fn text(&mut self, path: &Path, value: &str, what: &str) {
        if value.trim().is_empty() {
            self.fail(path, format!("{what} must not be empty"));
        } else if value.len() > limits::MAX_TEXT {
            self.fail(
                path,
                format!("{what} is longer than {} characters", limits::MAX_TEXT),
            );
        } else if value.contains('\0') {
            self.fail(path, format!("{what} contains a NUL character"));
        }
    }

    fn list(&mut self, path: &Path, len: usize) {
        if len > limits::MAX_LIST {
            self.fail(
                path,
                format!(
                    "at most {} entries are allowed, found {len}",
                    limits::MAX_LIST
                ),
            );
        }
    }

    fn image(&mut self, path: &Path, value: &str) {
        if let Err(e) = value.parse::<ImageRef>() {
            self.fail(path, e.to_string());
        }
    }

    fn size_range(
        &mut self,
        path: &Path,
        min: ByteSize,
        max: ByteSize,
        lo: u64,
        hi: u64,
        what: &str,
    ) {
        for (key, v) in [("min", min), ("max", max)] {
            if v.0 == 0 {
                self.fail(
                    &path.child(Seg::Key(key)),
                    format!("{what} must be greater than zero"),
                );
            } else if v.0 < lo {
                self.fail(
                    &path.child(Seg::Key(key)),
                    format!("{what} {v} is below the smallest allowed, {}", ByteSize(lo)),
                );
            } else if v.0 > hi {
                self.fail(
                    &path.child(Seg::Key(key)),
                    format!("{what} {v} is above the largest allowed, {}", ByteSize(hi)),
                );
            }
        }
        if min > max {
            self.fail(path, format!("min {min} is greater than max {max}"));
        }
    }
}

/// Checks everything serde cannot: ranges, sizes, references, uniqueness.
pub fn validate(d: &Description, form: Form) -> Result<(), InvalidDescription> {
    let mut c = Checker {
        form,
        errors: Vec::new(),
    };
    let root = Path::default();

    if d.vmm.is_some() && d.category != Category::Vm {
        c.fail(
            &root.child(Seg::Key("vmm")),
            "a vmm is only meaningful for category \"vm\"",
        );
    }
    if let Some(lc) = d.life_cycle {
        let p = root.child(Seg::Key("lifeCycle"));
        if lc == 0 {
            c.fail(&p, "lifeCycle must be a positive number of seconds");
        } else if lc > limits::MAX_LIFECYCLE {
            c.fail(
                &p,
                format!(
                    "lifeCycle {lc}s is longer than ten years ({}s)",
                    limits::MAX_LIFECYCLE
                ),
            );
        }
    }

    let hw = root.child(Seg::Key("hardware"));
    let cpus = hw.child(Seg::Key("cpus"));
    for (key, v) in [("min", d.hardware.cpus.min), ("max", d.hardware.cpus.max)] {
        if v == 0 {
            c.fail(&cpus.child(Seg::Key(key)), "cpus must be at least 1");
        } else if v > limits::MAX_CPUS {
            c.fail(
                &cpus.child(Seg::Key(key)),
                format!(
                    "{v} cpus is above the largest allowed, {}",
                    limits::MAX_CPUS
                ),
            );
        }
    }
    if d.hardware.cpus.min > d.hardware.cpus.max {
        c.fail(
            &cpus,
            format!(
                "min {} is greater than max {}",
                d.hardware.cpus.min, d.hardware.cpus.max
            ),
        );
    }
    let ram = d.hardware.ram;
    c.size_range(
        &hw.child(Seg::Key("ram")),
        ram.min,
        ram.max,
        limits::MIN_RAM,
        limits::MAX_RAM,
        "ram",
    );
    if let Some(disk) = &d.hardware.disk {
        let p = hw.child(Seg::Key("disk")).child(Seg::Key("size"));
        let size = disk.size.0;
        if size == 0 {
            c.fail(&p, "disk size must be greater than zero");
        } else if size < limits::MIN_DISK {
            c.fail(
                &p,
                format!(
                    "disk size {} is below the smallest allowed, {}",
                    disk.size,
                    ByteSize(limits::MIN_DISK)
                ),
            );
        } else if size > limits::MAX_DISK {
            c.fail(
                &p,
                format!(
                    "disk size {} is above the largest allowed, {}",
                    disk.size,
                    ByteSize(limits::MAX_DISK)
                ),
            );
        }
        if disk.encrypted && disk.kind != crate::DiskType::Qcow2 {
            c.fail(
                &hw.child(Seg::Key("disk")).child(Seg::Key("encrypted")),
                "only qcow2 disks can be encrypted (QEMU's LUKS in qcow2)",
            );
        }
    }
    let devices = hw.child(Seg::Key("devices"));
    c.list(&devices, d.hardware.devices.len());
    for (i, dev) in d.hardware.devices.iter().enumerate() {
        let p = devices.child(Seg::Index(i));
        c.image(&p.child(Seg::Key("image")), &dev.image);
        if d.category != Category::Vm {
            c.fail(&p, "devices are only available to category \"vm\"");
        }
    }

    let nics = root.child(Seg::Key("network")).child(Seg::Key("nics"));
    c.list(&nics, d.network.nics.len());
    let mut names = HashSet::new();
    for (i, nic) in d.network.nics.iter().enumerate() {
        let p = nics.child(Seg::Index(i)).child(Seg::Key("name"));
        let ok = !nic.name.is_empty()
            && nic.name.len() <= 15
            && nic
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            c.fail(
                &p,
                format!(
                    "{:?} is not an interface name: 1 to 15 letters, digits, '_', '-', '.'",
                    nic.name
                ),
            );
        } else if !names.insert(nic.name.as_str()) {
            c.fail(&p, format!("interface {:?} is named twice", nic.name));
        }
        if let Some(net) = &nic.network {
            let p = nics.child(Seg::Index(i)).child(Seg::Key("network"));
            if !crate::is_network_name(net) {
                c.fail(
                    &p,
                    format!("{net:?} is not a network name: 1 to 32 letters, digits, '_', '-'"),
                );
            } else if !matches!(nic.method, crate::NicMethod::Pool | crate::NicMethod::Dhcp) {
                c.fail(&p, "only pool and dhcp interfaces are on a network");
            }
        }
    }

    let sw = root.child(Seg::Key("software"));
    if let Some(image) = &d.software.image {
        c.image(&sw.child(Seg::Key("image")), image);
    }
    if let Some(os) = &d.software.os {
        let p = sw.child(Seg::Key("os"));
        if let Some(k) = &os.kernel {
            c.text(&p.child(Seg::Key("kernel")), k, "kernel");
        }
        if let Some(dist) = &os.distribution {
            let at = p.child(Seg::Key("distribution"));
            c.text(&at, dist, "distribution");
            if !crate::version::is_distribution(dist) {
                c.fail(
                    &at,
                    format!("{dist:?} is not a distribution: os-release's ID or ID-VERSION_ID, such as debian or debian-12"),
                );
            }
        }
        if let Some(k) = os
            .kernel
            .as_deref()
            .filter(|k| !crate::version::is_version(k))
        {
            c.fail(
                &p.child(Seg::Key("kernel")),
                format!("{k:?} is not a kernel version"),
            );
        }
    }
    let programs = sw.child(Seg::Key("programs"));
    c.list(&programs, d.software.programs.len());
    for (i, prog) in d.software.programs.iter().enumerate() {
        let p = programs.child(Seg::Index(i));
        c.text(&p.child(Seg::Key("name")), &prog.name, "program name");
        for (key, v) in [
            ("version", &prog.version),
            ("min", &prog.min),
            ("max", &prog.max),
        ] {
            if let Some(v) = v {
                let at = p.child(Seg::Key(key));
                c.text(&at, v, "program version");
                if !crate::version::is_version(v) {
                    c.fail(&at, format!("{v:?} is not a version"));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (&prog.min, &prog.max) {
            if crate::version::version_cmp(lo, hi) == Some(std::cmp::Ordering::Greater) {
                c.fail(
                    &p.child(Seg::Key("min")),
                    format!("min {lo} is above max {hi}"),
                );
            }
        }
    }

    let cap = root.child(Seg::Key("capability"));
    if let Some(s) = &d.capability.startup {
        c.text(&cap.child(Seg::Key("startup")), s, "startup command");
    }
    let services = cap.child(Seg::Key("services"));
    c.list(&services, d.capability.services.len());
    let mut ports = HashSet::new();
    for (i, svc) in d.capability.services.iter().enumerate() {
        let p = services.child(Seg::Index(i)).child(Seg::Key("port"));
        if svc.port == 0 {
            c.fail(&p, "port must be between 1 and 65535");
        } else if !ports.insert((svc.port, svc.protocol)) {
            c.fail(
                &p,
                format!(
                    "port {}/{} is listed twice",
                    svc.port,
                    svc.protocol.as_str()
                ),
            );
        }
    }

    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidDescription(c.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_paths_per_form() {
        let p = Path(vec![Seg::Key("hardware"), Seg::Key("ram"), Seg::Key("min")]);
        assert_eq!(p.render(Form::Toml), "hardware.ram.min");
        assert_eq!(
            p.render(Form::Xml),
            "/virtualWorkspace/hw:hardware/hw:ram/@min"
        );
        let p = Path(vec![
            Seg::Key("network"),
            Seg::Key("nics"),
            Seg::Index(1),
            Seg::Key("name"),
        ]);
        assert_eq!(p.render(Form::Json), "network.nics[1].name");
        assert_eq!(
            p.render(Form::Xml),
            "/virtualWorkspace/net:network/net:nic[2]/@name"
        );
        let p = Path(vec![Seg::Key("software"), Seg::Key("image")]);
        assert_eq!(
            p.render(Form::Xml),
            "/virtualWorkspace/sw:software/sw:image"
        );
        let p = Path(vec![
            Seg::Key("hardware"),
            Seg::Key("devices"),
            Seg::Index(0),
            Seg::Key("image"),
        ]);
        assert_eq!(
            p.render(Form::Xml),
            "/virtualWorkspace/hw:hardware/hw:device[1]/@image"
        );
    }
}
