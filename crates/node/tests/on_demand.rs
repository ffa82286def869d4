//! An image read on demand, through QEMU's own NBD client (`qemu-io`, the
//! block layer QEMU's VMs read with) against the node's NBD server, over a
//! real HTTP repository: a read before anything is staged moves just the
//! chunk it touches and returns the image's bytes; the background staging
//! then completes the file in the cache, moving the rest once; a chunk that
//! does not match its digest, or a repository gone mid-way, is an I/O error
//! to the reader, never other bytes, and the image is not put in the cache;
//! once the repository is back, staging completes. A chunk of zeros is
//! never moved.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use vws_node::on_demand::OnDemand;
use vws_node::staging::Progress;

const CHUNK: usize = vws_model::node::CHUNK as usize;

#[derive(Clone)]
struct Repository {
    file: std::path::PathBuf,
    data: Arc<Vec<u8>>,
    /// Bytes of the image sent.
    sent: Arc<AtomicU64>,
    /// This offset is flipped in every response covering it.
    corrupt_at: Option<u64>,
    /// Answer every read with 503, as a repository going away.
    down: Arc<AtomicBool>,
}

async fn blob(State(r): State<Repository>, headers: HeaderMap) -> Response {
    if r.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (start, end) = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| (a.parse::<usize>().unwrap(), b.parse::<usize>().unwrap() + 1))
        .unwrap_or((0, r.data.len()));
    let mut bytes = r.data[start..end].to_vec();
    if let Some(at) = r.corrupt_at.map(|a| a as usize) {
        if (start..end).contains(&at) {
            bytes[at - start] ^= 0xff;
        }
    }
    r.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    (StatusCode::PARTIAL_CONTENT, bytes).into_response()
}

async fn chunks(State(r): State<Repository>) -> Response {
    Json(vws_store::manifest(&r.file).unwrap()).into_response()
}

/// An image of 3.5 chunks, chunk `k` filled with the byte `k + 1`, served
/// at the returned URL.
async fn repository(dir: &std::path::Path, corrupt_at: Option<u64>) -> (String, Repository) {
    let data: Vec<u8> = (0..CHUNK * 7 / 2).map(|i| (i / CHUNK + 1) as u8).collect();
    serve_image(dir, data, corrupt_at).await
}

/// `data` as an image served at the returned URL.
async fn serve_image(
    dir: &std::path::Path,
    data: Vec<u8>,
    corrupt_at: Option<u64>,
) -> (String, Repository) {
    let file = dir.join("image.raw");
    std::fs::write(&file, &data).unwrap();
    let r = Repository {
        file,
        data: Arc::new(data),
        sent: Arc::default(),
        corrupt_at,
        down: Arc::default(),
    };
    let app = Router::new()
        .route("/blob", get(blob))
        .route("/blob/chunks", get(chunks))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, r)
}

