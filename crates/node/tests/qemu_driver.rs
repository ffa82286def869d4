//! The QEMU driver on a real guest under TCG: boot to readiness, pause really
//! freezes the guest, unpause resumes it, stop ends the process, and a VM
//! killed from outside is reported with a reason, and a workspace restored
//! from a hot image is booted cold when its guest resets, and the next one
//! takes a QEMU the warm pool started for it. One booted guest is shared
//! by the assertions that do not disturb each other.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vws_node::accel;
use vws_node::driver::{Boot, Driver, NicSpec, VmSpec, VmState};
use vws_node::qemu::QemuDriver;

/// Builds (once, cached under target/) the minimal guest from Debian packages.
fn guest() -> (PathBuf, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = root.join("target/vws-test-guest");
    let status = Command::new(root.join("scripts/build-minimal-image"))
        .arg(&out)
        .status()
        .expect("run build-minimal-image");
    assert!(status.success(), "building the minimal guest image failed");
    (out.join("vmlinuz"), out.join("initrd.img"))
}

fn spec(id: &str, startup: &str) -> VmSpec {
    let (kernel, initrd) = guest();
    VmSpec {
        id: id.into(),
        hostname: id.into(),
        cpus: 1,
        ram: 256 << 20,
        boot: Boot::Kernel {
            kernel,
            initrd,
            cmdline: "console=ttyS0 quiet".into(),
        },
        disk: None,
        cdroms: vec![],
        nics: vec![NicSpec {
            name: "eth0".into(),
            method: vws_model::NicMethod::User,
            bridged: None,
        }],
        startup: Some(startup.into()),
        forwards: vec![],
        restore: None,
        restore_ram: None,
        disk_key: None,
        disk_base: None,
        account: None,
    }
}

fn job(id: &str) -> vws_model::node::JobRequest {
    vws_model::node::JobRequest {
        job: id.into(),
        argv: vec!["true".into()],
        env: vec![],
        cwd: None,
        stdin: None,
        timeout: None,
        user: None,
    }
}

