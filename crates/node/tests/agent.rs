//! The node's side of the guest agent protocol against a scripted agent on
//! a Unix socket: jobs the node follows again after its own restart go on
//! being logged, and those the agent's first `Hello` no longer lists as
//! running are failed (their end was lost), while an agent too old to
//! list them leaves them followed.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use vws_guest::{FromAgent, VERSION};
use vws_node::agent::{running_marker, Agent, JobEvent};

async fn frame(s: &mut UnixStream, msg: &FromAgent) {
    let body = serde_json::to_vec(msg).unwrap();
    s.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(&body).await.unwrap();
}

/// Reads the node's first frame (its `Ping`).
async fn pinged(s: &mut UnixStream) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("ping"));
}

fn hello(running: Option<Vec<&str>>) -> FromAgent {
    FromAgent::Hello {
        version: VERSION,
        hostname: "ws".into(),
        session: "s1".into(),
        running: running.map(|r| r.into_iter().map(String::from).collect()),
    }
}

fn followed(dir: &Path, job: &str) -> (String, std::path::PathBuf, u64) {
    let log = dir.join(format!("{job}.ndjson"));
    std::fs::write(&log, "{\"event\":\"started\",\"pid\":7}\n").unwrap();
    std::fs::write(running_marker(&log), "ws-1").unwrap();
    (job.into(), log, 0)
}

type Ended = tokio::sync::mpsc::UnboundedReceiver<(String, JobEvent, u64)>;

/// The node's agent connected to a scripted guest in `dir`, following
/// `jobs` again (as after a restart), past the node's first `Ping`.
async fn connected(dir: &Path, jobs: &[&str]) -> (std::sync::Arc<Agent>, UnixStream, Ended) {
    let socket = dir.join("agent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let (done, ended) = tokio::sync::mpsc::unbounded_channel();
    let jobs = jobs.iter().map(|j| followed(dir, j)).collect();
    let agent =
        tokio::spawn(
            async move { Agent::connect(&socket, Duration::from_secs(5), done, jobs).await },
        );
    let (mut guest, _) = listener.accept().await.unwrap();
    let agent = agent.await.unwrap().unwrap();
    pinged(&mut guest).await;
    (agent, guest, ended)
}

#[tokio::test]
async fn jobs_followed_again_are_logged_or_failed_by_the_agents_first_hello() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut guest, mut ended) = connected(dir.path(), &["job-on", "job-lost"]).await;
    // Output sent before the Hello is the followed job's.
    frame(
        &mut guest,
        &FromAgent::Stdout {
            job: "job-on".into(),
            data: "aGkK".into(),
        },
    )
    .await;
    frame(&mut guest, &hello(Some(vec!["job-on"]))).await;
    let (job, ev, _) = tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job, "job-lost");
    assert!(
        matches!(&ev, JobEvent::Failed { message } if message.contains("exit status was lost")),
        "{ev:?}"
    );
    let lost = dir.path().join("job-lost.ndjson");
    assert!(std::fs::read_to_string(&lost).unwrap().contains("was lost"));
    assert!(
        !running_marker(&lost).exists(),
        "the ended job's marker is gone"
    );
    assert!(agent.ready(Duration::from_secs(1)).await.is_some());
    frame(
        &mut guest,
        &FromAgent::Exited {
            job: "job-on".into(),
            code: Some(0),
            signal: None,
            timed_out: false,
        },
    )
    .await;
    let (job, ev, bytes) = ended.recv().await.unwrap();
    assert_eq!((job.as_str(), bytes), ("job-on", 3));
    assert!(
        matches!(ev, JobEvent::Exited { code: Some(0), .. }),
        "{ev:?}"
    );
    let on = dir.path().join("job-on.ndjson");
    assert!(std::fs::read_to_string(&on).unwrap().contains("aGkK"));
    assert!(!running_marker(&on).exists());
}

#[tokio::test]
async fn an_agent_that_does_not_list_its_jobs_leaves_them_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, mut guest, mut ended) = connected(dir.path(), &["job-1"]).await;
    frame(&mut guest, &hello(None)).await;
    assert!(agent.ready(Duration::from_secs(5)).await.is_some());
    assert!(agent.running("job-1").await);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ended.recv())
            .await
            .is_err(),
        "nothing ended"
    );
    // The connection's end (the VM gone) fails it.
    drop(guest);
    let (job, ev, _) = ended.recv().await.unwrap();
    assert_eq!(job, "job-1");
    assert!(matches!(ev, JobEvent::Failed { .. }), "{ev:?}");
}
