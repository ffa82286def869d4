//! `vws bench density`: how many idle workspaces one node holds. N VMs of
//! 128 MiB restored from one hot image (their RAM mapped private from the
//! image's file, shared until written), then N dynamic accounts, all kept
//! idle while more start. At each count: what each costs beyond what they
//! share (from /proc/PID/smaps_rollup of each QEMU: its proportional set
//! size, and its private pages, which are QEMU's own plus the guest pages
//! it wrote; for an account, its cgroup's memory.current), the node's
//! available memory, and the start time of the first and of the Nth.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use vws_model::Form;

use super::args::BenchArgs;
use super::rig::{env_json, guest_dir, import_guest, Rig};
use crate::Globals;

/// `Key: N kB` of a /proc file, in bytes.
fn kb(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

/// The host's available memory.
fn available() -> u64 {
    kb(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemAvailable:",
    )
}

/// A VM's QEMU: (PSS, private bytes).
fn qemu_memory(node_home: &Path, id: &str) -> (u64, u64) {
    let pid = std::fs::read_to_string(node_home.join("vms").join(id).join("qemu.pid"))
        .unwrap_or_default();
    let rollup =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pid.trim())).unwrap_or_default();
    (
        kb(&rollup, "Pss:"),
        kb(&rollup, "Private_Clean:") + kb(&rollup, "Private_Dirty:"),
    )
}

/// An account's cgroup's charged memory (cgroup v2's memory.current, or
/// v1's memory.usage_in_bytes).
fn account_memory(node_home: &Path, id: &str) -> u64 {
    let init: Value = std::fs::read(node_home.join("vms").join(id).join("init.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let pid = init["pid"].as_i64().unwrap_or(0);
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let read =
        |file: String| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
    let v2 = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .filter(|p| !p.is_empty() && *p != "/")
        .and_then(|p| read(format!("/sys/fs/cgroup{p}/memory.current")));
    let v1 = || {
        cgroup
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
            .and_then(|p| read(format!("/sys/fs/cgroup/memory{p}/memory.usage_in_bytes")))
    };
    v2.or_else(v1).unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// Starts workspaces of `desc` until each count in `counts`, measuring
/// at each; `cost` says what one costs (bytes beyond what is shared) and,
/// for VMs, its PSS.
async fn fill(
    rig: &Rig,
    desc: &str,
    counts: &[usize],
    cost: impl Fn(&str) -> (u64, u64),
    what: &str,
) -> anyhow::Result<Vec<Value>> {
    let before = available();
    let (mut ids, mut starts, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for &n in counts {
        while ids.len() < n {
            let id = rig
                .client
                .create(desc.to_string(), Form::Toml, None)
                .await?
                .record
                .id;
            rig.client.deploy(&id, None).await?;
            let t = Instant::now();
            rig.client.action(&id, vws_model::Verb::Start).await?;
            starts.push(t.elapsed().as_secs_f64());
            ids.push(id);
        }
        // Idle for a moment: what booting touched settles.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let costs: Vec<(u64, u64)> = ids.iter().map(|id| cost(id)).collect();
        let pss = costs.iter().map(|c| c.0).sum::<u64>() / n as u64;
        let private = costs.iter().map(|c| c.1).sum::<u64>() / n as u64;
        let free = available();
        eprintln!(
            "bench density: {n} {what}: {:.1} MiB each beyond what they share ({:.1} MiB PSS), {:.2} GiB available ({:.2} GiB used), start of the first {:.3} s, of the {n}th {:.3} s",
            mib(private),
            mib(pss),
            free as f64 / (1u64 << 30) as f64,
            before.saturating_sub(free) as f64 / (1u64 << 30) as f64,
            starts[0],
            starts[n - 1]
        );
        rows.push(json!({
            "count": n, "private_mib_each": mib(private), "pss_mib_each": mib(pss),
            "available_gib": free as f64 / (1u64 << 30) as f64,
            "used_gib": before.saturating_sub(free) as f64 / (1u64 << 30) as f64,
            "first_start_s": starts[0], "nth_start_s": starts[n - 1],
        }));
    }
    for id in &ids {
        let _ = rig.client.destroy(id).await;
    }
    Ok(rows)
}

/// Runs the suite; whatever it started goes with the rig, failure or not.
pub(crate) async fn density_suite(g: &Globals, a: &BenchArgs) -> anyhow::Result<()> {
    let rig = Rig::up().await?;
    let measured = measure(g, a, &rig).await;
    rig.down().await?;
    measured
}

async fn measure(g: &Globals, a: &BenchArgs, rig: &Rig) -> anyhow::Result<()> {
    import_guest(&rig.client, &guest_dir(g, a)?).await?;
    // The hot image: a 128 MiB minimal VM, booted and paused.
    let vm =
        "category = \"vm\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"minimal:bench\"\n";
    let src = rig
        .client
        .create(vm.into(), Form::Toml, None)
        .await?
        .record
        .id;
    rig.client.deploy(&src, None).await?;
    rig.client.action(&src, vws_model::Verb::Start).await?;
    rig.client.action(&src, vws_model::Verb::Pause).await?;
    rig.client.snapshot(&src, "density-hot:bench").await?;
    rig.client.destroy(&src).await?;
    let hot = "category = \"vm\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"density-hot:bench\"\n";
    let node_home = rig.home().join("node");
    let vms = fill(
        rig,
        hot,
        &a.counts,
        |id| qemu_memory(&node_home, id),
        "hot VMs",
    )
    .await?;
    super::account::import_root(rig).await?;
    let account = "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"account-root:bench\"\n";
    let accounts = fill(
        rig,
        account,
        &a.counts,
        |id| {
            let m = account_memory(&node_home, id);
            (m, m)
        },
        "dynamic accounts",
    )
    .await?;
    let out = json!({ "suite": "density", "env": env_json(), "vms": vms, "accounts": accounts });
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let mut t = crate::output::table(&[
            "KIND",
            "N",
            "MiB EACH (PRIVATE)",
            "MiB EACH (PSS)",
            "GiB USED",
            "1st START s",
            "Nth START s",
        ]);
        for (kind, rows) in [("hot VM", &vms), ("account", &accounts)] {
            for r in rows {
                t.add_row(vec![
                    kind.to_string(),
                    r["count"].to_string(),
                    format!("{:.1}", r["private_mib_each"].as_f64().unwrap_or(0.0)),
                    format!("{:.1}", r["pss_mib_each"].as_f64().unwrap_or(0.0)),
                    format!("{:.2}", r["used_gib"].as_f64().unwrap_or(0.0)),
                    format!("{:.3}", r["first_start_s"].as_f64().unwrap_or(0.0)),
                    format!("{:.3}", r["nth_start_s"].as_f64().unwrap_or(0.0)),
                ]);
            }
        }
        println!("{t}");
    }
    Ok(())
}
