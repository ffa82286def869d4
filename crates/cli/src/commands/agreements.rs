//! `vws agree`, `vws agreements`, `vws agreement show|accept|cancel|renegotiate`:
//! capacity asked for ahead of time (docs/agreements.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use vws_model::agreement::{AgreementRequest, AtEnd, Renegotiation, Terms};
use vws_model::Form;

use crate::output::{self, table};
use crate::Globals;

/// `vws agree`.
#[derive(Args, Debug)]
pub struct AgreeArgs {
    /// Description file (.xml, .toml, .json; - reads stdin) of the
    /// workspaces to reserve for
    #[arg(required_unless_present = "workspace", conflicts_with = "workspace")]
    file: Option<PathBuf>,
    /// Reserve for this existing workspace instead (in the repository)
    #[arg(long, value_name = "ID")]
    workspace: Option<String>,
    /// Form of the description, when the file name does not say [xml, toml, json]
    #[arg(long, value_parser = ["xml", "toml", "json"])]
    form: Option<String>,
    /// When to start: now, +DURATION (e.g. +10m), or an RFC 3339 time
    #[arg(long, value_name = "WHEN", default_value = "now", value_parser = parse_when)]
    at: String,
    /// The latest acceptable start (a window from --at), as --at
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    latest: Option<String>,
    /// How long: 90s, 15m, 2h, 7d
    #[arg(long = "for", value_name = "DURATION", value_parser = output::parse_duration)]
    duration: u64,
    /// How many workspaces
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// At the end: stop (checked in) or suspend (paused and checked in with memory)
    #[arg(long, value_name = "WHAT", default_value = "stop", value_parser = ["stop", "suspend"])]
    at_end: String,
    /// Accept the offer at once
    #[arg(long)]
    accept: bool,
}

/// `vws agreement`.
#[derive(Subcommand, Debug)]
pub enum AgreementCommand {
    /// Show an agreement with its history
    Show {
        /// Agreement id (ag-…)
        id: String,
    },
    /// Accept an offer: a binding reservation (its workspaces are made now)
    Accept {
        /// Agreement id
        id: String,
    },
    /// Reject an offer, or release a reservation (its workspaces stay yours)
    Cancel {
        /// Agreement id
        id: String,
    },
    /// Ask for a new offer against an agreement: extend, shrink, move, resize
    Renegotiate {
        /// Agreement id
        id: String,
        /// A new start (now, +DURATION, RFC 3339)
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        at: Option<String>,
        /// A new latest start
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        latest: Option<String>,
        /// A new duration from the start
        #[arg(long = "for", value_name = "DURATION", value_parser = output::parse_duration)]
        duration: Option<u64>,
        /// A new count
        #[arg(long)]
        count: Option<u32>,
        /// Accept the new offer at once
        #[arg(long)]
        accept: bool,
    },
}

/// `now`, `+DURATION` (from now) or RFC 3339, as the API takes it.
fn parse_when(s: &str) -> Result<String, String> {
    if s == "now" {
        return Ok(s.into());
    }
    if let Some(d) = s.strip_prefix('+') {
        let secs = output::parse_duration(d)?;
        return Ok(output::timestamp(
            time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64),
        ));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?}: expected now, +DURATION (e.g. +10m) or an RFC 3339 time"))
}

/// Asks for capacity; prints the offer (and accepts it with --accept).
pub async fn agree(g: &Globals, a: AgreeArgs) -> anyhow::Result<()> {
    let description = match &a.file {
        Some(file) => {
            let (text, form) =
                crate::commands::workspaces::read_description(file, a.form.as_deref())?;
            let d = vws_model::parse(&text, form).map_err(anyhow::Error::from)?;
            Some(
                serde_json::from_str(&vws_model::write(&d, Form::Json))
                    .context("the description as JSON")?,
            )
        }
        None => None,
    };
    let req = AgreementRequest {
        description,
        workspace: a.workspace.clone(),
        count: Some(a.count),
        terms: Terms {
            start: Some(a.at.clone()),
            latest_start: a.latest.clone(),
            duration: a.duration,
            at_end: if a.at_end == "suspend" {
                AtEnd::Suspend
            } else {
                AtEnd::Stop
            },
        },
    };
    let client = g.client()?;
    let mut offer = client.offer_agreement(&req).await?;
    if a.accept {
        offer = client.agreement_action(&offer.id, "accept").await?;
    }
    print_one(g, &offer)
}

/// Lists agreements.
pub async fn list(g: &Globals) -> anyhow::Result<()> {
    let all = g.client()?.agreements().await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    let mut t = table(&["ID", "STATE", "START", "FOR", "COUNT", "NODES"]);
    for a in &all {
        let mut nodes: Vec<&str> = a.slots.iter().map(|s| s.node.as_str()).collect();
        nodes.dedup();
        t.add_row(vec![
            a.id.clone(),
            a.state.to_string(),
            format!(
                "{} ({})",
                output::timestamp(a.start),
                output::relative(a.start)
            ),
            output::duration((a.end - a.start).whole_seconds()),
            a.slots.len().to_string(),
            nodes.join(", "),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Runs an `agreement` verb.
pub async fn agreement(g: &Globals, c: AgreementCommand) -> anyhow::Result<()> {
    let client = g.client()?;
    let a = match c {
        AgreementCommand::Show { id } => client.agreement(&id).await?,
        AgreementCommand::Accept { id } => client.agreement_action(&id, "accept").await?,
        AgreementCommand::Cancel { id } => client.agreement_action(&id, "cancel").await?,
        AgreementCommand::Renegotiate {
            id,
            at,
            latest,
            duration,
            count,
            accept,
        } => {
            let change = Renegotiation {
                start: at,
                latest_start: latest,
                duration,
                count,
            };
            let offer = client.renegotiate(&id, &change).await?;
            if accept {
                client.agreement_action(&offer.id, "accept").await?
            } else {
                offer
            }
        }
    };
    print_one(g, &a)
}

fn print_one(g: &Globals, a: &vws_client::Agreement) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(a)?);
        return Ok(());
    }
    println!("{}  {}", a.id, a.state);
    println!(
        "  from {} ({}) for {}, then {}",
        output::timestamp(a.start),
        output::relative(a.start),
        output::duration((a.end - a.start).whole_seconds()),
        match a.at_end {
            AtEnd::Stop => "stopped and checked in",
            AtEnd::Suspend => "suspended (checked in with memory)",
        }
    );
    for s in &a.slots {
        println!(
            "  {} cpus, {} on {}{}",
            s.cpus,
            vws_model::ByteSize(s.ram).human(),
            s.node,
            s.workspace
                .as_deref()
                .map(|w| format!("  → {w}"))
                .unwrap_or_default()
        );
    }
    if let Some(e) = a.offer_expires_at {
        println!(
            "  offer valid until {} ({}): vws agreement accept {}",
            output::timestamp(e),
            output::relative(e),
            a.id
        );
    }
    for e in &a.history {
        println!(
            "  {}  {:<12} {}{}",
            output::timestamp(e.at),
            e.action,
            e.actor,
            e.detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
