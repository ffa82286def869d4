//! What the CLI's end-to-end tests share: the `vws` binary run against a
//! test's own VWS_HOME, and a guard for the processes they start.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The binary under test.
pub const VWS: &str = env!("CARGO_BIN_EXE_vws");

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A process (`vws up`, `serve`, `node`) killed when the test lets go of it,
/// a failed assertion included.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `vws ARGS` with `home` as its VWS_HOME (and no VWS_SERVER from the
/// caller's environment).
pub fn vws(home: &Path, args: &[&str]) -> Output {
    Command::new(VWS)
        .args(args)
        .env("VWS_HOME", home)
        .env_remove("VWS_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `vws ARGS`, which must succeed; its standard output.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = vws(home, args);
    assert!(
        out.status.success(),
        "vws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vws ARGS`, which must fail; its standard error.
pub fn refused(home: &Path, args: &[&str]) -> String {
    let out = vws(home, args);
    assert!(
        !out.status.success(),
        "vws {args:?} should have been refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// On the way out (a failed assertion too): kills every process whose
/// command line names the test's `home` — its workspaces' QEMUs, which
/// outlive `vws up` by design, and would otherwise run on after a test
/// that failed half-way.
pub struct ReapVms(pub PathBuf);

impl Drop for ReapVms {
    fn drop(&mut self) {
        let home = self.0.to_string_lossy().into_owned();
        let me = std::process::id();
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| *p != me)
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&home) {
                // The shell's own kill: procps may not be installed.
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -9 {pid}")])
                    .status();
            }
        }
    }
}
