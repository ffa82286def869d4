//! A site as docs/deploy.md describes it, all real parts: three `vws serve`
//! replicas on one PostgreSQL behind HAProxy (deploy/haproxy.cfg, TCP mode,
//! health checks on /v1/health), and two `vws node`s, each in a network
//! namespace of its own on a bridge this test makes (the machine's own
//! interfaces are never touched). Quotas and leases hold across replicas;
//! a replica killed with -9 in the middle of a deploy, a start, a snapshot
//! or a migration leaves it for another to settle, the reaper moves to
//! another replica with its leader's death, and a client going through
//! HAProxy while replicas die sees every command complete.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{minimal_guest, settled, wait_until, Kill, Reap, Steps, VWS};
use serde_json::Value;

/// The bridge's subnet: the host's side is .1, node N is .1N.
const NET: &str = "10.213.7";
const BRIDGE: &str = "vwsrep-br";

/// A network device or namespace this test made, removed when it ends.
struct Made(&'static str, String);

impl Drop for Made {
    fn drop(&mut self) {
        let args: Vec<&str> = match self.0 {
            "netns" => vec!["netns", "del", &self.1],
            _ => vec!["link", "del", &self.1],
        };
        let _ = Command::new("ip").args(args).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port free on every address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `vws ARGS` against `server` (the load balancer, or one replica).
fn vws_at(home: &Path, server: &str, args: &[&str]) -> Output {
    Command::new(VWS)
        .args(args)
        .env("VWS_HOME", home)
        .env("VWS_SERVER", server)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok_at(home: &Path, server: &str, args: &[&str]) -> String {
    let out = vws_at(home, server, args);
    assert!(
        out.status.success(),
        "vws {args:?} at {server}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_at(home: &Path, server: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok_at(home, server, &a)).unwrap()
}

struct Site {
    home: PathBuf,
    database: String,
    /// The load balancer's URL, which clients and nodes use.
    lb: String,
    ports: [u16; 3],
    replicas: [Option<Kill>; 3],
    _haproxy: Kill,
    _nodes: Vec<Kill>,
    _made: Vec<Made>,
}

impl Site {
    fn replica_url(&self, i: usize) -> String {
        format!("https://{NET}.1:{}", self.ports[i])
    }

    fn start_replica(&mut self, i: usize) {
        let log = std::fs::File::create(self.home.join(format!("replica{}.log", i + 1))).unwrap();
        let listen = format!("{NET}.1:{}", self.ports[i]);
        let p = Kill(
            Command::new(VWS)
                .args(["serve", "--listen", &listen, "--database", &self.database])
                .args(["--public-url", &self.lb, "--reap-interval", "1"])
                .args([
                    "--metrics-listen",
                    "off",
                    "--ui-listen",
                    "off",
                    "--ec2-listen",
                    "off",
                ])
                .env("VWS_HOME", &self.home)
                .env("RUST_LOG", "info,sqlx=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let url = self.replica_url(i);
        let home = self.home.clone();
        wait_until(
            &format!("replica {}", i + 1),
            Duration::from_secs(60),
            || vws_at(&home, &url, &["node", "list"]).status.success(),
        );
        self.replicas[i] = Some(p);
    }

    /// `kill -9` of replica `i`.
    fn kill(&mut self, i: usize) {
        self.replicas[i] = None;
    }

    /// The replica that leads the reaper now: the last of them to have
    /// said it took the reaper's lock, among those alive.
    fn reaper_leader(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for i in 0..3 {
            if self.replicas[i].is_none() {
                continue;
            }
            let log = std::fs::read_to_string(self.home.join(format!("replica{}.log", i + 1)))
                .unwrap_or_default();
            let took = log
                .lines()
                .filter(|l| l.contains("this replica runs it") && l.contains("reaper"))
                .count();
            if took > 0 && best.is_none_or(|(_, n)| took > n) {
                best = Some((i, took));
            }
        }
        best.map(|(i, _)| i)
    }

    fn ok(&self, args: &[&str]) -> String {
        ok_at(&self.home, &self.lb, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        json_at(&self.home, &self.lb, args)
    }

    fn create(&self, desc: &Path) -> String {
        self.json(&["create", desc.to_str().unwrap()])["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A node in network namespace `vwsrep-nN` at NET.1N, with its own
/// certificate for that address, its own uids, reporting to `lb`.
fn start_node(home: &Path, n: usize, lb: &str, made: &mut Vec<Made>) -> Kill {
    let (ns, host_end, ns_end) = (
        format!("vwsrep-n{n}"),
        format!("vwsrep-h{n}"),
        format!("vwsrep-v{n}"),
    );
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    ip(&["netns", "add", &ns]);
    made.push(Made("netns", ns.clone()));
    ip(&[
        "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
    ]);
    made.push(Made("link", host_end.clone()));
    ip(&["link", "set", &host_end, "master", BRIDGE, "up"]);
    ip(&["link", "set", &ns_end, "netns", &ns]);
    let addr = format!("{NET}.1{n}");
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        &ns_end,
    ]);
    ip(&["-n", &ns, "link", "set", &ns_end, "up"]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let name = format!("n{n}");
    let certs = home.join(format!("{name}-cert"));
    common::ok(
        home,
        &[
            "cert",
            "issue",
            "--host",
            &name,
            "--san",
            &addr,
            "--out",
            certs.to_str().unwrap(),
        ],
    );
    let first = 1_000_001_000 + 100 * n;
    let accounts = format!("{first}-{}", first + 99);
    let listen = format!("{addr}:7490");
    let node_home = home.join(&name);
    let file = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
    let args = [
        "node",
        "--name",
        &name,
        "--listen",
        &listen,
        "--service",
        lb,
        "--heartbeat",
        "1",
        "--node-home",
        node_home.to_str().unwrap(),
        "--node-cert",
        &cert,
        "--node-key",
        &key,
        "--node-ca",
        &ca,
        "--accounts",
        &accounts,
    ];
    let script = common::remount_cgroups();
    let log = std::fs::File::create(home.join(format!("{name}.log"))).unwrap();
    Kill(
        Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c"])
            .arg(format!("{script}exec \"$0\" \"$@\""))
            .arg(VWS)
            .args(args)
            .env("VWS_HOME", home)
            .env_remove("VWS_SERVER")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// A fresh database on the test PostgreSQL that `.ci/run` starts.
fn database() -> String {
    let server = std::env::var("VWS_TEST_POSTGRES").expect(
        "VWS_TEST_POSTGRES must name a PostgreSQL server (scripts/test starts one): this test runs replicas on it",
    );
    let name = format!("vws_replicas_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        let out = Command::new("psql")
            .args([&server, "-qc", &sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

fn site(home: &Path, policy: &str) -> Site {
    let mut made = Vec::new();
    let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
    ip(&["link", "add", BRIDGE, "type", "bridge"]);
    made.push(Made("link", BRIDGE.into()));
    ip(&["addr", "add", &format!("{NET}.1/24"), "dev", BRIDGE]);
    ip(&["link", "set", BRIDGE, "up"]);

    // The CA, the service's certificate for the bridge's address (where
    // HAProxy and every replica listen), and the health checks' client one.
    common::ok(home, &["ca", "init"]);
    let service = home.join("pki/service");
    common::ok(
        home,
        &[
            "cert",
            "issue",
            "--host",
            "vws",
            "--service",
            "--san",
            &format!("{NET}.1"),
            "--out",
            service.to_str().unwrap(),
        ],
    );
    let lb_dir = home.join("lb-cert");
    common::ok(
        home,
        &[
            "cert",
            "issue",
            "--dn",
            "/O=vws/OU=lb/CN=haproxy",
            "--out",
            lb_dir.to_str().unwrap(),
        ],
    );
    let pem = lb_dir.join("both.pem");
    std::fs::write(
        &pem,
        std::fs::read_to_string(lb_dir.join("cert.pem")).unwrap()
            + &std::fs::read_to_string(lb_dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    std::fs::write(home.join("policy.toml"), policy).unwrap();

    let lb_port = free_port();
    let lb = format!("https://{NET}.1:{lb_port}");
    let ports = [free_port(), free_port(), free_port()];
    let log = std::fs::File::create(home.join("haproxy.log")).unwrap();
    let haproxy = Kill(
        Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(common::root().join("deploy/haproxy.cfg"))
            .env("VWS_LB_BIND", format!("{NET}.1:{lb_port}"))
            .env("VWS_REPLICA_1", format!("{NET}.1:{}", ports[0]))
            .env("VWS_REPLICA_2", format!("{NET}.1:{}", ports[1]))
            .env("VWS_REPLICA_3", format!("{NET}.1:{}", ports[2]))
            .env("VWS_CA", service.join("ca.pem"))
            .env("VWS_LB_CERT", &pem)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("haproxy (scripts/setup installs it)"),
    );
    let mut s = Site {
        home: home.to_path_buf(),
        database: database(),
        lb: lb.clone(),
        ports,
        replicas: [None, None, None],
        _haproxy: haproxy,
        _nodes: Vec::new(),
        _made: Vec::new(),
    };
    // The first alone (it migrates the database), then the others.
    for i in 0..3 {
        s.start_replica(i);
    }
    let nodes = (1..=2)
        .map(|n| start_node(home, n, &lb, &mut made))
        .collect();
    s._nodes = nodes;
    s._made = made;
    wait_until(
        "both nodes up, through HAProxy",
        Duration::from_secs(60),
        || {
            let out = vws_at(home, &lb, &["node", "list", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|a| a.iter().filter(|n| n["status"] == "up").count() == 2)
        },
    );
    // `vws` without --server (common's helpers) goes through HAProxy too.
    std::fs::write(
        home.join("server.json"),
        serde_json::json!({ "url": lb, "pid": 0 }).to_string(),
    )
    .unwrap();
    s
}

/// Runs `vws ARGS` at `server` and kills replica `victim` `after` into it.
fn killed_during(s: &mut Site, victim: usize, args: &[&str], after: Duration) {
    let mut asked = Command::new(VWS)
        .args(args)
        .env("VWS_HOME", &s.home)
        .env("VWS_SERVER", s.replica_url(victim))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    s.kill(victim);
    let _ = asked.kill();
    let _ = asked.wait();
}

/// Asks again what a killed replica may have done: the record read just
/// before can predate the settling of that replica's action (which the
/// command waits out, as 409 `settling`), so "already done" is an answer
/// too.
fn asked_again(s: &Site, args: &[&str], done: &str) {
    let out = vws_at(&s.home, &s.lb, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains(done),
        "vws {args:?}: {err}"
    );
    if !out.status.success() {
        eprintln!("  settled meanwhile: {done}");
    }
}

/// On a failure, the tail of every process's log (in CI's output).
struct LogsOnFailure(PathBuf);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- {} (last 40 lines)", log.display());
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

/// The workspace runs a job, once what a killed replica left is settled
/// (until then its commands are refused as "being settled, retry").
fn echoes(home: &Path, id: &str) {
    let t = Instant::now();
    loop {
        let out = common::vws(home, &["run", id, "--", "echo", "still-here"]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "still-here\n");
            if t.elapsed() > Duration::from_secs(1) {
                eprintln!("  drivable again after {:.1} s", t.elapsed().as_secs_f64());
            }
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("settled") && t.elapsed() < Duration::from_secs(30),
            "{id} is not drivable: {err}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn account_desc(home: &Path) -> PathBuf {
    let desc = home.join("account.toml");
    std::fs::write(
        &desc,
        "category = \"dynamic account\"\nlifeCycle = 3600\n[hardware]\nram = \"64MiB\"\ndisk = { size = \"8MiB\" }\n[software]\nimage = \"tiny:1\"\n",
    )
    .unwrap();
    desc
}

#[test]
fn three_replicas_behind_haproxy_two_nodes_in_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let _reap = Reap(home.to_path_buf());
    let _logs = LogsOnFailure(home.to_path_buf());
    let steps = Steps::new("Site: bridge, PostgreSQL, HAProxy, 3 replicas, 2 nodes in namespaces");
    let policy = "[defaults]\nmax_workspaces = 1000\nmax_total_ram = \"1TiB\"\n\n[[owner]]\ndn = \"/O=vws/OU=test/CN=quota\"\nmax_workspaces = 10\n";
    let mut s = site(home, policy);
    s.ok(&["image", "build", "tiny:1", "--from", "busybox"]);
    let account = account_desc(home);

    steps.at("Concurrent creates over the three replicas admit exactly the quota");
    let quota = common::user(home, "quota", "/O=vws/OU=test/CN=quota");
    let tries: Vec<_> = (0..24)
        .map(|i| {
            let mut c = Command::new(VWS);
            c.args(&quota)
                .args(["create", account.to_str().unwrap(), "--json"])
                .env("VWS_HOME", home)
                .env("VWS_SERVER", s.replica_url(i % 3))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut made = 0;
    let mut refusals = Vec::new();
    for t in tries {
        let out = t.wait_with_output().unwrap();
        if out.status.success() {
            made += 1;
        } else {
            refusals.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    assert_eq!(made, 10, "{refusals:?}");
    assert!(
        refusals.iter().all(|r| r.contains("limit is 10")),
        "{refusals:?}"
    );

    steps.at("Address leases at creates over the replicas, uid leases at deploys: none twice");
    let nic = home.join("nic.toml");
    std::fs::write(
        &nic,
        std::fs::read_to_string(&account).unwrap().replace(
            "[software]",
            "[network]\nnics = [{ name = \"eth0\", method = \"pool\" }]\n[software]",
        ),
    )
    .unwrap();
    let creates: Vec<_> = (0..12)
        .map(|i| {
            Command::new(VWS)
                .args(["create", nic.to_str().unwrap(), "--json"])
                .env("VWS_HOME", home)
                .env("VWS_SERVER", s.replica_url(i % 3))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = creates
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let network = s.json(&["network", "show", "default"]);
    let text = network.to_string();
    let addresses: BTreeSet<&str> = ids
        .iter()
        .map(|id| {
            let v = s.json(&["show", id]);
            let a = v["addresses"][0]["address"].as_str().map(str::to_string);
            let a = a.unwrap_or_else(|| panic!("no pool address in {v}"));
            assert!(text.contains(&a), "{a} not in the network's leases: {text}");
            Box::leak(a.into_boxed_str()) as &str
        })
        .collect();
    assert_eq!(addresses.len(), ids.len(), "{addresses:?}");
    let deploys: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            Command::new(VWS)
                .args(["deploy", id, "--host", "n1"])
                .env("VWS_HOME", home)
                .env("VWS_SERVER", s.replica_url(i % 3))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for d in deploys {
        let out = d.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let uids: BTreeSet<i64> = ids
        .iter()
        .map(|id| s.json(&["show", id])["account"]["uid"].as_i64().unwrap())
        .collect();
    assert_eq!(uids.len(), ids.len(), "{uids:?}");
    for id in &ids {
        s.ok(&["destroy", id]);
    }

    steps.at("A replica killed during deploys and starts: another settles them");
    let id = s.create(&account);
    for (i, after) in [(0usize, 30u64), (1, 150), (2, 400)] {
        killed_during(
            &mut s,
            i,
            &["deploy", &id, "--host", "n2"],
            Duration::from_millis(after),
        );
        let v = settled(home, &id, &[]);
        eprintln!("killed {after} ms into a deploy: {}", v["state"]);
        if v["node"].is_null() {
            asked_again(&s, &["deploy", &id, "--host", "n2"], "already deployed");
        }
        s.start_replica(i);
        killed_during(&mut s, i, &["start", &id], Duration::from_millis(after));
        let v = settled(home, &id, &["running", "shutdown"]);
        eprintln!("killed {after} ms into a start: {}", v["state"]);
        if v["state"] == "shutdown" {
            asked_again(&s, &["start", &id], "already running");
        }
        echoes(home, &id);
        s.ok(&["stop", &id]);
        s.ok(&["undeploy", &id]);
        s.start_replica(i);
    }
    s.ok(&["destroy", &id]);

    steps.at("A replica killed during a VM's migration and its snapshot");
    common::import_minimal(home, &minimal_guest());
    let vm = home.join("vm.toml");
    std::fs::write(
        &vm,
        "category = \"vm\"\nlifeCycle = 3600\n[hardware]\nram = \"128MiB\"\n[software]\nimage = \"minimal:1\"\n",
    )
    .unwrap();
    let id = s.create(&vm);
    s.ok(&["deploy", &id, "--host", "n1"]);
    s.ok(&["start", &id]);
    echoes(home, &id);
    for (victim, after) in [(0usize, 300u64), (1, 1200)] {
        let from = s.json(&["show", &id])["node"].as_str().unwrap().to_string();
        let to = if from == "n1" { "n2" } else { "n1" };
        killed_during(
            &mut s,
            victim,
            &["migrate", &id, "--to", to],
            Duration::from_millis(after),
        );
        let v = settled(home, &id, &["running"]);
        eprintln!(
            "killed {after} ms into a migration {from} → {to}: it runs on {}",
            v["node"]
        );
        echoes(home, &id);
        s.start_replica(victim);
    }
    s.ok(&["pause", &id]);
    killed_during(
        &mut s,
        2,
        &["snapshot", &id, "--as", "snap:1"],
        Duration::from_millis(300),
    );
    let v = settled(home, &id, &["paused", "running"]);
    eprintln!("killed 300 ms into a snapshot: {}", v["state"]);
    let images = s.ok(&["image", "list", "--json"]);
    eprintln!("snap:1 registered: {}", images.contains("\"snap\""));
    if v["state"] == "paused" {
        s.ok(&["unpause", &id]);
    }
    echoes(home, &id);
    s.start_replica(2);
    s.ok(&["destroy", &id]);

    steps.at("The reaper's replica killed: another takes it over and expired workspaces go");
    let leader = s.reaper_leader().expect("a replica leads the reaper");
    let short = home.join("short.toml");
    std::fs::write(
        &short,
        std::fs::read_to_string(&account)
            .unwrap()
            .replace("lifeCycle = 3600", "lifeCycle = 4"),
    )
    .unwrap();
    let doomed = s.create(&short);
    s.kill(leader);
    let t = Instant::now();
    wait_until(
        "the expired workspace to go",
        Duration::from_secs(60),
        || !vws_at(home, &s.lb, &["show", &doomed]).status.success(),
    );
    let now = s.reaper_leader().expect("another replica leads the reaper");
    assert_ne!(now, leader);
    eprintln!(
        "replica {} led the reaper and was killed; replica {} reaped 4 s workspace {:.1} s after",
        leader + 1,
        now + 1,
        t.elapsed().as_secs_f64()
    );
    s.start_replica(leader);

    steps.at("Through HAProxy while replicas die: every command completes, none twice");
    let before = s.json(&["list"]).as_array().unwrap().len();
    let home2 = home.to_path_buf();
    let lb = s.lb.clone();
    let account2 = account.clone();
    let client = std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut made = 0;
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let out = vws_at(
                &home2,
                &lb,
                &["create", account2.to_str().unwrap(), "--json"],
            );
            if out.status.success() {
                made += 1;
            } else {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            let out = vws_at(&home2, &lb, &["list", "--json"]);
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (made, failures)
    });
    for i in [0usize, 1, 2, 0] {
        std::thread::sleep(Duration::from_millis(1500));
        s.kill(i);
        std::thread::sleep(Duration::from_millis(1500));
        s.start_replica(i);
    }
    let (made, failures) = client.join().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let after = s.json(&["list"]).as_array().unwrap().len();
    assert_eq!(after - before, made, "each create made one workspace");
    eprintln!("{made} creates and lists through HAProxy while 4 replicas were killed: no error");
}
