//! `vws bench emboss`: the paper's EMBOSS experiment (§4) on this machine.
//! The paper: installing EMBOSS "took roughly 20 minutes", while deploying
//! and starting a preconfigured workspace took "6 minutes and 23 seconds".
//! Here: (1) making an EMBOSS root filesystem from Debian's packages
//! (debootstrap plus `emboss`), (2) deploying and starting a workspace of
//! it as a cold VM, a hot VM and a dynamic account, and (3) `water` and
//! `needle` on generated protein sequences in each workspace and on the
//! host, whose outputs must be equal but for their date lines. Beside it,
//! the Debian VM's cold start and hot start to first output against the
//! minimal guest's, at the same RAM.

use std::time::Instant;

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};
use vws_client::Client;
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::{env_json, guest_dir, hot_runs_of, import_guest, median, summary, Rig};
use crate::output::table;
use crate::Globals;

/// A protein sequence of `len` residues from a fixed generator (the same on
/// every run and every machine).
fn protein(seed: u64, len: usize) -> String {
    const AA: &[u8] = b"ACDEFGHIKLMNPQRSTVWY";
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            AA[((x >> 33) % AA.len() as u64) as usize] as char
        })
        .collect()
}

/// The shell script that writes the two sequences and aligns them with
/// `program` (water: local, Smith-Waterman; needle: global,
/// Needleman-Wunsch), the report on stdout.
fn align_script(program: &str) -> String {
    format!(
        "cd /tmp && printf '>a\\n{}\\n' > a.fa && printf '>b\\n{}\\n' > b.fa && \
         {program} -asequence a.fa -bsequence b.fa -gapopen 10 -gapextend 0.5 -outfile stdout -auto",
        protein(1, 300),
        protein(2, 280)
    )
}

