//! `qemu-img`: image inspection and copy-on-write overlays.

use std::path::Path;
use std::process::Stdio;

use serde::Deserialize;
use tokio::process::Command;

/// What `qemu-img` could not do.
#[derive(Debug, thiserror::Error)]
pub enum ImgError {
    /// The program is not installed.
    #[error("qemu-img is not installed (apt-get install qemu-utils)")]
    Missing,
    /// It ran and refused.
    #[error("qemu-img {verb} failed: {stderr}")]
    Failed {
        /// The subcommand.
        verb: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// Its output could not be read.
    #[error("qemu-img info printed something unexpected: {0}")]
    Output(String),
    /// Spawning it failed.
    #[error("running qemu-img: {0}")]
    Io(#[from] std::io::Error),
}

/// The parts of `qemu-img info --output=json` vws uses.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// Detected format (`raw`, `qcow2`, …).
    pub format: String,
    /// Size the guest sees.
    pub virtual_size: u64,
    /// Bytes used on the host.
    #[serde(default)]
    pub actual_size: Option<u64>,
    /// Backing file, for overlays.
    #[serde(default)]
    pub backing_filename: Option<String>,
}

async fn run(verb: &'static str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, ImgError> {
    let out = Command::new("qemu-img")
        .arg(verb)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImgError::Missing
            } else {
                ImgError::Io(e)
            }
        })?;
    if !out.status.success() {
        return Err(ImgError::Failed {
            verb,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Inspects an image. The format is probed here, and only here, on a file the
/// caller is about to trust; callers pin it afterwards.
pub async fn info(path: &Path) -> Result<ImageInfo, ImgError> {
    let out = run("info", &["--output=json".as_ref(), path.as_os_str()]).await?;
    serde_json::from_slice(&out).map_err(|e| ImgError::Output(e.to_string()))
}

/// Makes a qcow2 overlay backed by `backing` (whose format is given, never
/// probed). O(1) in the backing image's size. `size`, when larger than the
/// backing image, grows the overlay's virtual disk.
pub async fn create_overlay(
    backing: &Path,
    backing_format: &str,
    overlay: &Path,
    size: Option<u64>,
) -> Result<(), ImgError> {
    let size = size.map(|s| s.to_string());
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-b".as_ref(),
        backing.as_os_str(),
        "-F".as_ref(),
        backing_format.as_ref(),
        overlay.as_os_str(),
    ];
    if let Some(s) = &size {
        args.push(s.as_ref());
    }
    run("create", &args).await.map(drop)
}

/// Points an overlay at another copy of its backing file without touching
/// data (`rebase -u`): the same bytes live at different paths in the
/// repository and in a node's cache.
pub async fn rebase_unsafe(
    overlay: &Path,
    backing: &Path,
    backing_format: &str,
) -> Result<(), ImgError> {
    run(
        "rebase",
        &[
            "-u".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            backing.as_os_str(),
            "-F".as_ref(),
            backing_format.as_ref(),
            overlay.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Writes a standalone copy of an image and its whole backing chain in
/// `format`. `-U` lets it read an image a running QEMU holds open (paused).
pub async fn flatten(src: &Path, dst: &Path, format: &str) -> Result<(), ImgError> {
    run(
        "convert",
        &[
            "-U".as_ref(),
            "-O".as_ref(),
            format.as_ref(),
            src.as_os_str(),
            dst.as_os_str(),
        ],
    )
    .await
    .map(drop)
}

/// Makes an empty image of the given format and size.
pub async fn create(path: &Path, format: &str, size: u64) -> Result<(), ImgError> {
    let size = size.to_string();
    run(
        "create",
        &[
            "-q".as_ref(),
            "-f".as_ref(),
            format.as_ref(),
            path.as_os_str(),
            size.as_ref(),
        ],
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overlay_on_raw_image() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        create(&base, "raw", 8 << 20).await.unwrap();
        let i = info(&base).await.unwrap();
        assert_eq!((i.format.as_str(), i.virtual_size), ("raw", 8 << 20));
        let over = dir.path().join("over.qcow2");
        create_overlay(&base, "raw", &over, Some(16 << 20))
            .await
            .unwrap();
        let i = info(&over).await.unwrap();
        assert_eq!(i.format, "qcow2");
        assert_eq!(i.virtual_size, 16 << 20);
        assert_eq!(i.backing_filename.as_deref(), Some(base.to_str().unwrap()));
        let err = info(&dir.path().join("missing")).await.unwrap_err();
        assert!(matches!(err, ImgError::Failed { .. }), "{err}");
    }
}
