//! Bridged networking on the node: a bridge per layer-2 segment (a shared
//! network, or one network's workspaces of one owner), a tap per `pool`
//! interface, and anti-spoofing rules per tap (nftables, bridge family):
//! frames from a tap must carry its MAC, its IPv4 address and ARP claims of
//! its own; everything else is dropped, as Nimbus did with ebtables.
//!
//! Names: bridges `vb` + 10 hex digits of the segment's hash, taps `vt` + 10
//! hex digits of (workspace, interface), nft tables `vws_<tap>`. The node
//! owns exactly those; it never touches other interfaces.

use std::process::Command;

use sha2::Digest;

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

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
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
pub fn plug(nics: &[NicSpec]) -> Result<(), String> {
    for b in nics.iter().filter_map(|n| n.bridged.as_ref()) {
        if !exists(&b.bridge) {
            run("ip", &["link", "add", &b.bridge, "type", "bridge"])?;
        }
        run("ip", &["link", "set", &b.bridge, "up"])?;
        if exists(&b.tap) {
            // A leftover of a crash: start clean.
            unplug_one(&b.tap);
        }
        run("ip", &["tuntap", "add", "dev", &b.tap, "mode", "tap"])?;
        run("ip", &["link", "set", &b.tap, "master", &b.bridge])?;
        run("ip", &["link", "set", &b.tap, "up"])?;
        let path = std::env::temp_dir().join(format!("vws-{}.nft", b.tap));
        std::fs::write(&path, rules(b)).map_err(|e| e.to_string())?;
        let loaded = run("nft", &["-f", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        if let Err(e) = loaded {
            unplug_one(&b.tap);
            return Err(format!("anti-spoofing rules for {}: {e}", b.tap));
        }
    }
    Ok(())
}

fn unplug_one(tap: &str) {
    let _ = run("nft", &["delete", "table", "bridge", &format!("vws_{tap}")]);
    if exists(tap) {
        let _ = run("ip", &["link", "del", tap]);
    }
}

/// Removes a VM's taps and rules, and bridges left without members.
pub fn unplug(nics: &[NicSpec]) {
    for b in nics.iter().filter_map(|n| n.bridged.as_ref()) {
        unplug_one(&b.tap);
        remove_if_empty(&b.bridge);
    }
}

fn remove_if_empty(bridge: &str) {
    let members = std::path::Path::new("/sys/class/net")
        .join(bridge)
        .join("brif");
    let empty = std::fs::read_dir(&members)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        let _ = run("ip", &["link", "del", bridge]);
    }
}

/// After a restart: removes this node's taps and rules that no running VM
/// uses (`keep`), then its empty bridges. Returns the taps removed.
pub fn sweep(keep: &[String]) -> Vec<String> {
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
        remove_if_empty(n);
    }
    removed
}
