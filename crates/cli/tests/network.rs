//! Bridged networking with real VMs, inside a network namespace this test
//! makes (the machine's own interfaces are never touched): pool addresses,
//! two workspaces of one owner reaching each other, anti-spoofing, owners
//! kept apart, and a node killed with -9 leaving no stray taps or rules.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{root, Kill as Proc, Reap, Steps, VWS};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn in_ns(ns: &str, home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, VWS])
        .args(args)
        .env("VWS_HOME", home)
        .env_remove("VWS_SERVER");
    c
}

/// `ip netns exec` mounts a /sys of the namespace's own, which hides the
/// host's cgroup hierarchies: the node's command mounts them again (the
/// same options name the same hierarchies) to confine dynamic accounts.
fn with_cgroups(ns: &str, home: &Path, args: &[&str]) -> Command {
    let script = common::remount_cgroups();
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!("{script}exec \"$0\" \"$@\""))
        .arg(VWS)
        .args(args)
        .env("VWS_HOME", home)
        .env_remove("VWS_SERVER");
    c
}

fn vws(ns: &str, home: &Path, args: &[&str]) -> Output {
    in_ns(ns, home, args).stdin(Stdio::null()).output().unwrap()
}

fn ok(ns: &str, home: &Path, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = vws(ns, home, &a);
    assert!(
        out.status.success(),
        "vws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn spawn(ns: &str, home: &Path, args: &[&str], log: &str) -> Proc {
    launch(in_ns(ns, home, args), home, log)
}

fn launch(mut cmd: Command, home: &Path, log: &str) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join(log)).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ns_links(ns: &str, prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn nft_tables(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node_url(ns: &str, home: &Path) -> String {
    ok(ns, home, &["node", "list"])
        .as_array()
        .and_then(|a| a.iter().find(|n| n["status"] == "up"))
        .map(|n| n["url"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn start_node(ns: &str, home: &Path) -> Proc {
    // A restarted node registers again at a new address.
    let before = node_url(ns, home);
    let p = launch(
        with_cgroups(
            ns,
            home,
            &[
                "node",
                "--name",
                "n1",
                "--heartbeat",
                "1",
                "--node-home",
                home.join("n1").to_str().unwrap(),
                // Served ports of bridged workspaces, published on the node's
                // address on the "outside" link.
                "--publish",
                "10.99.0.1",
            ],
        ),
        home,
        "node.log",
    );
    wait_until("the node", Duration::from_secs(30), || {
        let now = node_url(ns, home);
        !now.is_empty() && now != before
    });
    p
}

/// A workspace of `desc`, created, deployed and started; its id.
fn started(ns: &str, home: &Path, desc: &Path) -> String {
    let id = ok(ns, home, &["create", desc.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    ok(ns, home, &["deploy", &id]);
    ok(ns, home, &["start", &id]);
    id
}

/// The IPv4 addresses on a workspace's eth0, as `ip -4 -o addr` shows them.
fn eth0(ns: &str, home: &Path, id: &str) -> String {
    let out = vws(
        ns,
        home,
        &["run", id, "--", "ip", "-4", "-o", "addr", "show", "eth0"],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `from` can ping `to` (one packet, two seconds).
fn pings(ns: &str, home: &Path, from: &str, to: &str) -> bool {
    let out = vws(
        ns,
        home,
        &["run", from, "--", "ping", "-c", "1", "-W", "2", to],
    );
    // Shown with a failed assertion: why it did not.
    eprintln!(
        "ping {from} → {to}: {:?} {} {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out.status.success()
}

#[test]
fn bridged_workspaces_reach_each_other_and_nothing_else() {
    let steps = Steps::new("service and node in a network namespace");
    let guest = root().join("target/vws-test-guest");
    assert!(Command::new(root().join("scripts/build-minimal-image"))
        .arg(&guest)
        .status()
        .unwrap()
        .success());
    let ns = Netns(format!("vwst{}", std::process::id()));
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success(),
        "ip netns add (needs root)"
    );
    Command::new("ip")
        .args(["-n", &ns.0, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    steps.at("\"Outside\": another namespace joined to the node's by a veth pair");
    // "Outside": another namespace joined to the node's by a veth pair.
    let outside = Netns(format!("vwso{}", std::process::id()));
    for args in [
        vec!["netns", "add", outside.0.as_str()],
        vec![
            "-n",
            &ns.0,
            "link",
            "add",
            "vo0",
            "type",
            "veth",
            "peer",
            "name",
            "vo1",
            "netns",
            outside.0.as_str(),
        ],
        vec!["-n", &ns.0, "addr", "add", "10.99.0.1/24", "dev", "vo0"],
        vec!["-n", &ns.0, "link", "set", "vo0", "up"],
        vec![
            "-n",
            outside.0.as_str(),
            "addr",
            "add",
            "10.99.0.2/24",
            "dev",
            "vo1",
        ],
        vec!["-n", outside.0.as_str(), "link", "set", "vo1", "up"],
        vec!["-n", outside.0.as_str(), "link", "set", "lo", "up"],
    ] {
        assert!(
            Command::new("ip").args(&args).status().unwrap().success(),
            "ip {args:?}"
        );
    }
    let ns = &ns.0.clone();
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    std::fs::write(
        home.join("networks.toml"),
        "[[network]]\nname = \"lab\"\ncidr = \"10.88.0.0/29\"\ngateway = \"10.88.0.1\"\n",
    )
    .unwrap();
    let _serve = spawn(ns, home, &["serve", "--listen", "127.0.0.1:0"], "serve.log");
    wait_until("the service", Duration::from_secs(30), || {
        home.join("server.json").exists()
    });
    let mut node = start_node(ns, home);
    ok(
        ns,
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
    let desc = home.join("w.toml");
    std::fs::write(
        &desc,
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[[network.nics]]\nname = \"eth0\"\nmethod = \"pool\"\nnetwork = \"lab\"\n[software]\nimage = \"minimal:1\"\n",
    )
    .unwrap();
    let bob_dir = home.join("bob");
    let out = vws(
        ns,
        home,
        &[
            "cert",
            "issue",
            "--dn",
            "/O=Grid/OU=bio/CN=Bob",
            "--out",
            bob_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let bob = [
        "--cert",
        bob_dir
            .join("cert.pem")
            .to_str()
            .unwrap()
            .to_string()
            .leak(),
        "--key",
        bob_dir.join("key.pem").to_str().unwrap().to_string().leak(),
    ];

    let mut ids = Vec::new();
    for who in [None, None, Some(bob)] {
        let mut args: Vec<&str> = who.map(|b| b.to_vec()).unwrap_or_default();
        args.extend(["create", desc.to_str().unwrap()]);
        let id = ok(ns, home, &args)["id"].as_str().unwrap().to_string();
        let mut a: Vec<&str> = who.map(|b| b.to_vec()).unwrap_or_default();
        a.extend(["deploy", id.as_str()]);
        ok(ns, home, &a);
        let mut a: Vec<&str> = who.map(|b| b.to_vec()).unwrap_or_default();
        a.extend(["start", id.as_str()]);
        ok(ns, home, &a);
        ids.push(id);
    }
    let addr = |id: &str| -> String {
        ok(ns, home, &["show", id])["addresses"][0]["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, b, c) = (addr(&ids[0]), addr(&ids[1]), addr(&ids[2]));
    assert_eq!(
        [a.as_str(), b.as_str(), c.as_str()],
        ["10.88.0.2", "10.88.0.3", "10.88.0.4"]
    );
    assert_eq!(ok(ns, home, &["network", "show", "lab"])["used"], 3);
    assert_eq!(ns_links(ns, "vt").len(), 3, "one tap per interface");

    steps.at("One owner's workspaces reach each other");
    // One owner's workspaces reach each other.
    assert!(pings(ns, home, &ids[0], &b), "A reaches B");
    assert!(pings(ns, home, &ids[1], &a), "B reaches A");
    steps.at("Another owner's are on another segment");
    // Another owner's are on another segment.
    assert!(
        !pings(ns, home, &ids[0], &c),
        "A cannot reach Bob's workspace"
    );

    steps.at("Spoofing: another address, or another MAC, reaches no one");
    // Spoofing: another address, or another MAC, reaches no one.
    let sh = |script: &str| {
        vws(ns, home, &["run", &ids[0], "--", "sh", "-c", script])
            .status
            .success()
    };
    assert!(!sh(&format!(
        "ip addr flush dev eth0; ip addr add 10.88.0.6/29 dev eth0; ping -c 1 -W 2 {b}"
    )));
    assert!(
        sh(&format!(
            "ip addr flush dev eth0; ip addr add {a}/29 dev eth0; ping -c 1 -W 2 {b}"
        )),
        "its own address works again"
    );
    let mac = ok(ns, home, &["show", &ids[0]])["addresses"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!sh(&format!(
        "ip link set eth0 address 52:54:00:de:ad:01; ping -c 1 -W 2 {b}"
    )));
    assert!(
        sh(&format!(
            "ip link set eth0 address {mac}; ping -c 1 -W 2 {b}"
        )),
        "its own MAC works again"
    );

    steps.at("DHCP: the node's dnsmasq hands out the address the pool gave");
    // DHCP: the node's dnsmasq hands out the address the pool gave; the
    // bridge then holds the gateway, so the host reaches a served port.
    let dhcp_desc = home.join("d.toml");
    std::fs::write(
        &dhcp_desc,
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[[network.nics]]\nname = \"eth0\"\nmethod = \"dhcp\"\nnetwork = \"lab\"\n[software]\nimage = \"minimal:1\"\n[capability]\nservices = [{ port = 8080, protocol = \"tcp\" }]\n",
    )
    .unwrap();
    let d = started(ns, home, &dhcp_desc);
    let d_addr = addr(&d);
    assert_eq!(d_addr, "10.88.0.5");
    wait_until("the DHCP lease", Duration::from_secs(30), || {
        eth0(ns, home, &d).contains(&format!("{d_addr}/29"))
    });
    assert!(
        pings(ns, home, &ids[0], &d_addr),
        "A reaches the DHCP workspace"
    );
    let out = vws(
        ns,
        home,
        &[
            "run",
            "--detach",
            &d,
            "--",
            "sh",
            "-c",
            "echo served > /tmp/index.html; httpd -f -p 8080 -h /tmp",
        ],
    );
    assert!(out.status.success());
    wait_until(
        "the served port from the host",
        Duration::from_secs(20),
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-s", "--max-time", "2"])
                .arg(format!("http://{d_addr}:8080/index.html"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "served"
        },
    );
    steps.at("Published: from outside the node, through the node's forward");
    // Published: from outside the node, through the node's forward.
    let fwd = ok(ns, home, &["show", &d])["binding"]["forwards"][0]["host"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fwd.starts_with("10.99.0.1:"), "{fwd}");
    wait_until(
        "the served port from outside",
        Duration::from_secs(20),
        || {
            let out = Command::new("ip")
                .args(["netns", "exec", &outside.0, "curl", "-s", "--max-time", "2"])
                .arg(format!("http://{fwd}/index.html"))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "served"
        },
    );
    ok(ns, home, &["destroy", &d]);
    assert!(
        !nft_tables(ns).contains("vws_fwd_"),
        "the forward goes with the workspace"
    );

    steps.at("A hot image of A");
    // A hot image of A: workspaces restored from it take their own pool
    // addresses and MACs, not A's, and reach the segment.
    ok(ns, home, &["pause", &ids[0]]);
    ok(ns, home, &["snapshot", &ids[0], "--as", "netimg:1"]);
    ok(ns, home, &["unpause", &ids[0]]);
    let hot_desc = home.join("h.toml");
    std::fs::write(
        &hot_desc,
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[[network.nics]]\nname = \"eth0\"\nmethod = \"pool\"\nnetwork = \"lab\"\n[software]\nimage = \"netimg:1\"\n",
    )
    .unwrap();
    let mut hot = Vec::new();
    for _ in 0..2 {
        let h = started(ns, home, &hot_desc);
        let mine = addr(&h);
        let shown = eth0(ns, home, &h);
        assert!(
            shown.contains(&format!("{mine}/29")) && !shown.contains(&format!("{a}/")),
            "{shown}"
        );
        hot.push((h, mine));
    }
    assert_ne!(hot[0].1, hot[1].1);
    steps.at("One of them took the DHCP workspace's address");
    // One of them took the DHCP workspace's address, which A still maps
    // to that one's MAC, yet A reaches it at once: a restored guest is
    // announced (QEMU's self-announce after an incoming migration has the
    // guest send gratuitous ARPs for several rounds, past its identity).
    let recycled = hot.iter().find(|(_, at)| *at == d_addr);
    let (recycled, _) = recycled.expect("a clone on the released address");
    assert!(
        pings(ns, home, &ids[0], &d_addr),
        "A reaches {recycled} on a recycled address"
    );
    assert!(
        pings(ns, home, &hot[0].0, &hot[1].1),
        "one clone reaches the other"
    );
    assert!(pings(ns, home, &hot[1].0, &b), "and B");
    assert!(pings(ns, home, &ids[0], &b), "A is unharmed");
    ok(ns, home, &["destroy", &hot[0].0, &hot[1].0]);

    steps.at("A dynamic account on the same network");
    // A dynamic account on the same network: a veth pair instead of a tap,
    // under the same rules. It serves its owner's VMs, not Bob's, and
    // cannot take another address: its network namespace is not its own.
    let built = vws(ns, home, &["image", "build", "tiny:1", "--from", "busybox"]);
    assert!(built.status.success(), "{built:?}");
    let acct_desc = home.join("a.toml");
    std::fs::write(
        &acct_desc,
        "category = \"dynamic account\"\n[hardware]\nram = \"128MiB\"\ndisk = { size = \"16MiB\" }\n[[network.nics]]\nname = \"eth0\"\nmethod = \"pool\"\nnetwork = \"lab\"\n[software]\nimage = \"tiny:1\"\n[capability]\nstartup = \"mkdir -p /tmp/www; echo account > /tmp/www/index.html; httpd -p 8080 -h /tmp/www\"\nservices = [{ port = 8080, protocol = \"tcp\" }]\n",
    )
    .unwrap();
    let acct = started(ns, home, &acct_desc);
    let acct_addr = addr(&acct);
    assert!(![a.as_str(), b.as_str(), c.as_str()].contains(&acct_addr.as_str()));
    let shown = eth0(ns, home, &acct);
    assert!(shown.contains(&format!("{acct_addr}/29")), "{shown}");
    assert_eq!(ns_links(ns, "vt").len(), 4, "three taps and a veth");
    let fetch = |from: &str, url: &str| {
        let out = vws(
            ns,
            home,
            // busybox's own -T crashes (Debian 12's busybox-static)
            &[
                "run", from, "--", "timeout", "5", "wget", "-q", "-O", "-", url,
            ],
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "account"
    };
    let page = format!("http://{acct_addr}:8080/index.html");
    wait_until(
        "A fetching the account's page",
        Duration::from_secs(20),
        || fetch(&ids[0], &page),
    );
    assert!(!fetch(&ids[2], &page), "Bob's VM cannot reach the account");
    let out = vws(
        ns,
        home,
        &[
            "run",
            &acct,
            "--",
            "sh",
            "-c",
            &format!("wget -q -O - http://{b}:1/ ; ip addr add 10.88.0.6/29 dev eth0"),
        ],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("refused"),
        "the account reaches B (connection refused, not timed out) and cannot add an address: {out:?}"
    );
    steps.at("A VM booted onto a recycled address announces it too");
    // A VM booted onto a recycled address announces it too: B still maps
    // the address to the destroyed clone's MAC, yet reaches the new VM.
    let e = started(ns, home, &desc);
    let e_addr = addr(&e);
    let b_knew = vws(ns, home, &["run", &ids[1], "--", "cat", "/proc/net/arp"]);
    assert!(
        String::from_utf8_lossy(&b_knew.stdout).contains(&format!("{e_addr} ")),
        "B had an entry for {e_addr} from a clone: {b_knew:?}"
    );
    assert!(pings(ns, home, &ids[1], &e_addr), "B reaches {e} at once");
    ok(ns, home, &["destroy", &e]);
    steps.at("Its served port is published on the node's outside address too");
    // Its served port is published on the node's outside address too.
    let fwd = ok(ns, home, &["show", &acct])["binding"]["forwards"][0]["host"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fwd.starts_with("10.99.0.1:"), "{fwd}");
    let out = Command::new("ip")
        .args(["netns", "exec", &outside.0, "curl", "-s", "--max-time", "5"])
        .arg(format!("http://{fwd}/index.html"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "account");

    steps.at("kill -9 of the node");
    // kill -9 of the node: the VMs run on and are adopted with their taps; a
    // stopped one's tap goes; nothing is left after destroy.
    node.0.kill().unwrap();
    node.0.wait().unwrap();
    node = start_node(ns, home);
    assert_eq!(
        ns_links(ns, "vt").len(),
        4,
        "adopted VMs and account keep their taps and veth"
    );
    assert!(
        pings(ns, home, &ids[0], &b),
        "still connected after the restart"
    );
    assert!(fetch(&ids[0], &page), "the account too");
    ok(ns, home, &["stop", &ids[1]]);
    assert_eq!(ns_links(ns, "vt").len(), 3, "a stopped VM's tap is removed");
    ok(ns, home, &["stop", &acct]);
    assert_eq!(
        ns_links(ns, "vt").len(),
        2,
        "a stopped account's veth is removed"
    );
    assert_eq!(
        nft_tables(ns).matches("table bridge vws_").count(),
        2,
        "its rules too: {}",
        nft_tables(ns)
    );
    ok(ns, home, &["destroy", &ids[0], &ids[1], &ids[2], &acct]);
    assert!(
        ns_links(ns, "vt").is_empty() && ns_links(ns, "vb").is_empty(),
        "no stray taps or bridges"
    );
    steps.at("What stays is the node's own");
    // What stays is the node's own: the guard keeping its VMs off the
    // host's loopback, one table for as long as its QEMUs may run.
    let tables = nft_tables(ns);
    assert!(
        tables
            .lines()
            .filter(|l| l.contains("vws_"))
            .all(|l| l.starts_with("table inet vws_lo_")),
        "no stray rules: {tables}"
    );
    assert_eq!(tables.matches("table inet vws_lo_").count(), 1, "{tables}");
    let pids: Vec<_> = std::fs::read_dir(home.join("n1/net"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                .collect()
        })
        .unwrap_or_default();
    assert!(pids.is_empty(), "no dnsmasq left running");
    assert_eq!(
        ok(ns, home, &["network", "show", "lab"])["used"],
        0,
        "addresses released"
    );
    drop(node);
}
