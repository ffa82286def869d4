//! Images: DescribeImages, CreateImage, DeregisterImage. An image id
//! (`ami-` and 17 hex digits) is the start of a pool image's content
//! digest; its name is the image's first `name:tag`, and its description
//! the catalogue's OS. CreateImage of a running or paused instance is a
//! hot image (memory kept: instances launched from it are restored, not
//! booted); of a stopped one, a disk image (its disk flattened).

use std::collections::HashMap;

use vws_model::records::{ImageKind, ImageRecord, Visibility};
use vws_model::{State, Verb};
use vws_service::command::{Command, Reply};
use vws_store::Tag;

use crate::error::Ec2Error;
use crate::ids;
use crate::lookup::{image_not_found, resolve, tag_set, tags_by_resource, usable};
use crate::params::{Filter, Params};
use crate::xml::{set, text, Node};
use crate::Ctx;

/// The tag CreateImage gives a name without one (`NAME:latest`).
pub const DEFAULT_TAG: &str = "latest";

fn description(i: &ImageRecord) -> String {
    let m = &i.manifest;
    let os = m.pretty_name.clone().or_else(|| {
        m.distribution.as_ref().map(|d| {
            format!("{d} {}", m.release.as_deref().unwrap_or(""))
                .trim()
                .to_string()
        })
    });
    let kind = match i.kind {
        ImageKind::Disk => "disk image",
        ImageKind::Kernel => "kernel and initrd",
        ImageKind::Hot => "hot image (memory kept)",
    };
    match os {
        Some(os) => format!("{os}; {kind}"),
        None => kind.to_string(),
    }
}

fn image_node(i: &ImageRecord, tags: Option<&Vec<Tag>>) -> Vec<Node> {
    let name = i.tags.first().cloned().unwrap_or_else(|| i.id.clone());
    let mut n = vec![
        text("imageId", ids::image_id(&i.id)),
        text("imageLocation", &name),
        text("imageState", "available"),
        text("imageOwnerId", ids::owner_id(&i.owner)),
        text(
            "creationDate",
            i.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ),
        text("isPublic", i.visibility == Visibility::Public),
        text(
            "architecture",
            match i.manifest.arch.as_deref() {
                Some("amd64") | None => "x86_64",
                Some("arm64") => "arm64",
                Some(other) => other,
            },
        ),
        text("imageType", "machine"),
        text("platformDetails", "Linux/UNIX"),
        text("usageOperation", "RunInstances"),
        text("name", &name),
        text("description", description(i)),
        text("rootDeviceType", "instance-store"),
        text("rootDeviceName", "/dev/vda"),
        set("blockDeviceMapping", Vec::<Vec<Node>>::new()),
        text("virtualizationType", "hvm"),
    ];
    n.extend(tag_set(tags));
    n.push(text("hypervisor", "xen"));
    n
}

fn passes(i: &ImageRecord, f: &Filter, tags: Option<&Vec<Tag>>) -> Result<bool, Ec2Error> {
    let name = i.tags.first().cloned().unwrap_or_else(|| i.id.clone());
    Ok(match f.name.as_str() {
        "image-id" => f.matches(Some(&ids::image_id(&i.id))),
        "name" => i.tags.iter().any(|t| f.matches(Some(t))) || f.matches(Some(&name)),
        "state" => f.matches(Some("available")),
        "owner-id" => f.matches(Some(&ids::owner_id(&i.owner))),
        "is-public" => f.matches(Some(if i.visibility == Visibility::Public {
            "true"
        } else {
            "false"
        })),
        "architecture" => f.matches(Some("x86_64")),
        "image-type" => f.matches(Some("machine")),
        "description" => f.matches(Some(&description(i))),
        _ => return crate::lookup::tag_filter(f, tags),
    })
}

/// `DescribeImages`.
pub(crate) async fn describe(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let wanted = p.list("ImageId");
    for w in &wanted {
        ids::check_image_id(w)?;
    }
    let owners = p.list("Owner");
    let filters = p.filters()?;
    let images = usable(ctx).await?;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !images.iter().any(|i| &ids::image_id(&i.id) == *w))
        .collect();
    if !missing.is_empty() {
        let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Err(image_not_found(&list.join(", ")));
    }
    let tags: HashMap<String, Vec<Tag>> = tags_by_resource(ctx).await?;
    let mut items = Vec::new();
    for i in &images {
        let id = ids::image_id(&i.id);
        if !wanted.is_empty() && !wanted.contains(&id) {
            continue;
        }
        let owner = ids::owner_id(&i.owner);
        if !owners.is_empty()
            && !owners
                .iter()
                .any(|o| (o == "self" && i.owner == ctx.who.dn) || *o == owner)
        {
            continue;
        }
        let mut ok = true;
        for f in &filters {
            ok &= passes(i, f, tags.get(&id))?;
        }
        if ok {
            items.push(image_node(i, tags.get(&id)));
        }
    }
    Ok(vec![set("imagesSet", items)])
}

