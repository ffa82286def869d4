//! What the CLI's end-to-end tests share: the `vws` binary run against a
//! test's own VWS_HOME, and a guard for the processes they start.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The binary under test.
pub const VWS: &str = env!("CARGO_BIN_EXE_vws");

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A process (`vws up`, `serve`, `node`) killed when the test lets go of it,
/// a failed assertion included.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `vws ARGS` with `home` as its VWS_HOME (and no VWS_SERVER from the
/// caller's environment).
pub fn vws(home: &Path, args: &[&str]) -> Output {
    Command::new(VWS)
        .args(args)
        .env("VWS_HOME", home)
        .env_remove("VWS_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `vws ARGS`, which must succeed; its standard output.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = vws(home, args);
    assert!(
        out.status.success(),
        "vws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a workspace from the description file `desc`; its id.
pub fn create(home: &Path, desc: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&ok(home, &["create", desc.to_str().unwrap(), "--json"])).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// `vws ARGS`, which must fail; its standard error.
pub fn refused(home: &Path, args: &[&str]) -> String {
    let out = vws(home, args);
    assert!(
        !out.status.success(),
        "vws {args:?} should have been refused"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// On the way out (a failed assertion too): kills what the test's
/// workspaces left running, which outlives `vws up` and `vws node` by
/// design and would otherwise run on after a test that failed half-way:
/// every process whose command line names the test's `home` (its VMs'
/// QEMUs), and every process in the cgroups of a workspace whose folder is
/// under `home` (its dynamic accounts', in any node's `vms` folder).
pub struct Reap(pub PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        let home = self.0.to_string_lossy().into_owned();
        let me = std::process::id();
        let mut doomed: Vec<String> = Vec::new();
        for pid in std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| *p != me)
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&home) {
                doomed.push(pid.to_string());
            }
        }
        let ls = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect()
        };
        let ids: Vec<String> = ls(&self.0)
            .into_iter()
            .map(|node| node.join("vms"))
            .flat_map(|vms| ls(&vms))
            .filter_map(|w| Some(w.file_name()?.to_string_lossy().into_owned()))
            .collect();
        for cg in ls(Path::new("/sys/fs/cgroup/pids/vws")) {
            let name = cg.file_name().unwrap_or_default().to_string_lossy();
            if ids.iter().any(|id| name.ends_with(&format!("-{id}"))) {
                let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
                doomed.extend(procs.lines().map(str::to_string));
                // A paused workspace's processes die only once thawed.
                let _ = std::fs::write(
                    Path::new("/sys/fs/cgroup/freezer/vws")
                        .join(&*name)
                        .join("freezer.state"),
                    "THAWED",
                );
                let _ = std::fs::write(
                    Path::new("/sys/fs/cgroup/vws")
                        .join(&*name)
                        .join("cgroup.freeze"),
                    "0",
                );
            }
        }
        if !doomed.is_empty() {
            // The shell's own kill: procps may not be installed.
            let _ = Command::new("sh")
                .args(["-c", &format!("kill -9 {}", doomed.join(" "))])
                .status();
        }
        // Each node's loopback guard (its QEMUs' cgroup and nftables
        // table) outlives it by design, for the VMs it leaves running;
        // with those gone, so are they.
        for node in ls(&self.0).into_iter().filter(|d| d.join("vms").is_dir()) {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(node.join("vms").to_string_lossy().as_bytes());
            let tag = hex::encode(&digest[..6]);
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &format!("vws_lo_{tag}")])
                .output();
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let cg = Path::new(root).join(format!("vws-qemu-{tag}"));
                for _ in 0..40 {
                    if !cg.exists() || std::fs::remove_dir(&cg).is_ok() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
}

/// The host's first global IPv4 address (a test that needs one fails
/// loudly without).
pub fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(String::from)
        })
        .expect("this test needs a non-loopback IPv4 address on the host")
}

/// Answers every HTTP request on `listener` with `body`.
pub fn answer(listener: std::net::TcpListener, body: &'static str) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = c.read(&mut request);
            let _ = c.write_all(format!("HTTP/1.0 200 OK\r\n\r\n{body}\n").as_bytes());
        }
    });
}

/// A Debian root filesystem image made by `vws image build --from debian
/// --include bc` (debootstrap from Debian's packages; about a minute), kept
/// in target/ between runs and tests; built under another name and renamed,
/// so a test never takes a half-built one.
pub fn debian_image(home: &Path) -> PathBuf {
    debian_image_with(home, "bc")
}

