//! `vws image pull`: an OCI image from a registry into the pool, followed
//! with a progress bar per layer (docs/images.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use vws_model::records::{Operation, OperationState};

use crate::Globals;

/// `vws image pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// The image: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:…
    reference: String,
    /// Register it as NAME:TAG [default: the repository's last part and its tag]
    #[arg(long, value_name = "NAME:TAG")]
    name: Option<String>,
    /// The registries file with credentials [default: VWS_HOME/registries.toml]
    #[arg(long, env = "VWS_REGISTRIES", value_name = "FILE")]
    registries: Option<PathBuf>,
    /// Speak plain HTTP to a registry that is not on loopback (loopback
    /// registries are reached over plain HTTP anyway)
    #[arg(long)]
    plain_http: bool,
    /// A CA to trust for the registry's TLS, beside the system's roots
    #[arg(long = "registry-ca", value_name = "FILE")]
    registry_ca: Option<PathBuf>,
    /// Only you (and administrators) may see and use it [default: every client may]
    #[arg(long)]
    private: bool,
}

/// The registry part of a reference (`docker.io` when it names none).
fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.into(),
        _ => "docker.io".into(),
    }
}

/// The credentials the registries file holds for `registry`.
fn credentials(
    file: &std::path::Path,
    registry: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let all: BTreeMap<String, toml::Value> =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
    let Some(entry) = all.get(registry) else {
        return Ok(None);
    };
    let c: vws_oci::Credentials = entry.clone().try_into().with_context(|| {
        format!(
            "{}: [\"{registry}\"] takes username and password, or token",
            file.display()
        )
    })?;
    Ok(Some(serde_json::to_value(c)?))
}

fn layer_bar(m: &MultiProgress, digest: &str, size: u64) -> ProgressBar {
    let pb = m.add(ProgressBar::new(size));
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>19} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    pb.set_message(
        digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>(),
    );
    pb
}

/// Pulls and follows the operation to its end.
pub async fn pull(g: &Globals, client: &vws_client::Client, a: PullArgs) -> anyhow::Result<()> {
    let file = a
        .registries
        .clone()
        .unwrap_or_else(|| g.home.join("registries.toml"));
    let mut req = serde_json::json!({
        "reference": a.reference,
        "name": a.name,
        "plain_http": a.plain_http,
        "visibility": if a.private { "private" } else { "public" },
    });
    if let Some(c) = credentials(&file, &registry_of(&a.reference))? {
        req["credentials"] = c;
    }
    if let Some(ca) = &a.registry_ca {
        req["ca_pem"] = std::fs::read_to_string(ca)
            .with_context(|| format!("reading {}", ca.display()))?
            .into();
    }
    let mut op = client.pull_image(req).await?;
    let bars = if g.json {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let mut shown: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let phase = bars.add(ProgressBar::new_spinner());
    loop {
        for l in &op.layers {
            let pb = shown
                .entry(l.digest.clone())
                .or_insert_with(|| layer_bar(&bars, &l.digest, l.size));
            pb.set_position(l.done);
            if l.cached && !pb.is_finished() {
                pb.finish_with_message("in the pool");
            }
        }
        phase.set_message(op.phase.clone());
        phase.tick();
        if op.state != OperationState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        op = client.operation(&op.id).await?;
    }
    for pb in shown.values() {
        pb.finish();
    }
    phase.finish_and_clear();
    finish(g, client, &op).await
}

async fn finish(g: &Globals, client: &vws_client::Client, op: &Operation) -> anyhow::Result<()> {
    match (&op.state, &op.image) {
        (OperationState::Done, Some(name)) => {
            let image = client.image(name).await?;
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "operation": op, "image": image })
                    )?
                );
            } else {
                let moved: u64 = op.layers.iter().filter(|l| !l.cached).map(|l| l.size).sum();
                println!(
                    "{name}  {}  ({} layers, {} moved)",
                    image.id,
                    op.layers.len(),
                    vws_model::ByteSize(moved).human()
                );
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "pulling {} failed: {}",
            op.target,
            op.error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}
