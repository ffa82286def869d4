//! The dynamic-account category in `vws bench start` and `vws bench job`:
//! an account workspace over a busybox root filesystem (the host's own
//! busybox-static, so both sides run the same binary), against a plain
//! fork/exec on the host.

use std::time::Instant;

use serde_json::{json, Value};
use vws_model::Form;

use super::rig::{median, summary, Rig};

/// Builds the busybox root filesystem and imports it as `account-root:bench`.
pub(crate) async fn import_root(rig: &Rig) -> anyhow::Result<()> {
    let file = rig.home().join("account-root.img");
    let spec = crate::commands::image_build::Build {
        base: crate::commands::image_build::Base::Busybox,
        suite: String::new(),
        mirror: None,
        include: Vec::new(),
        bootable: None,
        out: file.clone(),
    };
    tokio::task::spawn_blocking(move || crate::commands::image_build::build(&spec)).await??;
    let digest = vws_store::manifest(&file)?.digest;
    if !rig.client.has_blob(&digest).await? {
        rig.client.upload_blob(&file, &digest, |_| {}).await?;
    }
    rig.client
        .import_image(json!({ "name": "account-root", "tag": "bench", "disk": digest }))
        .await?;
    Ok(())
}

/// Creates and deploys an account workspace over the imported root
/// filesystem, with a user NIC (outbound NAT by slirp4netns) if asked;
/// returns its id.
async fn deployed_account(rig: &Rig, user_nic: bool) -> anyhow::Result<String> {
    let mut desc = "category = \"dynamic account\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"account-root:bench\"\n".to_string();
    if user_nic {
        desc.push_str("[network]\nnics = [{ name = \"eth0\", method = \"user\" }]\n");
    }
    let id = rig.client.create(desc, Form::Toml, None).await?.record.id;
    rig.client.deploy(&id, None).await?;
    Ok(id)
}

/// Plain fork/exec of `true` on the host, to its exit.
async fn host_spawn(busybox: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let ok = tokio::process::Command::new(busybox)
        .arg("true")
        .status()
        .await?;
    anyhow::ensure!(ok.success(), "busybox true failed");
    Ok(t.elapsed().as_secs_f64())
}

/// Times `start` of a deployed workspace, then stops it again.
async fn timed_start(rig: &Rig, id: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    rig.client.action(id, vws_model::Verb::Start).await?;
    let took = t.elapsed().as_secs_f64();
    rig.client.action(id, vws_model::Verb::Stop).await?;
    Ok(took)
}

/// `vws bench start`'s account rows: request → running (namespaces,
/// mounts, cgroups made; with a user NIC, its network up too) against a
/// host fork/exec.
pub(crate) async fn start(rig: &Rig, runs: usize) -> anyhow::Result<Value> {
    let busybox = crate::commands::image_build::busybox()?;
    import_root(rig).await?;
    let (plain, nic) = (
        deployed_account(rig, false).await?,
        deployed_account(rig, true).await?,
    );
    let (mut start, mut with_nic, mut host) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs.max(3) {
        host.push(host_spawn(busybox).await?);
        start.push(timed_start(rig, &plain).await?);
        with_nic.push(timed_start(rig, &nic).await?);
        eprintln!(
            "bench start: account run {}: {:.4} s, with a user NIC {:.4} s (host fork/exec {:.4} s)",
            run + 1,
            start[run],
            with_nic[run],
            host[run]
        );
    }
    rig.client.destroy(&plain).await?;
    rig.client.destroy(&nic).await?;
    let (s, n, h) = (summary(start), summary(with_nic), summary(host));
    Ok(json!({
        "metrics": { "account_start_s": s, "account_user_nic_start_s": n, "host_fork_exec_s": h },
        "ratios": { "account_start_over_fork_exec": median(&s) / median(&h) },
    }))
}

/// `vws bench job`'s account rows: first output byte, and a CPU-bound
/// loop long enough (seconds) that the job's submission is noise.
pub(crate) async fn job(rig: &Rig, runs: usize, iterations: u64) -> anyhow::Result<Value> {
    let busybox = crate::commands::image_build::busybox()?;
    import_root(rig).await?;
    let id = deployed_account(rig, false).await?;
    rig.client.action(&id, vws_model::Verb::Start).await?;
    let mut first = Vec::new();
    for _ in 0..runs.max(3) * 4 {
        first.push(super::rig::first_byte(&rig.client, &id, &["echo", "hi"]).await?);
    }
    let script = format!("i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done; echo $i");
    let (mut inside, mut host) = (Vec::new(), Vec::new());
    for run in 0..runs.max(3) {
        // Interleaved, so both see the same machine.
        let t = Instant::now();
        let ok = tokio::process::Command::new(busybox)
            .args(["sh", "-c", &script])
            .stdout(std::process::Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(ok.success(), "host loop failed");
        host.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let job = rig
            .client
            .submit_job(&id, json!({ "argv": ["sh", "-c", script] }))
            .await?;
        let out = rig.client.job_output(&job.id, true).await?.bytes().await?;
        inside.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(
            String::from_utf8_lossy(&out).contains("\"event\":\"exited\""),
            "the account's loop did not finish"
        );
        eprintln!(
            "bench job: account CPU run {}: {:.3} s (host {:.3} s)",
            run + 1,
            inside[run],
            host[run]
        );
    }
    rig.client.destroy(&id).await?;
    let (f, c, h) = (summary(first), summary(inside), summary(host));
    Ok(json!({
        "metrics": { "account_run_to_first_byte_s": f, "cpu_job_account_s": c, "cpu_job_host_long_s": h },
        "ratios": { "cpu_slowdown_account_over_host": median(&c) / median(&h) },
    }))
}
