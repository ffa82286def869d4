//! What the actions share: the caller's instances (their launch facts,
//! workspaces and EC2 states), the images they may use, their key pairs
//! and tags. The action modules build on this one and not on each other.

use std::collections::HashMap;

use vws_model::records::{ImageRecord, WorkspaceRecord};
use vws_model::State;
use vws_service::command::{Command, Reply};
use vws_store::{Ec2Instance, KeyPair, Tag};

use crate::error::Ec2Error;
use crate::ids;
use crate::params::Params;
use crate::xml::{el, set, text, Node};
use crate::Ctx;

/// How long a terminated instance stays listed.
pub const TERMINATED_LISTED_FOR: time::Duration = time::Duration::hours(1);

/// EC2's instance states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ec2State {
    /// Launching: created, not yet started.
    Pending,
    /// Running.
    Running,
    /// Being terminated.
    ShuttingDown,
    /// Gone (its workspace is destroyed).
    Terminated,
    /// Being stopped.
    Stopping,
    /// Stopped: shut down, or paused with its memory kept.
    Stopped,
}

impl Ec2State {
    /// EC2's code.
    pub fn code(self) -> u32 {
        match self {
            Ec2State::Pending => 0,
            Ec2State::Running => 16,
            Ec2State::ShuttingDown => 32,
            Ec2State::Terminated => 48,
            Ec2State::Stopping => 64,
            Ec2State::Stopped => 80,
        }
    }

    /// EC2's name.
    pub fn name(self) -> &'static str {
        match self {
            Ec2State::Pending => "pending",
            Ec2State::Running => "running",
            Ec2State::ShuttingDown => "shutting-down",
            Ec2State::Terminated => "terminated",
            Ec2State::Stopping => "stopping",
            Ec2State::Stopped => "stopped",
        }
    }

    pub(crate) fn node(self, name: &str) -> Node {
        el(
            name,
            vec![text("code", self.code()), text("name", self.name())],
        )
    }
}

/// An instance as the front-end sees it: its launch facts and, unless it
/// is terminated, its workspace.
pub(crate) struct Instance {
    pub facts: Ec2Instance,
    pub workspace: Option<vws_model::records::Workspace>,
}

impl Instance {
    pub fn id(&self) -> String {
        ids::instance_id(&self.facts.workspace)
    }

