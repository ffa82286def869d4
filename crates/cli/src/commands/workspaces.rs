//! Workspace verbs: create, list, show, clone, destroy, renew.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use vws_client::{ListQuery, Workspace};
use vws_model::Form;

use crate::output::{self, table};
use crate::Globals;

/// `vws create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Description file (.xml, .toml, .json), or - for standard input
    file: PathBuf,
    /// Name, unique among your workspaces [default: the id]
    #[arg(long)]
    name: Option<String>,
    /// Form of the description, when the file name does not say [xml, toml, json]
    #[arg(long, value_parser = ["xml", "toml", "json"])]
    form: Option<String>,
    /// Create nothing: show the images that could serve it, what each
    /// lacks, and the one create would choose (as `vws match`)
    #[arg(long)]
    dry_run: bool,
}

/// `vws list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only workspaces in this state [shutdown, paused, running, corrupted]
    #[arg(long)]
    state: Option<String>,
    /// Only workspaces of this owner (a DN)
    #[arg(long)]
    owner: Option<String>,
    /// Only this category ["vm", "dynamic account"]
    #[arg(long)]
    category: Option<String>,
}

/// `vws show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Workspace id
    id: String,
    /// Print the full description as XML (with EPR, state and times)
    #[arg(long, conflicts_with = "toml")]
    xml: bool,
    /// Print the full description as TOML
    #[arg(long)]
    toml: bool,
    /// Also print the history of transitions
    #[arg(long)]
    history: bool,
}

/// `vws clone`.
#[derive(Args, Debug)]
pub struct CloneArgs {
    /// Workspace to clone
    id: String,
    /// Name of the clone
    #[arg(long)]
    name: Option<String>,
    /// Refine the description on the way: a JSON merge patch (RFC 7386)
    /// over it, or @FILE, e.g. '{"hardware":{"ram":{"max":"512MiB"}}}';
    /// null removes a field ('{"software":{"image":null}}' lets the
    /// factory choose). Checked as a create is.
    #[arg(long, value_name = "JSON")]
    change: Option<String>,
}

/// `vws destroy`.
#[derive(Args, Debug)]
pub struct DestroyArgs {
    /// Workspaces to destroy
    #[arg(required = true)]
    ids: Vec<String>,
}

/// `vws renew`.
#[derive(Args, Debug)]
pub struct RenewArgs {
    /// Workspace id
    id: String,
    /// New lifetime from now: 90s, 15m, 2h, 7d
    #[arg(long = "for", value_name = "DURATION", value_parser = output::parse_duration)]
    lifetime: u64,
}

/// A description file's text (`-`: standard input) and its form: as
/// `--form` says, else by the file's extension, else by its first bytes.
pub(crate) fn read_description(
    file: &std::path::Path,
    form: Option<&str>,
) -> anyhow::Result<(String, Form)> {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the description from standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let form = match form {
        Some("xml") => Form::Xml,
        Some("toml") => Form::Toml,
        Some("json") => Form::Json,
        _ => Form::from_extension(&file.to_string_lossy()).unwrap_or_else(|| Form::sniff(&text)),
    };
    Ok((text, form))
}

fn print_created(g: &Globals, ws: &Workspace) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(ws)?);
    } else {
        println!("{}", ws.record.id);
        println!("  EPR {}  key {}", ws.epr.address, ws.epr.resource_key);
    }
    Ok(())
}

/// Creates a workspace and prints its id and EPR (or the record with --json).
pub async fn create(g: &Globals, a: CreateArgs) -> anyhow::Result<()> {
    let (text, form) = read_description(&a.file, a.form.as_deref())?;
    // Check locally first: the same parser the service runs, so errors come
    // back at once and name the element.
    vws_model::parse(&text, form).map_err(anyhow::Error::from)?;
    if a.dry_run {
        return print_match(g, g.client()?.match_description(text, form).await?);
    }
    let ws = g.client()?.create(text, form, a.name.as_deref()).await?;
    print_created(g, &ws)
}

/// `vws match FILE`: `vws create FILE --dry-run`.
pub async fn match_description(g: &Globals, mut a: CreateArgs) -> anyhow::Result<()> {
    a.dry_run = true;
    create(g, a).await
}

