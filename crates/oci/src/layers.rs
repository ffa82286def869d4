//! Layers applied exactly into a root filesystem folder, in order: regular
//! files, folders, symlinks, hard links and FIFOs with their modes, owners
//! (as root), times and xattrs; whiteouts (`.wh.NAME` removes NAME of the
//! layers below, `.wh..wh..opq` hides a folder's lower contents). Hostile
//! entries are refused, naming the entry, before anything is written for
//! them: absolute paths and `..`, a path through a symlink that leads out
//! of the root, device nodes, a hard link to outside or to a folder, and
//! layers or images over the size limits.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// How much a pull may write.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of file content one layer may hold.
    pub layer_bytes: u64,
    /// Most bytes of file content all layers together may hold.
    pub image_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            layer_bytes: 8 << 30,
            image_bytes: 16 << 30,
        }
    }
}

/// Why a layer was not applied.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An entry that would write outside the root or is not allowed.
    #[error("layer {layer}: entry {entry:?} refused: {why}")]
    Hostile {
        /// The layer's digest.
        layer: String,
        /// The entry's path as the layer names it.
        entry: String,
        /// Why.
        why: String,
    },
    /// Over a size limit.
    #[error("layer {layer}: {what} passes the limit of {limit} bytes")]
    TooLarge {
        /// The layer's digest.
        layer: String,
        /// What.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// A compression this build does not read.
    #[error("layer {layer}: media type {media_type} is not supported (tar, tar+gzip)")]
    MediaType {
        /// The layer's digest.
        layer: String,
        /// Its media type.
        media_type: String,
    },
    /// The archive could not be read or a file not written.
    #[error("layer {layer}: {source}")]
    Io {
        /// The layer's digest.
        layer: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// How a layer's bytes are compressed, by its media type.
fn decompressed<'a>(
    layer: &str,
    media_type: &str,
    r: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, LayerError> {
    let plain = media_type.ends_with(".tar")
        || media_type.ends_with("tar.v1")
        || media_type.ends_with(".diff.tar");
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if plain {
        Ok(Box::new(r))
    } else {
        Err(LayerError::MediaType {
            layer: layer.into(),
            media_type: media_type.into(),
        })
    }
}

/// A gzip stream's decompressed bytes.
pub fn gunzip(data: &[u8]) -> impl Read + '_ {
    flate2::read::GzDecoder::new(data)
}

/// Applies layers, one after another, into `root`.
pub struct Applier {
    root: PathBuf,
    limits: Limits,
    written: u64,
    /// Whether owners can be set (only root may).
    owners: bool,
}

/// What applying a layer did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Paths removed by whiteouts.
    pub whiteouts: u64,
}

/// A path inside the layer, checked: relative, no `..`, `./` dropped.
fn clean(raw: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path".into());
            }
            Component::ParentDir => return Err("a path with ..".into()),
        }
    }
    Ok(out)
}

impl Applier {
    /// An applier writing into `root` (which exists).
    pub fn new(root: &Path, limits: Limits) -> Applier {
        Applier {
            root: root.to_path_buf(),
            limits,
            written: 0,
            owners: rustix::process::geteuid().is_root(),
        }
    }