/// A report without the lines that differ by when and where it ran.
fn comparable(report: &str) -> String {
    report
        .lines()
        .filter(|l| !l.starts_with("# Rundate"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `script` in a workspace; its stdout.
pub(crate) async fn output_of(client: &Client, id: &str, script: &str) -> anyhow::Result<String> {
    let job = client
        .submit_job(id, json!({ "argv": ["sh", "-c", script] }))
        .await?;
    let body = client.job_output(&job.id, true).await?.text().await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    let mut exited = false;
    for line in body.lines() {
        let ev: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        match ev["event"].as_str() {
            Some("stdout") => out.extend(b64.decode(ev["data"].as_str().unwrap_or(""))?),
            Some("exited") => exited = ev["code"] == 0,
            _ => {}
        }
    }
    anyhow::ensure!(exited, "the job in {id} failed: {body}");
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The host's run of the same alignment (Debian's emboss, installed if
/// missing).
fn host_alignment(program: &str) -> anyhow::Result<String> {
    if std::process::Command::new("sh")
        .args(["-c", "command -v water >/dev/null"])
        .status()?
        .code()
        != Some(0)
    {
        eprintln!("bench emboss: installing Debian's emboss on the host (apt-get)");
        let ok = std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", "emboss"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
        anyhow::ensure!(ok, "apt-get install emboss failed");
    }
    let out = std::process::Command::new("sh")
        .args(["-c", &align_script(program)])
        .output()?;
    anyhow::ensure!(out.status.success(), "{program} on the host failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The EMBOSS image: built now (timed), or the one a previous run kept in
/// VWS_HOME/build with the time its build took.
pub(crate) async fn emboss_image(g: &Globals) -> anyhow::Result<(std::path::PathBuf, f64, bool)> {
    let dir = g.home.join("build");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("emboss-1.img");
    let took = dir.join("emboss-1.img.seconds");
    if let (true, Ok(s)) = (file.exists(), std::fs::read_to_string(&took)) {
        return Ok((file, s.trim().parse().unwrap_or(f64::NAN), true));
    }
    eprintln!("bench emboss: building the EMBOSS image (debootstrap + emboss)");
    let spec = crate::commands::image_build::Build {
        base: crate::commands::image_build::Base::Debian,
        suite: "bookworm".into(),
        mirror: None,
        include: vec!["emboss".into()],
        bootable: None,
        out: file.clone(),
    };
    let t = Instant::now();
    tokio::task::spawn_blocking(move || crate::commands::image_build::build(&spec)).await??;
    let secs = t.elapsed().as_secs_f64();
    std::fs::write(&took, format!("{secs}\n"))?;
    Ok((file, secs, false))
}

pub(crate) fn vm(image: &str, mib: u64) -> String {
    format!("category = \"vm\"\n[hardware]\nram = \"{mib}MiB\"\n[software]\nimage = \"{image}\"\n")
}

/// Deploys and starts a workspace, timing each, then runs both alignments
/// in it.
async fn deploy_start_align(client: &Client, id: &str) -> anyhow::Result<(Value, Vec<String>)> {
    let t = Instant::now();
    client.deploy(id, None).await?;
    let deploy_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    client.action(id, vws_model::Verb::Start).await?;
    let start_s = t.elapsed().as_secs_f64();
    let mut outs = Vec::new();
    for p in ["water", "needle"] {
        outs.push(output_of(client, id, &align_script(p)).await?);
    }
    Ok((json!({ "deploy_s": deploy_s, "start_s": start_s }), outs))
}

/// Cold starts (start → ready) of a deployed workspace of `image`.
async fn cold_starts(client: &Client, image: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
    let id = client
        .create(vm(image, 256), Form::Toml, None)
        .await?
        .record
        .id;
    client.deploy(&id, None).await?;
    let mut out = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        client.action(&id, vws_model::Verb::Start).await?;
        out.push(t.elapsed().as_secs_f64());
        client.action(&id, vws_model::Verb::Stop).await?;
        eprintln!(
            "bench emboss: {image} cold start {}/{runs}: {:.3} s",
            run + 1,
            out[run]
        );
    }
    client.destroy(&id).await?;
    Ok(out)
}

/// `vws bench emboss`.
pub async fn emboss_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let guest = guest_dir(g, a)?;
    let (image, build_s, cached) = emboss_image(g).await?;
    let host: Vec<String> = ["water", "needle"]
        .iter()
        .map(|p| host_alignment(p))
        .collect::<anyhow::Result<_>>()?;
    let rig = Rig::up().await?;
    let result = async {
        let client = &rig.client;
        import_guest(client, &guest).await?;
        let digest = crate::commands::upload::send(client, &image, "emboss", true).await?;
        client
            .import_image(json!({ "name": "emboss", "tag": "bench", "disk": digest }))
            .await
            .context("importing the EMBOSS image")?;
        let mut rows: Vec<(&str, Value, Vec<String>)> = Vec::new();

        // Cold VM: deploy (staging the image) and start, then the programs.
        let id = client.create(vm("emboss:bench", 512), Form::Toml, None).await?.record.id;
        let (times, outs) = deploy_start_align(client, &id).await?;
        rows.push(("cold VM", times, outs));
        // Hot VM: a hot image of it, and a workspace restored from it.
        client.action(&id, vws_model::Verb::Pause).await?;
        client.snapshot(&id, "emboss-hot:bench").await?;
        client.destroy(&id).await?;
        let h = client.create(vm("emboss-hot:bench", 512), Form::Toml, None).await?.record.id;
        let (times, outs) = deploy_start_align(client, &h).await?;
        client.destroy(&h).await?;
        rows.push(("hot VM", times, outs));
        // Dynamic account.
        let acct = client
            .create(
                "category = \"dynamic account\"\n[hardware]\nram = \"512MiB\"\n[software]\nimage = \"emboss:bench\"\n".into(),
                Form::Toml,
                None,
            )
            .await?
            .record
            .id;
        let (times, outs) = deploy_start_align(client, &acct).await?;
        client.destroy(&acct).await?;
        rows.push(("dynamic account", times, outs));

        // The outputs: equal to the host's but for the date lines.
        let mut equal = true;
        for (what, _, outs) in &rows {
            for (i, p) in ["water", "needle"].iter().enumerate() {
                let same = comparable(&outs[i]) == comparable(&host[i]);
                if !same {
                    eprintln!("bench emboss: {p} in the {what} differs from the host's:\n{}", outs[i]);
                }
                equal &= same;
            }
        }

        // Start times against the minimal guest's, same RAM (256 MiB).
        let debian_cold = summary(cold_starts(client, "emboss:bench", a.runs).await?);
        let minimal_cold = summary(cold_starts(client, "minimal:bench", a.runs).await?);
        let (_, debian_hot) = hot_runs_of(client, "emboss:bench", 256, false, a.runs).await?;
        let (_, minimal_hot) = hot_runs_of(client, "minimal:bench", 256, false, a.runs).await?;
        let (debian_hot, minimal_hot) = (summary(debian_hot), summary(minimal_hot));
        let cold_ratio = median(&debian_cold) / median(&minimal_cold);
        let hot_ratio = median(&debian_hot) / median(&minimal_hot);

        let report = json!({
            "suite": "emboss",
            "env": env_json(),
            "metrics": {
                "image_build_s": build_s, "image_build_cached": cached,
                "image_bytes": std::fs::metadata(&image)?.len(),
                "workspaces": rows.iter().map(|(w, m, _)| json!({ "what": w, "times": m })).collect::<Vec<_>>(),
                "outputs_equal_to_host": equal,
                "debian_vm_cold_start_s": debian_cold, "minimal_vm_cold_start_s": minimal_cold,
                "debian_vm_hot_start_to_job_output_s": debian_hot, "minimal_vm_hot_start_to_job_output_s": minimal_hot,
            },
            "ratios": { "debian_cold_over_minimal_cold": cold_ratio, "debian_hot_over_minimal_hot": hot_ratio },
        });
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["step", "here", "paper"]);
            t.add_row(vec![
                format!("install EMBOSS (debootstrap + emboss){}", if cached { ", earlier run" } else { "" }),
                format!("{build_s:.0} s"),
                "≈ 20 min".into(),
            ]);
            for (what, m, _) in &rows {
                t.add_row(vec![
                    format!("deploy + start, {what}"),
                    format!(
                        "{:.2} s (deploy {:.2} s, start {:.2} s)",
                        m["deploy_s"].as_f64().unwrap_or(0.0) + m["start_s"].as_f64().unwrap_or(0.0),
                        m["deploy_s"].as_f64().unwrap_or(0.0),
                        m["start_s"].as_f64().unwrap_or(0.0)
                    ),
                    "6 min 23 s".into(),
                ]);
            }
            t.add_row(vec![
                "water and needle: outputs equal to the host's".to_string(),
                if equal { "yes" } else { "NO" }.to_string(),
                "-".to_string(),
            ]);
            println!("{t}");
            println!(
                "Debian VM / minimal VM: cold start {cold_ratio:.2}x (target 1.5x), hot start to first output {hot_ratio:.2}x (target 1.2x)  ({} runs, {})",
                a.runs,
                env_json()["accel"].as_str().unwrap_or("")
            );
        }
        anyhow::ensure!(equal, "an alignment differed from the host's");
        Ok(())
    }
    .await;
    rig.down().await?;
    result
}
