//! Staging (paper §3.2, GridFTP's role) over HTTP: a file is fetched in
//! chunks, each checked against the chunk digests the repository publishes,
//! written in place, and recorded as done, so an interrupted transfer resumes
//! where it stopped and a corrupted chunk is refused. The repository makes a
//! blob's chunk digests in the pass that checks the blob against its digest,
//! so a file whose every chunk matched is the file of that digest: each byte
//! is hashed once here. It is renamed into place only when every chunk is
//! in: nothing half written can ever be used. A chunk whose digest is that
//! of zeros is made here (a hole), not moved.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use vws_model::node::Manifest;

/// Chunks written between syncs (and between entries in the resume log).
const SYNC_EVERY: usize = 16;

/// Chunks fetched at once.
const IN_FLIGHT: usize = 4;

/// The digest of a whole file.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Bytes done and total, shared with whoever reports progress.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes in place (fetched now or found from an earlier attempt).
    pub done: AtomicU64,
    /// Bytes to have.
    pub total: AtomicU64,
    /// Bytes that crossed the network.
    pub moved: AtomicU64,
}

/// Why staging failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The repository could not be reached or refused.
    #[error("staging {url}: {message}")]
    Http {
        /// What was fetched.
        url: String,
        /// Why it failed.
        message: String,
    },
    /// A chunk did not match its digest, even after retries.
    #[error("chunk {index} of {url} does not match its digest: refused")]
    CorruptChunk {
        /// Which file.
        url: String,
        /// Which chunk.
        index: usize,
    },
    /// The file's manifest does not vouch for the digest asked for: it names
    /// another, or its chunks do not cover the file.
    #[error("{url}: its chunk manifest does not vouch for the digest {digest}: refused")]
    CorruptFile {
        /// Which file.
        url: String,
        /// Expected digest.
        digest: String,
    },
    /// Not enough room on this node.
    #[error("not enough disk space on this node: {needed} bytes needed, {free} free")]
    NoSpace {
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
    },
    /// Local files.
    #[error("staging: {0}")]
    Io(#[from] std::io::Error),
}

/// Free bytes on the filesystem holding `path`.
pub fn free_space(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| s.f_bavail * s.f_frsize)
        .unwrap_or(0)
}

fn http_err(url: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Http {
        url: url.into(),
        message: e.to_string(),
    }
}

/// The lock of one destination: fetches to it (two deploys of one image at
/// once) take turns, and the second finds the file there.
fn dest_lock(dest: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks =
        std::collections::BTreeMap<std::path::PathBuf, std::sync::Weak<tokio::sync::Mutex<()>>>;
    static LOCKS: std::sync::Mutex<Locks> = std::sync::Mutex::new(Locks::new());
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    locks.retain(|_, l| l.strong_count() > 0);
    if let Some(l) = locks.get(dest).and_then(std::sync::Weak::upgrade) {
        return l;
    }
    let l = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(dest.to_path_buf(), Arc::downgrade(&l));
    l
}