    /// Its EC2 state, and why, when EC2 would say.
    pub fn state(&self) -> (Ec2State, Option<(&'static str, String)>) {
        let Some(ws) = &self.workspace else {
            return (
                Ec2State::Terminated,
                Some((
                    "Client.UserInitiatedShutdown",
                    "Client.UserInitiatedShutdown: User initiated shutdown".into(),
                )),
            );
        };
        if self.facts.ready_at.is_none() {
            return (Ec2State::Pending, None);
        }
        state_of(&ws.record)
    }
}

/// The EC2 state of a workspace that exists.
fn state_of(r: &WorkspaceRecord) -> (Ec2State, Option<(&'static str, String)>) {
    match r.state {
        State::Running => (Ec2State::Running, None),
        State::Paused => (
            Ec2State::Stopped,
            Some((
                "Client.UserInitiatedHibernate",
                "Client.UserInitiatedHibernate: paused with its memory kept".into(),
            )),
        ),
        State::Shutdown => (
            Ec2State::Stopped,
            Some((
                "Client.UserInitiatedShutdown",
                "Client.UserInitiatedShutdown: User initiated shutdown".into(),
            )),
        ),
        State::Corrupted => (
            Ec2State::Stopped,
            Some((
                "Server.InternalError",
                format!(
                    "Server.InternalError: {}",
                    r.reason.as_deref().unwrap_or("the workspace is corrupted")
                ),
            )),
        ),
    }
}

/// The tags of each resource, from one read.
pub(crate) async fn tags_by_resource(ctx: &Ctx) -> Result<HashMap<String, Vec<Tag>>, Ec2Error> {
    let mut by: HashMap<String, Vec<Tag>> = HashMap::new();
    for t in ctx.service.store().tags(ctx.owner_filter()).await? {
        by.entry(t.resource.clone()).or_default().push(t);
    }
    Ok(by)
}

/// A filter on tags (`tag:KEY`, `tag-key`), else the refusal of a filter
/// name the action does not know.
pub(crate) fn tag_filter(
    f: &crate::params::Filter,
    tags: Option<&Vec<Tag>>,
) -> Result<bool, Ec2Error> {
    match f.name.as_str() {
        "tag-key" => Ok(tags.is_some_and(|t| t.iter().any(|t| f.matches(Some(&t.key))))),
        name if name.starts_with("tag:") => Ok(f.matches(
            tags.and_then(|t| t.iter().find(|t| t.key == name[4..]))
                .map(|t| t.value.as_str()),
        )),
        other => Err(Ec2Error::client(
            "InvalidParameterValue",
            format!("The filter '{other}' is invalid"),
        )),
    }
}

/// `tagSet`, or nothing when there are no tags.
pub(crate) fn tag_set(tags: Option<&Vec<Tag>>) -> Vec<Node> {
    match tags {
        Some(t) if !t.is_empty() => vec![set(
            "tagSet",
            t.iter()
                .map(|t| vec![text("key", &t.key), text("value", &t.value)]),
        )],
        _ => vec![],
    }
}

impl Ctx {
    /// The workspace of an instance, if it still exists (and the caller
    /// may see it).
    async fn workspace(&self, id: &str) -> Result<Option<vws_model::records::Workspace>, Ec2Error> {
        match self.run(Command::ShowWorkspace { id: id.into() }).await {
            Ok(Reply::Workspace(ws)) => Ok(Some(*ws)),
            Ok(_) => Err(Ec2Error::internal("the core did not answer a workspace")),
            Err(vws_service::ServiceError::NotFound(_)) => Ok(None),
            Err(e) => Err(Ec2Error::from_service(e, "InvalidInstanceID.NotFound")),
        }
    }

    /// The caller's instances (everyone's for an administrator), with
    /// those terminated more than an hour ago forgotten. An instance whose
    /// workspace went some other way (`vws destroy`, its lifetime) is
    /// terminated from now.
    pub(crate) async fn instances(&self) -> Result<Vec<Instance>, Ec2Error> {
        let now = self.service.clock().now();
        let store = self.service.store();
        store
            .prune_ec2_instances(now - TERMINATED_LISTED_FOR)
            .await?;
        let mut out = Vec::new();
        for mut facts in store.ec2_instances(self.owner_filter()).await? {
            let workspace = if facts.terminated_at.is_some() {
                None
            } else {
                let ws = self.workspace(&facts.workspace).await?;
                if ws.is_none() {
                    store.terminate_ec2_instance(&facts.workspace, now).await?;
                    facts.terminated_at = Some(now);
                }
                ws
            };
            out.push(Instance { facts, workspace });
        }
        Ok(out)
    }

    /// The named instances, each of which must exist.
    pub(crate) async fn named(&self, ids: &[String]) -> Result<Vec<Instance>, Ec2Error> {
        let mut wanted = Vec::new();
        for id in ids {
            wanted.push(ids::workspace_of(id)?);
        }
        let all = self.instances().await?;
        let missing: Vec<&String> = ids
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| !all.iter().any(|i| &i.facts.workspace == *w))
            .map(|(id, _)| id)
            .collect();
        if !missing.is_empty() {
            let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(Ec2Error::client(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{}' does not exist", list.join("', '")),
            ));
        }
        Ok(all
            .into_iter()
            .filter(|i| wanted.contains(&i.facts.workspace))
            .collect())
    }
}

/// The images the caller may use.
pub(crate) async fn usable(ctx: &Ctx) -> Result<Vec<ImageRecord>, Ec2Error> {
    match ctx.run(Command::Images).await {
        Ok(Reply::Images(i)) => Ok(i),
        Ok(_) => Err(Ec2Error::internal("the core did not answer images")),
        Err(e) => Err(Ec2Error::from_service(e, "InvalidAMIID.NotFound")),
    }
}

pub(crate) fn image_not_found(id: &str) -> Ec2Error {
    Ec2Error::client(
        "InvalidAMIID.NotFound",
        format!("The image id '[{id}]' does not exist"),
    )
}

/// The pool image an image id names, if the caller may use it.
pub(crate) async fn resolve(ctx: &Ctx, id: &str) -> Result<ImageRecord, Ec2Error> {
    ids::check_image_id(id)?;
    usable(ctx)
        .await?
        .into_iter()
        .find(|i| ids::image_id(&i.id) == id)
        .ok_or_else(|| image_not_found(id))
}

pub(crate) fn key_not_found(name: &str) -> Ec2Error {
    Ec2Error::client(
        "InvalidKeyPair.NotFound",
        format!("The key pair '{name}' does not exist"),
    )
}

/// One of the caller's key pairs, by name.
pub(crate) async fn find(ctx: &Ctx, name: &str) -> Result<KeyPair, Ec2Error> {
    ctx.service
        .store()
        .key_pairs(&ctx.who.dn)
        .await?
        .into_iter()
        .find(|k| k.name == name)
        .ok_or_else(|| key_not_found(name))
}

/// The tags a `TagSpecification.N` gives resources of `resource_type`.
pub(crate) fn specified(
    p: &Params,
    resource_type: &str,
) -> Result<Vec<(String, String)>, Ec2Error> {
    let mut out = Vec::new();
    for spec in p.members("TagSpecification") {
        let kind = spec
            .get("ResourceType")
            .ok_or_else(|| Ec2Error::missing("TagSpecification.N.ResourceType"))?;
        if kind != resource_type {
            continue;
        }
        for (k, v) in spec.tags("Tag")? {
            out.push((k, v.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// Runs a lifecycle verb on an instance's workspace through the core.
pub(crate) async fn verb(ctx: &Ctx, id: &str, verb: vws_model::Verb) -> Result<(), Ec2Error> {
    ctx.run(Command::Transition {
        id: id.into(),
        verb,
    })
    .await
    .map(drop)
    .map_err(|e| Ec2Error::from_service(e, "InvalidInstanceID.NotFound"))
}