/// Reads `len` bytes at `at` through QEMU's NBD client, checking each is
/// `byte`. Returns whether QEMU read them so, and what it said.
async fn qemu_reads(socket: &std::path::Path, at: usize, len: usize, byte: u8) -> (bool, String) {
    let uri = format!(
        "nbd+unix:///{}?socket={}",
        vws_node::on_demand::EXPORT,
        socket.display()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("qemu-io")
            .args(["-r", "-f", "raw", "-c"])
            .arg(format!("read -P {byte:#x} {at} {len}"))
            .arg(uri)
            .output()
            .expect("run qemu-io (qemu-utils)")
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-io reports a failed command on its output, not in its status.
    (
        out.status.success()
            && said.contains("read ")
            && !said.contains("error")
            && !said.contains("Pattern verification failed"),
        said,
    )
}

async fn open(url: &str, r: &Repository, home: &std::path::Path) -> Arc<OnDemand> {
    let digest = vws_store::manifest(&r.file).unwrap().digest;
    OnDemand::open(
        &reqwest::Client::new(),
        url,
        &digest,
        &home.join("cache/image"),
        &home.join("partial"),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_before_the_image_is_here_then_stages_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (url, r) = repository(dir.path(), None).await;
    let image = open(&url, &r, dir.path()).await;
    let socket = dir.path().join("image.nbd");
    image.serve(&socket).unwrap();
    assert_eq!(
        r.sent.load(Ordering::SeqCst),
        0,
        "nothing moves before a read"
    );

    // A read in the third chunk moves that chunk, and only it.
    let (ok, said) = qemu_reads(&socket, 2 * CHUNK + 4096, 65536, 3).await;
    assert!(ok, "{said}");
    assert_eq!(r.sent.load(Ordering::SeqCst), CHUNK as u64);
    // The short last chunk, read up to the image's end.
    let (ok, said) = qemu_reads(&socket, 3 * CHUNK, CHUNK / 2, 4).await;
    assert!(ok, "{said}");
    assert!(!image.is_complete());
    assert!(
        !dir.path().join("cache/image").exists(),
        "not cached before it is whole"
    );

    // The background staging moves the rest once and caches the file.
    let moved = image.fill().await.unwrap();
    assert_eq!(
        moved,
        2 * CHUNK as u64,
        "the chunks read already are not moved again"
    );
    assert!(image.is_complete());
    assert_eq!(
        std::fs::read(dir.path().join("cache/image")).unwrap(),
        *r.data
    );
    // Still served, from the cached file, with nothing more moved.
    let before = r.sent.load(Ordering::SeqCst);
    let (ok, said) = qemu_reads(&socket, 0, CHUNK, 1).await;
    assert!(ok, "{said}");
    assert_eq!(r.sent.load(Ordering::SeqCst), before);
    assert_eq!(before, r.data.len() as u64, "every byte crossed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_or_a_repository_gone_is_an_io_error_never_other_bytes() {
    // A chunk that does not match its digest.
    let dir = tempfile::tempdir().unwrap();
    let (url, r) = repository(dir.path(), Some(CHUNK as u64 + 100)).await;
    let image = open(&url, &r, dir.path()).await;
    let socket = dir.path().join("image.nbd");
    image.serve(&socket).unwrap();
    let (ok, said) = qemu_reads(&socket, CHUNK, 4096, 2).await;
    assert!(!ok && said.contains("Input/output error"), "{said}");
    // A good chunk beside it reads.
    let (ok, said) = qemu_reads(&socket, 0, 4096, 1).await;
    assert!(ok, "{said}");
    assert!(
        image.fill().await.is_err(),
        "staging refuses the corrupt chunk"
    );
    assert!(!dir.path().join("cache/image").exists());

    // A repository that goes away half-way, then comes back.
    let dir = tempfile::tempdir().unwrap();
    let (url, r) = repository(dir.path(), None).await;
    let image = open(&url, &r, dir.path()).await;
    let socket = dir.path().join("image.nbd");
    image.serve(&socket).unwrap();
    let (ok, said) = qemu_reads(&socket, 0, 4096, 1).await;
    assert!(ok, "{said}");
    r.down.store(true, Ordering::SeqCst);
    let (ok, said) = qemu_reads(&socket, CHUNK, 4096, 2).await;
    assert!(!ok && said.contains("Input/output error"), "{said}");
    // What arrived before still reads.
    let (ok, said) = qemu_reads(&socket, 4096, 4096, 1).await;
    assert!(ok, "{said}");
    assert!(image.fill().await.is_err());
    assert!(!dir.path().join("cache/image").exists());
    r.down.store(false, Ordering::SeqCst);
    let (ok, said) = qemu_reads(&socket, CHUNK, 4096, 2).await;
    assert!(ok, "{said}");
    image.fill().await.unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("cache/image")).unwrap(),
        *r.data
    );
}

/// A chunk of zeros is there from the start: reading it moves nothing, and
/// the staging moves only the other chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_of_zeros_is_never_moved() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; CHUNK * 3];
    data[..CHUNK].fill(7);
    data[2 * CHUNK..].fill(9);
    let (url, r) = serve_image(dir.path(), data, None).await;
    let image = open(&url, &r, dir.path()).await;
    let socket = dir.path().join("image.nbd");
    image.serve(&socket).unwrap();
    let (ok, said) = qemu_reads(&socket, CHUNK + 512, 65536, 0).await;
    assert!(ok, "{said}");
    assert_eq!(r.sent.load(Ordering::SeqCst), 0);
    assert_eq!(image.fill().await.unwrap(), 2 * CHUNK as u64);
    assert_eq!(
        std::fs::read(dir.path().join("cache/image")).unwrap(),
        *r.data
    );
}
