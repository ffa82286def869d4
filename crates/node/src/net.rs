//! Bridged networking on the node: a bridge per layer-2 segment (a shared
//! network, or one network's workspaces of one owner), a tap per `pool`
//! interface of a VM (a veth pair for a dynamic account's), and
//! anti-spoofing rules per tap (nftables, bridge family):
//! frames from a tap must carry its MAC, its IPv4 address and ARP claims of
//! its own; everything else is dropped, as Nimbus did with ebtables.
//!
//! Names: bridges `vb` + 10 hex digits of the segment's hash, taps `vt` + 10
//! hex digits of (workspace, interface), nft tables `vws_<tap>`. The node
//! owns exactly those; it never touches other interfaces.
//!
//! `dhcp` interfaces: the bridge gets the network's gateway address and a
//! dnsmasq of its own (DHCP only, no DNS) that hands each MAC the address the
//! pool gave it, from a hosts file re-read on SIGHUP; its files live in
//! `NODE_HOME/net/<bridge>.*`, and the node restarts it if it dies.

use std::path::Path;
use std::process::Command;

use sha2::Digest;

pub use crate::driver::NetError;
use crate::driver::{Bridged, NicSpec};

/// Prefix of the taps this node makes.
pub const TAP_PREFIX: &str = "vt";
/// Prefix of the bridges this node makes.
pub const BRIDGE_PREFIX: &str = "vb";