/// The same with other extra packages (comma-separated).
pub fn debian_image_with(home: &Path, include: &str) -> PathBuf {
    let image = root().join(format!(
        "target/vws-test-debian-{}.img",
        include.replace(',', "-")
    ));
    if !image.exists() {
        let part = image.with_extension(format!("part-{}", std::process::id()));
        ok(
            home,
            &[
                "image",
                "build",
                "debian-build:1",
                "--from",
                "debian",
                "--include",
                include,
                "--out",
                part.to_str().unwrap(),
            ],
        );
        std::fs::rename(&part, &image).unwrap();
    }
    image
}

/// The minimal guest (Debian's cloud kernel, busybox, guest/init and the
/// agent), built from Debian packages into target/ (rebuilt when the init
/// or the agent is newer).
pub fn minimal_guest() -> PathBuf {
    let out = root().join("target/vws-test-guest");
    let built = Command::new(root().join("scripts/build-minimal-image"))
        .arg(&out)
        .status()
        .unwrap()
        .success();
    assert!(built, "building the minimal guest failed");
    out
}

/// Builds (once) the Debian test image and imports it as `debian:12`.
pub fn import_debian(home: &Path) {
    let image = debian_image(home);
    ok(
        home,
        &[
            "image",
            "import",
            "debian:12",
            "--disk",
            image.to_str().unwrap(),
        ],
    );
}

/// Imports the minimal guest (from [`minimal_guest`]) as `minimal:1`.
pub fn import_minimal(home: &Path, guest: &Path) {
    ok(
        home,
        &[
            "image",
            "import",
            "minimal:1",
            "--kernel",
            guest.join("vmlinuz").to_str().unwrap(),
            "--initrd",
            guest.join("initrd.img").to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 quiet",
        ],
    );
}

