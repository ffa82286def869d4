//! Content-addressed files: image and disk bytes named by their sha256.
//!
//! Writes go to a temporary file that is hashed as it is written, checked
//! against the expected digest, synced and only then renamed into place, so a
//! crash never leaves a blob under a name its bytes do not match.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use tokio::fs;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// A content digest, `sha256:<64 hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of some bytes.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The full `sha256:…` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if vws_model::is_digest(s) {
            Ok(Digest(s.to_string()))
        } else {
            Err(BlobError::BadDigest(s.to_string()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Computes a file's staging manifest: its digest and each chunk's, in one
/// pass (the two on two cores at once).
pub fn manifest(path: &Path) -> std::io::Result<vws_model::node::Manifest> {
    use std::io::Read;
    let chunk = vws_model::node::CHUNK as usize;
    let mut f = std::fs::File::open(path)?;
    let mut whole = Sha256::new();
    let mut chunks = Vec::new();
    let mut buf = vec![0u8; chunk];
    let mut size = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        let data = &buf[..filled];
        let part = std::thread::scope(|s| {
            let part = s.spawn(|| Sha256::digest(data));
            whole.update(data);
            part.join().expect("hashing does not panic")
        });
        chunks.push(format!("sha256:{}", hex::encode(part)));
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok(vws_model::node::Manifest {
        digest: format!("sha256:{}", hex::encode(whole.finalize())),
        size,
        chunk_size: chunk as u64,
        chunks,
    })
}

/// How many bytes of an upload are written before the disk is asked to
/// write them out.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// What can go wrong with blobs.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not a `sha256:<64 hex>` string.
    #[error("{0:?} is not a digest: expected sha256:<64 lowercase hex digits>")]
    BadDigest(String),
    /// The bytes did not hash to what was announced.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    Mismatch {
        /// Announced digest.
        expected: Digest,
        /// Digest of what arrived.
        actual: Digest,
    },
    /// More bytes than allowed.
    #[error("blob is larger than the {limit}-byte limit")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Filesystem trouble.
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

/// The blob store's folder.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating) a blob store under `root`, removing temporary files a
    /// crash may have left.
    pub async fn open(root: impl Into<PathBuf>) -> Result<BlobStore, BlobError> {
        let root = root.into();
        fs::create_dir_all(root.join("sha256")).await?;
        let tmp = root.join("tmp");
        if fs::try_exists(&tmp).await? {
            fs::remove_dir_all(&tmp).await?;
        }
        fs::create_dir_all(&tmp).await?;
        Ok(BlobStore { root })
    }

    /// Where a blob lives.
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(d.hex())
    }

    /// Whether a blob is present.
    pub async fn contains(&self, d: &Digest) -> bool {
        fs::try_exists(self.path(d)).await.unwrap_or(false)
    }

    /// Size of a present blob.
    pub async fn size(&self, d: &Digest) -> Result<u64, BlobError> {
        Ok(fs::metadata(self.path(d)).await?.len())
    }

    /// Streams bytes in, verifying them against `expected` if given; returns
    /// the digest and size. Nothing is left behind on failure.
    pub async fn put(
        &self,
        expected: Option<&Digest>,
        mut input: impl AsyncRead + Unpin,
        limit: u64,
    ) -> Result<(Digest, u64), BlobError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("upload-{}", rand::random::<u64>()));
        let result = async {
            let mut file = fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            // The disk writes what has come while more arrives, so that the
            // sync at the end has little left to wait for.
            let writer = file.try_clone().await?.into_std().await;
            let mut writeback: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
            let mut unsynced = 0u64;
            loop {
                let n = input.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await?;
                unsynced += n as u64;
                if unsynced >= WRITEBACK_EVERY && writeback.as_ref().is_none_or(|w| w.is_finished())
                {
                    file.flush().await?;
                    let w = writer.try_clone()?;
                    writeback = Some(tokio::task::spawn_blocking(move || w.sync_data()));
                    unsynced = 0;
                }
            }
            if let Some(w) = writeback {
                w.await.map_err(std::io::Error::other)??;
            }
            file.sync_all().await?;
            let actual = Digest(format!("sha256:{}", hex::encode(hasher.finalize())));
            if let Some(expected) = expected {
                if *expected != actual {
                    return Err(BlobError::Mismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
            }
            fs::rename(&tmp, self.path(&actual)).await?;
            Ok((actual, total))
        }
        .await;
        if result.is_err() {
            let _ = fs::remove_file(&tmp).await;
        }
        result
    }

    /// Moves a file made on the store's filesystem in under its digest, in
    /// one pass that also makes its staging manifest (a copy would read and
    /// write it again). The file is synced before it gets its name.
    pub async fn adopt(&self, src: &Path) -> Result<(Digest, u64), BlobError> {
        let path = src.to_path_buf();
        let m = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            // The disk writes the file while it is hashed.
            std::thread::scope(|s| {
                let synced = s.spawn(|| std::fs::File::open(&path)?.sync_all());
                let m = manifest(&path)?;
                synced.join().expect("a sync does not panic")?;
                Ok(m)
            })
        })
        .await
        .map_err(std::io::Error::other)??;
        let d = Digest(m.digest.clone());
        fs::create_dir_all(self.root.join("manifests")).await?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("manifest-{}", rand::random::<u64>()));
        fs::write(&tmp, serde_json::to_vec(&m).expect("manifests serialize")).await?;
        fs::rename(
            &tmp,
            self.root
                .join("manifests")
                .join(format!("{}.json", d.hex())),
        )
        .await?;
        fs::rename(src, self.path(&d)).await?;
        Ok((d, m.size))
    }

    /// Copies a local file in.
    pub async fn put_file(&self, src: &Path) -> Result<(Digest, u64), BlobError> {
        let f = fs::File::open(src).await?;
        self.put(None, f, u64::MAX).await
    }

    /// The staging manifest of a present blob, computed once and kept beside
    /// it (blobs never change). It is made in the pass that checks the blob
    /// against its name, so that its chunk digests vouch for the whole: a
    /// node that checks every chunk has checked the file (a blob that rotted
    /// on this disk gets no manifest, and cannot be staged).
    pub async fn manifest(&self, d: &Digest) -> Result<vws_model::node::Manifest, BlobError> {
        let cached = self
            .root
            .join("manifests")
            .join(format!("{}.json", d.hex()));
        if let Ok(text) = fs::read(&cached).await {
            if let Ok(m) = serde_json::from_slice(&text) {
                return Ok(m);
            }
        }
        let path = self.path(d);
        let m = tokio::task::spawn_blocking(move || manifest(&path))
            .await
            .map_err(std::io::Error::other)??;
        if m.digest != d.as_str() {
            return Err(BlobError::Mismatch {
                expected: d.clone(),
                actual: Digest(m.digest),
            });
        }
        fs::create_dir_all(self.root.join("manifests")).await?;
        let tmp = self
            .root
            .join("tmp")
            .join(format!("manifest-{}", rand::random::<u64>()));
        fs::write(&tmp, serde_json::to_vec(&m).expect("manifests serialize")).await?;
        fs::rename(&tmp, &cached).await?;
        Ok(m)
    }

    /// Removes a blob; absent is fine.
    pub async fn remove(&self, d: &Digest) -> Result<(), BlobError> {
        let _ = fs::remove_file(
            self.root
                .join("manifests")
                .join(format!("{}.json", d.hex())),
        )
        .await;
        match fs::remove_file(self.path(d)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Every blob present.
    pub async fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let mut out = Vec::new();
        let mut dir = fs::read_dir(self.root.join("sha256")).await?;
        while let Some(e) = dir.next_entry().await? {
            if let Ok(d) = format!("sha256:{}", e.file_name().to_string_lossy()).parse() {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verified_put_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        let d = Digest::of(b"hello");
        let (got, n) = store.put(Some(&d), &b"hello"[..], 100).await.unwrap();
        assert_eq!((got.clone(), n), (d.clone(), 5));
        assert!(store.contains(&d).await);
        assert_eq!(std::fs::read(store.path(&d)).unwrap(), b"hello");

        let wrong = Digest::of(b"other");
        let err = store
            .put(Some(&wrong), &b"hello!"[..], 100)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert!(!store.contains(&wrong).await);
        let err = store.put(None, &[0u8; 64][..], 10).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { .. }));
        // Nothing half-written remains.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(store.list().await.unwrap(), vec![d]);
        assert!("sha256:xyz".parse::<Digest>().is_err());
    }

    /// A manifest's chunk digests vouch for the blob's name (nodes check
    /// only the chunks): a blob that rotted on disk before its manifest
    /// was made gets none.
    #[tokio::test]
    async fn a_manifest_is_made_only_for_a_blob_that_matches_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        let (good, _) = store.put(None, &[7u8; 100][..], 1000).await.unwrap();
        let (bad, _) = store.put(None, &[8u8; 100][..], 1000).await.unwrap();
        let m = store.manifest(&good).await.unwrap();
        assert_eq!(
            (m.digest.as_str(), m.size, m.chunks.len()),
            (good.as_str(), 100, 1)
        );
        std::fs::write(store.path(&bad), [9u8; 100]).unwrap();
        let err = store.manifest(&bad).await.unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        assert!(!dir
            .path()
            .join("manifests")
            .join(format!("{}.json", bad.hex()))
            .exists());
    }
}