fn short(prefix: &str, what: &str) -> String {
    let h = sha2::Sha256::digest(what.as_bytes());
    format!(
        "{prefix}{}",
        h.iter()
            .take(5)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// The tap of a workspace's interface.
pub fn tap_name(id: &str, nic: &str) -> String {
    short(TAP_PREFIX, &format!("{id}/{nic}"))
}

/// The bridge of a segment.
pub fn bridge_name(segment: &str) -> String {
    short(BRIDGE_PREFIX, segment)
}

fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(NetError::io(program))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn exists(dev: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(dev).exists()
}

/// The anti-spoofing table of one tap.
fn rules(b: &Bridged) -> String {
    let ip = b.address.split('/').next().unwrap_or_default();
    let (tap, mac) = (&b.tap, &b.mac);
    format!(
        "table bridge vws_{tap} {{\n\
         \tchain pre {{\n\
         \t\ttype filter hook prerouting priority -200; policy accept;\n\
         \t\tiifname \"{tap}\" ether saddr != {mac} drop\n\
         \t\tiifname \"{tap}\" ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept\n\
         \t\tiifname \"{tap}\" ether type ip ip saddr != {ip} drop\n\
         \t\tiifname \"{tap}\" ether type arp arp saddr ip != {ip} drop\n\
         \t\tiifname \"{tap}\" ether type arp arp saddr ether != {mac} drop\n\
         \t\tiifname \"{tap}\" ether type ip6 drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Makes the host side of a VM's bridged interfaces: bridge (if new), tap,
/// anti-spoofing rules. Undone by [`unplug`].
pub fn plug(nics: &[NicSpec], dir: &Path) -> Result<(), NetError> {
    for b in nics.iter().filter_map(|n| n.bridged.as_ref()) {
        attach(b, dir, || {
            run("ip", &["tuntap", "add", "dev", &b.tap, "mode", "tap"]).map(drop)
        })?;
    }
    Ok(())
}

/// A dynamic account's bridged interfaces: a veth pair per interface, the
/// host end (named as a VM's tap) on the bridge under the same rules, the
/// other end in the network namespace of `pid` with the interface's name,
/// MAC and address (and a default route through the gateway when `route`).
/// The workspace cannot change that end: its network namespace belongs to
/// the host, not to the account's user namespace. Undone by [`unplug`]; the
/// inner end goes with the namespace.
pub fn plug_into(nics: &[NicSpec], dir: &Path, pid: i32, route: bool) -> Result<(), NetError> {
    let netns = format!("--net=/proc/{pid}/ns/net");
    let inside = |args: &[&str]| {
        let mut a = vec![netns.as_str(), "ip"];
        a.extend_from_slice(args);
        run("nsenter", &a).map(drop)
    };
    for n in nics {
        let Some(b) = &n.bridged else { continue };
        let name = n.name.as_str();
        let pid = pid.to_string();
        attach(b, dir, || {
            run(
                "ip",
                &[
                    "link", "add", &b.tap, "type", "veth", "peer", "name", name, "address", &b.mac,
                    "netns", &pid,
                ],
            )
            .map(drop)
        })?;
        inside(&["addr", "add", &b.address, "dev", name])?;
        inside(&["link", "set", name, "up"])?;
        // A gratuitous ARP once it is up: the address may be a recycled one
        // that neighbours still map to its last holder's MAC. (The kernel's
        // own, `arp_notify`, goes out at link-up, before the bridge port
        // carries it.) Busybox's arping: busybox-static is a dependency.
        let ip = b.address.split('/').next().unwrap_or_default();
        run(
            "nsenter",
            &[&netns, "busybox", "arping", "-U", "-c", "1", "-I", name, ip],
        )
        .map_err(NetError::during(format!("announcing {ip}")))?;
        if let Some(gw) = b.gateway.as_deref().filter(|_| route) {
            inside(&["route", "add", "default", "via", gw, "dev", name])?;
        }
    }
    Ok(())
}

/// Puts one interface's host side on its bridge: the bridge (if new), its
/// DHCP server, the device `make` creates (named `b.tap`), the rules.
fn attach(
    b: &Bridged,
    dir: &Path,
    make: impl FnOnce() -> Result<(), NetError>,
) -> Result<(), NetError> {
    if !exists(&b.bridge) {
        run("ip", &["link", "add", &b.bridge, "type", "bridge"])?;
    }
    run("ip", &["link", "set", &b.bridge, "up"])?;
    if b.dhcp {
        serve_dhcp(b, dir)?;
    }
    if exists(&b.tap) {
        // A leftover of a crash: start clean.
        unplug_one(&b.tap);
    }
    make()?;
    run("ip", &["link", "set", &b.tap, "master", &b.bridge])?;
    run("ip", &["link", "set", &b.tap, "up"])?;
    let path = std::env::temp_dir().join(format!("vws-{}.nft", b.tap));
    std::fs::write(&path, rules(b)).map_err(NetError::io(path.display().to_string()))?;
    let loaded = run("nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    if let Err(e) = loaded {
        unplug_one(&b.tap);
        return Err(NetError::during(format!(
            "anti-spoofing rules for {}",
            b.tap
        ))(e));
    }
    Ok(())
}

fn unplug_one(tap: &str) {
    let _ = run("nft", &["delete", "table", "bridge", &format!("vws_{tap}")]);
    let _ = run("nft", &["delete", "table", "ip", &format!("vws_fwd_{tap}")]);
    if exists(tap) {
        let _ = run("ip", &["link", "del", tap]);
    }
}

/// Removes a VM's taps and rules, its DHCP entries, and bridges (with
/// their dnsmasq) left without members.
pub fn unplug(nics: &[NicSpec], dir: &Path) {
    for b in nics.iter().filter_map(|n| n.bridged.as_ref()) {
        unplug_one(&b.tap);
        if b.dhcp {
            let hosts = dir.join(format!("{}.hosts", b.bridge));
            let kept: String = std::fs::read_to_string(&hosts)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with(&b.mac))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write(&hosts, &kept);
            signal_dnsmasq(&b.bridge, dir, rustix::process::Signal::HUP);
        }
        remove_if_empty(&b.bridge, dir);
    }
}

fn pid_of(bridge: &str, dir: &Path) -> Option<rustix::process::Pid> {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("{bridge}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    rustix::process::test_kill_process(pid).ok().map(|_| pid)
}

fn signal_dnsmasq(bridge: &str, dir: &Path, sig: rustix::process::Signal) {
    if let Some(pid) = pid_of(bridge, dir) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Gives the bridge the gateway address, records the MAC's address, and
/// makes sure the bridge's dnsmasq runs (and re-reads its hosts).
fn serve_dhcp(b: &Bridged, dir: &Path) -> Result<(), NetError> {
    let gw = b.gateway.as_deref().ok_or(NetError::Config(
        "a dhcp network needs a gateway (the bridge's address, where dnsmasq answers)",
    ))?;
    let len = b.address.split('/').nth(1).unwrap_or("24");
    let have = run("ip", &["-o", "addr", "show", "dev", &b.bridge]).unwrap_or_default();
    if !have.contains(&format!(" {gw}/")) {
        run(
            "ip",
            &["addr", "add", &format!("{gw}/{len}"), "dev", &b.bridge],
        )?;
    }
    std::fs::create_dir_all(dir).map_err(NetError::io(dir.display().to_string()))?;
    let hosts = dir.join(format!("{}.hosts", b.bridge));
    let ip = b.address.split('/').next().unwrap_or_default();
    let mut lines: Vec<String> = std::fs::read_to_string(&hosts)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with(&b.mac))
        .map(str::to_string)
        .collect();
    lines.push(format!("{},{ip}", b.mac));
    std::fs::write(&hosts, lines.join("\n") + "\n")
        .map_err(NetError::io(hosts.display().to_string()))?;
    let net = dir.join(format!("{}.net", b.bridge));
    std::fs::write(&net, format!("{gw}/{len}\n"))
        .map_err(NetError::io(net.display().to_string()))?;
    if pid_of(&b.bridge, dir).is_some() {
        signal_dnsmasq(&b.bridge, dir, rustix::process::Signal::HUP);
        return Ok(());
    }
    start_dnsmasq(&b.bridge, gw, len, dir)
}

fn start_dnsmasq(bridge: &str, gw: &str, len: &str, dir: &Path) -> Result<(), NetError> {
    let bits: u32 = len.parse().unwrap_or(24);
    let mask = std::net::Ipv4Addr::from(u32::MAX << (32 - bits));
    let f = |ext: &str| {
        dir.join(format!("{bridge}.{ext}"))
            .to_string_lossy()
            .into_owned()
    };
    // Daemonized with a pidfile: it outlives a node killed with -9, which
    // finds it again; DNS off (port 0); only this bridge.
    run(
        "dnsmasq",
        &[
            "--conf-file=/dev/null",
            "--port=0",
            "--bind-interfaces",
            &format!("--interface={bridge}"),
            "--except-interface=lo",
            &format!("--dhcp-range={gw},static,{mask},12h"),
            &format!("--dhcp-hostsfile={}", f("hosts")),
            &format!("--dhcp-leasefile={}", f("leases")),
            &format!("--pid-file={}", f("pid")),
            &format!("--dhcp-option=option:router,{gw}"),
            "--dhcp-authoritative",
        ],
    )
    .map(drop)
}

/// Restarts the dnsmasq of every bridge that still has DHCP clients and
/// lost its server (called with each heartbeat).
pub fn supervise(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(bridge) = name.strip_suffix(".hosts") else {
            continue;
        };
        let busy = std::fs::read_to_string(e.path()).is_ok_and(|t| !t.trim().is_empty());
        if busy && exists(bridge) && pid_of(bridge, dir).is_none() {
            let net =
                std::fs::read_to_string(dir.join(format!("{bridge}.net"))).unwrap_or_default();
            if let Some((gw, len)) = net.trim().split_once('/') {
                match start_dnsmasq(bridge, gw, len, dir) {
                    Ok(()) => tracing::warn!(%bridge, "dnsmasq had died; restarted"),
                    Err(e) => tracing::warn!(%bridge, error = %e, "cannot restart dnsmasq"),
                }
            }
        }
    }
}

fn remove_if_empty(bridge: &str, dir: &Path) {
    let members = std::path::Path::new("/sys/class/net")
        .join(bridge)
        .join("brif");
    let empty = std::fs::read_dir(&members)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        signal_dnsmasq(bridge, dir, rustix::process::Signal::TERM);
        for ext in ["hosts", "leases", "pid", "net"] {
            let _ = std::fs::remove_file(dir.join(format!("{bridge}.{ext}")));
        }
        let _ = run("ip", &["link", "del", bridge]);
    }
}

/// After a restart: removes this node's taps and rules that no running VM
/// uses (`keep`), then its empty bridges. Returns the taps removed.
pub fn sweep(keep: &[String], dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return removed;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for n in names
        .iter()
        .filter(|n| n.starts_with(TAP_PREFIX) && n.len() == 12)
    {
        if !keep.contains(n) {
            unplug_one(n);
            removed.push(n.clone());
        }
    }
    // Rules whose tap is gone.
    if let Ok(tables) = run("nft", &["list", "tables", "bridge"]) {
        for t in tables
            .lines()
            .filter_map(|l| l.strip_prefix("table bridge vws_"))
        {
            let tap = t.trim();
            if !keep.iter().any(|k| k == tap) {
                let _ = run("nft", &["delete", "table", "bridge", &format!("vws_{tap}")]);
            }
        }
    }
    for n in names
        .iter()
        .filter(|n| n.starts_with(BRIDGE_PREFIX) && n.len() == 12)
    {
        remove_if_empty(n, dir);
    }
    removed
}

/// Publishes a VM's served ports (its `forwards`, host side already chosen)
/// for its first bridged interface: DNAT from the host port to the guest,
/// for traffic arriving from outside and from the node itself, masqueraded
/// so replies come back through the node. The bridge gets the network's
/// gateway address (the node must be on the segment to forward to it), and
/// IPv4 forwarding is turned on — only nodes started with `--publish` do
/// this. Removed with the tap (`vws_fwd_<tap>`).
pub fn publish(spec: &crate::driver::VmSpec) -> Result<(), NetError> {
    let Some(b) = spec.nics.iter().find_map(|n| n.bridged.as_ref()) else {
        return Ok(());
    };
    if spec.forwards.is_empty()
        || spec
            .nics
            .iter()
            .any(|n| n.method == vws_model::NicMethod::User)
    {
        return Ok(());
    }
    let gw = b.gateway.as_deref().ok_or(NetError::Config(
        "publishing ports needs the network's gateway (the node's address on the segment)",
    ))?;
    let len = b.address.split('/').nth(1).unwrap_or("24");
    let have = run("ip", &["-o", "addr", "show", "dev", &b.bridge]).unwrap_or_default();
    if !have.contains(&format!(" {gw}/")) {
        run(
            "ip",
            &["addr", "add", &format!("{gw}/{len}"), "dev", &b.bridge],
        )?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetError::io("ip_forward"))?;
    let guest = b.address.split('/').next().unwrap_or_default();
    let mut pre = String::new();
    let mut post = String::new();
    for f in &spec.forwards {
        let port = f.host.rsplit(':').next().unwrap_or_default();
        let proto = if f.protocol == "udp" { "udp" } else { "tcp" };
        pre.push_str(&format!(
            "\t\t{proto} dport {port} dnat to {guest}:{}\n",
            f.port
        ));
        post.push_str(&format!(
            "\t\tip daddr {guest} {proto} dport {} masquerade\n",
            f.port
        ));
    }
    let tap = &b.tap;
    let table = format!(
        "table ip vws_fwd_{tap} {{\n\tchain pre {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{pre}\t}}\n\
         \tchain out {{\n\t\ttype nat hook output priority -100; policy accept;\n{pre}\t}}\n\
         \tchain post {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{post}\t}}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("vws-fwd-{tap}.nft"));
    std::fs::write(&path, table).map_err(NetError::io(path.display().to_string()))?;
    let loaded = run("nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    loaded.map(drop)
}
