//! The node's side of the guest agent: one connection per VM over the
//! virtio-serial port's unix socket. Job output is appended to a per-job
//! event log as it arrives, so a reader that comes late gets it all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use vws_guest::{FromAgent, ToAgent, MAX_FRAME, VERSION};

/// One line of a job's event log (and of its output stream).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEvent {
    /// The process started.
    Started {
        /// Pid in the guest.
        pid: u32,
    },
    /// Bytes on stdout (base64).
    Stdout {
        /// Data.
        data: String,
    },
    /// Bytes on stderr (base64).
    Stderr {
        /// Data.
        data: String,
    },
    /// The end: exit code or signal.
    Exited {
        /// Exit code.
        code: Option<i32>,
        /// Killing signal.
        signal: Option<i32>,
        /// Killed by its timeout.
        timed_out: bool,
        /// Why it ended, when the node knows more than the status (a
        /// dynamic account's job killed by its memory limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// It never ran, or its agent went away.
    Failed {
        /// Why.
        message: String,
    },
}

impl JobEvent {
    /// Whether this ends the job.
    pub fn is_final(&self) -> bool {
        matches!(self, JobEvent::Exited { .. } | JobEvent::Failed { .. })
    }
}

/// The file beside a job's log that says, while the job runs, which VM
/// runs it (its content is the workspace id): a restarted node finds the
/// jobs to follow again from these.
pub fn running_marker(log: &Path) -> PathBuf {
    log.with_extension("vm")
}

/// Why a job failed whose workspace ended under it.
pub const STOPPED_UNDER_JOB: &str = "the workspace stopped while the job ran";

/// Ends a job as failed: logged, its running marker gone, and reported.
pub(crate) async fn fail_job(done: &JobDone, job: String, log: &Path, bytes: u64, why: &str) {
    let ev = JobEvent::Failed {
        message: why.into(),
    };
    append(log, &ev).await;
    let _ = std::fs::remove_file(running_marker(log));
    let _ = done.send((job, ev, bytes));
}

/// Who hears that a job ended.
pub type JobDone = mpsc::UnboundedSender<(String, JobEvent, u64)>;

/// The agent's greeting.
#[derive(Clone, Debug, PartialEq)]
pub struct Hello {
    /// Guest hostname.
    pub hostname: String,
    /// Agent session (new on every agent start).
    pub session: String,
}

struct JobLog {
    path: PathBuf,
    bytes: u64,
}

/// A connection to one VM's agent.
pub struct Agent {
    out: mpsc::UnboundedSender<ToAgent>,
    hello: watch::Receiver<Option<Hello>>,
    jobs: Arc<Mutex<HashMap<String, JobLog>>>,
    files: Arc<Mutex<HashMap<String, oneshot::Sender<FromAgent>>>>,
    /// Commands run outside any job (`run_untracked`), by id: told their end.
    untracked: Arc<Mutex<HashMap<String, oneshot::Sender<JobEvent>>>>,
    /// Set when the VM migrated away: its jobs go on elsewhere, so the end
    /// of this connection does not fail them.
    handed_off: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes true when the connection's reader has ended.
    closed: watch::Receiver<bool>,
}

/// Woken on every append to any job log, for readers that follow one.
pub static LOG_APPENDED: tokio::sync::Notify = tokio::sync::Notify::const_new();

async fn append(path: &Path, ev: &JobEvent) {
    let mut line = serde_json::to_vec(ev).expect("events serialize");
    line.push(b'\n');
    // Never created here: run_job made the log, and an event that comes
    // after its workspace was removed (a job lost with its VM) must not
    // bring the log back.
    if let Ok(mut f) = tokio::fs::OpenOptions::new().append(true).open(path).await {
        // Flushed before the next event's append opens the file again: a
        // tokio file writes in the background, and two handles' writes
        // could land out of order (stdout lines were seen swapped).
        let _ = f.write_all(&line).await;
        let _ = f.flush().await;
    }
    LOG_APPENDED.notify_waiters();
}

/// How long a file read or write in the guest may take.
const AGENT_FILE_WITHIN: Duration = Duration::from_secs(60);

