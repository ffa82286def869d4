//! Staging over real HTTP: a whole fetch, a resumed one that moves only the
//! missing chunks, a corrupted chunk refused with nothing usable left behind,
//! a digest that does not match, a manifest that leaves bytes unchecked, and
//! a cache hit that moves nothing, and chunks of zeros that never move.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use vws_node::staging::{fetch, Progress, StageError};

#[derive(Clone)]
struct Served {
    file: std::path::PathBuf,
    sent: Arc<AtomicU64>,
    /// When set, this byte offset is flipped in every response that covers it.
    corrupt_at: Option<u64>,
    /// When set, the manifest leaves out the last chunk.
    short_manifest: bool,
}

async fn file(State(s): State<Served>, req: Request) -> Response {
    use tower::ServiceExt;
    let range_start = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            r.trim_start_matches("bytes=")
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let resp = tower_http::services::ServeFile::new(&s.file)
        .oneshot(req)
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let mut bytes = axum::body::to_bytes(axum::body::Body::new(body), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    s.sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    if let Some(at) = s.corrupt_at {
        if at >= range_start && at < range_start + bytes.len() as u64 {
            bytes[(at - range_start) as usize] ^= 0xff;
        }
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

async fn chunks(State(s): State<Served>) -> Response {
    let mut m = vws_store::manifest(&s.file).unwrap();
    if s.short_manifest {
        m.chunks.pop();
    }
    Json(m).into_response()
}

async fn serve(s: Served) -> String {
    let app = Router::new()
        .route("/blob", get(file))
        .route("/blob/chunks", get(chunks))
        .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/blob", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// `file` served as it is, counting the bytes sent in `sent`.
async fn serve_plain(file: &std::path::Path, sent: &Arc<AtomicU64>) -> String {
    serve(Served {
        file: file.to_path_buf(),
        sent: sent.clone(),
        corrupt_at: None,
        short_manifest: false,
    })
    .await
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn fetch_resume_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let content = data(10 * 1024 * 1024 + 12345); // three chunks, the last one short
    std::fs::write(&src, &content).unwrap();
    let digest = vws_store::manifest(&src).unwrap().digest;
    let http = reqwest::Client::new();
    let partial = dir.path().join("partial");

    // A whole fetch: verified, in place.
    let sent = Arc::new(AtomicU64::new(0));
    let url = serve_plain(&src, &sent).await;
    let dest = dir.path().join("cache/a");
    let moved = fetch(
        &http,
        &url,
        Some(&digest),
        &dest,
        &partial,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap();
    assert_eq!(moved, content.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    // Present already: nothing moves.
    let before = sent.load(Ordering::SeqCst);
    assert_eq!(
        fetch(
            &http,
            &url,
            Some(&digest),
            &dest,
            &partial,
            Arc::new(Progress::default())
        )
        .await
        .unwrap(),
        0
    );
    assert_eq!(sent.load(Ordering::SeqCst), before);

    // A corrupted chunk is refused; nothing usable is left under the final name.
    let bad_url = serve(Served {
        file: src.clone(),
        sent: Arc::new(AtomicU64::new(0)),
        short_manifest: false,
        corrupt_at: Some(5 * 1024 * 1024),
    })
    .await;
    let dest_b = dir.path().join("cache/b");
    let err = fetch(
        &http,
        &bad_url,
        Some(&digest),
        &dest_b,
        &partial,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StageError::CorruptChunk { index: 1, .. }),
        "{err}"
    );
    assert!(!dest_b.exists());

    // The interrupted transfer resumes: the chunks that arrived verified
    // before the failure (logged as done) are not sent again.
    let log = std::fs::read_dir(&partial)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(digest.trim_start_matches("sha256:")) && name.ends_with(".done")
        })
        .expect("a resume log named by the file's digest");
    let kept: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        !kept.is_empty() && !kept.contains(&1),
        "verified chunks were kept, the corrupt one not: {kept:?}"
    );
    let chunk = |i: u64| (4u64 << 20).min(content.len() as u64 - i * (4 << 20));
    let kept_bytes: u64 = kept.iter().map(|&i| chunk(i)).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let url = serve_plain(&src, &sent).await;
    let progress = Arc::new(Progress::default());
    let moved = fetch(
        &http,
        &url,
        Some(&digest),
        &dest_b,
        &partial,
        progress.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        moved,
        content.len() as u64 - kept_bytes,
        "only the missing chunks move"
    );
    assert_eq!(progress.done.load(Ordering::SeqCst), content.len() as u64);
    assert_eq!(std::fs::read(&dest_b).unwrap(), content);

    // A file whose manifest does not match the digest asked for is refused at once.
    let dest_c = dir.path().join("cache/c");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = fetch(
        &http,
        &url,
        Some(&wrong),
        &dest_c,
        &partial,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StageError::CorruptFile { .. }), "{err}");
    assert!(!dest_c.exists());

    // Only chunks are hashed here, so a manifest whose chunks do not cover
    // the whole file (its last bytes would go unchecked) is refused.
    let url = serve(Served {
        file: src.clone(),
        sent: Arc::new(AtomicU64::new(0)),
        corrupt_at: None,
        short_manifest: true,
    })
    .await;
    let dest_d = dir.path().join("cache/d");
    let err = fetch(
        &http,
        &url,
        Some(&digest),
        &dest_d,
        &partial,
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StageError::CorruptFile { .. }), "{err}");
    assert!(!dest_d.exists());
}