/// The candidates of a match, best first, with what each lacks.
fn print_match(g: &Globals, m: serde_json::Value) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    let empty = Vec::new();
    let candidates = m["candidates"].as_array().unwrap_or(&empty);
    for c in candidates {
        let mark = if c["fits"].as_bool() == Some(true) {
            "fits "
        } else {
            "lacks"
        };
        println!(
            "{mark}  {}  ({})",
            c["image"].as_str().unwrap_or("-"),
            c["kind"].as_str().unwrap_or("-")
        );
        for l in c["lacks"].as_array().unwrap_or(&empty) {
            println!(
                "         {}: {}",
                l["path"].as_str().unwrap_or(""),
                l["message"].as_str().unwrap_or("")
            );
        }
    }
    println!("{}", m["reason"].as_str().unwrap_or(""));
    if m["chosen"].is_null() {
        anyhow::bail!("no image meets the description's software requirements");
    }
    Ok(())
}

/// Lists workspaces.
pub async fn list(g: &Globals, a: ListArgs) -> anyhow::Result<()> {
    let q = ListQuery {
        state: a.state,
        owner: a.owner,
        category: a.category,
        ..Default::default()
    };
    let all = g.client()?.list_all(&q).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        eprintln!("no workspaces");
        return Ok(());
    }
    let mut t = table(&[
        "ID", "NAME", "CATEGORY", "STATE", "WHERE", "IMAGE", "RAM", "EXPIRES",
    ]);
    for ws in &all {
        let r = &ws.record;
        let ram = &r.description.hardware.ram;
        let ram = if ram.min == ram.max {
            ram.min.human()
        } else {
            format!("{}–{}", ram.min.human(), ram.max.human())
        };
        t.add_row(vec![
            r.id.clone(),
            r.name.clone(),
            r.description.category.to_string(),
            r.state.to_string(),
            r.node
                .clone()
                .unwrap_or_else(|| r.placement.as_str().to_string()),
            r.description.software.image.clone().unwrap_or_default(),
            ram,
            r.terminates_at
                .map(output::relative)
                .unwrap_or_else(|| "never".into()),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Shows one workspace.
pub async fn show(g: &Globals, a: ShowArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    if a.xml || a.toml {
        let form = if a.xml { Form::Xml } else { Form::Toml };
        print!("{}", client.description(&a.id, form).await?);
        return Ok(());
    }
    let ws = client.show(&a.id).await?;
    let history = if a.history {
        Some(client.history(&a.id).await?)
    } else {
        None
    };
    if g.json {
        let mut v = serde_json::to_value(&ws)?;
        if let Some(h) = &history {
            v["history"] = serde_json::to_value(h)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r = &ws.record;
    let d = &r.description;
    let mut lines = vec![
        ("id", r.id.clone()),
        ("name", r.name.clone()),
        ("owner", r.owner.clone()),
        (
            "category",
            match d.vmm {
                Some(v) => format!("{} ({})", d.category, v.as_str()),
                None => d.category.to_string(),
            },
        ),
        (
            "state",
            match &r.reason {
                Some(reason) => format!("{} — {reason}", r.state),
                None => r.state.to_string(),
            },
        ),
        (
            "where",
            match (&r.node, &r.lock_holder) {
                (Some(n), _) => format!("deployed on {n}"),
                (None, Some(l)) => format!("checked out by {l}"),
                _ => "in the repository".into(),
            },
        ),
        (
            "EPR",
            format!("{}  (key {})", ws.epr.address, ws.epr.resource_key),
        ),
        (
            "image",
            format!(
                "{}  ({})",
                d.software.image.as_deref().unwrap_or("-"),
                r.image_id
            ),
        ),
        (
            "cpus",
            range(
                d.hardware.cpus.min.to_string(),
                d.hardware.cpus.max.to_string(),
                r.binding.cpus.map(|c| c.to_string()),
            ),
        ),
        (
            "ram",
            range(
                d.hardware.ram.min.human(),
                d.hardware.ram.max.human(),
                r.binding.ram.map(|b| vws_model::ByteSize(b).human()),
            ),
        ),
    ];
    if let Some(disk) = &r.disk_path {
        let size = r
            .binding
            .disk
            .map(|b| vws_model::ByteSize(b).human())
            .unwrap_or_default();
        lines.push(("disk", format!("{size} qcow2 overlay at {disk}")));
    }
    if let Some(a) = &ws.account {
        lines.push(("account", format!("uid {} on {}", a.uid, a.node)));
    }
    for nic in &d.network.nics {
        let addr = ws
            .addresses
            .iter()
            .find(|a| a.nic == nic.name)
            .map(|a| format!(" {} on {} (MAC {})", a.address, a.network, a.mac))
            .unwrap_or_default();
        lines.push((
            "nic",
            format!("{} ({}){addr}", nic.name, nic.method.as_str()),
        ));
    }
    if let Some(s) = &d.capability.startup {
        lines.push(("startup", s.clone()));
    }
    for s in &d.capability.services {
        let at = r
            .binding
            .forwards
            .iter()
            .find(|f| f.port == s.port && f.protocol == s.protocol.as_str());
        let place = at
            .map(|f| format!(" at {}", f.host))
            .unwrap_or_else(|| " (reachable once running with a user NIC)".into());
        lines.push((
            "serves",
            format!("{}/{}{place}", s.port, s.protocol.as_str()),
        ));
    }
    lines.push((
        "created",
        format!(
            "{} ({})",
            output::timestamp(r.created_at),
            output::relative(r.created_at)
        ),
    ));
    lines.push((
        "modified",
        format!(
            "{} ({})",
            output::timestamp(r.modified_at),
            output::relative(r.modified_at)
        ),
    ));
    lines.push((
        "expires",
        r.terminates_at
            .map(|t| format!("{} ({})", output::timestamp(t), output::relative(t)))
            .unwrap_or_else(|| "never".into()),
    ));
    for (k, v) in lines {
        println!("{k:>9}  {v}");
    }
    if let Some(h) = history {
        println!();
        let mut t = table(&["#", "WHEN", "ACTION", "STATE", "BY", "DETAIL"]);
        for e in h {
            t.add_row(vec![
                e.seq.to_string(),
                output::timestamp(e.at),
                e.action.to_string(),
                e.to_state.unwrap_or_else(|| "-".into()),
                e.actor,
                e.detail.unwrap_or_default(),
            ]);
        }
        println!("{t}");
    }
    Ok(())
}

fn range(min: String, max: String, bound: Option<String>) -> String {
    let r = if min == max {
        min
    } else {
        format!("{min} to {max}")
    };
    match bound {
        Some(b) => format!("{r} (bound: {b})"),
        None => r,
    }
}

/// Clones a workspace.
pub async fn clone(g: &Globals, a: CloneArgs) -> anyhow::Result<()> {
    let changes: Option<serde_json::Value> = match &a.change {
        None => None,
        Some(text) => {
            let text = match text.strip_prefix('@') {
                Some(file) => {
                    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
                }
                None => text.clone(),
            };
            Some(serde_json::from_str(&text).context("--change is not JSON (a merge patch)")?)
        }
    };
    let ws = g
        .client()?
        .clone_workspace(&a.id, a.name.as_deref(), changes.as_ref())
        .await?;
    print_created(g, &ws)
}

/// Destroys workspaces; reports each, fails if any failed.
pub async fn destroy(g: &Globals, a: DestroyArgs) -> anyhow::Result<()> {
    let client = g.client()?;
    let mut failed = 0;
    for id in &a.ids {
        match client.destroy(id).await {
            Ok(()) => eprintln!("destroyed {id}"),
            Err(e) => {
                eprintln!("error: {id}: {e}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} workspaces could not be destroyed",
        a.ids.len()
    );
    Ok(())
}

/// Renews a workspace's lifetime.
pub async fn renew(g: &Globals, a: RenewArgs) -> anyhow::Result<()> {
    let ws = g.client()?.renew(&a.id, a.lifetime).await?;
    if g.json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
    } else if let Some(t) = ws.record.terminates_at {
        eprintln!(
            "{} now expires {} ({})",
            ws.record.id,
            output::timestamp(t),
            output::relative(t)
        );
    }
    Ok(())
}
