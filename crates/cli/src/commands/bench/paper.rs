//! `vws bench paper`: the paper's Figure 2 (§4) on this machine. The time
//! from a request to the end of one short job, three ways: (a) started
//! directly on the host, as GRAM would; (b) in a workspace deployed from a
//! hot image whose environment is already up, the job sent as soon as it
//! answers; (c) in a workspace configured to start the job at boot; and
//! (d), beyond the paper's figure, in a dynamic account configured to start
//! it. As in the paper, the images are staged on the node beforehand.

use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};
use vws_client::Client;
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::{env_json, guest_dir, import_guest, median, summary, Rig};
use crate::output::table;
use crate::Globals;

/// The test application: a short CPU-bound loop, the same program on the
/// host (busybox sh) and in the guest.
const JOB: &str = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done $i";

fn description(image: &str, startup: Option<&str>) -> String {
    described("vm", image, startup)
}

fn described(category: &str, image: &str, startup: Option<&str>) -> String {
    let mut d = format!(
        "category = \"{category}\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"{image}\"\n"
    );
    if let Some(s) = startup {
        d.push_str(&format!(
            "[capability]\nstartup = {}\n",
            toml::Value::String(s.into())
        ));
    }
    d
}

/// Follows a job's output to its end.
async fn to_end(client: &Client, job: &str) -> anyhow::Result<()> {
    let out = client.job_output(job, true).await?.bytes().await?;
    anyhow::ensure!(
        String::from_utf8_lossy(&out).contains("\"exited\""),
        "job {job} did not exit normally"
    );
    Ok(())
}

/// (b): deploy and start from the hot image, run the job to its end.
async fn hot_run(client: &Client) -> anyhow::Result<f64> {
    let id = client
        .create(description("env:paper", None), Form::Toml, None)
        .await?
        .record
        .id;
    let t = Instant::now();
    client.deploy(&id, None).await?;
    client.action(&id, vws_model::Verb::Start).await?;
    let job = client
        .submit_job(&id, json!({ "argv": ["sh", "-c", JOB] }))
        .await?;
    to_end(client, &job.id).await?;
    let took = t.elapsed().as_secs_f64();
    client.destroy(&id).await?;
    Ok(took)
}

/// (c): deploy and boot a workspace whose startup program is the job; wait
/// for that job's end.
async fn boot_run(client: &Client) -> anyhow::Result<f64> {
    startup_run(client, description("minimal:bench", Some(JOB))).await
}

/// (d): the same with a dynamic account (the paper's other category, and
/// its future work's lighter workspace).
async fn account_run(client: &Client) -> anyhow::Result<f64> {
    startup_run(
        client,
        described("dynamic account", "account-root:bench", Some(JOB)),
    )
    .await
}

/// Deploys and starts a workspace whose startup program is the job; waits
/// for that job's end.
async fn startup_run(client: &Client, desc: String) -> anyhow::Result<f64> {
    let id = client.create(desc, Form::Toml, None).await?.record.id;
    let t = Instant::now();
    client.deploy(&id, None).await?;
    client.action(&id, vws_model::Verb::Start).await?;
    let job = client
        .jobs(&id)
        .await?
        .into_iter()
        .next()
        .context("the startup job was not recorded")?;
    to_end(client, &job.id).await?;
    let took = t.elapsed().as_secs_f64();
    client.destroy(&id).await?;
    Ok(took)
}

/// (a): the job started directly on the host.
async fn host_run(busybox: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let ok = tokio::process::Command::new(busybox)
        .args(["sh", "-c", JOB])
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(ok.success(), "the host job failed");
    Ok(t.elapsed().as_secs_f64())
}

