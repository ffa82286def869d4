//! Dynamic accounts end to end (`vws up`, a busybox root filesystem made by
//! `vws image build`): the leased uid, isolation, the limits of the
//! hardware description, pause, served ports, a node killed with -9 and
//! restarted, and nothing of the account left after destroy. One workspace
//! serves the assertions that do not end it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{create, ok, vws, Kill as Up, Reap, VWS};

fn run(home: &Path, id: &str, script: &str) -> Output {
    vws(home, &["run", id, "--", "sh", "-c", script])
}

fn up(home: &Path) -> Up {
    up_with(home, "1000000000-1000000999")
}

/// `vws up` whose node leases `accounts`: tests running side by side keep
/// to their own uids.
fn up_with(home: &Path, accounts: &str) -> Up {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("up.log"))
        .unwrap();
    // Started holding descriptors it does not know of, as from a shell
    // (`exec 8</`): a directory of the host's and a pipe. Jobs must get
    // none of them.
    let up = Up(Command::new("sh")
        .args([
            "-c",
            "exec 8</ 9>/dev/null; exec \"$0\" \"$@\"",
            VWS,
            "up",
            "--listen",
            "127.0.0.1:0",
            "--accounts",
            accounts,
        ])
        .env("VWS_HOME", home)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap());
    common::wait_until_up(home);
    up
}

/// The workspace's cgroup (named `<node tag>-<id>`), or where it would be.
fn cgroup(controller: &str, id: &str) -> PathBuf {
    let dir = Path::new("/sys/fs/cgroup").join(controller).join("vws");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&format!("-{id}")))
        .unwrap_or_else(|| dir.join(id))
}

/// The real uid of a process, or None once it is gone.
fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next()?.parse::<u32>().ok())
        })
}

/// Host pids whose real uid is `uid` (zombies included).
fn processes_of(uid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| uid_of(*pid) == Some(uid))
        .collect()
}

/// The host pid of a running account's PID 1.
fn init_of(id: &str) -> String {
    std::fs::read_to_string(cgroup("pids", id).join("cgroup.procs"))
        .unwrap()
        .lines()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1"))
        })
        .expect("the workspace's PID 1")
        .to_string()
}

fn parent_of(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .expect("a parent")
        .trim()
        .to_string()
}

fn output_lines(home: &Path, job: &str) -> usize {
    ok(home, &["job", "output", job]).lines().count()
}