/// What a request to the guest agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The guest did it and failed (its message, e.g. a permission refused).
    #[error("{0}")]
    Refused(String),
    /// No answer in time (the guest is gone or hung).
    #[error("the guest agent did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The answer was not valid base64.
    #[error("the guest agent's answer was garbled: {0}")]
    Garbled(base64::DecodeError),
}

impl Agent {
    /// Connects to the agent socket (retrying until `deadline`) and keeps the
    /// connection served; ended jobs are reported on `done`. `jobs` (job,
    /// log, output bytes so far) are jobs already running in the guest
    /// (after a migration, or a restart of the node): known before the first
    /// frame is read, so none of their events is missed. Those the guest's
    /// first `Hello` does not list as running ended unseen.
    pub async fn connect(
        socket: &Path,
        within: Duration,
        done: JobDone,
        jobs: Vec<(String, PathBuf, u64)>,
    ) -> std::io::Result<Arc<Agent>> {
        let deadline = tokio::time::Instant::now() + within;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        let (mut rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<ToAgent>();
        let (hello_tx, hello) = watch::channel(None);
        let (closed_tx, closed) = watch::channel(false);
        let mut unconfirmed: Option<Vec<String>> =
            (!jobs.is_empty()).then(|| jobs.iter().map(|(j, _, _)| j.clone()).collect());
        let known = jobs
            .into_iter()
            .map(|(job, path, bytes)| (job, JobLog { path, bytes }))
            .collect();
        let agent = Arc::new(Agent {
            out,
            hello,
            jobs: Arc::new(Mutex::new(known)),
            files: Arc::default(),
            untracked: Arc::default(),
            handed_off: Arc::default(),
            closed,
        });
        tokio::spawn(async move {
            while let Some(msg) = out_rx.recv().await {
                let body = serde_json::to_vec(&msg).expect("messages serialize");
                let mut frame = (body.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(&body);
                if wr.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        let (jobs, files) = (agent.jobs.clone(), agent.files.clone());
        let untracked = agent.untracked.clone();
        let handed_off = agent.handed_off.clone();
        tokio::spawn(async move {
            loop {
                let mut len = [0u8; 4];
                if rd.read_exact(&mut len).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes(len) as usize;
                if len > MAX_FRAME {
                    tracing::warn!(len, "agent sent an oversized frame; closing");
                    break;
                }
                let mut body = vec![0u8; len];
                if rd.read_exact(&mut body).await.is_err() {
                    break;
                }
                let msg: FromAgent = match vws_guest::decode(&body) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "malformed frame from the agent");
                        continue;
                    }
                };
                let (job, ev) = match msg {
                    FromAgent::Hello {
                        version,
                        hostname,
                        session,
                        running,
                    } => {
                        if version != VERSION {
                            tracing::error!(version, "agent speaks another protocol version");
                            continue;
                        }
                        let restarted = hello_tx
                            .borrow()
                            .as_ref()
                            .is_some_and(|h| h.session != session);
                        if restarted {
                            // Its jobs died with it.
                            let lost: Vec<(String, JobLog)> = jobs.lock().await.drain().collect();
                            for (job, log) in lost {
                                fail_job(
                                    &done,
                                    job,
                                    &log.path,
                                    log.bytes,
                                    "the guest agent restarted",
                                )
                                .await;
                            }
                        }
                        // Frames go in order: a job whose end the guest sent
                        // before this answer has been logged by now.
                        // An older agent does not say: its jobs are
                        // followed until they end or the VM does.
                        let Some(running) = running else {
                            unconfirmed = None;
                            let _ = hello_tx.send(Some(Hello { hostname, session }));
                            continue;
                        };
                        for job in unconfirmed.take().unwrap_or_default() {
                            if running.contains(&job) {
                                continue;
                            }
                            if let Some(log) = jobs.lock().await.remove(&job) {
                                let lost = "the job ended while the node was down, and its exit status was lost";
                                fail_job(&done, job, &log.path, log.bytes, lost).await;
                            }
                        }
                        let _ = hello_tx.send(Some(Hello { hostname, session }));
                        continue;
                    }
                    FromAgent::FileDone { ref req, .. } => {
                        if let Some(tx) = files.lock().await.remove(req) {
                            let _ = tx.send(msg);
                        }
                        continue;
                    }
                    FromAgent::Started { job, pid } => (job, JobEvent::Started { pid }),
                    FromAgent::Stdout { job, data } => (job, JobEvent::Stdout { data }),
                    FromAgent::Stderr { job, data } => (job, JobEvent::Stderr { data }),
                    FromAgent::Exited {
                        job,
                        code,
                        signal,
                        timed_out,
                    } => (
                        job,
                        JobEvent::Exited {
                            code,
                            signal,
                            timed_out,
                            reason: None,
                        },
                    ),
                    FromAgent::Failed { job, message } => (job, JobEvent::Failed { message }),
                };
                if ev.is_final() {
                    if let Some(tx) = untracked.lock().await.remove(&job) {
                        let _ = tx.send(ev);
                        continue;
                    }
                }
                let mut guard = jobs.lock().await;
                let Some(log) = guard.get_mut(&job) else {
                    continue;
                };
                if let JobEvent::Stdout { data } | JobEvent::Stderr { data } = &ev {
                    log.bytes += (data.len() as u64 * 3) / 4;
                }
                append(&log.path, &ev).await;
                if ev.is_final() {
                    let log = guard.remove(&job).expect("present");
                    let _ = std::fs::remove_file(running_marker(&log.path));
                    let _ = done.send((job, ev, log.bytes));
                }
            }
            // The connection is gone (VM stopped or died): so are its jobs,
            // unless the VM migrated and they go on elsewhere.
            let mut left = jobs.lock().await;
            if handed_off.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = closed_tx.send(true);
                return;
            }
            for (job, log) in left.drain() {
                fail_job(&done, job, &log.path, log.bytes, STOPPED_UNDER_JOB).await;
            }
            let _ = closed_tx.send(true);
        });
        let _ = agent.out.send(ToAgent::Ping);
        Ok(agent)
    }

    /// Waits for the agent's handshake.
    pub async fn ready(&self, within: Duration) -> Option<Hello> {
        let mut h = self.hello.clone();
        let waited = tokio::time::timeout(within, h.wait_for(|h| h.is_some())).await;
        waited.ok().and_then(|r| r.ok().and_then(|h| h.clone()))
    }

    /// Waits for a handshake whose session differs from `old` (the agent
    /// restarted or took a new identity).
    pub async fn new_session(&self, old: Option<&str>, within: Duration) -> Option<Hello> {
        let mut h = self.hello.clone();
        let seen = h.wait_for(|h| h.as_ref().is_some_and(|h| Some(h.session.as_str()) != old));
        let waited = tokio::time::timeout(within, seen).await;
        waited.ok().and_then(|r| r.ok().and_then(|h| h.clone()))
    }

    /// The last handshake, if any.
    pub fn hello(&self) -> Option<Hello> {
        self.hello.borrow().clone()
    }

    /// Starts a job whose events go to `log`.
    #[allow(clippy::too_many_arguments)]
    pub async fn exec(
        &self,
        job: &str,
        log: PathBuf,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        stdin: Option<String>,
        timeout_ms: Option<u64>,
        user: Option<String>,
    ) {
        self.jobs.lock().await.insert(
            job.to_string(),
            JobLog {
                path: log,
                bytes: 0,
            },
        );
        let _ = self.out.send(ToAgent::Exec {
            job: job.into(),
            argv,
            env,
            cwd,
            stdin,
            timeout_ms,
            user,
        });
    }

    /// Runs `argv` in the guest outside any job (no log, nothing reported
    /// to the node's job channel) and waits up to `within` for its end,
    /// which it returns: how a pooled guest is warmed up.
    pub async fn run_untracked(&self, argv: Vec<String>, within: Duration) -> Option<JobEvent> {
        let id = format!("untracked-{:016x}", rand::random::<u64>());
        let (tx, rx) = oneshot::channel();
        self.untracked.lock().await.insert(id.clone(), tx);
        let _ = self.out.send(ToAgent::Exec {
            job: id.clone(),
            argv,
            env: Vec::new(),
            cwd: None,
            stdin: None,
            timeout_ms: Some(within.as_millis() as u64),
            user: None,
        });
        let ended = tokio::time::timeout(within, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.untracked.lock().await.remove(&id);
        ended
    }

    /// Marks the VM as migrated away: the end of this connection leaves its
    /// jobs to the target node.
    pub fn hand_off(&self) {
        self.handed_off
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (up to `within`) for the connection's reader to end, so every
    /// frame the guest sent here has been logged.
    pub async fn closed(&self, within: Duration) -> bool {
        let mut c = self.closed.clone();
        let waited = tokio::time::timeout(within, c.wait_for(|c| *c)).await;
        waited.is_ok()
    }

    /// The running jobs and their output counts so far.
    pub async fn running_jobs(&self) -> Vec<(String, PathBuf, u64)> {
        self.jobs
            .lock()
            .await
            .iter()
            .map(|(j, l)| (j.clone(), l.path.clone(), l.bytes))
            .collect()
    }

    /// Follows jobs that run in the guest already (job, log, output bytes
    /// so far): their further events go to their logs.
    pub async fn follow(&self, jobs: Vec<(String, PathBuf, u64)>) {
        let mut known = self.jobs.lock().await;
        for (job, path, bytes) in jobs {
            known.insert(job, JobLog { path, bytes });
        }
    }

    /// Gives a restored guest its own identity; the agent answers with a
    /// `Hello` of a new session.
    pub fn identity(
        &self,
        hostname: &str,
        mac: Option<String>,
        seed: &[u8],
        net: Vec<vws_guest::NetConfig>,
    ) {
        let _ = self.out.send(ToAgent::Identity {
            hostname: hostname.into(),
            mac,
            seed: base64::engine::general_purpose::STANDARD.encode(seed),
            net,
        });
    }

    /// Signals a job's process group.
    pub fn signal(&self, job: &str, signal: i32) {
        let _ = self.out.send(ToAgent::Signal {
            job: job.into(),
            signal,
        });
    }

    /// Whether a job is still running here.
    pub async fn running(&self, job: &str) -> bool {
        self.jobs.lock().await.contains_key(job)
    }

    async fn file(&self, req: String, msg: ToAgent) -> Result<Option<Vec<u8>>, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.files.lock().await.insert(req, tx);
        let _ = self.out.send(msg);
        match tokio::time::timeout(AGENT_FILE_WITHIN, rx).await {
            Ok(Ok(FromAgent::FileDone { error: Some(e), .. })) => Err(AgentError::Refused(e)),
            Ok(Ok(FromAgent::FileDone { data, .. })) => data
                .map(|d| base64::engine::general_purpose::STANDARD.decode(d))
                .transpose()
                .map_err(AgentError::Garbled),
            _ => Err(AgentError::NoAnswer(AGENT_FILE_WITHIN)),
        }
    }

    /// Writes a file in the guest.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), AgentError> {
        let req = format!("w{}", rand::random::<u64>());
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        self.file(
            req.clone(),
            ToAgent::WriteFile {
                req,
                path: path.into(),
                data,
                mode,
            },
        )
        .await
        .map(drop)
    }

    /// Reads a file from the guest.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, AgentError> {
        let req = format!("r{}", rand::random::<u64>());
        self.file(
            req.clone(),
            ToAgent::ReadFile {
                req,
                path: path.into(),
            },
        )
        .await
        .map(Option::unwrap_or_default)
    }
}

/// Output bytes recorded in a job's event log.
pub(crate) fn log_output_bytes(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| serde_json::from_str::<JobEvent>(l).ok())
        .map(|ev| match ev {
            JobEvent::Stdout { data } | JobEvent::Stderr { data } => {
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map(|d| d.len() as u64)
                    .unwrap_or(0)
            }
            _ => 0,
        })
        .sum()
}
