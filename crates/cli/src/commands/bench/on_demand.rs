//! `vws bench on-demand`: a VM of an image its node does not have, to its
//! first job output, when the node stages the image whole first against
//! when it starts at once and reads the image on demand (the paper's
//! "transferring only partial images"). The image is the EMBOSS bench's
//! Debian root filesystem (about 900 MiB; built by debootstrap, or kept
//! from an earlier run). Each run is on a fresh service and node of its
//! own, so that nothing of the image is cached anywhere but in the
//! repository.

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use vws_model::Form;

use super::args::BenchArgs;
use super::emboss::{emboss_image, output_of, vm};
use super::rig::{env_json, guest_dir, import_guest, median, summary, Rig};
use crate::output::table;
use crate::Globals;

/// One run: a fresh rig, the image sent to its repository, then create +
/// deploy + start + a first job. Returns deploy, start and first-output
/// seconds (from the deploy request) and the bytes staged by then.
async fn run(
    g: &Globals,
    a: &BenchArgs,
    on_demand: bool,
    image: &std::path::Path,
) -> anyhow::Result<Value> {
    let guest = guest_dir(g, a)?;
    let rig = if on_demand {
        Rig::on_demand().await?
    } else {
        Rig::up().await?
    };
    let result = async {
        let client = &rig.client;
        import_guest(client, &guest).await?;
        let digest = crate::commands::upload::send(client, image, "emboss", true).await?;
        client
            .import_image(json!({ "name": "emboss", "tag": "bench", "disk": digest }))
            .await
            .context("importing the EMBOSS image")?;
        let id = client
            .create(vm("emboss:bench", 512), Form::Toml, None)
            .await?
            .record
            .id;
        let t = Instant::now();
        client.deploy(&id, None).await?;
        let deploy_s = t.elapsed().as_secs_f64();
        client.action(&id, vws_model::Verb::Start).await?;
        let start_s = t.elapsed().as_secs_f64() - deploy_s;
        let out = output_of(client, &id, "cat /etc/debian_version").await?;
        let first_output_s = t.elapsed().as_secs_f64();
        anyhow::ensure!(!out.trim().is_empty(), "no output from the workspace");
        let cached = rig
            .home()
            .join("node/cache/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let cached_then = cached.exists();
        client.destroy(&id).await?;
        eprintln!(
            "bench on-demand: {}: deploy {deploy_s:.2} s, start {start_s:.2} s, first output at {first_output_s:.2} s (image in the cache by then: {cached_then})",
            if on_demand { "on demand" } else { "staged whole" }
        );
        Ok(json!({
            "deploy_s": deploy_s, "start_s": start_s, "first_output_s": first_output_s,
            "image_cached_at_first_output": cached_then,
        }))
    }
    .await;
    rig.down().await?;
    result
}

/// `vws bench on-demand`.
pub async fn on_demand_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let (image, _, _) = emboss_image(g).await?;
    let mut whole = Vec::new();
    let mut lazy = Vec::new();
    // Alternated, so that the machine's load that minute weighs on both.
    for _ in 0..a.runs {
        whole.push(run(g, a, false, &image).await?);
        lazy.push(run(g, a, true, &image).await?);
    }
    let col = |v: &[Value], k: &str| {
        summary(
            v.iter()
                .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let (w, l) = (col(&whole, "first_output_s"), col(&lazy, "first_output_s"));
    let ratio = median(&w) / median(&l);
    let report = json!({
        "suite": "on-demand",
        "env": env_json(),
        "metrics": {
            "image_bytes": std::fs::metadata(&image)?.len(),
            "staged_whole": { "deploy_s": col(&whole, "deploy_s"), "start_s": col(&whole, "start_s"), "first_output_s": w },
            "on_demand": { "deploy_s": col(&lazy, "deploy_s"), "start_s": col(&lazy, "start_s"), "first_output_s": l },
        },
        "ratios": { "staged_whole_over_on_demand": ratio },
    });
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut t = table(&[
            "uncached image, to first job output",
            "deploy (median)",
            "start (median)",
            "first output min / median / max",
        ]);
        for (what, runs, first) in [
            ("staged whole, then started", &whole, &w),
            ("started at once, read on demand", &lazy, &l),
        ] {
            t.add_row(vec![
                what.to_string(),
                format!("{:.2} s", median(&col(runs, "deploy_s"))),
                format!("{:.2} s", median(&col(runs, "start_s"))),
                format!(
                    "{:.2} / {:.2} / {:.2} s",
                    first["min"].as_f64().unwrap_or(0.0),
                    median(first),
                    first["max"].as_f64().unwrap_or(0.0)
                ),
            ]);
        }
        println!("{t}");
        println!(
            "staged whole / on demand: {ratio:.2}x (target 3x)  ({} MB image, {} runs, {})",
            std::fs::metadata(&image)?.len() / 1_000_000,
            a.runs,
            env_json()["accel"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
