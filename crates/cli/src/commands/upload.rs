//! Sending files to the pool: hashed first (with a bar), sent only when
//! the service lacks them.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// sha256 of a file, with a progress bar.
fn hash_file(path: &Path, pb: ProgressBar) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Hashes and, unless the service has it already, uploads one file.
pub(crate) async fn send(
    client: &vws_client::Client,
    path: &Path,
    role: &str,
    quiet: bool,
) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let hidden = |pb: ProgressBar| if quiet { ProgressBar::hidden() } else { pb };
    let pb = hidden(bar(len, &format!("hash {role}")));
    let owned = path.to_path_buf();
    let digest = tokio::task::spawn_blocking(move || hash_file(&owned, pb)).await??;
    if client.has_blob(&digest).await? {
        if !quiet {
            eprintln!("{role}: {digest} already in the pool, not sent again");
        }
        return Ok(digest);
    }
    let pb = hidden(bar(len, &format!("send {role}")));
    let inner = pb.clone();
    client
        .upload_blob(path, &digest, move |n| inner.inc(n))
        .await?;
    pb.finish_and_clear();
    Ok(digest)
}
