//! `vws bench oci`: pulling an OCI image of about 200 MB from a registry
//! on loopback (Debian's docker-registry, started here) against `skopeo
//! copy` of the same image to a local folder; and create + deploy + start
//! to a job's first output from the pulled image, as a dynamic account and
//! as a VM, against the same from a `vws image build` image of the same
//! busybox root.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use vws_model::records::OperationState;
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::{env_json, first_byte, guest_dir, import_guest, median, summary, Rig};
use crate::Globals;

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The registry, on a free loopback port, with its data under `dir`.
fn registry(dir: &Path) -> anyhow::Result<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )?;
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("docker-registry (scripts/setup installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the registry did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

/// A busybox root with `mib` MiB of incompressible data in four files.
fn root(dir: &Path, mib: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for part in 0..4 {
        let mut data = vec![0u8; (mib << 20) / 4];
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("data/part{part}")), data)?;
    }
    Ok(())
}

/// The image: umoci from the root, one layer; pushed with skopeo.
fn push(work: &Path, port: u16) -> anyhow::Result<()> {
    let layout = work.join("layout");
    let bundle = work.join("bundle");
    let l = layout.to_str().context("a UTF-8 path")?;
    let image = format!("{l}:1");
    run(
        Command::new("umoci").args(["init", "--layout", l]),
        "umoci init",
    )?;
    run(
        Command::new("umoci").args(["new", "--image", &image]),
        "umoci new",
    )?;
    run(
        Command::new("umoci")
            .args(["unpack", "--image", &image])
            .arg(&bundle),
        "umoci unpack",
    )?;
    root(&bundle.join("rootfs"), 200)?;
    run(
        Command::new("umoci")
            .args(["repack", "--image", &image])
            .arg(&bundle),
        "umoci repack",
    )?;
    run(
        Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://127.0.0.1:{port}/big:1"),
        ]),
        "skopeo copy (push)",
    )
}

/// create → deploy → start → a job's first output.
async fn to_first_output(rig: &Rig, desc: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let id = rig
        .client
        .create(desc.into(), Form::Toml, None)
        .await?
        .record
        .id;
    rig.client.deploy(&id, None).await?;
    rig.client.action(&id, vws_model::Verb::Start).await?;
    let ready = t.elapsed().as_secs_f64();
    let out = first_byte(&rig.client, &id, &["echo", "hi"]).await?;
    rig.client.destroy(&id).await?;
    Ok(ready + out)
}

/// Runs the suite.
pub async fn oci_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let rig = Rig::up().await?;
    let measured = measure(g, a, &rig).await;
    rig.down().await?;
    measured
}

async fn measure(g: &Globals, a: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    import_guest(&rig.client, &guest_dir(g, a)?).await?;
    let work = rig.home().join("oci-bench");
    std::fs::create_dir_all(&work)?;
    let (mut reg, port) = registry(&work)?;
    let pushed = push(&work, port);
    let result = async {
        pushed?;
        let reference = format!("127.0.0.1:{port}/big:1");
        let (mut skopeo, mut pull, mut layers) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = 0;
        for r in 0..a.runs {
            let dest = work.join(format!("copy-{r}"));
            let t = Instant::now();
            run(
                Command::new("skopeo").args([
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{reference}"),
                    &format!("oci:{}:1", dest.display()),
                ]),
                "skopeo copy (pull)",
            )?;
            skopeo.push(t.elapsed().as_secs_f64());
            std::fs::remove_dir_all(&dest)?;

            // A pool without the image or its layers, so that they move.
            let _ = rig.client.remove_image("big:1").await;
            let t = Instant::now();
            let mut op = rig
                .client
                .pull_image(json!({ "reference": reference }))
                .await?;
            let mut layers_done = None;
            while op.state == OperationState::Running {
                tokio::time::sleep(Duration::from_millis(20)).await;
                op = rig.client.operation(&op.id).await?;
                if layers_done.is_none() && op.phase != "layers" && op.phase != "resolving" {
                    layers_done = Some(t.elapsed().as_secs_f64());
                }
            }
            anyhow::ensure!(
                op.state == OperationState::Done,
                "the pull failed: {}",
                op.error.unwrap_or_default()
            );
            pull.push(t.elapsed().as_secs_f64());
            layers.push(layers_done.unwrap_or(f64::NAN));
            bytes = op.layers.iter().map(|l| l.size).sum::<u64>();
            for l in &op.layers {
                let hex = l.digest.trim_start_matches("sha256:");
                let _ = std::fs::remove_file(rig.home().join("images/sha256").join(hex));
            }
            eprintln!(
                "bench oci: run {}/{}: skopeo copy {:.2} s, vws pull {:.2} s (layers in {:.2} s)",
                r + 1,
                a.runs,
                skopeo[r],
                pull[r],
                layers[r]
            );
        }
        // The same root, built by vws image build, for the starts.
        let _ = rig.client.remove_image("big:1").await;
        let mut op = rig
            .client
            .pull_image(json!({ "reference": reference }))
            .await?;
        while op.state == OperationState::Running {
            tokio::time::sleep(Duration::from_millis(50)).await;
            op = rig.client.operation(&op.id).await?;
        }
        super::account::import_root(rig).await?;
        let kinds = [
            ("account, pulled", "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"big:1\"\n"),
            ("account, built", "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"account-root:bench\"\n"),
            ("VM, pulled", "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"big:1\"\n"),
            ("VM, built", "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"account-root:bench\"\n"),
        ];
        let mut starts = Vec::new();
        for (what, desc) in kinds {
            let mut v = Vec::new();
            for _ in 0..a.runs {
                v.push(to_first_output(rig, desc).await?);
            }
            eprintln!("bench oci: {what}: create → first output {:.2} s (median)", median(&summary(v.clone())));
            starts.push(json!({ "what": what, "to_first_output_s": summary(v) }));
        }
        Ok::<Value, anyhow::Error>(json!({
            "suite": "oci",
            "env": env_json(),
            "image_bytes": bytes,
            "skopeo_copy_s": summary(skopeo.clone()),
            "vws_pull_s": summary(pull.clone()),
            "vws_pull_layers_s": summary(layers.clone()),
            "pull_vs_skopeo": median(&summary(skopeo.clone())) / median(&summary(pull)),
            "layers_vs_skopeo": median(&summary(skopeo)) / median(&summary(layers)),
            "starts": starts,
        }))
    }
    .await;
    let _ = reg.kill();
    let _ = reg.wait();
    let out = result?;
    let ratio = out["layers_vs_skopeo"].as_f64().unwrap_or(f64::NAN);
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "image {} MiB: skopeo copy {:.2} s; vws pull {:.2} s ({:.2}× skopeo), its layers in {:.2} s ({:.2}×)",
            out["image_bytes"].as_u64().unwrap_or(0) >> 20,
            median(&out["skopeo_copy_s"]),
            median(&out["vws_pull_s"]),
            out["pull_vs_skopeo"].as_f64().unwrap_or(f64::NAN),
            median(&out["vws_pull_layers_s"]),
            ratio
        );
        for s in out["starts"].as_array().into_iter().flatten() {
            println!(
                "{:<16} create → first output {:.2} s",
                s["what"].as_str().unwrap_or(""),
                median(&s["to_first_output_s"])
            );
        }
    }
    Ok(())
}
