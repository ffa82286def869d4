//! Jobs in a real workspace (TCG, the minimal guest with its agent), through
//! `vws run` and friends. One booted guest serves every assertion.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest;

mod common;
use common::{create, job_state, ok, refused, root, vws, Reap, Steps, VWS};

fn run(home: &Path, id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["run", id, "--"];
    args.extend_from_slice(cmd);
    vws(home, &args)
}

/// A disk encrypted at rest: the repository's copy is LUKS in qcow2 with no
/// plaintext in it, the guest reads and writes it normally across a check-in,
/// the node holds the key only while deployed, and snapshots are refused.
fn encrypted_disk(home: &Path) {
    let desc = home.join("enc.toml");
    std::fs::write(
        &desc,
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\ndisk = { size = \"32MiB\", encrypted = true }\n[software]\nimage = \"minimal:1\"\n",
    )
    .unwrap();
    let id = create(home, &desc);
    let disk = home.join("disks").join(format!("{id}.qcow2"));
    let info = Command::new("qemu-img")
        .arg("info")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("encrypted: yes"));
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    let marker = "plaintext-marker-7f3a9c";
    let out = run(
        home,
        &id,
        &[
            "sh",
            "-c",
            &format!("echo {marker} > /data/secret; sync; cat /data/secret"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        marker,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(home, &["pause", &id]);
    let e = refused(home, &["snapshot", &id, "--as", "enc:1"]);
    assert!(e.contains("encrypted"), "{e}");
    ok(home, &["unpause", &id]);
    ok(home, &["stop", &id]);
    let keys = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("ls /dev/shm/vws-*/{id}.key 2>/dev/null"))
            .output()
            .unwrap()
            .stdout
    };
    assert!(!keys().is_empty(), "the node holds the key while deployed");
    ok(home, &["undeploy", &id]);
    assert!(keys().is_empty(), "and not after");
    let stored = std::fs::read(&disk).unwrap();
    assert!(
        !stored.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "no plaintext in the repository's copy"
    );
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    let out = run(home, &id, &["cat", "/data/secret"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        marker,
        "read back after check-in"
    );
    ok(home, &["destroy", &id]);
    assert!(!home.join("keys").join(format!("{id}.key")).exists());
}

#[test]
fn jobs_in_a_real_workspace() {
    let steps = Steps::new("boot a workspace");
    let image = root().join("target/vws-test-guest");
    assert!(Command::new(root().join("scripts/build-minimal-image"))
        .arg(&image)
        .status()
        .unwrap()
        .success());
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = common::vws_up(home, &[]);
    common::import_minimal(home, &image);
    let desc = root().join("examples/minimal.xml");
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);

    steps.at("the workspace's own credential is in the guest");
    // The workspace's own credential (paper §3.2) is in the guest, the key
    // private to root; the service keeps it until destroy.
    let out = run(
        home,
        &id,
        &[
            "sh",
            "-c",
            "cat /etc/vws/credentials/cert.pem; stat -c %a /etc/vws/credentials/key.pem",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("BEGIN CERTIFICATE") && text.trim_end().ends_with("600"),
        "{text}"
    );
    let held = home.join("credentials").join(&id);
    let key = std::fs::read_to_string(held.join("key.pem")).unwrap();
    let out = run(home, &id, &["cat", "/etc/vws/credentials/key.pem"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        key,
        "the guest has its key"
    );

    steps.at("Exit codes and signals come back exactly");
    // Exit codes and signals come back exactly.
    for code in [0, 1, 7] {
        assert_eq!(
            run(home, &id, &["sh", "-c", &format!("exit {code}")])
                .status
                .code(),
            Some(code)
        );
    }
    assert_eq!(
        run(home, &id, &["sh", "-c", "kill -TERM $$"]).status.code(),
        Some(128 + 15)
    );
    let missing = run(home, &id, &["/no/such/program"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot run"));

    steps.at("10 MB of stdout arrives intact and in order");
    // 10 MB of stdout arrives intact and in order.
    let hash = run(
        home,
        &id,
        &[
            "sh",
            "-c",
            "head -c 10000000 /dev/urandom > /tmp/big && sha256sum /tmp/big",
        ],
    );
    let want = String::from_utf8_lossy(&hash.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let big = run(home, &id, &["cat", "/tmp/big"]);
    assert!(big.status.success());
    assert_eq!(big.stdout.len(), 10_000_000);
    assert_eq!(hex::encode(sha2::Sha256::digest(&big.stdout)), want);

    steps.at("Interleaved stdout and stderr stay separate, each in order");
    // Interleaved stdout and stderr stay separate, each in order.
    let mixed = run(
        home,
        &id,
        &[
            "sh",
            "-c",
            "i=1; while [ $i -le 200 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
        ],
    );
    let outs: Vec<String> = (1..=200).map(|i| format!("out{i}")).collect();
    let errs: Vec<String> = (1..=200).map(|i| format!("err{i}")).collect();
    assert_eq!(
        String::from_utf8_lossy(&mixed.stdout)
            .lines()
            .collect::<Vec<_>>(),
        outs
    );
    assert_eq!(
        String::from_utf8_lossy(&mixed.stderr)
            .lines()
            .collect::<Vec<_>>(),
        errs
    );

    steps.at("Standard input is delivered");
    // Standard input is delivered.
    let mut child = Command::new(VWS)
        .args(["run", &id, "--", "sh", "-c", "tr a-z A-Z; echo done"])
        .env("VWS_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO STDIN\ndone\n");

    steps.at("Cancel kills the process in the guest");
    // Cancel kills the process in the guest.
    let job = ok(
        home,
        &[
            "run",
            "--detach",
            &id,
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 1000",
        ],
    )
    .trim()
    .to_string();
    std::thread::sleep(Duration::from_millis(500));
    ok(home, &["job", "cancel", &job]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while job_state(home, &job)["state"] == "running" {
        assert!(Instant::now() < deadline, "cancel did not end the job");
        std::thread::sleep(Duration::from_millis(100));
    }
    let j = job_state(home, &job);
    assert_eq!(
        (j["state"].as_str(), j["signal"].as_i64()),
        (Some("cancelled"), Some(15))
    );
    let ps = run(home, &id, &["ps"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("sleep 1000"),
        "the process is gone"
    );
    assert_eq!(
        ok(home, &["job", "output", &job]),
        "started\n",
        "late readers get the output from the start"
    );

    steps.at("Ctrl-C on `vws run` cancels the job in the guest and exits with its status");
    // Ctrl-C on `vws run` cancels the job in the guest and exits with its status.
    let child = Command::new(VWS)
        .args([
            "run",
            &id,
            "--",
            "sh",
            "-c",
            "echo waiting; exec sleep 1000",
        ])
        .env("VWS_HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + 15),
        "the job was ended by SIGTERM"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "waiting\n");
    let listed: Value = serde_json::from_str(&ok(home, &["jobs", &id, "--json"])).unwrap();
    let last = listed.as_array().unwrap().last().unwrap();
    assert_eq!(last["state"], "cancelled");

    steps.at("A timeout fires");
    // A timeout fires.
    let t = Instant::now();
    let slow = vws(home, &["run", "--timeout", "1", &id, "--", "sleep", "30"]);
    assert_eq!(slow.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&slow.stderr).contains("timed out"));
    assert!(t.elapsed() < Duration::from_secs(20));

    steps.at("Eight jobs at once in one workspace, each with its own output");
    // Eight jobs at once in one workspace, each with its own output.
    let children: Vec<(usize, Child)> = (0..8)
        .map(|i| {
            let c = Command::new(VWS)
                .args([
                    "run",
                    &id,
                    "--",
                    "sh",
                    "-c",
                    &format!("sleep 1; echo job{i}"),
                ])
                .env("VWS_HOME", home)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            (i, c)
        })
        .collect();
    for (i, c) in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("job{i}\n"));
    }

    steps.at("A batch runs every job, never more than its concurrency at once");
    // A batch runs every job, never more than its concurrency at once.
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let url = format!(
        "{}/v1/workspaces/{id}/jobs/batch",
        server["url"].as_str().unwrap()
    );
    let span =
        "a=$(cut -d' ' -f1 /proc/uptime); sleep 1; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b";
    let body = serde_json::json!({ "concurrency": 2, "jobs": (0..6).map(|_| serde_json::json!({ "argv": ["sh", "-c", span] })).collect::<Vec<_>>() });
    let pki = home.join("pki");
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "content-type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg("--cacert")
        .arg(pki.join("ca/ca.pem"))
        .arg("--cert")
        .arg(pki.join("admin/cert.pem"))
        .arg("--key")
        .arg(pki.join("admin/key.pem"))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "batch submission: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let queued: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<String> = queued
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.iter().any(|j| {
        matches!(
            job_state(home, j)["state"].as_str(),
            Some("queued" | "running")
        )
    }) {
        assert!(Instant::now() < deadline, "the batch did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut spans = Vec::new();
    for j in &ids {
        assert_eq!(job_state(home, j)["exit_code"], 0);
        let text = ok(home, &["job", "output", j]);
        let v: Vec<f64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        spans.push((v[0], v[1]));
    }
    let most = spans
        .iter()
        .map(|&(a, _)| spans.iter().filter(|&&(s, e)| s <= a && a < e).count())
        .max()
        .unwrap();
    assert!(most <= 2, "at most 2 at once, saw {most}: {spans:?}");

    steps.at("Files copied in and back out are byte-identical");
    // Files copied in and back out are byte-identical.
    let local = home.join("payload.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(&local, &payload).unwrap();
    ok(
        home,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("{id}:/tmp/in/payload.bin"),
        ],
    );
    let back = home.join("back.bin");
    ok(
        home,
        &[
            "cp",
            &format!("{id}:/tmp/in/payload.bin"),
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&back).unwrap(), payload);

    steps.at("An agent killed inside the guest comes back, and new jobs work");
    // An agent killed inside the guest comes back, and new jobs work.
    let _ = run(home, &id, &["sh", "-c", "killall vws-agent"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run(home, &id, &["echo", "back"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout) == "back\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not come back");
        std::thread::sleep(Duration::from_millis(300));
    }

    steps.at("The startup program ran at start as a job: its output and status are visible");
    // The startup program ran at start as a job: its output and status are visible.
    let listed: Value = serde_json::from_str(&ok(home, &["jobs", &id, "--json"])).unwrap();
    let startup = &listed[0];
    assert!(startup["argv"][2].as_str().unwrap().contains("hello from"));
    assert_eq!(
        (startup["state"].as_str(), startup["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
    assert!(
        ok(home, &["job", "output", startup["id"].as_str().unwrap()])
            .contains(&format!("hello from {id}"))
    );

    steps.at("The served port answers an HTTP request from the host, where `vws show` says");
    // The served port answers an HTTP request from the host, where `vws show` says.
    let shown: Value = serde_json::from_str(&ok(home, &["show", &id, "--json"])).unwrap();
    let at = shown["binding"]["forwards"][0]["host"]
        .as_str()
        .expect("a forward for port 8080")
        .to_string();
    assert!(ok(home, &["show", &id]).contains(&format!("8080/tcp at {at}")));
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", &format!("http://{at}/")])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "the served port did not answer");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body.trim(), format!("served by {id}"));
    steps.at("the user NIC reaches out through NAT, not to the host's loopback");
    // (nc: the guest's static busybox wget crashes looking up names.)
    // Its user NIC reaches out through NAT: a server on the host's own
    // address answers; the host's loopback, behind 10.0.2.2, does not
    // (QEMU runs in the node's cgroup, whose new connections to loopback
    // nftables refuses), while the served port above still answered.
    let (host_ip, out_port, lo_port) = common::nat_targets();
    let out = run(
        home,
        &id,
        &[
            "sh",
            "-c",
            &format!(
                "echo | nc -w 5 {host_ip} {out_port}; \
                 echo | nc -w 3 10.0.2.2 {lo_port} || echo refused"
            ),
        ],
    );
    common::assert_nat_not_loopback(&out);
    let jobs: Value = serde_json::from_str(&ok(home, &["jobs", &id, "--json"])).unwrap();
    assert!(jobs.as_array().unwrap().len() >= 20);
    steps.at("two workspaces restored from a hot image of it");
    // A hot image of this workspace: two workspaces restored from it carry
    // its memory and disk, yet each has its own hostname, MAC and files.
    ok(
        home,
        &[
            "run",
            &id,
            "--",
            "sh",
            "-c",
            "echo warm > /tmp/mark; echo kept > /data/d; sync",
        ],
    );
    ok(home, &["pause", &id]);
    let old_cert = home.join("old-cert.pem");
    std::fs::copy(held.join("cert.pem"), &old_cert).unwrap();
    ok(home, &["snapshot", &id, "--as", "ready:1"]);
    steps.at("the hot image's credential is revoked; each clone gets its own");
    // The hot image holds the workspace's memory, its key with it: that
    // credential is revoked, and the workspace gets a new one when it runs.
    assert!(!held.exists(), "the old credential is gone");
    let shown: Value = serde_json::from_str(&ok(
        home,
        &["cert", "show", "--json", old_cert.to_str().unwrap()],
    ))
    .unwrap();
    let revoked = std::fs::read_to_string(home.join("pki/ca/revoked")).unwrap();
    assert!(
        revoked.contains(shown["serial"].as_str().unwrap()),
        "revoked at snapshot"
    );
    let image: Value =
        serde_json::from_str(&ok(home, &["image", "show", "ready:1", "--json"])).unwrap();
    assert_eq!(image["kind"], "hot");
    let hot = home.join("hot.toml");
    std::fs::write(
        &hot,
        "category = \"vm\"\n[hardware]\nram = { min = \"256MiB\", max = \"512MiB\" }\ndisk = { size = \"64MiB\" }\n\
         [network]\nnics = [{ name = \"eth0\", method = \"user\" }]\n[software]\nimage = \"ready:1\"\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let w = ok(home, &["create", hot.to_str().unwrap()])
            .lines()
            .next()
            .unwrap()
            .to_string();
        ok(home, &["deploy", &w]);
        ok(home, &["start", &w]);
        let out = run(home, &w, &["sh", "-c", "echo $(hostname) $(cat /sys/class/net/eth0/address) $(cat /tmp/mark) $(cat /data/d)"]);
        let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(fields.len(), 4, "{fields:?}");
        assert_eq!(fields[0], w, "its own hostname");
        assert_eq!(
            &fields[2..],
            ["warm", "kept"],
            "memory and disk come from the hot image"
        );
        seen.push((w, fields[1].clone()));
    }
    assert_ne!(seen[0].1, seen[1].1, "each clone has its own MAC");
    steps.at("the clones share the hot image's RAM pages");
    // Their RAM is the hot image's file, mapped private by both QEMUs: the
    // pages neither has written are the same page-cache pages. (QEMU maps
    // the initrd from the cache too: the RAM is the largest mapping.)
    let ram_mapping = |w: &str| -> (String, u64) {
        let pid = std::fs::read_to_string(home.join("node/vms").join(w).join("qemu.pid")).unwrap();
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", pid.trim())).unwrap();
        // (path, mapping size, shared clean bytes) of each cache file mapping.
        let mut maps: Vec<(String, u64, u64)> = Vec::new();
        let mut in_cache = false;
        for line in smaps.lines() {
            // Mapping headers start with an address range; fields with `Name:`.
            let first = line.split_whitespace().next().unwrap_or("");
            if !first.ends_with(':') {
                let path = line.split_whitespace().nth(5).unwrap_or("").to_string();
                in_cache = path.contains("/node/cache/sha256/");
                if in_cache {
                    let (from, to) = first.split_once('-').unwrap();
                    let size = u64::from_str_radix(to, 16).unwrap()
                        - u64::from_str_radix(from, 16).unwrap();
                    maps.push((path, size, 0));
                }
            } else if in_cache && line.starts_with("Shared_Clean:") {
                let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
                maps.last_mut().expect("a header first").2 += kb << 10;
            }
        }
        let (path, _, shared) = maps
            .into_iter()
            .max_by_key(|m| m.1)
            .expect("a RAM mapping of a file in the node's cache");
        (path, shared)
    };
    let (a, b) = (ram_mapping(&seen[0].0), ram_mapping(&seen[1].0));
    assert_eq!(a.0, b.0, "both map the same hot image RAM file");
    assert!(
        a.1 > 16 << 20 && b.1 > 16 << 20,
        "pages are shared between the two: {} and {} bytes",
        a.1,
        b.1
    );
    ok(
        home,
        &[
            "run",
            &seen[0].0,
            "--",
            "sh",
            "-c",
            "echo only-here > /tmp/a",
        ],
    );
    let other = run(
        home,
        &seen[1].0,
        &["sh", "-c", "cat /tmp/a 2>/dev/null || echo absent"],
    );
    assert_eq!(String::from_utf8_lossy(&other.stdout), "absent\n");
    steps.at("Each clone has a credential of its own (not the image's)");
    // Each clone has a credential of its own (not the image's).
    let clone_held = home.join("credentials").join(&seen[0].0);
    let clone_key = std::fs::read_to_string(clone_held.join("key.pem")).unwrap();
    assert_ne!(clone_key, key);
    let out = run(home, &seen[0].0, &["cat", "/etc/vws/credentials/key.pem"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), clone_key);
    let ran: Value = serde_json::from_str(&ok(home, &["jobs", &id, "--json"])).unwrap();
    let logs: Vec<std::path::PathBuf> = ran
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            home.join("node/jobs")
                .join(format!("{}.ndjson", j["id"].as_str().unwrap()))
        })
        .collect();
    assert!(
        logs.len() >= 20 && logs.iter().all(|l| l.exists()),
        "{logs:?}"
    );
    ok(home, &["destroy", &seen[0].0, &seen[1].0, &id]);
    steps.at("Its jobs' logs go with it (they grew without bound before)");
    // Its jobs' logs go with it (they grew without bound before).
    let left: Vec<_> = logs.iter().filter(|l| l.exists()).collect();
    assert!(left.is_empty(), "job logs left after destroy: {left:?}");
    steps.at("nothing of the workspace's key is left on the host");
    // The credential is gone from the host with the workspace, and no file
    // under VWS_HOME (logs included) holds its key.
    assert!(!clone_held.exists(), "credentials removed at destroy");
    let secret: String = clone_key.lines().nth(1).unwrap().to_string();
    encrypted_disk(home);
    let leaked = Command::new("grep")
        .args(["-rlF", &secret])
        .arg(home)
        .output()
        .unwrap();
    assert!(
        leaked.stdout.is_empty(),
        "the workspace key is still on the host: {}",
        String::from_utf8_lossy(&leaked.stdout)
    );
}
