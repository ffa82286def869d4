//! Jobs: `vws run`, `vws jobs`, `vws job show|output|cancel`, `vws cp`.

use std::io::{IsTerminal, Read, Write};

use base64::Engine;
use clap::{Args, Subcommand};
use futures::StreamExt;
use serde_json::json;

use crate::output::{self, table};
use crate::Globals;

/// Exit with this status (a job's own), after printing nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit status {0}")]
pub struct ExitWith(pub u8);

/// `vws run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Workspace id
    id: String,
    /// Print the job id and return at once
    #[arg(short, long)]
    detach: bool,
    /// Kill the job after this long (90s, 15m, 2h)
    #[arg(long, value_parser = output::parse_duration)]
    timeout: Option<u64>,
    /// Environment variable for the job (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory in the workspace
    #[arg(long)]
    cwd: Option<String>,
    /// Program and arguments
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

/// `vws jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Workspace id
    id: String,
}

/// `vws job`.
#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Show one job
    Show {
        /// Job id
        job: String,
    },
    /// Print a job's output (stdout to stdout, stderr to stderr)
    Output {
        /// Job id
        job: String,
        /// Keep printing until the job ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a running job
    Cancel {
        /// Job id
        job: String,
    },
}

/// `vws cp`.
#[derive(Args, Debug)]
pub struct CpArgs {
    /// LOCAL or ID:PATH
    from: String,
    /// LOCAL or ID:PATH
    to: String,
}

const STDIN_LIMIT: usize = 700 << 10;

/// Streams a job's output to our stdout and stderr; returns its exit status
/// as a shell would (128+N for signal N).
async fn stream(
    client: &vws_client::Client,
    job: &str,
    follow: bool,
) -> anyhow::Result<Option<u8>> {
    let resp = client.job_output(job, follow).await?;
    let mut body = resp.bytes_stream();
    let mut pending = Vec::new();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut status = None;
    while let Some(chunk) = body.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let ev: serde_json::Value = serde_json::from_slice(&line)?;
            match ev["event"].as_str() {
                Some("stdout") => {
                    out.write_all(&b64.decode(ev["data"].as_str().unwrap_or(""))?)?;
                    out.flush()?;
                }
                Some("stderr") => {
                    err.write_all(&b64.decode(ev["data"].as_str().unwrap_or(""))?)?;
                    err.flush()?;
                }
                Some("exited") => {
                    if ev["timed_out"] == true {
                        eprintln!("vws: job {job} timed out and was killed");
                    }
                    if let Some(why) = ev["reason"].as_str() {
                        eprintln!("vws: job {job} was {why}");
                    }
                    status = Some(match (ev["code"].as_i64(), ev["signal"].as_i64()) {
                        (Some(c), _) => c as u8,
                        (None, Some(s)) => 128 + s as u8,
                        _ => 1,
                    });
                }
                Some("failed") => {
                    eprintln!(
                        "vws: job {job} failed: {}",
                        ev["message"].as_str().unwrap_or("unknown")
                    );
                    status = Some(1);
                }
                _ => {}
            }
        }
    }
    Ok(status)
}

/// `vws run`: output streams live; the exit status is the job's.
pub async fn run(g: &Globals, a: RunArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mut env = Vec::new();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {e:?}: expected KEY=VALUE"))?;
        env.push((k.to_string(), v.to_string()));
    }
    let stdin = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut buf = Vec::new();
        std::io::stdin()
            .take(STDIN_LIMIT as u64 + 1)
            .read_to_end(&mut buf)?;
        anyhow::ensure!(
            buf.len() <= STDIN_LIMIT,
            "standard input over {} KiB: copy it in with `vws cp` instead",
            STDIN_LIMIT >> 10
        );
        Some(base64::engine::general_purpose::STANDARD.encode(buf))
    };
    let job = client
        .submit_job(&a.id, json!({ "argv": a.argv, "env": env, "cwd": a.cwd, "stdin": stdin, "timeout": a.timeout }))
        .await?;
    if a.detach {
        println!("{}", job.id);
        return Ok(());
    }
    // The same stream goes on after a Ctrl-C, so nothing is printed twice.
    let streaming = stream(&client, &job.id, true);
    tokio::pin!(streaming);
    let status = tokio::select! {
        s = &mut streaming => s?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("vws: cancelling {}", job.id);
            let _ = client.cancel_job(&job.id).await;
            streaming.await?
        }
    };

    match status {
        Some(0) => Ok(()),
        Some(code) => Err(ExitWith(code).into()),
        None => Err(anyhow::anyhow!(
            "the output of {} ended before the job did",
            job.id
        )),
    }
}

/// `vws jobs`.
pub async fn list(g: &Globals, a: JobsArgs) -> anyhow::Result<()> {
    let jobs = g.client()?.jobs(&a.id).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(());
    }
    let mut t = table(&["JOB", "STATE", "STATUS", "OUTPUT", "STARTED", "COMMAND"]);
    for j in jobs {
        t.add_row(vec![
            j.id.clone(),
            j.state.to_string(),
            status_text(&j),
            vws_model::ByteSize(j.output_bytes).human(),
            output::relative(j.created_at),
            j.argv.join(" "),
        ]);
    }
    println!("{t}");
    Ok(())
}

fn status_text(j: &vws_store::JobRecord) -> String {
    match (j.exit_code, j.signal, &j.message) {
        (Some(c), _, _) => format!("exit {c}"),
        (None, Some(s), Some(m)) => format!("signal {s} ({m})"),
        (None, Some(s), None) => {
            format!("signal {s}{}", if j.timed_out { " (timeout)" } else { "" })
        }
        (None, None, Some(m)) => m.clone(),
        _ => "-".into(),
    }
}

/// `vws job …`.
pub async fn job(g: &Globals, c: JobCommand) -> anyhow::Result<()> {
    let client = g.client()?;
    match c {
        JobCommand::Show { job } => {
            let j = client.job(&job).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("      job  {}", j.id);
                println!("workspace  {} (on {})", j.workspace_id, j.node);
                println!("  command  {}", j.argv.join(" "));
                println!("    state  {} — {}", j.state, status_text(&j));
                println!("   output  {}", vws_model::ByteSize(j.output_bytes).human());
                println!("  started  {}", output::timestamp(j.created_at));
                if let Some(e) = j.ended_at {
                    println!(
                        "    ended  {} ({:.3} s)",
                        output::timestamp(e),
                        (e - j.created_at).as_seconds_f64()
                    );
                }
            }
        }
        JobCommand::Output { job, follow } => {
            stream(&client, &job, follow).await?;
        }
        JobCommand::Cancel { job } => {
            client.cancel_job(&job).await?;
            eprintln!("cancelling {job}");
        }
    }
    Ok(())
}

/// `vws cp LOCAL ID:PATH` or `vws cp ID:PATH LOCAL`.
pub async fn cp(g: &Globals, a: CpArgs) -> anyhow::Result<()> {
    let remote = |s: &str| {
        s.split_once(':')
            .filter(|(id, p)| id.starts_with("ws-") && p.starts_with('/'))
            .map(|(i, p)| (i.to_string(), p.to_string()))
    };
    let client = g.client()?;
    match (remote(&a.from), remote(&a.to)) {
        (None, Some((id, path))) => {
            let data = std::fs::read(&a.from)?;
            client.put_file(&id, &path, data).await?;
        }
        (Some((id, path)), None) => {
            let data = client.get_file(&id, &path).await?;
            std::fs::write(&a.to, data)?;
        }
        _ => anyhow::bail!("give one local path and one ID:/ABSOLUTE/PATH"),
    }
    Ok(())
}