/// `CreateImage`: a hot image of a running (paused for the moment of the
/// save, then running again) or paused instance; a disk image of a stopped
/// one.
pub(crate) async fn create(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let instance = p.require("InstanceId")?;
    let name = p.require("Name")?;
    let (name, tag) = name.split_once(':').unwrap_or((name, DEFAULT_TAG));
    let reference = vws_model::ImageRef::tagged(name, tag).map_err(|e| {
        Ec2Error::client(
            "InvalidAMIName.Malformed",
            format!("AMI name {name:?}: {e} (names here are pool names: lower-case letters, digits, '.', '_', '-')"),
        )
    })?;
    let workspace = ids::workspace_of(instance)?;
    let ws = match ctx
        .run(Command::ShowWorkspace {
            id: workspace.clone(),
        })
        .await
    {
        Ok(Reply::Workspace(ws)) => ws,
        Ok(_) => return Err(Ec2Error::internal("the core did not answer a workspace")),
        Err(e) => return Err(Ec2Error::from_service(e, "InvalidInstanceID.NotFound")),
    };
    let images = usable(ctx).await?;
    if images
        .iter()
        .any(|i| i.tags.contains(&reference.to_string()))
    {
        return Err(Ec2Error::client(
            "InvalidAMIName.Duplicate",
            format!("AMI name {reference} is already in use by an image"),
        ));
    }
    let image = match ws.record.state {
        State::Paused => snapshot(ctx, &workspace, name, tag).await?,
        State::Running => {
            crate::lookup::verb(ctx, &workspace, Verb::Pause).await?;
            let saved = snapshot(ctx, &workspace, name, tag).await;
            crate::lookup::verb(ctx, &workspace, Verb::Unpause).await?;
            saved?
        }
        State::Shutdown => {
            // A disk image: the disk goes back to the repository first (the
            // instance stays stopped; StartInstances deploys it again).
            if ws.record.placement == vws_model::Placement::Host {
                crate::lookup::verb(ctx, &workspace, Verb::Undeploy).await?;
            }
            snapshot(ctx, &workspace, name, tag).await?
        }
        State::Corrupted => {
            return Err(Ec2Error::client(
                "IncorrectInstanceState",
                format!("The instance '{instance}' is corrupted: there is nothing sound to save"),
            ))
        }
    };
    Ok(vec![text("imageId", ids::image_id(&image.id))])
}

async fn snapshot(ctx: &Ctx, id: &str, name: &str, tag: &str) -> Result<ImageRecord, Ec2Error> {
    let command = Command::Snapshot {
        id: id.into(),
        name: name.into(),
        tag: tag.into(),
    };
    match ctx.run(command).await {
        Ok(Reply::Image(i)) => Ok(*i),
        Ok(_) => Err(Ec2Error::internal("the core did not answer an image")),
        Err(e) => Err(Ec2Error::from_service(e, "InvalidInstanceID.NotFound")),
    }
}

/// `DeregisterImage`: the image leaves the pool (its blobs go once nothing
/// uses them); only its owner or an administrator may.
pub(crate) async fn deregister(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let id = p.require("ImageId")?;
    let image = resolve(ctx, id).await?;
    if image.owner != ctx.who.dn && !ctx.who.is_admin() {
        return Err(Ec2Error::new(
            axum::http::StatusCode::FORBIDDEN,
            "UnauthorizedOperation",
            format!("You are not authorized to deregister {id}: it belongs to another owner"),
        ));
    }
    ctx.run(Command::RemoveImage {
        reference: image.id.clone(),
    })
    .await
    .map_err(|e| Ec2Error::from_service(e, "InvalidAMIID.NotFound"))?;
    for t in ctx.service.store().tags(Some(&ctx.who.dn)).await? {
        if t.resource == id {
            ctx.service
                .store()
                .delete_tags(&ctx.who.dn, id, &t.key, None)
                .await?;
        }
    }
    Ok(vec![text("return", "true")])
}