/// Fetches `url` (whose manifest is at `url/chunks`) to `dest`, resuming from
/// `partial_dir` and verifying every chunk and the whole. Returns the bytes
/// that crossed the network; 0 when `dest` was already there.
pub async fn fetch(
    http: &reqwest::Client,
    url: &str,
    expected: Option<&str>,
    dest: &Path,
    partial_dir: &Path,
    progress: Arc<Progress>,
) -> Result<u64, StageError> {
    let lock = dest_lock(dest);
    let _turn = lock.lock().await;
    if dest.exists() {
        return Ok(0);
    }
    let m = Arc::new(manifest(http, url, expected).await?);
    let (part, log) = partial_paths(partial_dir, &m, dest)?;
    let done = logged(&log, &m);
    let have = room_for(&m, &done, partial_dir)?;
    progress.total.fetch_add(m.size, Ordering::Relaxed);
    progress.done.fetch_add(have, Ordering::Relaxed);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&part)?;
    file.set_len(m.size)?;
    let file = Arc::new(file);
    let mut log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut moved = 0;
    // Chunks written since the last sync: logged as done only once synced.
    let mut unsynced: Vec<usize> = Vec::new();
    let zeros = make_zero_chunks(&file, &m, &done, &progress)?;
    let todo: Vec<usize> = (0..done.len()).filter(|&i| !done[i] && !zeros[i]).collect();
    // Several chunks in flight, each fetched, checked and written by a task
    // of its own: the network, the hashing and the writing of different
    // chunks overlap, on every core.
    let fetch_one = |i: usize| {
        let (http, url, m) = (http.clone(), url.to_string(), m.clone());
        let (progress, file) = (progress.clone(), file.clone());
        // Aborted when dropped: a failed fetch leaves no chunk task behind.
        let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            use std::os::unix::fs::FileExt;
            let (bytes, moved) = fetch_chunk(&http, &url, &m, i, &progress).await?;
            file.write_all_at(&bytes, i as u64 * m.chunk_size)?;
            progress
                .done
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok::<_, StageError>((i, moved))
        }));
        async move { task.await.map_err(std::io::Error::other)? }
    };
    // A sync runs while the next chunks arrive; its chunks are logged as
    // done when it has finished.
    let mut syncing: Option<(tokio::task::JoinHandle<std::io::Result<()>>, Vec<usize>)> = None;
    let fetched: Result<(), StageError> = async {
        use futures::StreamExt;
        let mut results = futures::stream::iter(todo)
            .map(fetch_one)
            .buffer_unordered(IN_FLIGHT);
        while let Some(result) = results.next().await {
            let (i, chunk_moved) = result?;
            moved += chunk_moved;
            unsynced.push(i);
            if unsynced.len() >= SYNC_EVERY {
                if let Some((sync, batch)) = syncing.take() {
                    sync.await.map_err(std::io::Error::other)??;
                    for j in batch {
                        writeln!(log_file, "{j}")?;
                    }
                }
                let f = file.clone();
                syncing = Some((
                    tokio::task::spawn_blocking(move || f.sync_data()),
                    std::mem::take(&mut unsynced),
                ));
            }
        }
        Ok(())
    }
    .await;
    // Whatever arrived verified is kept for the next attempt, even on failure.
    if let Some((sync, batch)) = syncing.take() {
        sync.await.map_err(std::io::Error::other)??;
        unsynced.extend(batch);
    }
    file.sync_data()?;
    for j in unsynced.drain(..) {
        writeln!(log_file, "{j}")?;
    }
    fetched?;
    drop(file);
    finish(&part, &log, dest)?;
    Ok(moved)
}

