//! Images read on demand, the paper's "transferring only partial images"
//! (§4): a VM starts before its image is on the node. QEMU reads the image
//! through an NBD server of the node's own on a Unix socket, which answers
//! from the partial file what is there and fetches a missing chunk from the
//! repository the moment the guest needs it, checked against its digest as
//! staging checks every chunk. Meanwhile the rest is staged in the
//! background into the same partial file and resume log, and once every
//! chunk is in the file is renamed into the cache as a staged one is. A
//! chunk that cannot be fetched, or does not match its digest, is an I/O
//! error to the guest: never other bytes.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use crate::staging::{self, Manifest, Progress, StageError};

/// The export's name: the one name the `nbd` crate's server lists to a
/// client asking (QEMU asks, and refuses a name not listed).
pub const EXPORT: &str = "rustnbd";

/// Chunks the background fill fetches at once (the guest's own reads come
/// on top, at once).
const FILL_IN_FLIGHT: usize = 4;

/// Chunks fetched between syncs of the partial file (and entries in its
/// resume log).
const SYNC_EVERY: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Chunk {
    Missing,
    Fetching,
    Present,
}

struct Chunks {
    state: Vec<Chunk>,
    /// Present but not yet synced and logged.
    unlogged: Vec<usize>,
}

/// One image being read on demand (or, once complete, read from the cache)
/// on this node.
pub struct OnDemand {
    http: reqwest::Client,
    url: String,
    m: Manifest,
    /// The partial file, or the cached file once complete.
    file: std::fs::File,
    part: PathBuf,
    log: PathBuf,
    dest: PathBuf,
    chunks: Mutex<Chunks>,
    changed: Condvar,
    runtime: tokio::runtime::Handle,
    progress: Arc<Progress>,
    /// True once every chunk is in and the file is at `dest`.
    complete: tokio::sync::watch::Sender<bool>,
    /// Set by `close`: the server takes no more connections.
    closed: std::sync::atomic::AtomicBool,
    /// Where `serve` listens.
    socket: Mutex<Option<PathBuf>>,
    /// Chunks the guest's reads are fetching now: the background staging
    /// starts no chunk while any is (the two cores go to what the guest
    /// waits for).
    demanded: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for OnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemand")
            .field("url", &self.url)
            .field("dest", &self.dest)
            .finish_non_exhaustive()
    }
}

impl OnDemand {
    /// Opens the image at `url` (whose digest must be `expected`) for reads
    /// on demand, to end up at `dest`, resuming what an earlier attempt left
    /// in `partial_dir`. Must be called within a tokio runtime (the NBD
    /// server's threads fetch on it).
    pub async fn open(
        http: &reqwest::Client,
        url: &str,
        expected: &str,
        dest: &Path,
        partial_dir: &Path,
        progress: Arc<Progress>,
    ) -> Result<Arc<Self>, StageError> {
        let cached = dest.exists();
        // A cached image (served on for VMs started before it was) needs
        // no manifest: every chunk is here.
        let m = match std::fs::metadata(dest) {
            Ok(meta) => Manifest {
                digest: expected.into(),
                size: meta.len(),
                chunk_size: vws_model::node::CHUNK,
                chunks: vec![String::new(); meta.len().div_ceil(vws_model::node::CHUNK) as usize],
            },
            Err(_) => staging::manifest(http, url, Some(expected)).await?,
        };
        let (part, log) = staging::partial_paths(partial_dir, &m, dest)?;
        let done = if cached {
            vec![true; m.chunks.len()]
        } else {
            staging::logged(&log, &m)
        };
        let have = staging::room_for(&m, &done, partial_dir)?;
        progress.total.fetch_add(m.size, Ordering::Relaxed);
        progress.done.fetch_add(have, Ordering::Relaxed);
        let file = if cached {
            std::fs::File::open(dest)?
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(&part)?;
            f.set_len(m.size)?;
            f
        };
        // Chunks of zeros are made here at once (holes), never fetched.
        let zeros = staging::make_zero_chunks(&file, &m, &done, &progress)?;
        let state = done
            .iter()
            .zip(&zeros)
            .map(|(&d, &z)| {
                if d || z {
                    Chunk::Present
                } else {
                    Chunk::Missing
                }
            })
            .collect();
        Ok(Arc::new(Self {
            http: http.clone(),
            url: url.into(),
            m,
            file,
            part,
            log,
            dest: dest.into(),
            chunks: Mutex::new(Chunks {
                state,
                unlogged: Vec::new(),
            }),
            changed: Condvar::new(),
            runtime: tokio::runtime::Handle::current(),
            progress,
            complete: tokio::sync::watch::Sender::new(cached),
            closed: Default::default(),
            socket: Mutex::new(None),
            demanded: Default::default(),
        }))
    }

