//! The agent protocol between a node and the guest agent, over virtio-serial.
//!
//! Frames are a 4-byte big-endian length and a JSON message. The agent says
//! `Hello` (protocol version, hostname, session) when it opens its port and
//! whenever the node sends `Ping`, which the node does on every (re)connect.
//! A `Hello` with a new session means the agent restarted (its earlier jobs
//! are gone) or took a new identity after a restore (`Identity`).

pub mod imds;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// Where a workspace's own credential (and its instance metadata) is put
/// inside it (the agent writes it in a VM; the account's own job, in a
/// dynamic account).
pub const CREDENTIALS_DIR: &str = "/etc/vws/credentials";

/// Protocol version; a node refuses an agent with another.
pub const VERSION: u32 = 1;

/// Name of the virtio-serial port the agent listens on.
pub const PORT_NAME: &str = "vws.agent";

/// Largest frame accepted (both ways).
pub const MAX_FRAME: usize = 8 << 20;

/// Node → agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// Asks for a `Hello`.
    Ping,
    /// Run a process.
    Exec {
        /// Job id, echoed in every frame about it.
        job: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment.
        #[serde(default)]
        env: Vec<(String, String)>,
        /// Working directory.
        #[serde(default)]
        cwd: Option<String>,
        /// Bytes for its standard input (base64); it is closed after them.
        #[serde(default)]
        stdin: Option<String>,
        /// Kill it after this many milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Run it as this user of the guest's `/etc/passwd` (`NAME`,
        /// `UID`, `NAME:GROUP` or `UID:GID`, as an OCI image's `User`);
        /// none: as root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Send a signal to a job's process group.
    Signal {
        /// Job id.
        job: String,
        /// Signal number.
        signal: i32,
    },
    /// Write a file.
    WriteFile {
        /// Request id.
        req: String,
        /// Absolute path.
        path: String,
        /// Content (base64).
        data: String,
        /// Permission bits.
        #[serde(default)]
        mode: Option<u32>,
    },
    /// Read a file.
    ReadFile {
        /// Request id.
        req: String,
        /// Absolute path.
        path: String,
    },
    /// Become a new workspace (after a restore from a hot image): take this
    /// hostname, MAC on `eth0` and entropy, and start a new session, which
    /// the `Hello` that follows carries. The agent's jobs of the earlier
    /// session are forgotten by the node.
    Identity {
        /// New hostname.
        hostname: String,
        /// New MAC address of `eth0`, if the guest has one.
        #[serde(default)]
        mac: Option<String>,
        /// Bytes to mix into the guest's entropy pool (base64).
        seed: String,
        /// Interfaces to reconfigure (a restored guest carries its source's
        /// MACs and addresses).
        #[serde(default)]
        net: Vec<NetConfig>,
    },
}

/// One interface's identity after a restore.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NetConfig {
    /// Device, e.g. `eth0`.
    pub dev: String,
    /// Its MAC.
    pub mac: String,
    /// A static address `a.b.c.d/len`, if any.
    #[serde(default)]
    pub address: Option<String>,
    /// Its gateway.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Ask by DHCP instead.
    #[serde(default)]
    pub dhcp: bool,
}

/// Agent → node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    /// The agent is up.
    Hello {
        /// Its protocol version.
        version: u32,
        /// The guest's hostname.
        hostname: String,
        /// Random per agent start, so a restart is visible.
        session: String,
        /// The jobs running now: a node that reconnects (after its own
        /// restart) learns which of the jobs it knew ended unseen. Absent
        /// from agents older than this field (in images built before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        running: Option<Vec<String>>,
    },
    /// A job's process started.
    Started {
        /// Job id.
        job: String,
        /// Its pid in the guest.
        pid: u32,
    },
    /// Output on stdout (base64).
    Stdout {
        /// Job id.
        job: String,
        /// Bytes.
        data: String,
    },
    /// Output on stderr (base64).
    Stderr {
        /// Job id.
        job: String,
        /// Bytes.
        data: String,
    },
    /// The job's process ended.
    Exited {
        /// Job id.
        job: String,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
        /// Whether the timeout killed it.
        timed_out: bool,
    },
    /// The job could not be started.
    Failed {
        /// Job id.
        job: String,
        /// Why.
        message: String,
    },
    /// A file operation finished.
    FileDone {
        /// Request id.
        req: String,
        /// Content read (base64), for reads.
        #[serde(default)]
        data: Option<String>,
        /// What went wrong, if anything.
        #[serde(default)]
        error: Option<String>,
    },
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Decodes a frame's body, refusing anything malformed.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_refuse_garbage() {
        let mut buf = Vec::new();
        let msg = ToAgent::Exec {
            job: "j1".into(),
            argv: vec!["echo".into()],
            env: vec![],
            cwd: None,
            stdin: None,
            timeout_ms: Some(5),
            user: Some("1000:1000".into()),
        };
        write_frame(&mut buf, &msg).unwrap();
        let back: ToAgent = read_frame(&mut &buf[..]).unwrap().unwrap();
        assert_eq!(back, msg);
        assert!(read_frame::<ToAgent>(&mut &b""[..]).unwrap().is_none());
        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame::<ToAgent>(&mut &huge[..]).is_err());
        let mut bad = 5u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{nope");
        assert!(read_frame::<ToAgent>(&mut &bad[..]).is_err());
        let mut truncated = 50u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{}");
        assert!(read_frame::<ToAgent>(&mut &truncated[..]).is_err());
    }
}
