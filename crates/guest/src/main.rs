//! `vws-agent`: started by the guest's init, it opens the `vws.agent`
//! virtio-serial port and runs what the node asks: processes with argv, env,
//! cwd and stdin, streaming stdout and stderr as they are written, reporting
//! exit status or signal, enforcing timeouts; and file reads and writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use vws_guest::{read_frame, write_frame, FromAgent, ToAgent, PORT_NAME, VERSION};

type Writer = Arc<Mutex<File>>;
type Jobs = Arc<Mutex<HashMap<String, u32>>>;

fn send(w: &Writer, msg: &FromAgent) {
    if let Ok(mut f) = w.lock() {
        let _ = write_frame(&mut *f, msg);
    }
}

/// The device of the port named `vws.agent`.
fn find_port() -> Option<String> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(format!("/dev/{}", e.file_name().to_string_lossy()));
        }
    }
    None
}

fn pump(
    mut from: impl Read + Send + 'static,
    w: Writer,
    job: String,
    err: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let data = B64.encode(&buf[..n]);
                    let msg = if err {
                        FromAgent::Stderr {
                            job: job.clone(),
                            data,
                        }
                    } else {
                        FromAgent::Stdout {
                            job: job.clone(),
                            data,
                        }
                    };
                    send(&w, &msg);
                }
            }
        }
    })
}

fn kill_group(pid: u32, signal: i32) {
    if let (Some(p), Some(s)) = (
        rustix::process::Pid::from_raw(pid as i32),
        rustix::process::Signal::from_named_raw(signal),
    ) {
        let _ = rustix::process::kill_process_group(p, s);
    }
}

/// Jobs' PATH unless they give one. `/run/vws/bin` holds busybox's applets
/// when the guest runs a root filesystem image's userland (guest/init), for
/// what a minimal Debian lacks (ip, udhcpc, a poweroff without systemd).
const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/run/vws/bin";

/// `prog` as the shell would find it on `path`; unchanged when it names a
/// path or is found nowhere (then spawning it fails with its own error).
fn find_program(prog: &str, path: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if prog.contains('/') {
        return prog.into();
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(prog))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| prog.into())
}

/// A user spec (`NAME`, `UID`, `NAME:GROUP`, `UID:GID`, as an OCI
/// image's `User`) resolved in this root's `/etc/passwd` and `/etc/group`:
/// uid and gid (a user without a group has its passwd group).
fn resolve_user(spec: &str) -> Result<(u32, u32), String> {
    let table = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
    let (passwd, group) = (table("/etc/passwd"), table("/etc/group"));
    let find = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name))
    };
    let (u, g) = spec
        .split_once(':')
        .map_or((spec, None), |(u, g)| (u, Some(g)));
    let (uid, passwd_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let f = find(&passwd, u).ok_or_else(|| format!("user {u:?} is not in /etc/passwd"))?;
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
            (
                num(2).ok_or_else(|| format!("user {u:?} has no uid in /etc/passwd"))?,
                num(3),
            )
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => find(&group, g)
                .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
                .ok_or_else(|| format!("group {g:?} is not in /etc/group"))?,
        },
        // A numeric user's group is its passwd entry's, if it has one.
        None => passwd_gid
            .or_else(|| {
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
                    .and_then(|f| f.get(3).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(uid),
    };
    Ok((uid, gid))
}

#[allow(clippy::too_many_arguments)]
fn exec(
    w: Writer,
    jobs: Jobs,
    job: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Option<String>,
    timeout_ms: Option<u64>,
    user: Option<String>,
) {
    let Some((prog, args)) = argv.split_first() else {
        send(
            &w,
            &FromAgent::Failed {
                job,
                message: "empty argv".into(),
            },
        );
        return;
    };
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    // Found here, not by std: a command with a PATH of its own and a bare
    // program name makes std fork, where an absolute one lets it use
    // posix_spawn (vfork), cheaper than copying the agent's address space.
    let mut cmd = Command::new(find_program(prog, path));
    cmd.args(args)
        .env("PATH", DEFAULT_PATH)
        .envs(env)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a cancel reaches every process it started.
        .process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    if let Some(spec) = user.as_deref() {
        match resolve_user(spec) {
            Ok((uid, gid)) => {
                use std::os::unix::process::CommandExt;
                // std drops root's supplementary groups with the uid.
                cmd.uid(uid).gid(gid);
            }
            Err(message) => {
                send(&w, &FromAgent::Failed { job, message });
                return;
            }
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            send(
                &w,
                &FromAgent::Failed {
                    job,
                    message: format!("cannot run {prog}: {e}"),
                },
            );
            return;
        }
    };
    let pid = child.id();
    jobs.lock().map(|mut j| j.insert(job.clone(), pid)).ok();
    send(
        &w,
        &FromAgent::Started {
            job: job.clone(),
            pid,
        },
    );
    if let (Some(data), Some(mut input)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let bytes = B64.decode(data).unwrap_or_default();
            let _ = input.write_all(&bytes);
        });
    }
    let out = pump(
        child.stdout.take().expect("piped stdout"),
        w.clone(),
        job.clone(),
        false,
    );
    let err = pump(
        child.stderr.take().expect("piped stderr"),
        w.clone(),
        job.clone(),
        true,
    );
    let deadline = timeout_ms.map(|t| Instant::now() + Duration::from_millis(t));
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        if !timed_out && deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            kill_group(pid, 9);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = out.join();
    let _ = err.join();
    jobs.lock().map(|mut j| j.remove(&job)).ok();
    let (code, signal) = status.map_or((None, None), |s| (s.code(), s.signal()));
    send(
        &w,
        &FromAgent::Exited {
            job,
            code,
            signal,
            timed_out,
        },
    );
}