#[test]
fn dynamic_accounts_end_to_end() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let mut node = up(home);
    ok(home, &["image", "build", "tiny:1", "--from", "busybox"]);
    let desc = home.join("account.xml");
    std::fs::write(
        &desc,
        r#"<virtualWorkspace xmlns="urn:vws:workspace:1" xmlns:hw="urn:vws:hardware:1"
    xmlns:net="urn:vws:network:1" xmlns:sw="urn:vws:software:1" xmlns:cap="urn:vws:capability:1">
  <category>dynamic account</category>
  <hw:hardware>
    <hw:cpus min="1" max="1"/>
    <hw:ram min="128MiB" max="128MiB"/>
    <hw:disk size="16MiB" type="raw" access="rw"/>
  </hw:hardware>
  <net:network><net:nic name="eth0" method="user"/></net:network>
  <sw:software><sw:image>tiny:1</sw:image></sw:software>
  <cap:capability>
    <cap:startup>mkdir -p /tmp/www; echo "served by $(hostname)" > /tmp/www/index.html; httpd -p 8080 -h /tmp/www</cap:startup>
    <cap:service port="8080" protocol="tcp"/>
  </cap:capability>
</virtualWorkspace>"#,
    )
    .unwrap();
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);

    // The job runs as the leased uid: the host sees the same uid on the
    // workspace's processes, from the node's range.
    let out = run(home, &id, "id -u; id -un; hostname");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let uid: u32 = lines[0].parse().unwrap();
    assert!((1_000_000_000..=1_000_000_999).contains(&uid), "{uid}");
    assert_eq!(lines[1], "ws");
    assert_eq!(lines[2], id, "the workspace's own hostname");
    let procs: Vec<u32> = std::fs::read_to_string(cgroup("pids", &id).join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(!procs.is_empty());
    // All of them but the user NIC's network stack (slirp4netns, root on
    // the host side, in the workspace's cgroups so that pause, stop and
    // destroy take it too).
    let comm = |p: &u32| {
        std::fs::read_to_string(format!("/proc/{p}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let slirp: Vec<u32> = procs
        .iter()
        .copied()
        .filter(|p| comm(p) == "slirp4netns")
        .collect();
    assert_eq!(slirp.len(), 1, "one slirp4netns in the cgroup: {procs:?}");
    // A job's helper joins the cgroups as root and drops to the account a
    // moment later (the startup program's may still be on its way): a
    // process is judged once that moment has surely passed, and one that
    // ended meanwhile is not judged.
    for p in procs.iter().filter(|p| !slirp.contains(p)) {
        let mut seen = uid_of(*p);
        if seen != Some(uid) {
            eprintln!("pid {p} ({}) first seen as uid {seen:?}", comm(p));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.is_some_and(|u| u != uid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            seen = uid_of(*p);
        }
        assert!(
            seen.is_none() || seen == Some(uid),
            "pid {p} ({}) runs as {seen:?}, not {uid}",
            comm(p)
        );
    }

    // Nothing of the host is visible: not its processes, not its files.
    let host_pid = node.0.id();
    let out = run(
        home,
        &id,
        &format!(
            "ls /proc | grep -c '^[0-9]'; test -e /proc/{host_pid}/exe && echo host-pid; \
             test -e {}/server.json && echo host-file; test -e /sys/fs/cgroup && echo sys; \
             cat /proc/1/cmdline | tr '\\0' ' '",
            home.display()
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let count: usize = text.lines().next().unwrap().parse().unwrap();
    assert!(count < 10, "only the workspace's processes: {text}");
    assert!(!text.contains("host-file"), "{text}");
    assert!(!text.contains("sys"), "{text}");
    assert!(!text.contains(&home.display().to_string()), "{text}");
    // A job gets stdin, stdout and stderr and nothing else of the node's
    // (it started with fds 8 and 9 open); PID 1's descriptors are out of
    // reach; no host path shows in the mount table; the host kernel's
    // command line is masked; and PID 1 does not die of a job's signal.
    let out = run(
        home,
        &id,
        "ls /proc/self/fd | tr '\\n' ' '; echo; ls /proc/1/fd >/dev/null 2>&1 && echo pid1-fds; \
         cat /proc/self/mountinfo; echo \"cmdline:$(cat /proc/cmdline)\"; \
         cat /proc/self/oom_score_adj; kill -TERM 1; kill -HUP 1; sleep 0.3",
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let fds: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    // 3 is ls's own handle on the folder it lists.
    assert!(
        fds.iter().all(|f| ["0", "1", "2", "3"].contains(f)),
        "{text}"
    );
    assert!(!text.contains("pid1-fds"), "{text}");
    assert!(!text.contains(&home.display().to_string()), "{text}");
    assert!(text.contains("cmdline:\n"), "{text}");
    assert!(
        text.lines().any(|l| l == "1000"),
        "jobs go first under memory pressure: {text}"
    );
    let out = run(home, &id, "echo still-running");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still-running"),
        "PID 1 survived the job's kill: {out:?}"
    );
    let show: Value = serde_json::from_str(&ok(home, &["show", &id, "--json"])).unwrap();
    assert_eq!(show["state"], "running", "{show}");
    // A job's argv is not on the helper's command line in the host's ps.
    let mut sleeper = Command::new(VWS)
        .args([
            "run",
            &id,
            "--",
            "sh",
            "-c",
            "sleep 3; true",
            "secret-in-argv",
        ])
        .env("VWS_HOME", home)
        .env_remove("VWS_SERVER")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen_job = false;
    while Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            assert!(
                !(cmd.contains("__sandbox") && cmd.contains("secret-in-argv")),
                "the helper shows the job's argv: {cmd}"
            );
            seen_job |= cmd.contains("sleep 3; true\0secret-in-argv");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_job, "the job itself was seen running");
    let _ = sleeper.wait();

    // The served port answers from the host; the lease is on the record.
    let show: Value = serde_json::from_str(&ok(home, &["show", &id, "--json"])).unwrap();
    assert_eq!(show["account"]["uid"], uid, "{show}");
    assert_eq!(show["account"]["node"], "local", "{show}");
    let at = show["binding"]["forwards"][0]["host"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = Command::new("curl")
            .args(["-s", "--max-time", "2", &format!("http://{at}/")])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&body.stdout).contains(&format!("served by {id}")) {
            break;
        }
        assert!(Instant::now() < deadline, "served port {at}: {body:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Its user NIC reaches out through NAT (slirp4netns), as a VM's does: a
    // server on the host's own address answers; the host's loopback, behind
    // 10.0.2.2, does not.
    let (host_ip, out_port, lo_port) = common::nat_targets();
    let out = run(
        home,
        &id,
        &format!(
            "cat /etc/resolv.conf; wget -q -O - http://{host_ip}:{out_port}/; \
             wget -q -T 3 -O - http://10.0.2.2:{lo_port}/ || echo refused"
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    common::assert_nat_not_loopback(&out);

    // A job's arguments are not bound by the kernel's 128 KiB limit on one
    // exec argument (the helper's plan used to be one): 600 arguments of
    // 1000 bytes reach the job.
    let big: Vec<String> = (0..600).map(|i| format!("{i:0>1000}")).collect();
    let mut args = vec!["run", &id, "--", "sh", "-c", "echo $# ${#1}", "sh"];
    args.extend(big.iter().map(String::as_str));
    let out = vws(home, &args);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "600 1000",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A memory hog past 128 MiB is killed, and the job says why.
    let out = run(
        home,
        &id,
        "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    assert_eq!(out.status.code(), Some(137), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory limit (128 MiB)"), "{err}");

    // Standard input reaches the job; files go in and out as the account.
    let mut child = Command::new(VWS)
        .args([
            "run",
            &id,
            "--",
            "sh",
            "-c",
            "tr a-z A-Z > ~/in.txt; cat ~/in.txt",
        ])
        .env("VWS_HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(b"from stdin\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "FROM STDIN\n",
        "{out:?}"
    );
    let local = home.join("local.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    ok(
        home,
        &[
            "cp",
            local.to_str().unwrap(),
            &format!("{id}:/home/ws/copied.txt"),
        ],
    );
    let out = run(
        home,
        &id,
        "cat ~/copied.txt; ls -ln ~/copied.txt | awk '{print $3}'",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("copied in\n{uid}\n")
    );
    let back = home.join("back.txt");
    ok(
        home,
        &[
            "cp",
            &format!("{id}:/home/ws/in.txt"),
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "FROM STDIN\n");

    // Writing past the disk's 16 MiB fails inside the workspace.
    let out = run(
        home,
        &id,
        "dd if=/dev/zero of=$HOME/big bs=1M count=64 2>&1; rm -f $HOME/big",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("No space left"),
        "{out:?}"
    );

    // A fork bomb stops at the pids limit; the node and the workspace go on.
    ok(
        home,
        &[
            "run",
            "-d",
            &id,
            "--",
            "sh",
            "-c",
            "n=0; while [ $n -lt 800 ]; do sleep 5 & n=$((n+1)); done 2>/dev/null; wait",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = std::fs::read_to_string(cgroup("pids", &id).join("pids.events")).unwrap();
        if events.trim() != "max 0" {
            break;
        }
        assert!(Instant::now() < deadline, "the pids limit was never hit");
        std::thread::sleep(Duration::from_millis(200));
    }
    let current: u32 = std::fs::read_to_string(cgroup("pids", &id).join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 512, "{current} processes");
    // The shell dies of a failed fork or waits; its sleepers end by themselves.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: u32 = std::fs::read_to_string(cgroup("pids", &id).join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if now < 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workspace did not recover: {now}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(run(home, &id, "true").status.success());

    // Pause freezes a running counter; unpause resumes it.
    let counter = ok(
        home,
        &[
            "run",
            "-d",
            &id,
            "--",
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done",
        ],
    )
    .trim()
    .to_string();
    std::thread::sleep(Duration::from_millis(800));
    assert!(output_lines(home, &counter) > 3, "the counter counts");
    ok(home, &["pause", &id]);
    let frozen = output_lines(home, &counter);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        output_lines(home, &counter),
        frozen,
        "paused: the counter stops"
    );
    ok(home, &["unpause", &id]);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        output_lines(home, &counter) > frozen + 3,
        "unpaused: it counts on"
    );

    // kill -9 of the node (and service) and a restart: the workspace and
    // its counter are adopted, its lease unchanged.
    node.0.kill().unwrap();
    let _ = node.0.wait();
    std::thread::sleep(Duration::from_millis(500));
    let node = up(home);
    let out = run(home, &id, "id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        uid.to_string(),
        "{out:?}"
    );
    let before = output_lines(home, &counter);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(output_lines(home, &counter) > before, "the counter went on");
    let show: Value = serde_json::from_str(&ok(home, &["show", &id, "--json"])).unwrap();
    assert_eq!(show["state"], "running");

    // Snapshot and migration are refused, saying why.
    ok(home, &["pause", &id]);
    let out = vws(home, &["snapshot", &id, "--as", "acct:1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only available to category \"vm\""),
        "{out:?}"
    );
    ok(home, &["unpause", &id]);
    let out = vws(home, &["migrate", &id, "--to", "local"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only available to category \"vm\""),
        "{out:?}"
    );

    // Destroy: the moment it returns, no process (not even a zombie), no
    // cgroup, no loop device, no file of the uid; PID 1's reaper is gone too.
    let init = init_of(&id);
    let reaper = parent_of(&init);
    ok(home, &["destroy", &id]);
    let left: Vec<String> = processes_of(uid)
        .iter()
        .map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or("?")
                    .trim()
                    .to_string()
            };
            format!(
                "{p} {} {} ppid {}",
                field("Name:"),
                field("State:"),
                field("PPid:")
            )
        })
        .collect();
    assert_eq!(left, Vec::<String>::new(), "processes of the uid are left");
    for pid in [&init, &reaper] {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{pid} left");
    }
    for c in ["memory", "cpu", "pids", "freezer"] {
        assert!(!cgroup(c, &id).exists(), "{c} cgroup left");
    }
    assert_ne!(
        comm(&slirp[0]),
        "slirp4netns",
        "the network stack ended too"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&id), "{mounts}");
    let loops = Command::new("losetup").arg("-a").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&loops.stdout).contains(&id),
        "{loops:?}"
    );
    let owned = Command::new("find")
        .arg(home)
        .args(["-uid", &uid.to_string()])
        .output()
        .unwrap();
    assert!(owned.stdout.is_empty(), "{owned:?}");
    // The lease went back: the next account gets the same uid.
    let next = create(home, &desc);
    ok(home, &["deploy", &next]);
    ok(home, &["start", &next]);
    let out = run(home, &next, "id -u");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        uid.to_string(),
        "{out:?}"
    );

    // A workspace that dies while the node is down (kill -9 of both) is
    // cleaned up by the restarted node and marked corrupted; destroying it
    // still returns its lease.
    let init = init_of(&next);
    drop(node);
    assert!(Command::new("sh")
        .args(["-c", &format!("kill -9 {init}")])
        .status()
        .unwrap()
        .success());
    let _node = up(home);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let show: Value = serde_json::from_str(&ok(home, &["show", &next, "--json"])).unwrap();
        if show["state"] == "corrupted" && !cgroup("pids", &next).exists() {
            break;
        }
        assert!(Instant::now() < deadline, "{show}");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(home, &["destroy", &next]);
    let last = create(home, &desc);
    ok(home, &["deploy", &last]);
    let show: Value = serde_json::from_str(&ok(home, &["show", &last, "--json"])).unwrap();
    assert_eq!(show["account"]["uid"], uid, "{show}");
    ok(home, &["destroy", &last]);
}