/// Waits until `vws up` in `home` has its local node up.
pub fn wait_until_up(home: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !String::from_utf8_lossy(&vws(home, &["node", "list", "--json"]).stdout)
        .contains("\"up\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "vws up did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `vws up` on a free port with `extra` arguments, its log in `home/up.log`,
/// once its local node is up.
pub fn vws_up(home: &Path, extra: &[&str]) -> Kill {
    let log = std::fs::File::create(home.join("up.log")).unwrap();
    let up = Kill(
        Command::new(VWS)
            .args(["up", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("VWS_HOME", home)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until_up(home);
    up
}

/// Two servers for a workspace's user NIC to try: one on the host's own
/// address, answering `reached`, and one on its 127.0.0.1, answering
/// `leaked`. Returns (host address, its port, the loopback port).
pub fn nat_targets() -> (String, u16, u16) {
    let host_ip = host_address();
    let outside = std::net::TcpListener::bind((host_ip.as_str(), 0)).unwrap();
    let loopback = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (out_port, lo_port) = (
        outside.local_addr().unwrap().port(),
        loopback.local_addr().unwrap().port(),
    );
    answer(outside, "reached");
    answer(loopback, "leaked");
    (host_ip, out_port, lo_port)
}

/// The outside was reached, the host's loopback was not (the job printed
/// `refused` when it failed to connect there).
pub fn assert_nat_not_loopback(out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("reached"), "{out:?}");
    assert!(
        text.contains("refused") && !text.contains("leaked"),
        "{out:?}"
    );
}

/// The named steps of a long end-to-end test. Each step says when it
/// starts (on stderr, with the time since the test began), and a failure
/// names the step it happened in, so a broken assertion deep in a shared
/// guest's session reads as "failed in step: …" rather than only a line
/// number.
pub struct Steps {
    started: std::time::Instant,
    current: std::cell::RefCell<String>,
}

impl Steps {
    /// The first step.
    pub fn new(first: &str) -> Steps {
        let s = Steps {
            started: std::time::Instant::now(),
            current: std::cell::RefCell::new(String::new()),
        };
        s.at(first);
        s
    }

    /// Begins the next step.
    pub fn at(&self, name: &str) {
        eprintln!(
            "step [{:6.1} s] {name}",
            self.started.elapsed().as_secs_f64()
        );
        *self.current.borrow_mut() = name.to_string();
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the test failed in step: {} ({:.1} s in)",
                self.current.borrow(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// `vws ARGS` started in the background, its standard error in
/// `home/LOG`.
pub fn spawn(home: &Path, args: &[&str], log: &str) -> Kill {
    let log = std::fs::File::create(home.join(log)).unwrap();
    Kill(
        Command::new(VWS)
            .args(args)
            .env("VWS_HOME", home)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Polls `f` every 0.1 s until it holds; fails naming `what` after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `vws serve` on `listen` (`127.0.0.1:0`: a free port), its log in
/// `home/serve.log`, once it has written its server file.
pub fn start_service(home: &Path, listen: &str) -> Kill {
    let _ = std::fs::remove_file(home.join("server.json"));
    let p = spawn(home, &["serve", "--listen", listen], "serve.log");
    wait_until("the service", std::time::Duration::from_secs(30), || {
        home.join("server.json").exists()
    });
    p
}

/// `vws node --name NAME` with its own home under `home`, heartbeating
/// every second, once the service lists it as registered after
/// `registered_after`.
pub fn start_node(home: &Path, name: &str, registered_after: time::OffsetDateTime) -> Kill {
    let node_home = home.join(name);
    let p = spawn(
        home,
        &[
            "node",
            "--name",
            name,
            "--node-home",
            node_home.to_str().unwrap(),
            "--heartbeat",
            "1",
        ],
        &format!("{name}.log"),
    );
    wait_until(
        "the node to register",
        std::time::Duration::from_secs(30),
        || {
            let v: serde_json::Value =
                serde_json::from_slice(&vws(home, &["node", "list", "--json"]).stdout)
                    .unwrap_or(serde_json::Value::Null);
            v.as_array().is_some_and(|a| {
                a.iter().any(|n| {
                    n["name"] == name
                        && n["status"] == "up"
                        && n["registered_at"]
                            .as_str()
                            .and_then(|s| {
                                time::OffsetDateTime::parse(
                                    s,
                                    &time::format_description::well_known::Rfc3339,
                                )
                                .ok()
                            })
                            .is_some_and(|t| t >= registered_after)
                })
            })
        },
    );
    p
}

/// Runs `vws ARGS` and kills `victim` (-9: a [`Kill`], or a tuple of them)
/// `after` into it, then the command too.
pub fn kill_during<T>(home: &Path, victim: T, args: &[&str], after: std::time::Duration) {
    let mut asked = Command::new(VWS)
        .args(args)
        .env("VWS_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    drop(victim);
    let _ = asked.kill();
    let _ = asked.wait();
}

/// `vws run --detach ID -- sh -c SCRIPT`; the job's id.
pub fn detached(home: &Path, id: &str, script: &str) -> String {
    ok(home, &["run", "--detach", id, "--", "sh", "-c", script])
        .trim()
        .to_string()
}

/// Issues a client certificate for `dn` into `home/NAME`; the global
/// arguments that present it (`--cert FILE --key FILE`).
pub fn user(home: &Path, name: &str, dn: &str) -> Vec<String> {
    let dir = home.join(name);
    ok(
        home,
        &["cert", "issue", "--dn", dn, "--out", dir.to_str().unwrap()],
    );
    vec![
        "--cert".into(),
        dir.join("cert.pem").to_string_lossy().into_owned(),
        "--key".into(),
        dir.join("key.pem").to_string_lossy().into_owned(),
    ]
}

/// Builds the `tiny:1` image (busybox) and writes a dynamic account's
/// description over it (128 MiB, a 16 MiB disk); its path.
pub fn tiny_account(home: &Path) -> PathBuf {
    ok(home, &["image", "build", "tiny:1", "--from", "busybox"]);
    let desc = home.join("account.toml");
    std::fs::write(
        &desc,
        "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[software]\nimage = \"tiny:1\"\n",
    )
    .unwrap();
    desc
}

/// `vws run ID -- echo still-here` answers: the workspace is drivable.
pub fn echoes(home: &Path, id: &str) {
    let out = vws(home, &["run", id, "--", "echo", "still-here"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "still-here\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for a workspace's record to settle after a restart (the restarted
/// side registers, then reports each heartbeat) with nothing in flight:
/// its check-out lock held by its node only, in one of `want` (any state
/// if empty), never `corrupted`. Returns the record.
pub fn settled(home: &Path, id: &str, want: &[&str]) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let v: serde_json::Value =
            serde_json::from_str(&ok(home, &["show", id, "--json"])).unwrap();
        assert_ne!(v["state"], "corrupted", "{}", ok(home, &["history", id]));
        let s = v["state"].as_str().unwrap_or_default();
        if (want.is_empty() || want.contains(&s)) && v["lock_holder"] == v["node"] {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} stayed {v}\n{}",
            ok(home, &["history", id])
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A job's record (`vws job show --json`).
pub fn job_state(home: &Path, job: &str) -> serde_json::Value {
    serde_json::from_str(&ok(home, &["job", "show", job, "--json"])).unwrap()
}

/// The virtualenv's python (scripts/setup makes it, with awscli, boto3,
/// moto and selenium).
pub fn python() -> PathBuf {
    let python = root().join("target/py/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/setup installs the Python clients",
        python.display()
    );
    python
}

/// What a boto3 script needs to reach a `vws up`'s EC2 front-end as its
/// administrator.
pub struct Ec2 {
    /// `https://ADDR`.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// The administrator's access key id.
    pub key: String,
    /// Its secret.
    pub secret: String,
    /// The CA to trust.
    pub ca: PathBuf,
}

/// `vws up` with its EC2 front-end on a free port, and an access key of
/// the administrator.
pub fn ec2_up(home: &Path) -> (Kill, Ec2) {
    let up = vws_up(home, &["--ec2-listen", "127.0.0.1:0"]);
    let server: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    let key: serde_json::Value =
        serde_json::from_str(&ok(home, &["key", "create", "--json"])).unwrap();
    let text = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
    let ec2 = Ec2 {
        endpoint: text(&server["ec2"]["url"]),
        region: text(&server["ec2"]["region"]),
        key: text(&key["id"]),
        secret: text(&key["secret"]),
        ca: home.join("pki/ca/ca.pem"),
    };
    (up, ec2)
}

impl Ec2 {
    /// Runs a Python script (`python -c`) with ENDPOINT, REGION, KEY,
    /// SECRET and CA set, and `env`; returns its stdout, trimmed (a failure
    /// fails the test with its stderr). The environment's own CA bundle
    /// is left out: it would override the script's.
    pub fn boto3(&self, script: &str, env: &[(&str, &str)]) -> String {
        let out = Command::new(python())
            .args(["-c", script])
            .env("ENDPOINT", &self.endpoint)
            .env("REGION", &self.region)
            .env("KEY", &self.key)
            .env("SECRET", &self.secret)
            .env("CA", &self.ca)
            .envs(env.iter().copied())
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the boto3 script failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The start of a boto3 script: `c`, an EC2 client of the front-end as
/// the administrator (long reads: a launch boots its VMs).
pub const BOTO3_CLIENT: &str = r#"
import boto3, os
from botocore.config import Config
c = boto3.client("ec2", endpoint_url=os.environ["ENDPOINT"], region_name=os.environ["REGION"],
                 aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
                 verify=os.environ["CA"], config=Config(read_timeout=600, retries={"max_attempts": 1}))
"#;

/// Imports the minimal guest as `minimal:1` and returns its image id
/// (`ami-…`) as the EC2 front-end names it.
pub fn minimal_ami(home: &Path) -> String {
    import_minimal(home, &minimal_guest());
    let image: serde_json::Value =
        serde_json::from_str(&ok(home, &["image", "show", "minimal:1", "--json"])).unwrap();
    vws_model::cloud_ids::image_id(image["id"].as_str().unwrap())
}

/// A test script's output (stdout, then stderr, printed for the test's
/// log), after checking that it succeeded and said `done`.
pub fn script_passed(out: &Output, what: &str, done: &str) -> String {
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{said}");
    assert!(out.status.success(), "{what} failed:\n{said}");
    assert!(said.contains(done), "{what} did not finish: {said}");
    said
}

/// A shell prefix that mounts the host's cgroup hierarchies again: `ip
/// netns exec` mounts a /sys of the namespace's own, which hides them, and
/// a node needs them to confine dynamic accounts (the same options name
/// the same hierarchies). Ends with `&& `.
pub fn remount_cgroups() -> String {
    let mut script = String::new();
    for l in std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
    {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            [_, "/sys/fs/cgroup", "tmpfs", ..] => {
                script += "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup && "
            }
            [_, at, kind @ ("cgroup" | "cgroup2"), opts, ..]
                if at.starts_with("/sys/fs/cgroup") =>
            {
                script += &format!("mkdir -p {at} && mount -t {kind} -o {opts} {kind} {at} && ")
            }
            _ => {}
        }
    }
    script
}
