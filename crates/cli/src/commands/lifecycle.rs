//! Lifecycle verbs: deploy, undeploy, start, stop, pause, unpause, console.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::Globals;

/// `vws deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Workspace id
    id: String,
    /// Node to deploy on [default: one with room, preferring one that holds the image]
    #[arg(long)]
    host: Option<String>,
}

/// `vws start|stop|pause|unpause|undeploy`.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// Workspace id
    id: String,
}

/// `vws console`.
#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// Workspace id
    id: String,
    /// Keep printing what the guest writes until it shuts down
    #[arg(short, long)]
    follow: bool,
}

fn print_state(g: &Globals, ws: &vws_client::Workspace, verb: &str) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(ws)?);
    } else {
        let r = &ws.record;
        let place = r
            .node
            .as_deref()
            .map(|n| format!(" on {n}"))
            .unwrap_or_else(|| " in the repository".into());
        eprintln!("{verb} {}: {}{place}", r.id, r.state);
    }
    Ok(())
}

/// A progress bar (hidden with --json) fed by polling `poll` for
/// `{done, total, phase?}` until the returned task is aborted; a new phase
/// restarts the bar and names it.
fn watch_progress<F, Fut>(
    g: &Globals,
    template: &str,
    every: Duration,
    poll: F,
) -> (ProgressBar, tokio::task::JoinHandle<()>)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<serde_json::Value>> + Send,
{
    let pb = if g.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    let bar = pb.clone();
    let task = tokio::spawn(async move {
        let mut phase = String::new();
        loop {
            tokio::time::sleep(every).await;
            if let Some(p) = poll().await {
                let now = p["phase"].as_str().unwrap_or_default().to_string();
                if now != phase {
                    bar.reset();
                    bar.set_message(now.clone());
                    phase = now;
                }
                bar.set_length(p["total"].as_u64().unwrap_or(0));
                bar.set_position(p["done"].as_u64().unwrap_or(0));
            }
        }
    });
    (pb, task)
}

/// Deploys, showing staging progress.
pub async fn deploy(g: &Globals, a: DeployArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let (pb, watcher) = {
        let (client, id) = (client.clone(), a.id.clone());
        watch_progress(
            g,
            "     staging [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            Duration::from_millis(200),
            move || {
                let (client, id) = (client.clone(), id.clone());
                async move { client.staging(&id).await.ok() }
            },
        )
    };
    let result = client.deploy(&a.id, a.host.as_deref()).await;
    watcher.abort();
    pb.finish_and_clear();
    print_state(g, &result?, "deployed")
}

/// A lifecycle action without arguments.
pub async fn action(
    g: &Globals,
    a: IdArgs,
    verb: vws_model::Verb,
    done: &str,
) -> anyhow::Result<()> {
    let ws = g.client()?.action(&a.id, verb).await?;
    print_state(g, &ws, done)
}

/// Prints (and follows) the console.
pub async fn console(g: &Globals, a: ConsoleArgs) -> anyhow::Result<()> {
    let resp = g.client()?.console(&a.id, a.follow).await?;
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?)?;
        out.flush()?;
    }
    Ok(())
}

/// `vws snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// A paused workspace
    id: String,
    /// Name and tag of the hot image, e.g. ready:1
    #[arg(long = "as", value_name = "NAME:TAG")]
    as_: String,
}

/// Saves a hot image.
pub async fn snapshot(g: &Globals, a: SnapshotArgs) -> anyhow::Result<()> {
    let image = g.client()?.snapshot(&a.id, &a.as_).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&image)?);
    } else {
        println!("{}  {}", a.as_, image.id);
    }
    Ok(())
}

/// `vws migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// A running or paused workspace
    id: String,
    /// The node to move it to (see `vws node list`)
    #[arg(long, value_name = "NODE")]
    to: String,
}

/// Live-migrates a workspace, showing the disk mirror's and the memory
/// copy's progress.
pub async fn migrate(g: &Globals, a: MigrateArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let (pb, watcher) = {
        let (client, id) = (client.clone(), a.id.clone());
        watch_progress(
            g,
            "   migrating {msg:>6} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            Duration::from_millis(100),
            move || {
                let (client, id) = (client.clone(), id.clone());
                async move { client.migration(&id).await.ok() }
            },
        )
    };
    let started = std::time::Instant::now();
    let result = client.migrate(&a.id, &a.to).await;
    watcher.abort();
    pb.finish_and_clear();
    let ws = result?;
    if !g.json {
        eprintln!("migrated in {:.2?}", started.elapsed());
    }
    print_state(g, &ws, "moved")
}
