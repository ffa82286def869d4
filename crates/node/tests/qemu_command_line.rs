//! QEMU's command line for the kinds of workspace a node runs, held
//! against checked-in files (`tests/golden/*.args`, one argument a line).
//! A change to the command line shows here as a diff to review; after a
//! deliberate change, `VWS_UPDATE_GOLDEN=1 cargo test -p vws-node --test
//! qemu_command_line` rewrites the files.

use std::path::{Path, PathBuf};

use vws_node::accel::Accel;
use vws_node::driver::{Boot, Bridged, NicSpec, VmSpec};
use vws_node::qemu::QemuDriver;

fn driver(tls: bool) -> QemuDriver {
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let (jobs, _) = tokio::sync::mpsc::unbounded_channel();
    let d =
        QemuDriver::new(PathBuf::from("/node/vms"), Accel::Tcg, events, jobs).with_tsc_khz(None);
    if tls {
        d.with_tls(PathBuf::from("/node/tls"))
    } else {
        d
    }
}

fn spec(id: &str, boot: Boot) -> VmSpec {
    VmSpec {
        id: id.into(),
        hostname: format!("{id}-host"),
        cpus: 2,
        ram: 256 << 20,
        boot,
        disk: None,
        cdroms: Vec::new(),
        nics: Vec::new(),
        startup: None,
        forwards: Vec::new(),
        restore: None,
        restore_ram: None,
        disk_key: None,
        disk_base: None,
        account: None,
    }
}

fn kernel() -> Boot {
    Boot::Kernel {
        kernel: "/node/cache/sha256/k".into(),
        initrd: "/node/cache/sha256/i".into(),
        cmdline: "console=ttyS0 quiet".into(),
    }
}

fn user_nic() -> NicSpec {
    NicSpec {
        name: "eth0".into(),
        method: vws_model::NicMethod::User,
        bridged: None,
    }
}

fn check(name: &str, args: Vec<String>) {
    // The RAM folder is /dev/shm/vws-TAG where /dev/shm exists: one name
    // on every machine in the files.
    let args: Vec<String> = args
        .into_iter()
        .map(|a| normalized_ram_dir(&a, "/dev/shm/vws-", "/RAM/"))
        .collect();
    let text = args.join("\n") + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.args"));
    if std::env::var_os("VWS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (VWS_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "QEMU's command line for {name} changed");
}

/// `/dev/shm/vws-1a2b3c4d5e6f/x` → `/RAM/x`, and `/node/vms/.ram/x` (no
/// /dev/shm) alike.
fn normalized_ram_dir(arg: &str, prefix: &str, to: &str) -> String {
    let arg = arg.replace("/node/vms/.ram/", to);
    match arg.find(prefix) {
        Some(at) => {
            let rest = &arg[at + prefix.len()..];
            let end = rest.find('/').map_or(rest.len(), |i| i + 1);
            format!("{}{to}{}", &arg[..at], &rest[end..])
        }
        None => arg,
    }
}

#[test]
fn a_kernel_booted_microvm_with_a_user_nic_a_served_port_and_a_startup_program() {
    let mut s = spec("ws-kernel", kernel());
    s.disk = Some("/node/vms/ws-kernel/disk.qcow2".into());
    s.nics = vec![user_nic()];
    s.forwards = vec![vws_model::node::Forward {
        port: 80,
        protocol: "tcp".into(),
        host: "127.0.0.1:18080".into(),
    }];
    s.startup = Some("echo started".into());
    check("kernel-user-nic", driver(false).command_line(&s));
}

#[test]
fn a_disk_booted_q35_with_an_encrypted_disk_a_cdrom_and_a_bridged_nic_over_tls() {
    let mut s = spec("ws-disk", Boot::Disk);
    s.disk = Some("/node/vms/ws-disk/disk.qcow2".into());
    s.disk_key = Some("/RAM/ws-disk.key".into());
    s.cdroms = vec!["/node/cache/sha256/cd".into()];
    s.nics = vec![NicSpec {
        name: "eth0".into(),
        method: vws_model::NicMethod::Pool,
        bridged: Some(Bridged {
            tap: "vwst0".into(),
            bridge: "vwsbr0".into(),
            mac: "52:54:00:12:34:56".into(),
            address: "10.77.0.5/24".into(),
            gateway: Some("10.77.0.1".into()),
            dhcp: false,
        }),
    }];
    check("disk-bridged-tls", driver(true).command_line(&s));
}

#[test]
fn a_hot_start_maps_the_images_ram_privately_without_the_kernel() {
    let mut s = spec("ws-hot", kernel());
    s.restore = Some("/node/cache/sha256/state".into());
    s.restore_ram = Some("/node/cache/sha256/ram".into());
    s.nics = vec![
        NicSpec {
            name: "eth0".into(),
            method: vws_model::NicMethod::None,
            bridged: None,
        },
        NicSpec {
            name: "eth1".into(),
            method: vws_model::NicMethod::Pool,
            bridged: Some(Bridged {
                tap: "vwst1".into(),
                bridge: "vwsbr0".into(),
                mac: "52:54:00:00:00:01".into(),
                address: "10.77.0.6/24".into(),
                gateway: None,
                dhcp: true,
            }),
        },
    ];
    check("hot-restore", driver(false).command_line(&s));
}

#[test]
fn a_base_image_not_yet_cached_is_read_over_the_nodes_nbd_server() {
    let mut s = spec("ws-lazy", kernel());
    s.disk = Some("/node/vms/ws-lazy/disk.qcow2".into());
    s.disk_base = Some(vws_node::driver::OnDemandBase {
        socket: "/node/on-demand/0123456789abcdef.nbd".into(),
        format: "raw".into(),
        cached: "/nonexistent/node/cache/sha256/0123".into(),
    });
    check("on-demand-base", driver(false).command_line(&s));
    // Once cached, the disk's own header names the base: nothing else.
    let cached = tempfile::NamedTempFile::new().unwrap();
    s.disk_base.as_mut().unwrap().cached = cached.path().into();
    let args = driver(false).command_line(&s);
    assert!(
        !args
            .iter()
            .any(|a| a.contains("nbd") || a.contains("disk0-base")),
        "{args:?}"
    );
}