/// Runs the three scenarios interleaved, prints a table, and draws the plot.
pub async fn paper_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let guest = guest_dir(g, a)?;
    let busybox = crate::commands::image_build::busybox()?;
    let rig = Rig::up().await?;
    let result = async {
        let client = &rig.client;
        import_guest(client, &guest).await?;
        // The hot image: a booted workspace with its environment up, paused.
        let src = client.create(description("minimal:bench", None), Form::Toml, None).await?.record.id;
        client.deploy(&src, None).await?;
        client.action(&src, vws_model::Verb::Start).await?;
        client.action(&src, vws_model::Verb::Pause).await?;
        client.snapshot(&src, "env:paper").await?;
        client.destroy(&src).await?;
        super::account::import_root(&rig).await?;
        // One untimed round stages everything onto the node.
        hot_run(client).await?;
        boot_run(client).await?;
        account_run(client).await?;
        let (mut host, mut hot, mut boot, mut account) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..a.runs {
            host.push(host_run(busybox).await?);
            hot.push(hot_run(client).await?);
            boot.push(boot_run(client).await?);
            account.push(account_run(client).await?);
            eprintln!(
                "bench paper: run {}/{}: host {:.3} s, hot image {:.3} s, boot with the job {:.3} s, dynamic account {:.3} s",
                run + 1,
                a.runs,
                host[run],
                hot[run],
                boot[run],
                account[run]
            );
        }
        let (h, w, b, d) = (summary(host), summary(hot), summary(boot), summary(account));
        let report = json!({
            "suite": "paper",
            "runs": a.runs,
            "metrics": { "a_host_job_s": h, "b_hot_image_then_job_s": w, "c_boot_with_job_s": b, "d_dynamic_account_s": d },
            "ratios": {
                "b_over_a": median(&w) / median(&h),
                "c_over_b": median(&b) / median(&w),
                "d_over_a": median(&d) / median(&h),
            },
            "env": env_json(),
        });
        if let Some(path) = &a.plot {
            std::fs::write(path, plot(&report))?;
        }
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let m = &report["metrics"];
            let mut t = table(&["SCENARIO", "MIN s", "MEDIAN s", "MAX s"]);
            for (name, key) in ROWS {
                let v = &m[key];
                t.add_row(vec![
                    name.to_string(),
                    format!("{:.3}", v["min"].as_f64().unwrap_or(0.0)),
                    format!("{:.3}", median(v)),
                    format!("{:.3}", v["max"].as_f64().unwrap_or(0.0)),
                ]);
            }
            println!("{t}");
            println!(
                "(b) / (a) = {:.1}; (c) / (b) = {:.1}; (d) / (a) = {:.1}  ({} runs, {})",
                report["ratios"]["b_over_a"].as_f64().unwrap_or(0.0),
                report["ratios"]["c_over_b"].as_f64().unwrap_or(0.0),
                report["ratios"]["d_over_a"].as_f64().unwrap_or(0.0),
                a.runs,
                report["env"]
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    rig.down().await?;
    result
}

const ROWS: [(&str, &str); 4] = [
    ("(a) job on the host", "a_host_job_s"),
    ("(b) hot image, then the job", "b_hot_image_then_job_s"),
    (
        "(c) workspace that starts the job at boot",
        "c_boot_with_job_s",
    ),
    (
        "(d) dynamic account that starts the job",
        "d_dynamic_account_s",
    ),
];

/// A horizontal bar chart of the medians with min–max whiskers, as SVG.
fn plot(report: &Value) -> String {
    let m = &report["metrics"];
    let top = ROWS
        .iter()
        .map(|(_, k)| m[k]["max"].as_f64().unwrap_or(0.0))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let (left, width, row) = (300.0, 420.0, 44.0);
    let x = |v: f64| left + width * v / top;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"780\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">Request → end of one job (median, min–max), {runs} runs; {env}</text>\n",
        h = 60.0 + row * ROWS.len() as f64 + 30.0,
        runs = report["runs"],
        env = report["env"]["accel"].as_str().unwrap_or("?"),
    );
    for (i, (name, key)) in ROWS.iter().enumerate() {
        let y = 45.0 + row * i as f64;
        let v = &m[key];
        let (lo, mid, hi) = (
            v["min"].as_f64().unwrap_or(0.0),
            median(v),
            v["max"].as_f64().unwrap_or(0.0),
        );
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{ty}\">{name}</text>\n\
             <rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"24\" fill=\"#4e79a7\"/>\n\
             <line x1=\"{l:.1}\" y1=\"{cy}\" x2=\"{r:.1}\" y2=\"{cy}\" stroke=\"black\"/>\n\
             <text x=\"{tx:.1}\" y=\"{ty}\">{mid:.3} s</text>\n",
            ty = y + 17.0,
            w = x(mid) - left,
            l = x(lo),
            r = x(hi),
            cy = y + 12.0,
            tx = x(hi) + 6.0,
        ));
    }
    let axis = 45.0 + row * ROWS.len() as f64;
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{axis}\" x2=\"{right}\" y2=\"{axis}\" stroke=\"black\"/>\n\
         <text x=\"{left}\" y=\"{t}\">0</text><text x=\"{right}\" y=\"{t}\" text-anchor=\"end\">{top:.2} s</text>\n</svg>\n",
        right = left + width,
        t = axis + 16.0,
    ));
    svg
}