    /// The image's size in bytes.
    pub fn size(&self) -> u64 {
        self.m.size
    }

    /// Where the image goes in the cache.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Whether every chunk is in and the file is in the cache.
    pub fn is_complete(&self) -> bool {
        *self.complete.borrow()
    }

    /// Waits until the image is complete in the cache (or `fill` failed:
    /// then the error).
    pub async fn settled(&self) -> Result<(), StageError> {
        let mut rx = self.complete.subscribe();
        rx.wait_for(|c| *c).await.map(drop).map_err(|_| {
            StageError::Io(std::io::Error::other(
                "the image's background staging ended",
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chunks> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes chunk `i` to fetch if nobody has it or is fetching it.
    fn claim(&self, i: usize) -> bool {
        let mut c = self.lock();
        if c.state[i] == Chunk::Missing {
            c.state[i] = Chunk::Fetching;
            true
        } else {
            false
        }
    }

    /// Fetches a claimed chunk and writes it, then tells the waiters. A
    /// fetch dropped half-way gives the chunk up (missing again).
    async fn fetch(&self, i: usize) -> Result<u64, StageError> {
        let claim = Claim { image: self, i };
        let (bytes, moved) =
            staging::fetch_chunk(&self.http, &self.url, &self.m, i, &self.progress).await?;
        self.file
            .write_all_at(&bytes, i as u64 * self.m.chunk_size)?;
        std::mem::forget(claim);
        let mut c = self.lock();
        c.state[i] = Chunk::Present;
        c.unlogged.push(i);
        drop(c);
        self.progress
            .done
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.changed.notify_all();
        Ok(moved)
    }

    /// Makes chunk `i` present, fetching it now if it is missing, or
    /// waiting for whoever fetches it. For the NBD server's threads.
    fn ensure(self: &Arc<Self>, i: usize) -> std::io::Result<()> {
        let mut c = self.lock();
        loop {
            match c.state[i] {
                Chunk::Present => return Ok(()),
                Chunk::Fetching => c = self.changed.wait(c).unwrap_or_else(|e| e.into_inner()),
                Chunk::Missing => {
                    c.state[i] = Chunk::Fetching;
                    drop(c);
                    // Fetched on the node's runtime, this thread waiting.
                    let (tx, rx) = std::sync::mpsc::channel();
                    let me = self.clone();
                    self.demanded.fetch_add(1, Ordering::SeqCst);
                    self.runtime.spawn(async move {
                        let _ = tx.send(me.fetch(i).await);
                    });
                    let fetched = rx.recv().unwrap_or_else(|_| {
                        Err(StageError::Io(std::io::Error::other(
                            "the node is stopping",
                        )))
                    });
                    self.demanded.fetch_sub(1, Ordering::SeqCst);
                    return match fetched {
                        Ok(_) => Ok(()),
                        Err(e) => {
                            tracing::error!(url = %self.url, chunk = i, error = %e,
                                "a block the guest reads could not be fetched: an I/O error to it");
                            Err(std::io::Error::from_raw_os_error(libc::EIO))
                        }
                    };
                }
            }
        }
    }

    /// Stages every chunk not yet here, in order, while the guest reads
    /// what it needs; then puts the file in the cache. Returns the bytes
    /// that crossed the network for it (not those the guest's reads moved).
    pub async fn fill(self: &Arc<Self>) -> Result<u64, StageError> {
        use futures::StreamExt;
        if self.is_complete() {
            return Ok(0);
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut moved = 0;
        // Rounds: a chunk the guest's read was fetching when the fill came
        // to it, and which then failed, is missing again.
        for _ in 0..3 {
            let todo: Vec<usize> = (0..self.m.chunks.len())
                .filter(|&i| self.lock().state[i] == Chunk::Missing)
                .collect();
            if todo.is_empty() {
                break;
            }
            // The guest's reads first: no chunk of the staging starts while
            // one of theirs is being fetched.
            let mut results = std::pin::pin!(futures::stream::iter(todo)
                .then(|i| {
                    let me = self.clone();
                    async move {
                        while me.demanded.load(Ordering::SeqCst) > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        }
                        i
                    }
                })
                .filter(|&i| std::future::ready(self.claim(i)))
                .map(|i| {
                    let me = self.clone();
                    async move { me.fetch(i).await }
                })
                .buffer_unordered(FILL_IN_FLIGHT));
            let mut since_sync = 0;
            while let Some(r) = results.next().await {
                moved += r?;
                since_sync += 1;
                if since_sync >= SYNC_EVERY {
                    since_sync = 0;
                    self.sync_and_log(&mut log).await?;
                }
            }
        }
        // The guest's own reads may still be fetching the last chunks.
        let mut rx = self.complete.subscribe();
        loop {
            {
                let c = self.lock();
                if c.state.iter().all(|s| *s == Chunk::Present) {
                    break;
                }
                if !c.state.contains(&Chunk::Fetching) {
                    return Err(StageError::Io(std::io::Error::other(
                        "chunks of the image stayed missing after three rounds",
                    )));
                }
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
        self.sync_and_log(&mut log).await?;
        staging::finish(&self.part, &self.log, &self.dest)?;
        self.complete.send_replace(true);
        tracing::info!(dest = %self.dest.display(), moved, "image read on demand is complete in the cache");
        Ok(moved)
    }

    /// Syncs the partial file and logs the chunks that sync covered.
    async fn sync_and_log(self: &Arc<Self>, log: &mut std::fs::File) -> std::io::Result<()> {
        let batch = std::mem::take(&mut self.lock().unlogged);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.file.sync_data())
            .await
            .map_err(std::io::Error::other)??;
        for i in batch {
            writeln!(log, "{i}")?;
        }
        Ok(())
    }

    /// Serves the image read-only over NBD on a Unix socket at `socket`
    /// (replacing a stale one), a thread per connection, until the process
    /// ends.
    pub fn serve(self: &Arc<Self>, socket: &Path) -> std::io::Result<()> {
        let _ = std::fs::remove_file(socket);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(socket)?;
        *self.socket.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket.into());
        let me = self.clone();
        std::thread::Builder::new()
            .name("vws-nbd".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if me.closed.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let me = me.clone();
                    let _ = std::thread::Builder::new()
                        .name("vws-nbd-conn".into())
                        .spawn(move || {
                            let served = nbd::server::handshake(&mut conn, |_name| {
                                Ok(nbd::server::Export {
                                    size: me.m.size,
                                    readonly: true,
                                    ..Default::default()
                                })
                            })
                            .and_then(|()| {
                                nbd::server::transmission(&mut conn, Reader { image: me, at: 0 })
                            });
                            if let Err(e) = served {
                                tracing::debug!(error = %e, "an NBD connection ended");
                            }
                        });
                }
            })?;
        Ok(())
    }
}

impl OnDemand {
    /// Stops serving: the socket goes, and the server's thread with it
    /// (connections open go on until their client closes them).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(socket) = self.socket.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // Wakes the accepting thread, which then sees `closed`.
            let _ = std::os::unix::net::UnixStream::connect(&socket);
            let _ = std::fs::remove_file(&socket);
        }
    }
}

/// A chunk being fetched: given up (missing again, its waiters told) unless
/// forgotten once it is present.
struct Claim<'a> {
    image: &'a OnDemand,
    i: usize,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.image.lock().state[self.i] = Chunk::Missing;
        self.image.changed.notify_all();
    }
}

/// A reading position in an image read on demand: what the NBD server
/// copies from.
struct Reader {
    image: Arc<OnDemand>,
    at: u64,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let m = &self.image.m;
        if self.at >= m.size || buf.is_empty() {
            return Ok(0);
        }
        // One chunk at a time: a read never runs past the chunk it ensured.
        let i = (self.at / m.chunk_size) as usize;
        let end = ((i as u64 + 1) * m.chunk_size).min(m.size);
        let n = buf.len().min((end - self.at) as usize);
        self.image.ensure(i)?;
        let n = self.image.file.read_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Seek for Reader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.at = match to {
            SeekFrom::Start(at) => at,
            SeekFrom::End(d) => self.image.m.size.saturating_add_signed(d),
            SeekFrom::Current(d) => self.at.saturating_add_signed(d),
        };
        Ok(self.at)
    }
}

impl Write for Reader {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(libc::EROFS))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
