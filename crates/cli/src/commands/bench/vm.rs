//! Benchmarks that run real workspaces: `start` (cold boot against bare QEMU)
//! and `stage` (staging throughput against curl and cp). Each starts its own
//! service and node in a temporary folder and measures side by side.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use vws_client::Client;
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::{
    env_json, first_byte, guest_dir, hot_runs_of, import_guest, median, summary, Rig,
};
use crate::output::table;
use crate::Globals;

fn tsc_arg() -> String {
    vws_node::accel::tsc_khz()
        .map(|k| format!(" tsc_early_khz={k}"))
        .unwrap_or_default()
}

/// Bare QEMU: the same kernel, initrd, machine and memory, nothing of vws.
fn bare_qemu_boot(guest: &Path, work: &Path, run: usize) -> anyhow::Result<f64> {
    let console = work.join(format!("bare-{run}.log"));
    std::fs::write(&console, b"")?;
    let append = format!("console=ttyS0 quiet vws.hostname=bare{}", tsc_arg());
    let accel = vws_node::accel::detect().0.as_str();
    let t = Instant::now();
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            &format!("microvm,accel={accel},pit=off"),
            "-cpu",
            "qemu64,+arat",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-m",
            "256M",
            "-smp",
            "1",
        ])
        .args([
            "-kernel",
            &guest.join("vmlinuz").to_string_lossy(),
            "-initrd",
            &guest.join("initrd.img").to_string_lossy(),
        ])
        .args([
            "-append",
            &append,
            "-serial",
            &format!("file:{}", console.display()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running qemu-system-x86_64")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready = loop {
        if std::fs::read(&console)
            .map(|b| String::from_utf8_lossy(&b).contains(vws_node::qemu::READY_MARK))
            .unwrap_or(false)
        {
            break Ok(t.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("bare QEMU did not reach readiness in 90 s"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.kill();
    let _ = child.wait();
    ready
}

/// `vws bench start`: cold start, request → guest ready, against bare QEMU.
pub async fn start_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let guest = guest_dir(g, a)?;
    let rig = Rig::up().await?;
    let result = async {
        import_guest(&rig.client, &guest).await?;
        std::fs::create_dir_all(guest_for(rig.home()))?;
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::copy(guest.join(f), guest_for(rig.home()).join(f))?;
        }
        let desc = "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"minimal:bench\"\n";
        let id = rig.client.create(desc.into(), Form::Toml, None).await?.record.id;
        rig.client.deploy(&id, None).await?;
        let (mut cold, mut bare) = (Vec::new(), Vec::new());
        for run in 0..a.runs {
            // Interleaved, so both see the same machine conditions.
            let work = rig.home().to_path_buf();
            bare.push(tokio::task::spawn_blocking(move || bare_qemu_boot(&guest_for(&work), &work, run)).await??);
            let t = Instant::now();
            rig.client.action(&id, vws_model::Verb::Start).await?;
            cold.push(t.elapsed().as_secs_f64());
            rig.client.action(&id, vws_model::Verb::Stop).await?;
            eprintln!("bench start: run {}/{}: vws {:.3} s, bare QEMU {:.3} s", run + 1, a.runs, cold[run], bare[run]);
        }
        rig.client.destroy(&id).await?;
        // The hot path, at two RAM sizes: a hot image of a booted workspace,
        // then fresh workspaces started from it by restore (identity
        // refreshed), timed to ready and to a job's first output.
        let mut hot = serde_json::Map::new();
        // And with a user NIC, as most descriptions have: its MAC changes too.
        for (mib, nic, key) in [(256u64, false, "256MiB"), (2048, false, "2048MiB"), (256, true, "256MiB_user_nic")] {
            let (ready, job) = hot_runs(&rig.client, mib, nic, a.runs).await?;
            hot.insert(key.into(), json!({ "hot_start_s": summary(ready), "hot_start_to_job_output_s": summary(job) }));
        }
        let account = super::account::start(&rig, a.runs).await?;
        // The same hot starts on a node without a warm pool, for comparison.
        let unpooled = Rig::with_warm_pool(0).await?;
        let (ready, job) = async {
            import_guest(&unpooled.client, &guest).await?;
            hot_runs(&unpooled.client, 256, false, a.runs).await
        }
        .await?;
        unpooled.down().await?;
        hot.insert("256MiB_no_pool".into(), json!({ "hot_start_s": summary(ready), "hot_start_to_job_output_s": summary(job) }));
        let (c, b) = (summary(cold), summary(bare));
        let ratio = median(&c) / median(&b);
        let hot_small = median(&hot["256MiB"]["hot_start_to_job_output_s"]);
        let hot_big = median(&hot["2048MiB"]["hot_start_to_job_output_s"]);
        let hot_unpooled = median(&hot["256MiB_no_pool"]["hot_start_to_job_output_s"]);
        let report = json!({
            "suite": "start",
            "runs": a.runs,
            "metrics": { "cold_start_s": c, "bare_qemu_boot_s": b, "hot": hot, "account": account["metrics"] },
            "ratios": {
                "cold_over_raw_qemu": ratio,
                "cold_over_hot_256MiB": median(&c) / hot_small,
                "cold_over_hot_256MiB_no_pool": median(&c) / hot_unpooled,
                "hot_2GiB_over_hot_256MiB": hot_big / hot_small,
                "account_start_over_fork_exec": account["ratios"]["account_start_over_fork_exec"],
            },
            "env": env_json(),
        });
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["", "MIN s", "MEDIAN s", "MAX s"]);
            let m = &report["metrics"];
            for (name, v) in [
                ("vws start → ready (cold, 256 MiB)", &m["cold_start_s"]),
                ("bare qemu-system-x86_64 → ready", &m["bare_qemu_boot_s"]),
                ("hot start → ready, 256 MiB", &m["hot"]["256MiB"]["hot_start_s"]),
                ("hot start → first job output, 256 MiB", &m["hot"]["256MiB"]["hot_start_to_job_output_s"]),
                ("hot start → ready, 2 GiB", &m["hot"]["2048MiB"]["hot_start_s"]),
                ("hot start → first job output, 2 GiB", &m["hot"]["2048MiB"]["hot_start_to_job_output_s"]),
                ("hot start → ready, 256 MiB, user NIC", &m["hot"]["256MiB_user_nic"]["hot_start_s"]),
                ("hot start → first job output, 256 MiB, user NIC", &m["hot"]["256MiB_user_nic"]["hot_start_to_job_output_s"]),
                ("hot start → ready, 256 MiB, no warm pool", &m["hot"]["256MiB_no_pool"]["hot_start_s"]),
                ("hot start → first job output, 256 MiB, no warm pool", &m["hot"]["256MiB_no_pool"]["hot_start_to_job_output_s"]),
                ("dynamic account start → running", &m["account"]["account_start_s"]),
                ("dynamic account with a user NIC start → running", &m["account"]["account_user_nic_start_s"]),
                ("host fork/exec of true → exit", &m["account"]["host_fork_exec_s"]),
            ] {
                t.add_row(vec![name.to_string(), format!("{:.3}", v["min"].as_f64().unwrap_or(0.0)), format!("{:.3}", median(v)), format!("{:.3}", v["max"].as_f64().unwrap_or(0.0))]);
            }
            println!("{t}");
            let r = &report["ratios"];
            println!(
                "cold / bare QEMU = {ratio:.3}; cold / hot (to job output, 256 MiB) = {:.1}x ({:.1}x without the warm pool); hot 2 GiB / 256 MiB = {:.2}; account start / fork-exec = {:.1}x  ({} runs, {})",
                r["cold_over_hot_256MiB"].as_f64().unwrap_or(0.0),
                r["cold_over_hot_256MiB_no_pool"].as_f64().unwrap_or(0.0),
                r["hot_2GiB_over_hot_256MiB"].as_f64().unwrap_or(0.0),
                r["account_start_over_fork_exec"].as_f64().unwrap_or(0.0),
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

// The bare-QEMU closure needs the guest folder by value; it lives beside the rig's files.
fn guest_for(work: &Path) -> PathBuf {
    work.join("guest")
}

/// `vws bench stage`: staging throughput, against curl and cp of the same bytes.
pub async fn stage_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let rig = Rig::up().await?;
    let result = async {
        let size = a.stage_mib << 20;
        let image = rig.home().join("stage.raw");
        {
            // Incompressible content, so no layer can cheat.
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&image)?);
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..a.stage_mib {
                for chunk in buf.chunks_mut(8) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
                }
                f.write_all(&buf)?;
            }
        }
        mark_bootable(&image)?;
        let digest = vws_store::manifest(&image)?.digest;
        rig.client.upload_blob(&image, &digest, |_| {}).await?;
        rig.client.import_image(json!({ "name": "stage", "tag": "1", "disk": digest })).await?;
        let desc = "category = \"vm\"\n[software]\nimage = \"stage:1\"\n";
        let url = format!("{}/v1/blobs/{digest}", rig.running.url);
        let cache = rig.home().join("node/cache/sha256").join(digest.trim_start_matches("sha256:"));
        let (mut vws, mut curl, mut cp) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..a.runs {
            let out = rig.home().join("curl.out");
            let t = Instant::now();
            let ok = tokio::process::Command::new("curl").args(["-sf", "-o"]).arg(&out).arg("--cacert").arg(rig.home().join("pki/ca/ca.pem")).arg("--cert").arg(rig.home().join("pki/admin/cert.pem")).arg("--key").arg(rig.home().join("pki/admin/key.pem")).arg(&url).status().await.context("running curl")?;
            anyhow::ensure!(ok.success(), "curl failed");
            curl.push(size as f64 / t.elapsed().as_secs_f64() / 1048576.0);
            let t = Instant::now();
            let ok = tokio::process::Command::new("cp").arg(&image).arg(&out).status().await?;
            anyhow::ensure!(ok.success(), "cp failed");
            cp.push(size as f64 / t.elapsed().as_secs_f64() / 1048576.0);
            let _ = std::fs::remove_file(&out);

            let _ = std::fs::remove_file(&cache);
            let id = rig.client.create(desc.into(), Form::Toml, None).await?.record.id;
            let t = Instant::now();
            rig.client.deploy(&id, None).await?;
            vws.push(size as f64 / t.elapsed().as_secs_f64() / 1048576.0);
            rig.client.destroy(&id).await?;
            eprintln!("bench stage: run {}/{}: vws {:.0} MiB/s, curl {:.0} MiB/s, cp {:.0} MiB/s", run + 1, a.runs, vws[run], curl[run], cp[run]);
        }
        // Re-staging an image the node already holds: only the workspace's own overlay moves.
        let id = rig.client.create(desc.into(), Form::Toml, None).await?.record.id;
        rig.client.deploy(&id, None).await?;
        let history = rig.client.history(&id).await?;
        let restaged = history
            .iter()
            .rev()
            .find(|h| h.action == vws_model::records::HistoryAction::Deploy)
            .and_then(|h| h.detail.as_deref())
            .and_then(|d| d.split("; ").nth(1))
            .and_then(|d| d.split(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .context("reading the staged byte count")?;
        let overlay = rig.client.show(&id).await?;
        let (v, c, p) = (summary(vws), summary(curl), summary(cp));
        let report = json!({
            "suite": "stage",
            "runs": a.runs,
            "metrics": { "vws_stage_mib_s": v, "curl_loopback_mib_s": c, "cp_mib_s": p, "restage_bytes_moved": restaged, "image_bytes": size },
            "ratios": { "stage_over_curl": median(&v) / median(&c), "stage_over_cp": median(&v) / median(&p) },
            "env": env_json(),
        });
        let _ = overlay;
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["", "MIN MiB/s", "MEDIAN MiB/s", "MAX MiB/s"]);
            for (name, key) in [("vws deploy (stage image + disk)", "vws_stage_mib_s"), ("curl over loopback", "curl_loopback_mib_s"), ("cp", "cp_mib_s")] {
                let m = &report["metrics"][key];
                t.add_row(vec![name.to_string(), format!("{:.0}", m["min"].as_f64().unwrap_or(0.0)), format!("{:.0}", median(m)), format!("{:.0}", m["max"].as_f64().unwrap_or(0.0))]);
            }
            println!("{t}");
            println!(
                "stage / curl = {:.2}, stage / cp = {:.2}; re-staging the cached {} MiB image moved {restaged} bytes (the workspace's overlay only)",
                report["ratios"]["stage_over_curl"].as_f64().unwrap_or(0.0),
                report["ratios"]["stage_over_cp"].as_f64().unwrap_or(0.0),
                a.stage_mib
            );
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    rig.down().await?;
    result
}

/// Makes a hot image of a booted workspace with `mib` of RAM, then times
/// `runs` fresh workspaces from it: request → ready, and request → first
/// output of a job run as soon as start returns.
async fn hot_runs(
    client: &Client,
    mib: u64,
    nic: bool,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    hot_runs_of(client, "minimal:bench", mib, nic, runs).await
}

/// The same on the host: fork/exec and read the first byte.
async fn host_first_byte(argv: &[&str]) -> anyhow::Result<f64> {
    use tokio::io::AsyncReadExt;
    let t = Instant::now();
    let mut child = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut b = [0u8; 1];
    child
        .stdout
        .as_mut()
        .context("stdout")?
        .read_exact(&mut b)
        .await?;
    let at = t.elapsed().as_secs_f64();
    child.wait().await?;
    Ok(at)
}

/// `vws bench job`: request → first output byte, and a CPU-bound job's slowdown.
pub async fn job_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let guest = guest_dir(g, a)?;
    let busybox = crate::commands::image_build::busybox()?;
    let rig = Rig::up().await?;
    let result = async {
        import_guest(&rig.client, &guest).await?;
        let desc = "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"minimal:bench\"\n";
        let id = rig.client.create(desc.into(), Form::Toml, None).await?.record.id;
        rig.client.deploy(&id, None).await?;
        rig.client.action(&id, vws_model::Verb::Start).await?;
        let runs = a.runs.max(3) * 4;
        let (mut vm, mut host) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            vm.push(first_byte(&rig.client, &id, &["echo", "hi"]).await?);
            host.push(host_first_byte(&["echo", "hi"]).await?);
        }
        let loop_ = "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; echo $i";
        let (mut vm_cpu, mut host_cpu) = (Vec::new(), Vec::new());
        for _ in 0..a.runs.max(3) {
            let t = Instant::now();
            let job = rig.client.submit_job(&id, json!({ "argv": ["sh", "-c", loop_] })).await?;
            let _ = rig.client.job_output(&job.id, true).await?.bytes().await?;
            vm_cpu.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let ok = tokio::process::Command::new(busybox).args(["sh", "-c", loop_]).stdout(std::process::Stdio::null()).status().await?;
            anyhow::ensure!(ok.success(), "host loop failed");
            host_cpu.push(t.elapsed().as_secs_f64());
        }
        rig.client.destroy(&id).await?;
        let account = super::account::job(&rig, a.runs, 3_000_000).await?;
        let (v, h, vc, hc) = (summary(vm), summary(host), summary(vm_cpu), summary(host_cpu));
        let mut metrics = json!({ "run_to_first_byte_s": v, "host_fork_exec_first_byte_s": h, "cpu_job_vm_s": vc, "cpu_job_host_s": hc });
        for (k, val) in account["metrics"].as_object().into_iter().flatten() {
            metrics[k] = val.clone();
        }
        let report = json!({
            "suite": "job",
            "runs": runs,
            "metrics": metrics,
            "ratios": {
                "first_byte_vm_over_host": median(&v) / median(&h),
                "cpu_slowdown_vm_over_host": median(&vc) / median(&hc),
                "cpu_slowdown_account_over_host": account["ratios"]["cpu_slowdown_account_over_host"],
            },
            "env": env_json(),
        });
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["", "MIN s", "MEDIAN s", "MAX s"]);
            for (name, key) in [
                ("vws run → first output byte", "run_to_first_byte_s"),
                ("host fork/exec → first byte", "host_fork_exec_first_byte_s"),
                ("CPU-bound job in the workspace", "cpu_job_vm_s"),
                ("same job on the host (busybox sh)", "cpu_job_host_s"),
                ("dynamic account: vws run → first output byte", "account_run_to_first_byte_s"),
                ("dynamic account: CPU job, 10x longer", "cpu_job_account_s"),
                ("same 10x job on the host (busybox sh)", "cpu_job_host_long_s"),
            ] {
                let m = &report["metrics"][key];
                t.add_row(vec![name.to_string(), format!("{:.4}", m["min"].as_f64().unwrap_or(0.0)), format!("{:.4}", median(m)), format!("{:.4}", m["max"].as_f64().unwrap_or(0.0))]);
            }
            println!("{t}");
            println!("ratios: {}  ({})", report["ratios"], report["env"]);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    rig.down().await?;
    result
}

/// Writes `mib` MiB of non-zero bytes (so no layer can skip them).
fn write_image(path: &Path, mib: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; 1 << 20];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 + 1;
    }
    for n in 0..mib {
        buf[0] = n as u8;
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// Gives a synthetic disk a boot sector's signature (and no ext superblock
/// magic), so the factory takes it for a disk that boots by itself: a VM
/// is refused at create otherwise.
fn mark_bootable(path: &Path) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(510))?;
    f.write_all(&[0x55, 0xaa])?;
    f.seek(SeekFrom::Start(1080))?;
    f.write_all(&[0, 0])?;
    Ok(())
}

