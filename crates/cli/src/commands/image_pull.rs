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
    #[command(flatten)]
    registry: RegistryArgs,
    /// Only you (and administrators) may see and use it [default: every client may]
    #[arg(long)]
    private: bool,
}

/// How a pull or a push reaches its registry.
#[derive(Args, Debug)]
pub struct RegistryArgs {
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

/// An OCI image read from a layout folder, or a `docker save` /
/// `podman save` archive (either format inside): its manifest's digest,
/// config file and layer files, with their media types.
struct Local {
    manifest_digest: String,
    config: PathBuf,
    layers: Vec<(PathBuf, String)>,
}

fn json_file(p: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
        .with_context(|| format!("{} is not JSON", p.display()))
}

fn blob(dir: &std::path::Path, digest: &str) -> anyhow::Result<PathBuf> {
    let (alg, hex) = digest
        .split_once(':')
        .with_context(|| format!("{digest:?} is not a digest"))?;
    anyhow::ensure!(
        alg == "sha256" && hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest:?} is not a sha256 digest"
    );
    Ok(dir.join("blobs").join(alg).join(hex))
}

/// Reads an OCI layout (`index.json`; an index inside picks linux/amd64).
fn layout(dir: &std::path::Path) -> anyhow::Result<Local> {
    let mut doc = json_file(&dir.join("index.json"))?;
    let mut digest = String::new();
    for _ in 0..4 {
        if doc["layers"].is_array() {
            break;
        }
        let entries = doc["manifests"]
            .as_array()
            .with_context(|| format!("{}: no manifests", dir.display()))?;
        let pick = entries
            .iter()
            .find(|e| e["platform"]["architecture"] == "amd64" && e["platform"]["os"] == "linux")
            .or_else(|| entries.iter().find(|e| e["platform"].is_null()))
            .with_context(|| format!("{}: no linux/amd64 image", dir.display()))?;
        digest = pick["digest"].as_str().unwrap_or_default().to_string();
        doc = json_file(&blob(dir, &digest)?)?;
    }
    let config = blob(dir, doc["config"]["digest"].as_str().unwrap_or_default())?;
    let layers = doc["layers"]
        .as_array()
        .context("the manifest lists no layers")?
        .iter()
        .map(|l| {
            Ok((
                blob(dir, l["digest"].as_str().unwrap_or_default())?,
                l["mediaType"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Local {
        manifest_digest: digest,
        config,
        layers,
    })
}

/// Reads a `docker save` archive's own `manifest.json` (uncompressed tar
/// layers named by path).
fn docker_archive(dir: &std::path::Path) -> anyhow::Result<Local> {
    let bytes = std::fs::read(dir.join("manifest.json"))?;
    let m: serde_json::Value = serde_json::from_slice(&bytes)?;
    let first = &m[0];
    let path = |p: &serde_json::Value| -> anyhow::Result<PathBuf> {
        let p = p
            .as_str()
            .context("a path in manifest.json is not a string")?;
        anyhow::ensure!(
            !p.starts_with('/') && !p.split('/').any(|c| c == ".."),
            "{p:?} leaves the archive"
        );
        Ok(dir.join(p))
    };
    Ok(Local {
        manifest_digest: format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
        ),
        config: path(&first["Config"])?,
        layers: first["Layers"]
            .as_array()
            .context("manifest.json lists no layers")?
            .iter()
            .map(|l| {
                Ok((
                    path(l)?,
                    "application/vnd.docker.image.rootfs.diff.tar".to_string(),
                ))
            })
            .collect::<anyhow::Result<_>>()?,
    })
}

/// `vws image import NAME:TAG --oci PATH`: uploads the config and the
/// layers the pool lacks, then registers the image as a pull does.
pub async fn import_oci(
    g: &Globals,
    client: &vws_client::Client,
    name: &str,
    path: &std::path::Path,
    private: bool,
) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut archive = tar::Archive::new(f);
        // unpack_in keeps every entry inside the folder.
        for entry in archive
            .entries()
            .with_context(|| format!("{} is not a tar archive", path.display()))?
        {
            entry?.unpack_in(scratch.path())?;
        }
        scratch.path().to_path_buf()
    };
    let local = if dir.join("index.json").exists() {
        layout(&dir)?
    } else if dir.join("manifest.json").exists() {
        docker_archive(&dir)?
    } else {
        anyhow::bail!(
            "{} is neither an OCI layout (index.json) nor a docker save archive (manifest.json)",
            path.display()
        );
    };
    let quiet = g.json;
    let config_digest =
        crate::commands::upload::send(client, &local.config, "config", quiet).await?;
    let mut layers = Vec::new();
    for (i, (file, media_type)) in local.layers.iter().enumerate() {
        let digest =
            crate::commands::upload::send(client, file, &format!("layer {}", i + 1), quiet).await?;
        layers.push(serde_json::json!({
            "digest": digest,
            "size": std::fs::metadata(file)?.len(),
            "media_type": media_type,
        }));
    }
    let kind = if dir.join("index.json").exists() {
        "oci-layout"
    } else {
        "docker-archive"
    };
    let req = serde_json::json!({
        "name": name,
        "source": format!("{kind}:{}", path.display()),
        "manifest_digest": local.manifest_digest,
        "config_digest": config_digest,
        "layers": layers,
        "visibility": if private { "private" } else { "public" },
    });
    let op = client.import_oci(req).await?;
    follow(g, client, op).await
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
    let mut req = serde_json::json!({
        "reference": a.reference,
        "name": a.name,
        "visibility": if a.private { "private" } else { "public" },
    });
    connection(g, &mut req, &a.reference, &a.registry)?;
    let op = client.pull_image(req).await?;
    follow(g, client, op).await
}

/// `vws image push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    /// The pool image: NAME:TAG
    image: String,
    /// Where to: REGISTRY/REPOSITORY:TAG
    target: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The credentials and CA of a pull's or push's request.
fn connection(
    g: &Globals,
    req: &mut serde_json::Value,
    reference: &str,
    r: &RegistryArgs,
) -> anyhow::Result<()> {
    req["plain_http"] = r.plain_http.into();
    let file = r
        .registries
        .clone()
        .unwrap_or_else(|| g.home.join("registries.toml"));
    if let Some(c) = credentials(&file, &registry_of(reference))? {
        req["credentials"] = c;
    }
    if let Some(ca) = &r.registry_ca {
        req["ca_pem"] = std::fs::read_to_string(ca)
            .with_context(|| format!("reading {}", ca.display()))?
            .into();
    }
    Ok(())
}

/// Pushes and follows the operation to its end.
pub async fn push(g: &Globals, client: &vws_client::Client, a: PushArgs) -> anyhow::Result<()> {
    let mut req = serde_json::json!({ "target": a.target });
    connection(g, &mut req, &a.target, &a.registry)?;
    let op = client.push_image(&a.image, req).await?;
    follow(g, client, op).await
}

/// Follows a pull's operation to its end, a bar per layer.
async fn follow(g: &Globals, client: &vws_client::Client, mut op: Operation) -> anyhow::Result<()> {
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
        (OperationState::Done, Some(pushed)) if op.kind == "push" => {
            if g.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "operation": op }))?
                );
            } else {
                println!("{pushed}  ({} layers)", op.layers.len());
            }
            Ok(())
        }
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
            "{} {} failed: {}",
            if op.kind == "push" {
                "pushing to"
            } else {
                "pulling"
            },
            op.target,
            op.error.as_deref().unwrap_or("no reason recorded")
        ),
    }
}