fn file_op(w: &Writer, msg: ToAgent) {
    match msg {
        ToAgent::WriteFile {
            req,
            path,
            data,
            mode,
        } => {
            let result = B64
                .decode(data)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    if let Some(parent) = std::path::Path::new(&path).parent() {
                        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                    }
                    // Created with its mode, so a private key is never readable
                    // by others, not even for a moment.
                    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(mode.unwrap_or(0o644))
                        .open(&path)
                        .map_err(|e| e.to_string())?;
                    f.write_all(&bytes).map_err(|e| e.to_string())?;
                    if let Some(m) = mode {
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                });
            send(
                w,
                &FromAgent::FileDone {
                    req,
                    data: None,
                    error: result.err(),
                },
            );
        }
        ToAgent::ReadFile { req, path } => {
            let (data, error) = match std::fs::read(&path) {
                Ok(b) => (Some(B64.encode(b)), None),
                Err(e) => (None, Some(format!("{path}: {e}"))),
            };
            send(w, &FromAgent::FileDone { req, data, error });
        }
        _ => {}
    }
}

fn serve(port: &str) -> std::io::Result<()> {
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)?;
    let writer: Writer = Arc::new(Mutex::new(reader.try_clone()?));
    let jobs: Jobs = Arc::new(Mutex::new(HashMap::new()));
    let mut hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut session = new_session();
    let hello = |hostname: &str, session: &str| FromAgent::Hello {
        version: VERSION,
        hostname: hostname.to_string(),
        session: session.to_string(),
        running: jobs.lock().ok().map(|j| j.keys().cloned().collect()),
    };
    send(&writer, &hello(&hostname, &session));
    loop {
        let msg: ToAgent = match read_frame(&mut reader) {
            Ok(Some(m)) => m,
            // No node connected: the port reads as ended; wait for one.
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                eprintln!("vws-agent: dropping a malformed frame: {e}");
                continue;
            }
            Err(e) => return Err(e),
        };
        match msg {
            ToAgent::Ping => send(&writer, &hello(&hostname, &session)),
            ToAgent::Identity {
                hostname: name,
                mac,
                seed,
                net,
            } => {
                take_identity(&name, mac.as_deref(), &seed, &net);
                hostname = name;
                session = new_session();
                send(&writer, &hello(&hostname, &session));
            }
            ToAgent::Exec {
                job,
                argv,
                env,
                cwd,
                stdin,
                timeout_ms,
                user,
            } => {
                let (w, j) = (writer.clone(), jobs.clone());
                std::thread::spawn(move || {
                    exec(w, j, job, argv, env, cwd, stdin, timeout_ms, user)
                });
            }
            ToAgent::Signal { job, signal } => {
                if let Some(pid) = jobs.lock().ok().and_then(|j| j.get(&job).copied()) {
                    kill_group(pid, signal);
                }
            }
            other => {
                let w = writer.clone();
                std::thread::spawn(move || file_op(&w, other));
            }
        }
    }
}

/// A fresh session id from the guest's entropy.
fn new_session() -> String {
    let mut seed = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
    hex(&seed)
}