    /// Bytes of file content written so far, over all layers.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Resolves `rel` (a folder path inside the image) to where it is on
    /// the host: symlinks on the way are followed inside the root (an
    /// absolute target counts from the root); one that leads out is
    /// refused. Missing folders are made.
    fn resolve_dir(&self, rel: &Path) -> Result<PathBuf, String> {
        let mut hops = 0;
        let mut pending: Vec<std::ffi::OsString> = rel
            .components()
            .rev()
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        let mut at = PathBuf::new();
        while let Some(part) = pending.pop() {
            match part.to_str() {
                Some(".") | Some("") => continue,
                Some("..") => {
                    if !at.pop() {
                        return Err(format!(
                            "a symlink on its path leads out of the root (past {})",
                            rel.display()
                        ));
                    }
                    continue;
                }
                _ => {}
            }
            let next = at.join(&part);
            let host = self.root.join(&next);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err("too many symlinks on its path".into());
                    }
                    let target = std::fs::read_link(&host).map_err(|e| e.to_string())?;
                    if target.is_absolute() {
                        at = PathBuf::new();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::RootDir | Component::Prefix(_) => {}
                            c => pending.push(c.as_os_str().to_os_string()),
                        }
                    }
                }
                Ok(m) if m.is_dir() => at = next,
                Ok(_) => return Err(format!("{} on its path is not a folder", next.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir(&host).map_err(|e| e.to_string())?;
                    at = next;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(self.root.join(at))
    }

    /// Applies one layer (`digest` names it in errors), read from `r`.
    pub fn apply(
        &mut self,
        digest: &str,
        media_type: &str,
        r: impl Read,
    ) -> Result<Applied, LayerError> {
        let io = |source| LayerError::Io {
            layer: digest.into(),
            source,
        };
        let mut archive = tar::Archive::new(decompressed(digest, media_type, r)?);
        let mut done = Applied::default();
        let mut mine: HashSet<PathBuf> = HashSet::new();
        let mut layer_bytes = 0u64;
        for entry in archive.entries().map_err(io)? {
            let mut e = entry.map_err(io)?;
            let raw = e.path().map_err(io)?.into_owned();
            let hostile = |why: String| LayerError::Hostile {
                layer: digest.into(),
                entry: raw.display().to_string(),
                why,
            };
            let rel = clean(&raw).map_err(&hostile)?;
            let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
                continue; // the layer's own root
            };
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let parent = self.resolve_dir(&parent_rel).map_err(&hostile)?;
            let name_str = name.to_string_lossy();
            if name_str == ".wh..wh..opq" {
                for child in std::fs::read_dir(&parent).map_err(io)? {
                    let child = child.map_err(io)?;
                    if !mine.contains(&parent_rel.join(child.file_name())) {
                        remove(&child.path()).map_err(io)?;
                        done.whiteouts += 1;
                    }
                }
                continue;
            }
            if let Some(hidden) = name_str.strip_prefix(".wh.") {
                let target = parent.join(hidden);
                if std::fs::symlink_metadata(&target).is_ok() {
                    remove(&target).map_err(io)?;
                    done.whiteouts += 1;
                }
                continue;
            }
            let kind = e.header().entry_type();
            if kind.is_character_special() || kind.is_block_special() {
                return Err(hostile("a device node".into()));
            }
            let size = e.header().size().map_err(io)?;
            layer_bytes += size;
            self.written += size;
            if layer_bytes > self.limits.layer_bytes {
                return Err(LayerError::TooLarge {
                    layer: digest.into(),
                    what: "its content".into(),
                    limit: self.limits.layer_bytes,
                });
            }
            if self.written > self.limits.image_bytes {
                return Err(LayerError::TooLarge {
                    layer: digest.into(),
                    what: "the image's content".into(),
                    limit: self.limits.image_bytes,
                });
            }
            let dest = parent.join(&name);
            let existing = std::fs::symlink_metadata(&dest).ok();
            if let Some(m) = &existing {
                // A folder stays a folder (its entry sets its mode); anything
                // else is replaced.
                if !(m.is_dir() && kind.is_dir()) {
                    remove(&dest).map_err(io)?;
                }
            }
            if kind.is_hard_link() {
                let link = e
                    .link_name()
                    .map_err(io)?
                    .ok_or_else(|| hostile("a hard link without a target".into()))?;
                let target_rel =
                    clean(&link).map_err(|w| hostile(format!("a hard link to {w}")))?;
                let target_name = target_rel
                    .file_name()
                    .ok_or_else(|| hostile("a hard link to the root".into()))?;
                let target_dir = self
                    .resolve_dir(target_rel.parent().unwrap_or(Path::new("")))
                    .map_err(&hostile)?;
                let target = target_dir.join(target_name);
                match std::fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => return Err(hostile("a hard link to a folder".into())),
                    Ok(_) => std::fs::hard_link(&target, &dest).map_err(io)?,
                    Err(_) => {
                        return Err(hostile(format!(
                            "a hard link to {}, which is not there",
                            target_rel.display()
                        )))
                    }
                }
            } else {
                e.set_preserve_permissions(true);
                e.set_preserve_mtime(true);
                e.set_unpack_xattrs(true);
                e.unpack(&dest).map_err(io)?;
                if self.owners {
                    let (uid, gid) = (
                        e.header().uid().map_err(io)? as u32,
                        e.header().gid().map_err(io)? as u32,
                    );
                    std::os::unix::fs::lchown(&dest, Some(uid), Some(gid)).map_err(io)?;
                    if !kind.is_symlink() {
                        // chown clears set-id bits: the mode goes on again.
                        if let Ok(mode) = e.header().mode() {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
                                .map_err(io)?;
                        }
                    }
                }
            }
            mine.insert(rel);
            done.entries += 1;
            done.bytes += size;
        }
        Ok(done)
    }
}

fn remove(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