/// A Debian root filesystem made by `vws image build --from debian`
/// (debootstrap from Debian's packages; kept in target/ between runs): the
/// account works in it, cannot change the image, and its own files survive
/// a check-in and a new deployment.
#[test]
fn debian_root_and_check_in() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _node = up_with(home, "1000001000-1000001999");
    common::import_debian(home);
    let desc = home.join("account.xml");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/account.xml");
    std::fs::copy(example, &desc).unwrap();
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    let out = run(
        home,
        &id,
        "cat /etc/debian_version; id -un; apt-get --version | head -1; \
         touch /usr/x 2>/dev/null && echo wrote-image; echo kept > ~/keep",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("12."), "{text}");
    assert_eq!(lines[1], "ws", "{text}");
    assert!(lines[2].starts_with("apt "), "{text}");
    assert!(!text.contains("wrote-image"), "{text}");
    // The startup program ran at start, as a job of the account.
    let jobs: Value = serde_json::from_str(&ok(home, &["jobs", &id, "--json"])).unwrap();
    let startup = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["argv"].to_string().contains("hello from"))
        .expect("the startup job");
    let said = ok(home, &["job", "output", startup["id"].as_str().unwrap()]);
    assert!(
        said.starts_with(&format!("hello from {id} as ws (")),
        "{said}"
    );
    ok(home, &["stop", &id]);
    ok(home, &["undeploy", &id]);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    let out = run(
        home,
        &id,
        "cat ~/keep; ls -ln ~/keep | awk '{print $3}'; id -u",
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "kept", "{text}");
    assert_eq!(lines[1], lines[2], "the file is the account's: {text}");
    ok(home, &["destroy", &id]);
}

