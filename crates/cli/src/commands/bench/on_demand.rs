//! `vws bench on-demand`: a VM of an image its node does not have, to its
//! first job output, when the node stages the image whole first against
//! when it starts at once and reads the image on demand (the paper's
//! "transferring only partial images"). The image is the EMBOSS bench's
//! Debian root filesystem (about 900 MiB; built by debootstrap, or kept
//! from an earlier run), as a cold VM, and as a VM restored from a hot
//! image of it (its RAM file is staged whole in both modes; only its disk
//! can be read on demand). Each run is on a fresh service and node of its
//! own, and the node's cache is emptied before the hot VM, so that nothing
//! of the image is cached anywhere but in the repository.

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use vws_model::Form;

use super::args::BenchArgs;
use super::emboss::{emboss_image, output_of, vm};
use super::rig::{env_json, guest_dir, import_guest, median, summary, Rig};
use crate::output::table;
use crate::Globals;

/// Deploys, starts and runs a first job in a new workspace of `image`
/// (RAM `mib`); seconds from the deploy request to each, and whether the
/// node had the image whole in its cache by the first output.
async fn to_first_output(
    rig: &Rig,
    image: &str,
    mib: u64,
    cached: &std::path::Path,
) -> anyhow::Result<Value> {
    let client = &rig.client;
    let id = client
        .create(vm(image, mib), Form::Toml, None)
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
    let cached_then = cached.exists();
    client.destroy(&id).await?;
    Ok(json!({
        "deploy_s": deploy_s, "start_s": start_s, "first_output_s": first_output_s,
        "image_cached_at_first_output": cached_then,
    }))
}

/// One run: a fresh rig, the image sent to its repository; a cold VM of
/// it, then a hot image of it (256 MiB) made, the node's cache emptied, and
/// a VM restored from that hot image.
async fn run(
    g: &Globals,
    a: &BenchArgs,
    on_demand: bool,
    image: &std::path::Path,
) -> anyhow::Result<(Value, Value)> {
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
        let cache = rig.home().join("node/cache/sha256");
        let cold = to_first_output(&rig, "emboss:bench", 512, &cache.join(digest.trim_start_matches("sha256:"))).await?;
        // A hot image of the Debian VM; then nothing of it on the node.
        let src = client.create(vm("emboss:bench", 256), Form::Toml, None).await?.record.id;
        client.deploy(&src, None).await?;
        client.action(&src, vws_model::Verb::Start).await?;
        client.action(&src, vws_model::Verb::Pause).await?;
        let hot = client.snapshot(&src, "emboss-hot:bench").await?;
        client.destroy(&src).await?;
        let hot_disk = hot
            .files
            .iter()
            .find(|f| f.role == vws_model::node::BlobRole::Disk)
            .map(|f| f.digest.clone())
            .context("the hot image has no disk")?;
        std::fs::remove_dir_all(&cache)?;
        std::fs::create_dir_all(&cache)?;
        let hot = to_first_output(&rig, "emboss-hot:bench", 256, &cache.join(hot_disk.trim_start_matches("sha256:"))).await?;
        let mode = if on_demand { "on demand" } else { "staged whole" };
        for (what, r) in [("cold VM", &cold), ("hot VM", &hot)] {
            eprintln!(
                "bench on-demand: {mode}, {what}: deploy {:.2} s, start {:.2} s, first output at {:.2} s (image in the cache by then: {})",
                r["deploy_s"].as_f64().unwrap_or(0.0), r["start_s"].as_f64().unwrap_or(0.0),
                r["first_output_s"].as_f64().unwrap_or(0.0), r["image_cached_at_first_output"]
            );
        }
        Ok((cold, hot))
    }
    .await;
    rig.down().await?;
    result
}

/// `vws bench on-demand`.
pub async fn on_demand_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let (image, _, _) = emboss_image(g).await?;
    let (mut whole, mut lazy, mut whole_hot, mut lazy_hot) = (vec![], vec![], vec![], vec![]);
    // Alternated, so that the machine's load that minute weighs on both.
    for _ in 0..a.runs {
        let (c, h) = run(g, a, false, &image).await?;
        whole.push(c);
        whole_hot.push(h);
        let (c, h) = run(g, a, true, &image).await?;
        lazy.push(c);
        lazy_hot.push(h);
    }
    let col = |v: &[Value], k: &str| {
        summary(
            v.iter()
                .map(|r| r[k].as_f64().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let ratio = |w: &[Value], l: &[Value]| {
        median(&col(w, "first_output_s")) / median(&col(l, "first_output_s"))
    };
    let (cold_ratio, hot_ratio) = (ratio(&whole, &lazy), ratio(&whole_hot, &lazy_hot));
    let figures = |v: &[Value]| json!({ "deploy_s": col(v, "deploy_s"), "start_s": col(v, "start_s"), "first_output_s": col(v, "first_output_s") });
    let report = json!({
        "suite": "on-demand",
        "env": env_json(),
        "metrics": {
            "image_bytes": std::fs::metadata(&image)?.len(),
            "cold_vm": { "staged_whole": figures(&whole), "on_demand": figures(&lazy) },
            "hot_vm_256mib": { "staged_whole": figures(&whole_hot), "on_demand": figures(&lazy_hot) },
        },
        "ratios": { "cold_staged_whole_over_on_demand": cold_ratio, "hot_staged_whole_over_on_demand": hot_ratio },
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
        for (what, runs) in [
            ("cold VM (512 MiB), staged whole, then started", &whole),
            ("cold VM (512 MiB), started at once, read on demand", &lazy),
            ("hot VM (256 MiB), staged whole, then restored", &whole_hot),
            (
                "hot VM (256 MiB), restored at once, disk read on demand",
                &lazy_hot,
            ),
        ] {
            let first = col(runs, "first_output_s");
            t.add_row(vec![
                what.to_string(),
                format!("{:.2} s", median(&col(runs, "deploy_s"))),
                format!("{:.2} s", median(&col(runs, "start_s"))),
                format!(
                    "{:.2} / {:.2} / {:.2} s",
                    first["min"].as_f64().unwrap_or(0.0),
                    median(&first),
                    first["max"].as_f64().unwrap_or(0.0)
                ),
            ]);
        }
        println!("{t}");
        println!(
            "staged whole / on demand: cold VM {cold_ratio:.2}x, hot VM {hot_ratio:.2}x (target 3x)  ({} MB image, {} runs, {})",
            std::fs::metadata(&image)?.len() / 1_000_000,
            a.runs,
            env_json()["accel"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