fn ticks(console: &std::path::Path) -> usize {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tick "))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_of_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (jobs_tx, _jobs) = tokio::sync::mpsc::unbounded_channel();
    let driver = Arc::new(
        QemuDriver::new(dir.path().to_path_buf(), accel::detect().0, tx, jobs_tx)
            .with_boot_timeout(Duration::from_secs(60)),
    );
    let s = spec(
        "ws-drv",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
    );
    driver.start(&s, None).await.unwrap();
    assert_eq!(driver.status("ws-drv").await, VmState::Running);
    let console = driver.console("ws-drv");
    let log = std::fs::read_to_string(&console).unwrap();
    assert!(log.contains("vws: ready ws-drv"), "{log}");

    // Pause freezes the guest: its counter stops, and continues after unpause.
    tokio::time::sleep(Duration::from_secs(2)).await;
    driver.pause("ws-drv").await.unwrap();
    assert_eq!(driver.status("ws-drv").await, VmState::Paused);
    let frozen = ticks(&console);
    assert!(frozen > 0, "the startup program ran");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ticks(&console), frozen, "no tick while paused");
    // Saving its memory twice in a row (a retried snapshot) works, and it
    // stays paused.
    for n in 0..2 {
        let to = dir.path().join(format!("memory-{n}.state"));
        driver.snapshot_memory("ws-drv", &to).await.unwrap();
        assert!(std::fs::metadata(&to).unwrap().len() > 0, "snapshot {n}");
        assert_eq!(driver.status("ws-drv").await, VmState::Paused);
    }
    // A guest booted here has no legacy PIT, so its hot image holds none
    // and is restored into a machine without one.
    let state = std::fs::read(dir.path().join("memory-1.state")).unwrap();
    assert!(!vws_node::qemu::holds_pit(&state));
    let args = std::fs::read_to_string(format!(
        "/proc/{}/cmdline",
        driver.pid("ws-drv").await.unwrap()
    ))
    .unwrap();
    assert!(args.contains("pit=off"), "{args}");
    // The RAM as the second save left it, kept as a hot image's would be:
    // a hot image is that RAM with the device state saved with it
    // (`memory-1.state`). The first save's device state does not match it:
    // the second save resumes the guest for the moment between QEMU's
    // `cont` and `stop` (a tick may land there, no more), and a guest
    // restored from a mismatched pair can stall at any later step.
    let hot_ram = dir.path().join("hot.ram");
    std::fs::copy(driver.ram_file("ws-drv"), &hot_ram).unwrap();
    assert!(ticks(&console) <= frozen + 1, "the guest stayed paused");
    driver.unpause("ws-drv").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ticks(&console) > frozen, "ticks resume after unpause");

    // A live migration whose target dies half-way is rolled back: the guest
    // goes on running here.
    let (ttx, _tev) = tokio::sync::mpsc::unbounded_channel();
    let (tjobs, _tj) = tokio::sync::mpsc::unbounded_channel();
    let target_dir = tempfile::tempdir().unwrap();
    let target = Arc::new(QemuDriver::new(
        target_dir.path().to_path_buf(),
        accel::detect().0,
        ttx,
        tjobs,
    ));
    let (uri, nbd) = target.incoming(&s, "127.0.0.1").await.unwrap();
    assert!(uri.starts_with("tcp:127.0.0.1:") && nbd.is_none(), "{uri}");
    let target_pid = target.pid("ws-drv").await.unwrap();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        Command::new("kill")
            .args(["-9", &target_pid.to_string()])
            .status()
            .unwrap();
    });
    let meter = vws_node::driver::MigrationMeter::default();
    let err = driver
        .migrate_out("ws-drv", &uri, None, None, &meter)
        .await
        .unwrap_err();
    killer.await.unwrap();
    assert!(err.to_string().contains("migration failed"), "{err}");
    assert_eq!(*meter.phase.lock().unwrap(), "failed");
    assert_eq!(driver.status("ws-drv").await, VmState::Running);
    let before = ticks(&console);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ticks(&console) > before,
        "the guest runs on after the rollback"
    );

    // A workspace restored from that hot image runs without the kernel
    // (QEMU would keep a copy of it); when its guest resets itself, it is
    // booted cold from its own spec, as its name in the console shows,
    // and nobody hears of a death.
    let hot = VmSpec {
        restore: Some(dir.path().join("memory-1.state")),
        restore_ram: Some(hot_ram),
        ..spec("ws-hot", "true")
    };
    driver.start(&hot, None).await.unwrap();
    let restored = driver.pid("ws-hot").await.unwrap();
    let args = std::fs::read_to_string(format!("/proc/{restored}/cmdline")).unwrap();
    assert!(
        args.contains("-no-reboot") && !args.contains("-kernel") && args.contains("pit=off"),
        "{args}"
    );
    let hot_console = driver.console("ws-hot");
    assert!(!std::fs::read_to_string(&hot_console)
        .unwrap()
        .contains("vws: ready"));
    // The restored guest runs on: its counter goes on in the new console.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ticks(&hot_console) < 3 {
        if std::time::Instant::now() >= deadline {
            let report = stall_report(&driver, "ws-hot", restored, &hot_console).await;
            panic!(
                "the restored guest's counter stopped ({report}): {}",
                std::fs::read_to_string(&hot_console).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reboot = job("job-reboot");
    reboot.argv = vec!["reboot".into(), "-f".into()];
    driver
        .run_job(&hot, reboot, dir.path().join("job-reboot.log"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let console = std::fs::read_to_string(&hot_console).unwrap_or_default();
        let pid = driver.pid("ws-hot").await;
        if console.contains("vws: ready ws-hot") && pid.is_some_and(|p| p != restored) {
            break;
        }
        if std::time::Instant::now() >= deadline {
            let status =
                tokio::time::timeout(Duration::from_secs(2), driver.status("ws-hot")).await;
            let report = stall_report(&driver, "ws-hot", restored, &hot_console).await;
            panic!(
                "the reset guest was not booted again (QEMU pid {pid:?}, restored as {restored}, \
                 status {status:?}, events {:?}; {report}): {console}",
                events.try_recv(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(driver.status("ws-hot").await, VmState::Running);
    assert!(events.try_recv().is_err(), "a reset is not a death");
    driver.stop("ws-hot", Duration::from_secs(1)).await.unwrap();

    // A driver with a warm pool: the first restore of that shape fills it,
    // a QEMU waits (its device state loaded, its guest warmed up and
    // paused) for the next, which takes it (its pid is the workspace's),
    // works through its agent, and the pool fills again behind it.
    let (ptx, _pev) = tokio::sync::mpsc::unbounded_channel();
    let (pjobs, _pj) = tokio::sync::mpsc::unbounded_channel();
    let pool_dir = tempfile::tempdir().unwrap();
    let warm_driver = Arc::new(
        QemuDriver::new(pool_dir.path().to_path_buf(), accel::detect().0, ptx, pjobs)
            .with_warm_pool(1),
    );
    let first = VmSpec {
        restore: Some(dir.path().join("memory-1.state")),
        restore_ram: Some(dir.path().join("hot.ram")),
        ..spec("ws-first", "true")
    };
    warm_driver.start(&first, None).await.unwrap();
    let pooled = wait_for_pool(&warm_driver, pool_dir.path(), None).await;
    let warm = VmSpec {
        restore: Some(dir.path().join("memory-1.state")),
        restore_ram: Some(dir.path().join("hot.ram")),
        ..spec("ws-warm", "true")
    };
    warm_driver.start(&warm, None).await.unwrap();
    assert_eq!(warm_driver.pid("ws-warm").await, Some(pooled));
    assert_eq!(warm_driver.status("ws-warm").await, VmState::Running);
    warm_driver
        .write_file(&warm, "/tmp/warm", b"taken from the pool")
        .await
        .unwrap();
    assert_eq!(
        warm_driver.read_file(&warm, "/tmp/warm").await.unwrap(),
        b"taken from the pool"
    );
    // It took its own identity, not the slot's it warmed up with.
    let hostname = warm_driver
        .read_file(&warm, "/proc/sys/kernel/hostname")
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hostname).trim(), "ws-warm");
    assert!(warm_driver.console("ws-warm").exists());
    let refilled = wait_for_pool(&warm_driver, pool_dir.path(), Some(pooled)).await;
    warm_driver
        .stop("ws-warm", Duration::from_secs(1))
        .await
        .unwrap();
    warm_driver
        .stop("ws-first", Duration::from_secs(1))
        .await
        .unwrap();
    // Closing the driver (the node stopping) ends the waiting QEMU.
    warm_driver.close();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while alive(refilled) {
        assert!(
            std::time::Instant::now() < deadline,
            "pooled QEMU {refilled} outlived close"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warm_driver.warm_pool().unwrap().waiting, 0);

    driver.stop("ws-drv", Duration::from_secs(1)).await.unwrap();
    assert_eq!(driver.status("ws-drv").await, VmState::Shutdown);
    assert!(
        events.try_recv().is_err(),
        "a requested stop is not an event"
    );

    // A QEMU killed from outside is reported with a reason.
    driver
        .start(&spec("ws-victim", "true"), None)
        .await
        .unwrap();
    let pid = driver.pid("ws-victim").await.unwrap();
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.id, "ws-victim");
    assert!(event.reason.contains("signal: 9"), "{}", event.reason);
    assert!(
        event.reason.contains("vws: ready"),
        "the reason carries the console's last lines: {}",
        event.reason
    );
}

/// Waits until the driver's warm pool holds a QEMU (other than `not`) and
/// reports its memory; returns that QEMU's pid, found by its folder.
async fn wait_for_pool(driver: &Arc<QemuDriver>, root: &std::path::Path, not: Option<u32>) -> u32 {
    let slots = root.join(".pool");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = driver.warm_pool().expect("the pool is on");
        let pid = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                Some(*pid) != not
                    && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        String::from_utf8_lossy(&c).contains(&*slots.to_string_lossy())
                    })
            });
        if let (1, Some(pid)) = (report.waiting, pid) {
            assert_eq!(report.size, 1);
            assert!(report.memory_bytes > 1 << 20, "{report:?}");
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the warm pool did not fill: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a stalled restored guest looks like from outside, for a failure
/// message: its QEMU's threads and monitor views, and whether an NMI or a
/// stop and a cont (QEMU's clocks stopped and started again) wake it.
async fn stall_report(
    driver: &Arc<QemuDriver>,
    id: &str,
    pid: u32,
    console: &std::path::Path,
) -> String {
    let threads = threads(pid);
    let mut monitor = String::new();
    for cmd in ["info cpus", "info lapic", "info registers", "info irq"] {
        let out = driver.monitor(id, cmd).await;
        monitor.push_str(&format!(
            "\n== {cmd}\n{}",
            out.unwrap_or_else(|e| e.to_string())
        ));
    }
    let grew = |before: usize| std::fs::read_to_string(console).is_ok_and(|c| c.len() > before);
    let len = || std::fs::read_to_string(console).map_or(0, |c| c.len());
    let before = len();
    let _ = driver.monitor(id, "nmi").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nmi_woke = grew(before);
    let before = len();
    let _ = driver.pause(id).await;
    let _ = driver.unpause(id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let revived = grew(before);
    format!(
        "console grew after an NMI: {nmi_woke}, after a stop and a cont: {revived}; \
         threads: {threads}; monitor: {monitor}; qemu.log: {}",
        std::fs::read_to_string(console.with_file_name("qemu.log")).unwrap_or_default()
    )
}

/// Whether a process exists and is not a zombie.
/// What each thread of a process waits in (name, state, kernel wait channel
/// and system call), for a failure message.
fn threads(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone");
    };
    let read = |t: &std::path::Path, f: &str| {
        std::fs::read_to_string(t.join(f))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    tasks
        .flatten()
        .map(|t| {
            let t = t.path();
            let state = read(&t, "stat");
            let state = state
                .rsplit(") ")
                .next()
                .unwrap_or("")
                .split(' ')
                .next()
                .unwrap_or("");
            format!(
                "{} {state} {} [{}]",
                read(&t, "comm"),
                read(&t, "wchan"),
                read(&t, "syscall")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A machine with the legacy PIT saves it in its state, as `holds_pit`
/// looks for it (what keeps a hot image saved with one restorable).
#[test]
fn a_saved_state_names_the_pit_when_the_machine_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let save = |machine: &str, to: &std::path::Path| {
        use std::io::{BufRead, Write};
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-machine", machine, "-nodefaults", "-display", "none", "-S"])
            .args(["-qmp", "stdio"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run qemu-system-x86_64");
        let mut stdin = qemu.stdin.take().unwrap();
        let mut answers = std::io::BufReader::new(qemu.stdout.take().unwrap()).lines();
        let uri = format!("exec:cat > {}", to.display());
        writeln!(stdin, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
        writeln!(
            stdin,
            r#"{{"execute":"migrate","arguments":{{"uri":"{uri}"}}}}"#
        )
        .unwrap();
        // Until QEMU says the state is written (its device sections last).
        loop {
            writeln!(stdin, r#"{{"execute":"query-migrate"}}"#).unwrap();
            let answer = answers.next().expect("QMP answers").unwrap();
            assert!(!answer.contains(r#""failed""#), "{answer}");
            if answer.contains(r#""completed""#) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        writeln!(stdin, r#"{{"execute":"quit"}}"#).unwrap();
        assert!(qemu.wait().unwrap().success());
        std::fs::read(to).unwrap()
    };
    let with = save("microvm,accel=tcg", &dir.path().join("with.state"));
    let without = save(
        "microvm,accel=tcg,pit=off",
        &dir.path().join("without.state"),
    );
    assert!(vws_node::qemu::holds_pit(&with), "{} bytes", with.len());
    assert!(
        !vws_node::qemu::holds_pit(&without),
        "{} bytes",
        without.len()
    );
}