/// An image is user input: one whose /etc/passwd, /etc/group and /tmp are
/// symlinks to host paths must not make the node write there when it sets
/// up the account's root. The start fails, names the cause, and leaves
/// nothing behind.
#[test]
fn a_hostile_image_cannot_write_on_the_host() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _node = up_with(home, "1000002000-1000002999");
    // What the image points at, on the host.
    let victim = home.join("victim");
    std::fs::create_dir_all(victim.join("dir")).unwrap();
    std::fs::set_permissions(victim.join("dir"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(victim.join("passwd"), "untouched\n").unwrap();
    std::fs::write(victim.join("group"), "untouched\n").unwrap();
    let tree = home.join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    symlink("busybox", tree.join("bin/sh")).unwrap();
    symlink(victim.join("passwd"), tree.join("etc/passwd")).unwrap();
    symlink(victim.join("group"), tree.join("etc/group")).unwrap();
    symlink(victim.join("dir"), tree.join("tmp")).unwrap();
    let image = home.join("hostile.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let made = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-d",
            tree.to_str().unwrap(),
            image.to_str().unwrap(),
        ])
        .output()
        .expect("mkfs.ext4 (e2fsprogs, installed by scripts/setup)");
    assert!(made.status.success(), "{made:?}");
    ok(
        home,
        &[
            "image",
            "import",
            "hostile:1",
            "--disk",
            image.to_str().unwrap(),
        ],
    );
    let desc = home.join("hostile.toml");
    std::fs::write(
        &desc,
        "category = \"dynamic account\"\n[hardware]\nram = \"64MiB\"\ndisk = { size = \"16MiB\", type = \"raw\" }\n\
         [software]\nimage = \"hostile:1\"\n",
    )
    .unwrap();
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    let started = vws(home, &["start", &id]);
    let said = String::from_utf8_lossy(&started.stderr);
    assert!(!started.status.success(), "{said}");
    assert!(said.contains("root folders"), "the cause is named: {said}");
    assert_eq!(
        std::fs::read_to_string(victim.join("passwd")).unwrap(),
        "untouched\n"
    );
    assert_eq!(
        std::fs::read_to_string(victim.join("group")).unwrap(),
        "untouched\n"
    );
    let mode = std::fs::metadata(victim.join("dir"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "the host folder's mode is unchanged");
    assert!(!cgroup("pids", &id).exists(), "no cgroup left");
    ok(home, &["destroy", &id]);
}
