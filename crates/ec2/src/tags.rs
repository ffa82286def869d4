//! Tags: CreateTags, DeleteTags, DescribeTags, and the TagSpecification
//! of RunInstances. Tags go on the caller's own instances and images.

use crate::error::Ec2Error;
use crate::ids;
use crate::params::Params;
use crate::xml::{set, text, Node};
use crate::Ctx;

/// The kind of a resource id, checked to be the caller's.
async fn owned(ctx: &Ctx, resource: &str) -> Result<&'static str, Ec2Error> {
    if resource.starts_with("i-") {
        let ws = ids::workspace_of(resource)?;
        let mine = ctx.instances().await?;
        if mine
            .iter()
            .any(|i| i.facts.workspace == ws && i.workspace.is_some())
        {
            return Ok("instance");
        }
        return Err(Ec2Error::client(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{resource}' does not exist"),
        ));
    }
    if resource.starts_with("ami-") {
        let image = crate::lookup::resolve(ctx, resource).await?;
        if image.owner == ctx.who.dn || ctx.who.is_admin() {
            return Ok("image");
        }
        return Err(Ec2Error::new(
            axum::http::StatusCode::FORBIDDEN,
            "UnauthorizedOperation",
            format!("You are not authorized to tag {resource}: it belongs to another owner"),
        ));
    }
    if resource.starts_with("key-") {
        let keys = ctx.service.store().key_pairs(&ctx.who.dn).await?;
        if keys.iter().any(|k| k.id == resource) {
            return Ok("key-pair");
        }
        return Err(Ec2Error::client(
            "InvalidKeyPair.NotFound",
            format!("The key pair ID '{resource}' does not exist"),
        ));
    }
    Err(Ec2Error::client(
        "InvalidID",
        format!("The ID '{resource}' is not valid here: tags go on instances (i-), images (ami-) and key pairs (key-)"),
    ))
}

fn resources(p: &Params) -> Result<Vec<String>, Ec2Error> {
    let r = p.list("ResourceId");
    if r.is_empty() {
        return Err(Ec2Error::missing("ResourceId.1"));
    }
    Ok(r)
}

/// `CreateTags`.
pub(crate) async fn create(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let resources = resources(p)?;
    let tags = p.tags("Tag")?;
    if tags.is_empty() {
        return Err(Ec2Error::missing("Tag.1.Key"));
    }
    for r in &resources {
        owned(ctx, r).await?;
    }
    let all: Vec<vws_store::Tag> = resources
        .iter()
        .flat_map(|r| {
            tags.iter().map(move |(k, v)| vws_store::Tag {
                resource: r.clone(),
                key: k.clone(),
                value: v.clone().unwrap_or_default(),
            })
        })
        .collect();
    ctx.service.store().put_tags(&ctx.who.dn, &all).await?;
    Ok(vec![text("return", "true")])
}

/// `DeleteTags`: a tag given with a value goes only if it has that value.
pub(crate) async fn delete(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let resources = resources(p)?;
    let tags = p.tags("Tag")?;
    let store = ctx.service.store();
    for r in &resources {
        owned(ctx, r).await?;
        let keys: Vec<(String, Option<String>)> = if tags.is_empty() {
            store
                .tags(Some(&ctx.who.dn))
                .await?
                .into_iter()
                .filter(|t| &t.resource == r)
                .map(|t| (t.key, None))
                .collect()
        } else {
            tags.clone()
        };
        for (k, v) in keys {
            store.delete_tags(&ctx.who.dn, r, &k, v.as_deref()).await?;
        }
    }
    Ok(vec![text("return", "true")])
}

fn kind_of(resource: &str) -> &'static str {
    if resource.starts_with("i-") {
        "instance"
    } else if resource.starts_with("ami-") {
        "image"
    } else {
        "key-pair"
    }
}

/// `DescribeTags`.
pub(crate) async fn describe(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let filters = p.filters()?;
    let mut items = Vec::new();
    for t in ctx.service.store().tags(ctx.owner_filter()).await? {
        let mut ok = true;
        for f in &filters {
            ok &= match f.name.as_str() {
                "resource-id" => f.matches(Some(&t.resource)),
                "resource-type" => f.matches(Some(kind_of(&t.resource))),
                "key" => f.matches(Some(&t.key)),
                "value" => f.matches(Some(&t.value)),
                other => {
                    return Err(Ec2Error::invalid(format!(
                        "The filter '{other}' is invalid"
                    )))
                }
            };
        }
        if ok {
            items.push(vec![
                text("resourceId", &t.resource),
                text("resourceType", kind_of(&t.resource)),
                text("key", &t.key),
                text("value", &t.value),
            ]);
        }
    }
    Ok(vec![set("tagSet", items)])
}
