//! `vws events` and `vws wait`: the service's event stream, printed or
//! waited on (no polling).

use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use vws_model::records::{Event, EventKind};

use crate::commands::jobs::ExitWith;
use crate::output::{parse_duration, timestamp};
use crate::Globals;

/// `vws events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they happen
    #[arg(short, long)]
    follow: bool,
    /// Start after this sequence number [default: from the oldest kept; with
    /// -f alone, from now]
    #[arg(long, value_name = "SEQ")]
    after: Option<i64>,
}

/// `vws wait`.
#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Workspace id
    id: String,
    /// The state to wait for (running, paused, shutdown, …)
    #[arg(long)]
    state: String,
    /// Give up after this long (30s, 5m, 1h) [exit code 3]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<u64>,
}

/// Prints events, one line each (JSON lines with --json).
pub async fn events(g: &Globals, a: EventsArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let after = match (a.after, a.follow) {
        (Some(n), _) => Some(n),
        (None, false) => Some(0),
        (None, true) => None,
    };
    let mut stream = std::pin::pin!(client.events(after, a.follow).await?);
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if g.json {
            println!("{}", serde_json::to_string(&ev)?);
        } else {
            println!("{}", line(&ev));
        }
    }
    Ok(())
}

/// One event for people: `SEQ TIME KIND SUBJECT what`.
fn line(ev: &Event) -> String {
    let d = &ev.data;
    let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
    let what = match ev.kind {
        EventKind::Workspace => match d["state"].as_str() {
            Some(state) => format!(
                "{} → {state} ({}) by {}",
                s("action"),
                s("placement"),
                s("actor")
            ),
            None => format!("{} by {}", s("action"), s("actor")),
        },
        EventKind::Job => match d["exit_code"].as_i64() {
            Some(code) => format!("{} in {} (exit {code})", s("state"), s("workspace")),
            None => format!("{} in {}", s("state"), s("workspace")),
        },
        EventKind::Node => s("status"),
        EventKind::Image => match d["name"].as_str() {
            Some(name) => format!("{} as {name}:{}", s("action"), s("tag")),
            None => s("action"),
        },
    };
    format!(
        "{:>6}  {}  {:<9}  {}  {what}",
        ev.seq,
        timestamp(ev.at),
        ev.kind.as_str(),
        ev.subject
    )
}

/// Waits for a workspace to reach a state. Exit code 0 when it does, 3 on
/// the timeout, 1 if it is destroyed or corrupted first (or unknown).
pub async fn wait(g: &Globals, a: WaitArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    // Following first, then the state: a change between the two is not missed.
    let mut stream = std::pin::pin!(client.events(None, true).await?);
    let waited = async {
        let shown = client.show(&a.id).await?;
        if shown.record.state.as_str() == a.state {
            return Ok(());
        }
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            if ev.kind != EventKind::Workspace || ev.subject != a.id {
                continue;
            }
            match ev.data["state"].as_str() {
                Some(s) if s == a.state => return Ok(()),
                Some("corrupted") => anyhow::bail!(
                    "workspace {} is corrupted ({}) before it was {}",
                    a.id,
                    client.show(&a.id).await?.record.reason.unwrap_or_default(),
                    a.state
                ),
                None => anyhow::bail!("workspace {} was destroyed before it was {}", a.id, a.state),
                _ => {}
            }
        }
        anyhow::bail!("the event stream ended")
    };
    match a.timeout {
        Some(t) => match tokio::time::timeout(Duration::from_secs(t), waited).await {
            Ok(r) => r,
            Err(_) => {
                eprintln!("vws: workspace {} was not {} within {t} s", a.id, a.state);
                Err(ExitWith(3).into())
            }
        },
        None => waited.await,
    }
}
