//! What a workspace's processes use, read from /proc: CPU time (user and
//! system, of the processes and of their waited-for children) and resident
//! memory. A VM is its QEMU process (every vCPU's time is QEMU's); a
//! dynamic account, the processes of its cgroup.

use vws_model::node::Usage;

/// Clock ticks per second of /proc's times.
fn ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is shared.
    #[allow(unsafe_code)]
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The sum over `pids` (those that still exist).
pub fn of_processes(pids: &[i32]) -> Usage {
    let mut u = Usage::default();
    for pid in pids {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces): state is
        // field 3; utime, stime, cutime, cstime are 14-17; rss is 24.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        u.cpu_seconds += (n(14) + n(15) + n(16) + n(17)) as f64 / ticks();
        u.memory_bytes += n(24) * page_size();
    }
    u
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_busy_process_uses_cpu_and_memory() {
        let me = std::process::id() as i32;
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let u = super::of_processes(&[me, i32::MAX]);
        assert!(u.cpu_seconds >= 0.2, "{u:?}");
        assert!(u.memory_bytes > 1 << 20, "{u:?}");
    }
}

/// Bytes received and sent by the interfaces of a `/proc/net/dev` table,
/// loopback aside.
pub fn net_bytes(table: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0, 0);
    for line in table.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = counters
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    (rx, tx)
}

#[cfg(test)]
mod net_tests {
    #[test]
    fn interface_bytes_are_summed_without_loopback() {
        let table = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0:  123456     100    0    0    0     0          0         0    65432      90    0    0    0     0       0          0
  eth1:       4       1    0    0    0     0          0         0        6       1    0    0    0     0       0          0
";
        assert_eq!(super::net_bytes(table), (123460, 65438));
    }
}