/// Chunks of zeros (a hot image's unwritten RAM, a disk's free blocks)
/// are made on the node, never moved: only the others cross the network,
/// the file is byte for byte the repository's, and the zeros are holes.
#[tokio::test]
async fn zero_chunks_are_not_moved() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    // Chunk 0 data, 1 and 2 zeros, 3 data but for one byte, 4 zeros (short).
    let mut content = vec![0u8; 16 * MIB + 4321];
    content[..4 * MIB].copy_from_slice(&data(4 * MIB));
    content[12 * MIB + 17] = 1;
    std::fs::write(&src, &content).unwrap();
    let digest = vws_store::manifest(&src).unwrap().digest;
    let sent = Arc::new(AtomicU64::new(0));
    let url = serve_plain(&src, &sent).await;
    let dest = dir.path().join("cache/z");
    let progress = Arc::new(Progress::default());
    let moved = fetch(
        &reqwest::Client::new(),
        &url,
        Some(&digest),
        &dest,
        &dir.path().join("partial"),
        progress.clone(),
    )
    .await
    .unwrap();
    assert_eq!(moved, 8 * MIB as u64, "chunks 0 and 3 only");
    assert_eq!(sent.load(Ordering::SeqCst), 8 * MIB as u64);
    assert_eq!(progress.done.load(Ordering::SeqCst), content.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&dest).unwrap().blocks() * 512;
    assert!(allocated <= 9 * MIB as u64, "{allocated} bytes allocated");
}

/// A node without room refuses cleanly: no partial file, nothing in place.
/// Mounts a 2 MiB tmpfs as the node's cache (the suite runs as root).
#[tokio::test]
async fn no_space_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    std::fs::write(&src, data(8 * 1024 * 1024)).unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs needs root");
    let url = serve_plain(&src, &Arc::default()).await;
    let dest = small.join("cache/x");
    let err = fetch(
        &reqwest::Client::new(),
        &url,
        None,
        &dest,
        &small.join("partial"),
        Arc::new(Progress::default()),
    )
    .await
    .unwrap_err();
    let listing: Vec<_> = walk(&small);
    std::process::Command::new("umount")
        .arg(&small)
        .status()
        .unwrap();
    assert!(matches!(err, StageError::NoSpace { .. }), "{err}");
    assert!(
        listing.iter().all(|p| !p.ends_with(".part")),
        "no partial file: {listing:?}"
    );
    assert!(!listing.iter().any(|p| p.ends_with("cache/x")));
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path().to_string_lossy().into_owned());
            out.extend(walk(&e.path()));
        }
    }
    out
}