/// `vws bench clone`: creating a workspace is a copy-on-write clone of its
/// pool image; its time must not grow with the image, unlike `cp`'s.
pub async fn clone_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let rig = Rig::up().await?;
    let result = async {
        let mut metrics = serde_json::Map::new();
        let mut ratios = serde_json::Map::new();
        let mut rows = Vec::new();
        for &mib in &a.clone_mib {
            let image = rig.home().join(format!("clone-{mib}.raw"));
            write_image(&image, mib)?;
            mark_bootable(&image)?;
            let digest = tokio::task::spawn_blocking({
                let image = image.clone();
                move || vws_node::staging::file_digest(&image)
            })
            .await??;
            rig.client.upload_blob(&image, &digest, |_| {}).await?;
            let tag = format!("{mib}");
            rig.client.import_image(json!({ "name": "clone", "tag": tag, "disk": digest })).await?;
            let desc = format!("category = \"vm\"\n[software]\nimage = \"clone:{mib}\"\n");
            let (mut clone, mut copy) = (Vec::new(), Vec::new());
            for _ in 0..a.runs.max(3) {
                let t = Instant::now();
                let ws = rig.client.create(desc.clone(), Form::Toml, None).await?;
                clone.push(t.elapsed().as_secs_f64());
                rig.client.destroy(&ws.record.id).await?;
                let out = rig.home().join("copy.raw");
                let t = Instant::now();
                let ok = tokio::process::Command::new("cp").arg(&image).arg(&out).status().await?;
                anyhow::ensure!(ok.success(), "cp failed");
                // cp's data must reach the disk, as the overlay's creation does.
                tokio::process::Command::new("sync").arg(&out).status().await?;
                copy.push(t.elapsed().as_secs_f64());
                std::fs::remove_file(&out)?;
            }
            let _ = std::fs::remove_file(&image);
            let (c, p) = (summary(clone), summary(copy));
            eprintln!("bench clone: {mib} MiB: create {:.4} s, cp {:.3} s", median(&c), median(&p));
            rows.push(vec![format!("{mib} MiB"), format!("{:.4}", median(&c)), format!("{:.3}", median(&p)), format!("{:.0}", median(&p) / median(&c))]);
            ratios.insert(format!("cp_over_clone_at_{mib}mib"), json!(median(&p) / median(&c)));
            metrics.insert(format!("clone_s_at_{mib}mib"), c);
            metrics.insert(format!("cp_s_at_{mib}mib"), p);
        }
        let (lo, hi) = (a.clone_mib[0], a.clone_mib[a.clone_mib.len() - 1]);
        ratios.insert(
            format!("clone_{hi}_over_{lo}"),
            json!(median(&metrics[&format!("clone_s_at_{hi}mib")]) / median(&metrics[&format!("clone_s_at_{lo}mib")])),
        );
        let report = json!({ "suite": "clone", "runs": a.runs.max(3), "metrics": metrics, "ratios": ratios, "env": env_json() });
        if g.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let mut t = table(&["IMAGE", "CREATE (CoW clone) s, median", "cp + sync s, median", "cp / clone"]);
            for r in rows {
                t.add_row(r);
            }
            println!("{t}");
            println!("ratios: {}", report["ratios"]);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    rig.down().await?;
    result
}
