//! Which accelerator QEMU can really use here.
//!
//! `/dev/kvm` existing is not enough: on these machines it is a nested
//! paravirtual KVM (`kvm_pvm`) on which stock guest kernels hang. The check
//! reads only files, so it cannot hang.

use std::path::Path;

/// The accelerator a VM runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Why KVM is or is not used, for the node's report.
pub fn detect() -> (Accel, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has_vt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    if !Path::new("/dev/kvm").exists() {
        return (Accel::Tcg, "no /dev/kvm".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            Accel::Tcg,
            "/dev/kvm is the paravirtual nested kvm_pvm, on which stock kernels hang".into(),
        );
    }
    if !has_vt {
        return (Accel::Tcg, "the CPU shows neither vmx nor svm".into());
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (Accel::Tcg, "/dev/kvm cannot be opened".into());
    }
    (Accel::Kvm, "hardware virtualization available".into())
}

/// The host TSC frequency in kHz, for `tsc_early_khz=`: without it the guest
/// kernel sometimes hangs calibrating against a PIT microvm does not have.
pub fn tsc_khz() -> Option<u64> {
    if let Ok(s) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz") {
        if let Ok(k) = s.trim().parse() {
            return Some(k);
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}
