//! The dashboard's views and actions, each one or a few commands run as the
//! signed-in identity.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use vws_model::records::JobRecord;
use vws_model::Verb;
use vws_service::command::{Command, Reply};
use vws_service::{Service, ServiceError, Workspace};

use crate::view::page;
use crate::{failed, forbidden_form, Session};

/// Runs a command as the session's identity.
async fn run(s: &Arc<Service>, session: &Session, c: Command) -> Result<Reply, ServiceError> {
    s.execute(&session.0.identity, c).await
}

fn shown(session: &Session, title: &str, body: Markup) -> Response {
    page(
        title,
        Some(&session.0.identity.dn),
        Some(&session.0.csrf),
        body,
    )
    .into_response()
}

fn state_cell(state: &str) -> Markup {
    html! { span class=(format!("state {state}")) { (state) } }
}

/// `/ui/events`: the session's event stream (what its identity may see).
pub async fn events(State(s): State<Arc<Service>>, session: Session) -> Response {
    match vws_service::events::follow(s, session.0.identity.clone(), None, true).await {
        Ok((start, stream)) => vws_service::api::sse(start, stream),
        Err(e) => failed(&e),
    }
}

/// `/ui`: the caller's workspaces, their states live.
pub async fn workspaces(State(s): State<Arc<Service>>, session: Session) -> Response {
    let page_of = match run(&s, &session, Command::ListWorkspaces(Default::default())).await {
        Ok(Reply::Workspaces(p)) => p,
        Ok(_) => unreachable!("a list answers workspaces"),
        Err(e) => return failed(&e),
    };
    let body = html! {
        h1 { "Workspaces" }
        div class="scroll" {
            table {
                thead { tr { th { "id" } th { "name" } th { "state" } th { "placement" } th { "category" } } }
                tbody data-list {
                    @for w in &page_of.items {
                        tr data-ws=(w.record.id) {
                            td { a href=(format!("/ui/w/{}", w.record.id)) { (w.record.id) } }
                            td { (w.record.name) }
                            td { (state_cell(w.record.state.as_str())) }
                            td class="placement" { (w.record.placement.as_str()) }
                            td { (w.record.description.category.as_str()) }
                        }
                    }
                }
            }
        }
        @if page_of.items.is_empty() {
            p { "None yet. " a href="/ui/new" { "Create one" } " from a description." }
        }
    };
    shown(&session, "Workspaces", body)
}

/// `/ui/new`: a description to paste or upload.
pub async fn new_form(session: Session) -> Response {
    shown(&session, "New workspace", create_form(&session, "", None))
}

fn create_form(session: &Session, text: &str, errors: Option<Markup>) -> Markup {
    html! {
        h1 { "New workspace" }
        @if let Some(e) = errors { (e) }
        form method="post" action="/ui/new" {
            input type="hidden" name="csrf" value=(session.0.csrf);
            p {
                label { "Name (optional) " input type="text" name="name"; }
            }
            p {
                label { "A description file " input type="file" accept=".xml,.toml,.json" data-into="description"; }
            }
            p { "or its text (XML, TOML or JSON):" }
            textarea id="description" name="description" { (text) }
            p { button type="submit" { "Create" } }
        }
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    csrf: String,
    description: String,
    #[serde(default)]
    name: String,
}

/// Creates the workspace, or shows the form again with each problem at the
/// element it is about.
pub async fn create(
    State(s): State<Arc<Service>>,
    session: Session,
    axum::Form(f): axum::Form<CreateForm>,
) -> Response {
    if f.csrf != session.0.csrf {
        return forbidden_form();
    }
    let form = vws_model::Form::sniff(&f.description);
    let refused = |problems: Vec<(String, String)>| {
        let errors = html! {
            div class="error" {
                p { "The description was refused:" }
                ul { @for (at, what) in &problems { li { strong { (at) } ": " (what) } } }
            }
        };
        let body = create_form(&session, &f.description, Some(errors));
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            shown(&session, "New workspace", body),
        )
            .into_response()
    };
    let description = match vws_model::parse(&f.description, form) {
        Ok(d) => d,
        Err(e) => {
            return refused(
                e.0.iter()
                    .map(|p| (p.path.clone(), p.message.clone()))
                    .collect(),
            )
        }
    };
    let name = Some(f.name.trim().to_string()).filter(|n| !n.is_empty());
    let c = Command::Create {
        description,
        form,
        name,
    };
    match run(&s, &session, c).await {
        Ok(Reply::Workspace(w)) => Redirect::to(&format!("/ui/w/{}", w.record.id)).into_response(),
        Ok(_) => unreachable!("create answers a workspace"),
        Err(ServiceError::Invalid(e)) => refused(
            e.0.iter()
                .map(|p| (p.path.clone(), p.message.clone()))
                .collect(),
        ),
        Err(e) => {
            let errors = html! { div class="error" { (e.to_string()) } };
            let status = e.status_and_code().0;
            let body = create_form(&session, &f.description, Some(errors));
            (status, shown(&session, "New workspace", body)).into_response()
        }
    }
}