/// A restored guest becomes its own workspace: entropy first (so the new
/// session id is already drawn from it), then hostname and MAC. virtio-net
/// changes its MAC live, so routes and addresses stay.
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .env("PATH", DEFAULT_PATH)
        .status()
        .is_ok_and(|s| s.success())
}

fn take_identity(hostname: &str, mac: Option<&str>, seed: &str, net: &[vws_guest::NetConfig]) {
    if let Ok(bytes) = B64.decode(seed) {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/urandom")
            .and_then(|mut f| f.write_all(&bytes));
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/hostname", hostname) {
        eprintln!("vws-agent: hostname: {e}");
    }
    if let Some(mac) = mac.filter(|_| std::path::Path::new("/sys/class/net/eth0").exists()) {
        if let Err(e) = set_mac("eth0", mac) {
            eprintln!("vws-agent: could not set the MAC of eth0 to {mac}: {e}");
        }
    }
    // Bridged interfaces: their own MAC and address, not the source's.
    for n in net {
        let dev = n.dev.as_str();
        if let Err(e) = set_mac(dev, &n.mac) {
            eprintln!("vws-agent: could not set the MAC of {dev}: {e}");
        }
        ip(&["addr", "flush", "dev", dev]);
        if n.dhcp {
            let _ = Command::new("udhcpc")
                .args([
                    "-i",
                    dev,
                    "-q",
                    "-n",
                    "-t",
                    "10",
                    "-T",
                    "1",
                    "-s",
                    "/bin/vws-dhcp",
                ])
                .env("PATH", DEFAULT_PATH)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        } else if let Some(a) = &n.address {
            ip(&["addr", "add", a, "dev", dev]);
            if let Some(g) = &n.gateway {
                ip(&["route", "add", "default", "via", g, "dev", dev]);
            }
        }
    }
}

/// Gives an interface a new MAC with one ioctl (SIOCSIFHWADDR, what `ip
/// link set address` ends in). Not by running `ip`: right after a restore
/// under TCG, a fork and exec costs ~0.1 s of translating code anew.
#[allow(unsafe_code)]
fn set_mac(dev: &str, mac: &str) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let bytes = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad("not a MAC address"))?;
    if bytes.len() != 6 {
        return Err(bad("not a MAC address"));
    }
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(bad("not an interface name"));
    }
    // SAFETY: `ifreq` and `sockaddr` are plain C data, for which all zero
    // bytes is a valid value.
    let (mut req, mut addr): (libc::ifreq, libc::sockaddr) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    addr.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in addr.sa_data.iter_mut().zip(&bytes) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = addr;
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a valid `ifreq` that outlives the call,
    // which only reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    // The instance metadata service, on the address the init put on lo;
    // another agent (a restarted one) may still hold it for a moment.
    // Said once, not every retry (the console would fill with it in an
    // image whose init does not put the address on lo).
    std::thread::spawn(|| {
        let addr = format!("{}:80", vws_guest::imds::ADDRESS);
        let mut said = false;
        loop {
            match std::net::TcpListener::bind(&addr) {
                Ok(l) => vws_guest::imds::serve(
                    l,
                    std::path::Path::new(vws_guest::CREDENTIALS_DIR).join(vws_guest::imds::FILE),
                ),
                Err(e) if !said => {
                    eprintln!("vws-agent: no metadata service on {addr} yet ({e}); retrying");
                    said = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    loop {
        match find_port() {
            Some(port) => {
                if let Err(e) = serve(&port) {
                    eprintln!("vws-agent: {port}: {e}");
                }
            }
            None => eprintln!("vws-agent: no virtio-serial port named {PORT_NAME}"),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::find_program;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn programs_are_found_on_the_jobs_path() {
        let dir = std::env::temp_dir().join(format!("vws-agent-path-{}", std::process::id()));
        let (first, second) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&first).unwrap();
        std::fs::create_dir_all(&second).unwrap();
        // Not executable in the first folder: skipped, as the shell would.
        std::fs::write(first.join("tool"), "").unwrap();
        std::fs::write(second.join("tool"), "").unwrap();
        std::fs::set_permissions(second.join("tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path = format!("{}::{}", first.display(), second.display());
        assert_eq!(find_program("tool", &path), second.join("tool"));
        assert_eq!(
            find_program("missing", &path),
            std::path::PathBuf::from("missing")
        );
        assert_eq!(
            find_program("./tool", &path),
            std::path::PathBuf::from("./tool")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
