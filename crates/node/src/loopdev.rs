//! Loop devices and the loopback interface set up by the kernel's own
//! calls, for the namespace helper: what `mount -o loop` and `ip link set lo
//! up` do, without running those programs (~8 ms each per workspace start).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

// linux/loop.h
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    size_limit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device bound to a file. The kernel releases it once it is
/// neither open nor mounted (autoclear): mount it before dropping this.
pub struct Loop {
    /// `/dev/loopN`.
    pub path: PathBuf,
    _dev: File,
}

/// Binds `file` to a free loop device, read-only if asked.
pub fn attach(file: &Path, read_only: bool) -> std::io::Result<Loop> {
    let backing = OpenOptions::new().read(true).write(!read_only).open(file)?;
    let control = File::open("/dev/loop-control")?;
    // Another process may take the free device first: then ask again.
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument; it returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&path)?;
        // SAFETY: `LoopConfig` is plain C data; all zero bytes is valid.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 };
        // SAFETY: a valid loop device, and a `loop_config` that outlives the
        // call, which only reads it.
        let done = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if done == 0 {
            return Ok(Loop { path, _dev: dev });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(std::io::Error::other("no loop device stayed free"))
}

/// Brings the namespace's loopback interface up.
pub fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain C data; all zero bytes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: a valid socket and `ifreq`; SIOCGIFFLAGS fills its flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Adds `addr`/32 to the namespace's loopback interface, as the alias
/// `lo:1` (the instance metadata service's address inside an account).
pub fn add_loopback_address(addr: std::net::Ipv4Addr) -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is owned right after.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let set = |request: libc::Ioctl, ip: std::net::Ipv4Addr| -> std::io::Result<()> {
        // SAFETY: `ifreq` is plain C data; all zero bytes is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in b"lo:1".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: a sockaddr_in fits in the union's sockaddr member (both
        // 16 bytes); it is written whole.
        unsafe {
            std::ptr::write(
                std::ptr::addr_of_mut!(req.ifr_ifru.ifru_addr).cast::<libc::sockaddr_in>(),
                sin,
            )
        };
        // SAFETY: a valid socket and a filled `ifreq`, which these
        // requests only read.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, &req) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::SIOCSIFADDR, addr)?;
    set(libc::SIOCSIFNETMASK, std::net::Ipv4Addr::BROADCAST)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_is_bound_read_only_and_released_when_let_go() {
        assert_eq!(
            std::mem::size_of::<super::LoopConfig>(),
            304,
            "the kernel's layout"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img");
        std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();
        let lo = super::attach(&file, true).expect("a loop device (needs root)");
        let name = lo.path.file_name().unwrap().to_string_lossy().into_owned();
        let sys = std::path::Path::new("/sys/block").join(&name);
        let read = |f: &str| {
            std::fs::read_to_string(sys.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(read("loop/backing_file"), file.to_string_lossy());
        assert_eq!(read("loop/autoclear"), "1");
        assert_eq!(read("ro"), "1");
        let mut head = [0u8; 4];
        use std::io::Read;
        std::fs::File::open(&lo.path)
            .unwrap()
            .read_exact(&mut head)
            .unwrap();
        assert_eq!(head, [7; 4], "the file's bytes through the device");
        drop(lo);
        // Autoclear: unbound once the last descriptor is closed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !read("loop/backing_file").is_empty() {
            assert!(std::time::Instant::now() < deadline, "{name} still bound");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