async fn console_text(s: &Arc<Service>, session: &Session, id: &str) -> String {
    let c = Command::Console {
        id: id.to_string(),
        follow: false,
    };
    match run(s, session, c).await {
        Ok(Reply::Stream { body, .. }) => {
            let text = body.text().await.unwrap_or_default();
            // The last lines: a console can be long.
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(300)..].join("\n")
        }
        _ => String::new(),
    }
}

/// `/ui/w/{id}`: a workspace's description, binding, history, jobs and
/// console, with the actions its state allows.
pub async fn workspace(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let w: Workspace = match run(&s, &session, Command::ShowWorkspace { id: id.clone() }).await {
        Ok(Reply::Workspace(w)) => *w,
        Ok(_) => unreachable!("show answers a workspace"),
        Err(e) => return failed(&e),
    };
    let history = match run(&s, &session, Command::History { id: id.clone() }).await {
        Ok(Reply::History(h)) => h,
        _ => Vec::new(),
    };
    let jobs: Vec<JobRecord> = match run(&s, &session, Command::Jobs { id: id.clone() }).await {
        Ok(Reply::Jobs(j)) => j,
        _ => Vec::new(),
    };
    let console = console_text(&s, &session, &id).await;
    let r = &w.record;
    let toml = vws_model::write(&w.full_description(), vws_model::Form::Toml);
    let verb = |v: &str, label: &str| {
        html! {
            form method="post" action=(format!("/ui/w/{id}/action")) data-live {
                input type="hidden" name="csrf" value=(session.0.csrf);
                input type="hidden" name="verb" value=(v);
                button type="submit" data-verb=(v) { (label) }
            }
        }
    };
    let body = html! {
        div data-ws=(r.id) {
            h1 { (r.name) " " (state_cell(r.state.as_str())) }
            div class="actions" {
                (verb("deploy", "Deploy"))
                (verb("start", "Start"))
                (verb("pause", "Pause"))
                (verb("unpause", "Unpause"))
                (verb("stop", "Stop"))
                (verb("undeploy", "Undeploy"))
                form method="post" action=(format!("/ui/w/{id}/action")) data-live {
                    input type="hidden" name="csrf" value=(session.0.csrf);
                    input type="hidden" name="verb" value="snapshot";
                    input type="text" name="as" placeholder="name:tag" size="12";
                    button type="submit" { "Snapshot" }
                }
                form method="post" action=(format!("/ui/w/{id}/action")) data-live {
                    input type="hidden" name="csrf" value=(session.0.csrf);
                    input type="hidden" name="verb" value="renew";
                    input type="number" name="lifetime" value="3600" min="1" style="width:7rem";
                    button type="submit" { "Renew (s)" }
                }
                form method="post" action=(format!("/ui/w/{id}/action")) {
                    input type="hidden" name="csrf" value=(session.0.csrf);
                    input type="hidden" name="verb" value="destroy";
                    button class="quiet" type="submit" { "Destroy" }
                }
            }
            div id="outcome" {}
            dl {
                dt { "id" } dd { (r.id) }
                dt { "owner" } dd { (r.owner) }
                dt { "category" } dd { (r.description.category.as_str()) }
                dt { "placement" } dd class="placement" { (r.placement.as_str()) }
                dt { "node" } dd class="node" { (r.node.clone().unwrap_or_else(|| "-".into())) }
                dt { "binding" } dd {
                    (r.binding.cpus.map_or("-".into(), |c| c.to_string())) " cpus, "
                    (r.binding.ram.map_or("-".into(), |b| vws_model::ByteSize(b).human())) " RAM"
                }
                dt { "served ports" } dd {
                    @if r.binding.forwards.is_empty() { "-" }
                    @for f in &r.binding.forwards {
                        a href=(format!("http://{}/", f.host)) { (f.port) "/" (f.protocol) " → " (f.host) } " "
                    }
                }
                @if let Some(reason) = &r.reason { dt { "reason" } dd { (reason) } }
            }
            @if r.placement.as_str() == "host" || r.state.as_str() == "shutdown" {
                h2 { "Usage" }
                div class="charts" data-usage=(format!("/ui/w/{id}/usage")) {
                    figure {
                        figcaption { "CPU " span data-now="cpu" { "…" } }
                        svg data-chart="cpu" viewBox="0 0 120 40" preserveAspectRatio="none" {}
                    }
                    figure {
                        figcaption { "Memory " span data-now="memory" {
                            (w.usage.as_ref().map(|u| vws_model::ByteSize(u.memory_bytes).human()).unwrap_or_else(|| "…".into()))
                        } }
                        svg data-chart="memory" viewBox="0 0 120 40" preserveAspectRatio="none" {}
                    }
                }
            }
            h2 { "Console" }
            pre data-console=(format!("/ui/w/{id}/console")) { (console) }
            h2 { "Jobs" }
            @if jobs.is_empty() { p { "None." } } @else {
                div class="scroll" { table {
                    thead { tr { th { "job" } th { "state" } th { "exit" } th { "command" } } }
                    tbody { @for j in &jobs { tr {
                        td { a href=(format!("/ui/jobs/{}", j.id)) { (j.id) } }
                        td { (j.state.as_str()) }
                        td { (j.exit_code.map_or("-".into(), |c| c.to_string())) }
                        td { code { (j.argv.join(" ")) } }
                    } } }
                } }
            }
            h2 { "History" }
            div class="scroll" { table {
                thead { tr { th { "#" } th { "when" } th { "action" } th { "state" } th { "by" } } }
                tbody { @for t in &history { tr {
                    td { (t.seq) }
                    td { (t.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()) }
                    td { (t.action.to_string()) }
                    td { (t.to_state.clone().unwrap_or_default()) }
                    td { (t.actor) }
                } } }
            } }
            h2 { "Description" }
            pre { (toml) }
        }
    };
    shown(&session, &r.id, body)
}