/// A file's chunk manifest from the repository (at `url/chunks`), checked
/// to vouch for `expected` and to cover the file exactly.
pub(crate) async fn manifest(
    http: &reqwest::Client,
    url: &str,
    expected: Option<&str>,
) -> Result<Manifest, StageError> {
    let m: Manifest = http
        .get(format!("{url}/chunks"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| http_err(url, e))?
        .json()
        .await
        .map_err(|e| http_err(url, e))?;
    if let Some(want) = expected {
        if m.digest != want {
            return Err(StageError::CorruptFile {
                url: url.into(),
                digest: want.into(),
            });
        }
    }
    // The chunks must cover the file exactly: a byte no chunk covers would
    // go unchecked.
    if m.chunk_size == 0 || m.chunks.len() as u64 != m.size.div_ceil(m.chunk_size) {
        return Err(StageError::CorruptFile {
            url: url.into(),
            digest: m.digest,
        });
    }
    Ok(m)
}

/// The partial file and the log of chunks done of a fetch of `m` to `dest`.
pub(crate) fn partial_paths(
    partial_dir: &Path,
    m: &Manifest,
    dest: &Path,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(partial_dir)?;
    // Named by content and destination: files of equal content (the fresh
    // disks of workspaces made from one image) fetched at once to different
    // places never share a partial file.
    let name = format!(
        "{}-{}",
        m.digest.trim_start_matches("sha256:"),
        &hex::encode(Sha256::digest(dest.as_os_str().as_encoded_bytes()))[..16]
    );
    Ok((
        partial_dir.join(format!("{name}.part")),
        partial_dir.join(format!("{name}.done")),
    ))
}

/// Which chunks an earlier attempt logged as done (synced).
pub(crate) fn logged(log: &Path, m: &Manifest) -> Vec<bool> {
    let mut done = vec![false; m.chunks.len()];
    if let Ok(text) = std::fs::read_to_string(log) {
        for i in text.lines().filter_map(|l| l.parse::<usize>().ok()) {
            if i < done.len() {
                done[i] = true;
            }
        }
    }
    done
}

/// Checks that the chunks not `done` fit beside `partial_dir`; returns the
/// bytes already there.
pub(crate) fn room_for(m: &Manifest, done: &[bool], partial_dir: &Path) -> Result<u64, StageError> {
    let have: u64 = (0..m.chunks.len())
        .filter(|&i| done[i])
        .map(|i| chunk_len(m, i))
        .sum();
    let free = free_space(partial_dir);
    if m.size - have > free {
        return Err(StageError::NoSpace {
            needed: m.size - have,
            free,
        });
    }
    Ok(have)
}

/// Fetches chunk `i` of `url` (a range request), checked against its
/// digest, up to three times. Returns it and the bytes that crossed the
/// network.
pub(crate) async fn fetch_chunk(
    http: &reqwest::Client,
    url: &str,
    m: &Manifest,
    i: usize,
    progress: &Progress,
) -> Result<(bytes::Bytes, u64), StageError> {
    let (start, len) = (i as u64 * m.chunk_size, chunk_len(m, i));
    let mut moved = 0u64;
    for attempt in 1..=3 {
        let resp = http
            .get(url)
            .header("range", format!("bytes={}-{}", start, start + len - 1))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| http_err(url, e))?;
        let bytes = resp.bytes().await.map_err(|e| http_err(url, e))?;
        moved += bytes.len() as u64;
        progress
            .moved
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() as u64 == len && digest_of(&bytes) == m.chunks[i] {
            return Ok((bytes, moved));
        }
        tracing::warn!(%url, chunk = i, attempt, "chunk does not match its digest");
    }
    Err(StageError::CorruptChunk {
        url: url.into(),
        index: i,
    })
}

/// Puts a partial file whose every chunk is in (and synced) at `dest`.
pub(crate) fn finish(part: &Path, log: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::rename(part, dest)?;
    let _ = std::fs::remove_file(log);
    Ok(())
}

/// The digest of some bytes, as manifests write it.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Makes the chunks of `m` not `done` that hold only zero bytes (known by
/// their digests: a hot image's unwritten RAM, a disk's free blocks) in
/// `file`, counting them in `progress`, and returns which chunks they are:
/// they are never fetched.
pub(crate) fn make_zero_chunks(
    file: &std::fs::File,
    m: &Manifest,
    done: &[bool],
    progress: &Progress,
) -> std::io::Result<Vec<bool>> {
    static FULL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let full = match m.chunk_size == vws_model::node::CHUNK {
        true => FULL
            .get_or_init(|| digest_of(&vec![0; m.chunk_size as usize]))
            .clone(),
        false => digest_of(&vec![0; m.chunk_size as usize]),
    };
    let mut zeros = vec![false; m.chunks.len()];
    for i in (0..m.chunks.len()).filter(|&i| !done[i]) {
        let len = chunk_len(m, i);
        zeros[i] = match len == m.chunk_size {
            true => m.chunks[i] == full,
            false => m.chunks[i] == digest_of(&vec![0; len as usize]),
        };
        if zeros[i] {
            write_zeros(file, i as u64 * m.chunk_size, len)?;
            progress.done.fetch_add(len, Ordering::Relaxed);
        }
    }
    Ok(zeros)
}

/// Makes `len` bytes of `file` at `start` zeros: a hole where the
/// filesystem can punch one (no block written), else written out.
fn write_zeros(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<()> {
    use rustix::fs::FallocateFlags;
    let punched = rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        start,
        len,
    );
    if punched.is_err() {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&vec![0u8; len as usize], start)?;
    }
    Ok(())
}

/// The length of chunk `i` (the last may be short).
pub(crate) fn chunk_len(m: &Manifest, i: usize) -> u64 {
    let start = i as u64 * m.chunk_size;
    m.chunk_size.min(m.size - start)
}