/// `/ui/w/{id}/usage`: what the workspace uses now, as its node last
/// reported (the page's script draws it).
pub async fn usage(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    match run(&s, &session, Command::ShowWorkspace { id }).await {
        Ok(Reply::Workspace(w)) => {
            axum::Json(serde_json::json!({ "usage": w.usage })).into_response()
        }
        Ok(_) => unreachable!("show answers a workspace"),
        Err(e) => failed(&e),
    }
}

/// `/ui/w/{id}/console`: the console's last lines, as text (followed by
/// the page's script).
pub async fn console(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    console_text(&s, &session, &id).await.into_response()
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
    verb: String,
    #[serde(default)]
    lifetime: Option<u64>,
    #[serde(default, rename = "as")]
    as_: Option<String>,
}

/// An action on a workspace. From the page's script (`x-vws-live`) the
/// answer is a line of text and the state follows from the events;
/// without it, back to the workspace's page.
pub async fn action(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(id): Path<String>,
    headers: HeaderMap,
    axum::Form(f): axum::Form<ActionForm>,
) -> Response {
    if f.csrf != session.0.csrf {
        return forbidden_form();
    }
    let live = headers.contains_key("x-vws-live");
    let c = match f.verb.as_str() {
        "deploy" => Command::Deploy {
            id: id.clone(),
            host: None,
        },
        "destroy" => Command::Destroy { id: id.clone() },
        "renew" => Command::Renew {
            id: id.clone(),
            lifetime: f.lifetime.unwrap_or(3600),
        },
        "snapshot" => {
            let wanted = f.as_.unwrap_or_default();
            let Some((name, tag)) = wanted.split_once(':') else {
                return (StatusCode::BAD_REQUEST, "name the snapshot as name:tag").into_response();
            };
            Command::Snapshot {
                id: id.clone(),
                name: name.into(),
                tag: tag.into(),
            }
        }
        other => match Verb::ALL.into_iter().find(|v| v.as_str() == other) {
            Some(verb) => Command::Transition {
                id: id.clone(),
                verb,
            },
            None => return (StatusCode::BAD_REQUEST, "no such action").into_response(),
        },
    };
    let destroying = matches!(c, Command::Destroy { .. });
    match run(&s, &session, c).await {
        Ok(_) if live => format!("{} done", f.verb).into_response(),
        Ok(_) if destroying => Redirect::to("/ui").into_response(),
        Ok(_) => Redirect::to(&format!("/ui/w/{id}")).into_response(),
        Err(e) if live => {
            let (status, code) = e.status_and_code();
            (status, format!("{e} [{code}]")).into_response()
        }
        Err(e) => failed(&e),
    }
}

/// `/ui/jobs/{job}`: a job's record and output.
pub async fn job(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(job): Path<String>,
) -> Response {
    let j = match run(&s, &session, Command::Job { job: job.clone() }).await {
        Ok(Reply::Job(j)) => j,
        Ok(_) => unreachable!("a job answers a job"),
        Err(e) => return failed(&e),
    };
    let c = Command::JobOutput {
        job: job.clone(),
        follow: false,
    };
    let mut output = String::new();
    if let Ok(Reply::Stream { body, .. }) = run(&s, &session, c).await {
        use base64::Engine;
        for line in body.text().await.unwrap_or_default().lines() {
            let ev: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            if let Some(data) = ev["data"].as_str() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .unwrap_or_default();
                output.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
    }
    let body = html! {
        h1 { (j.id) " " (state_cell(j.state.as_str())) }
        dl {
            dt { "workspace" } dd { a href=(format!("/ui/w/{}", j.workspace_id)) { (j.workspace_id) } }
            dt { "command" } dd { code { (j.argv.join(" ")) } }
            dt { "exit code" } dd { (j.exit_code.map_or("-".into(), |c| c.to_string())) }
            @if let Some(m) = &j.message { dt { "message" } dd { (m) } }
        }
        h2 { "Output" }
        pre { (output) }
    };
    shown(&session, &j.id, body)
}

/// `/ui/images`: the pool, with what each image holds.
pub async fn images(State(s): State<Arc<Service>>, session: Session) -> Response {
    let images = match run(&s, &session, Command::Images).await {
        Ok(Reply::Images(i)) => i,
        Ok(_) => unreachable!("images answer images"),
        Err(e) => return failed(&e),
    };
    let body = html! {
        h1 { "Images" }
        div class="scroll" { table {
            thead { tr { th { "tags" } th { "id" } th { "kind" } th { "size" } th { "owner" } th { "visibility" } th { "holds" } } }
            tbody { @for i in &images { tr {
                td { (i.tags.join(", ")) }
                td { code { (i.id.chars().take(19).collect::<String>()) } }
                td { (i.kind.as_str()) }
                td { (vws_model::ByteSize(i.virtual_size).human()) }
                td { (i.owner) }
                td { (i.visibility.as_str()) }
                td { (i.manifest.pretty_name.clone().unwrap_or_default()) " "
                    @if !i.manifest.packages.is_empty() { (i.manifest.packages.len()) " packages" } }
            } } }
        } }
    };
    shown(&session, "Images", body)
}

/// `/ui/nodes`: capacity, cached images and health (administrators).
pub async fn nodes(State(s): State<Arc<Service>>, session: Session) -> Response {
    let nodes = match run(&s, &session, Command::Nodes).await {
        Ok(Reply::Nodes(n)) => n,
        Ok(_) => unreachable!("nodes answer nodes"),
        Err(e) => return failed(&e),
    };
    let body = html! {
        h1 { "Nodes" }
        div class="scroll" { table {
            thead { tr { th { "name" } th { "status" } th { "cores" } th { "free RAM" } th { "free disk" } th { "accel" } th { "images" } th { "workspaces" } } }
            tbody { @for n in &nodes { tr {
                td { (n.record.name) }
                td { (state_cell(&n.status)) }
                td { (n.record.report.cores) }
                td { (vws_model::ByteSize(n.record.report.ram_free).human()) }
                td { (vws_model::ByteSize(n.record.report.disk_free).human()) }
                td { (n.record.report.accel) }
                td { (n.record.report.images.len()) }
                td { (n.record.report.workspaces.len()) }
            } } }
        } }
    };
    shown(&session, "Nodes", body)
}

/// `/ui/networks`: the networks and their pools' use.
pub async fn networks(State(s): State<Arc<Service>>, session: Session) -> Response {
    let nets = match run(&s, &session, Command::Networks).await {
        Ok(Reply::Document(serde_json::Value::Array(n))) => n,
        Ok(_) => Vec::new(),
        Err(e) => return failed(&e),
    };
    let body = html! {
        h1 { "Networks" }
        div class="scroll" { table {
            thead { tr { th { "name" } th { "cidr" } th { "gateway" } th { "used" } th { "free" } } }
            tbody { @for n in &nets { tr {
                td { a href=(format!("/ui/networks/{}", n["network"]["name"].as_str().unwrap_or(""))) { (n["network"]["name"].as_str().unwrap_or("")) } }
                td { (n["network"]["cidr"].as_str().unwrap_or("")) }
                td { (n["network"]["gateway"].as_str().unwrap_or("-")) }
                td { (n["used"]) }
                td { (n["free"]) }
            } } }
        } }
        @if nets.is_empty() { p { "No networks are configured." } }
    };
    shown(&session, "Networks", body)
}

/// `/ui/networks/{name}`: a network, and (for administrators) which
/// workspace holds which of its addresses.
pub async fn network(
    State(s): State<Arc<Service>>,
    session: Session,
    Path(name): Path<String>,
) -> Response {
    let n = match run(&s, &session, Command::Network { name: name.clone() }).await {
        Ok(Reply::Document(n)) => n,
        Ok(_) => unreachable!("a network answers a document"),
        Err(e) => return failed(&e),
    };
    let empty = Vec::new();
    let addresses = n["addresses"].as_array().unwrap_or(&empty);
    let body = html! {
        h1 { (name) }
        dl {
            dt { "cidr" } dd { (n["network"]["cidr"].as_str().unwrap_or("")) }
            dt { "gateway" } dd { (n["network"]["gateway"].as_str().unwrap_or("-")) }
            dt { "addresses" } dd { (n["used"]) " used of " (n["size"]) }
        }
        @if n.get("addresses").is_some() {
            h2 { "Leases" }
            div class="scroll" { table {
                thead { tr { th { "address" } th { "workspace" } th { "interface" } th { "mac" } } }
                tbody { @for a in addresses { tr {
                    td { (a["address"].as_str().unwrap_or("")) }
                    td { a href=(format!("/ui/w/{}", a["workspace_id"].as_str().unwrap_or(""))) { (a["workspace_id"].as_str().unwrap_or("")) } }
                    td { (a["nic"].as_str().unwrap_or("")) }
                    td { code { (a["mac"].as_str().unwrap_or("")) } }
                } } }
            } }
        }
    };
    shown(&session, &name, body)
}
