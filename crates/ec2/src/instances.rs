//! Instances: RunInstances, DescribeInstances, Start/Stop/Reboot/
//! TerminateInstances. An instance is a `vm` workspace the front-end
//! launched: RunInstances runs the core's create, deploy and start (and
//! destroys what it made if any of them fails); its launch facts (type,
//! key pair, user data, token) are kept beside the workspace. States are
//! the paper's mapped to EC2's; a terminated instance stays listed for an
//! hour.

use std::collections::HashMap;

use base64::Engine;
use time::OffsetDateTime;
use vws_model::{Form, State, Verb};
use vws_service::command::{Command, Reply};
use vws_store::{Ec2Instance, Tag};

use crate::error::Ec2Error;
use crate::ids;
use crate::lookup::{tag_set, tags_by_resource, verb, Ec2State, Instance};
use crate::params::Params;
use crate::xml::{el, opt, set, text, Node};
use crate::Ctx;

/// Most instances one RunInstances launches.
pub const MAX_PER_LAUNCH: i64 = 20;

/// Largest user data, decoded (EC2's limit).
pub const MAX_USER_DATA: usize = 16 * 1024;

fn time_of(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn instance_node(ctx: &Ctx, i: &Instance, tags: Option<&Vec<Tag>>) -> Vec<Node> {
    let (state, reason) = i.state();
    let address = i.workspace.as_ref().and_then(|w| {
        w.addresses.first().map(|a| a.address.clone()).or_else(|| {
            // A user NIC: QEMU's fixed guest address.
            (!w.record.description.network.nics.is_empty()).then(|| "10.0.2.15".to_string())
        })
    });
    let dns = if state == Ec2State::Terminated {
        String::new()
    } else {
        i.facts.workspace.clone()
    };
    let mut n = vec![
        text("instanceId", i.id()),
        text("imageId", &i.facts.image_id),
        state.node("instanceState"),
        text("privateDnsName", &dns),
        text("dnsName", ""),
        text(
            "reason",
            reason.as_ref().map(|(_, m)| m.as_str()).unwrap_or(""),
        ),
    ];
    n.extend(opt("keyName", i.facts.key_name.as_deref()));
    n.extend([
        text("amiLaunchIndex", i.facts.launch_index),
        set("productCodes", Vec::<Vec<Node>>::new()),
        text("instanceType", &i.facts.instance_type),
        text("launchTime", time_of(i.facts.launched_at)),
        el(
            "placement",
            vec![
                text("availabilityZone", &ctx.config.zone),
                text("groupName", ""),
                text("tenancy", "default"),
            ],
        ),
        el("monitoring", vec![text("state", "disabled")]),
    ]);
    if state != Ec2State::Terminated {
        n.extend(opt("privateIpAddress", address));
    }
    n.push(set("groupSet", Vec::<Vec<Node>>::new()));
    if let Some(ws) = &i.workspace {
        n.push(set("networkInterfaceSet", interfaces(i, ws)));
    }
    if let Some((code, message)) = &reason {
        n.push(el(
            "stateReason",
            vec![text("code", code), text("message", message)],
        ));
    }
    n.extend([
        text("architecture", "x86_64"),
        text("rootDeviceType", "instance-store"),
        text("rootDeviceName", "/dev/vda"),
        set("blockDeviceMapping", Vec::<Vec<Node>>::new()),
        text("virtualizationType", "hvm"),
        text("clientToken", i.facts.client_token.as_deref().unwrap_or("")),
    ]);
    n.extend(tag_set(tags));
    n.extend([
        text("hypervisor", "xen"),
        text("ebsOptimized", "false"),
        text("sourceDestCheck", "true"),
    ]);
    n
}

/// The instance's NICs as network interfaces: each with its MAC and
/// address (a pool's, or QEMU's fixed one for a user NIC).
fn interfaces(i: &Instance, ws: &vws_model::records::Workspace) -> Vec<Vec<Node>> {
    let hex = ws.record.id.trim_start_matches("ws-");
    ws.record
        .description
        .network
        .nics
        .iter()
        .enumerate()
        .map(|(index, nic)| {
            let pool = ws.addresses.iter().find(|a| a.nic == nic.name);
            let (mac, address) = match (pool, nic.method) {
                (Some(a), _) => (a.mac.clone(), Some(a.address.clone())),
                (None, vws_model::NicMethod::User) => (
                    vws_model::node::mac_address(&ws.record.id, index),
                    Some("10.0.2.15".to_string()),
                ),
                (None, _) => (vws_model::node::mac_address(&ws.record.id, index), None),
            };
            let mut item = vec![
                text("networkInterfaceId", format!("eni-{hex}{index:05x}")),
                text(
                    "description",
                    format!("{} ({})", nic.name, nic.method.as_str()),
                ),
                text("ownerId", ids::owner_id(&i.facts.owner)),
                text("status", "in-use"),
                text("macAddress", mac),
            ];
            item.extend(opt("privateIpAddress", address.clone()));
            item.extend([
                text("sourceDestCheck", "true"),
                set("groupSet", Vec::<Vec<Node>>::new()),
                el(
                    "attachment",
                    vec![
                        text("attachmentId", format!("eni-attach-{hex}{index:05x}")),
                        text("deviceIndex", index),
                        text("status", "attached"),
                        text("attachTime", time_of(i.facts.launched_at)),
                        text("deleteOnTermination", "true"),
                    ],
                ),
            ]);
            item.push(set(
                "privateIpAddressesSet",
                address.map(|a| vec![text("privateIpAddress", a), text("primary", "true")]),
            ));
            item
        })
        .collect()
}

/// A reservation's document: `reservationId`, `ownerId`, `groupSet`,
/// `instancesSet`.
fn reservation_node(
    ctx: &Ctx,
    reservation: &str,
    instances: &[&Instance],
    tags: &HashMap<String, Vec<Tag>>,
) -> Vec<Node> {
    let owner = instances
        .first()
        .map(|i| i.facts.owner.as_str())
        .unwrap_or(&ctx.who.dn);
    vec![
        text("reservationId", reservation),
        text("ownerId", ids::owner_id(owner)),
        set("groupSet", Vec::<Vec<Node>>::new()),
        set(
            "instancesSet",
            instances
                .iter()
                .map(|i| instance_node(ctx, i, tags.get(&i.id()))),
        ),
    ]
}

/// The description RunInstances creates: a VM of the type's shape from the
/// image, with a user NIC (NAT to the outside, as a default VPC gives).
fn description_of(image: &str, t: &crate::config::InstanceType) -> String {
    format!(
        "category = \"vm\"\n[hardware]\ncpus = {}\nram = \"{}MiB\"\n[software]\nimage = \"{image}\"\n\
         [network]\nnics = [{{ name = \"eth0\", method = \"user\" }}]\n",
        t.vcpus, t.ram_mib
    )
}

/// `RunInstances`.
pub(crate) async fn run(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let image_id = p.require("ImageId")?;
    let image = crate::lookup::resolve(ctx, image_id).await?;
    let type_name = p.get("InstanceType").unwrap_or(&ctx.config.default_type);
    let itype = ctx.config.instance_type(type_name).ok_or_else(|| {
        Ec2Error::invalid(format!(
            "Invalid instance type '{type_name}': this region offers {}",
            ctx.config
                .instance_types
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let min = p
        .int("MinCount")?
        .ok_or_else(|| Ec2Error::missing("MinCount"))?;
    let max = p
        .int("MaxCount")?
        .ok_or_else(|| Ec2Error::missing("MaxCount"))?;
    if min < 1 || max < min {
        return Err(Ec2Error::invalid(format!(
            "MinCount {min} and MaxCount {max}: need 1 <= MinCount <= MaxCount"
        )));
    }
    if max > MAX_PER_LAUNCH {
        return Err(Ec2Error::client(
            "InstanceLimitExceeded",
            format!("MaxCount {max}: at most {MAX_PER_LAUNCH} instances per launch"),
        ));
    }
    let key_name = p.get("KeyName").map(str::to_string);
    if let Some(k) = &key_name {
        crate::lookup::find(ctx, k).await?;
    }
    let user_data = p.get("UserData").map(str::to_string);
    if let Some(u) = &user_data {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(u.trim())
            .map_err(|_| Ec2Error::invalid("UserData is not valid base64"))?;
        if decoded.len() > MAX_USER_DATA {
            return Err(Ec2Error::invalid(format!(
                "UserData is {} bytes decoded; at most {MAX_USER_DATA}",
                decoded.len()
            )));
        }
    }
    let tags = crate::lookup::specified(p, "instance")?;
    let token = p.get("ClientToken").map(str::to_string);
    let store = ctx.service.store();
    if let Some(t) = &token {
        if t.len() > 64 {
            return Err(Ec2Error::invalid(
                "ClientToken is longer than 64 characters",
            ));
        }
        let earlier = store.ec2_instances_by_token(&ctx.who.dn, t).await?;
        if let Some(first) = earlier.first() {
            // The same launch asked again: its reservation as it is now.
            let reservation = first.reservation.clone();
            let all = ctx.instances().await?;
            let mine: Vec<&Instance> = all
                .iter()
                .filter(|i| i.facts.reservation == reservation)
                .collect();
            let tags = tags_by_resource(ctx).await?;
            return Ok(reservation_node(ctx, &reservation, &mine, &tags));
        }
    }

    let description = description_of(&image.id, itype);
    let reservation = ids::fresh("r");
    let now = ctx.service.clock().now();
    let mut created: Vec<String> = Vec::new();
    let mut failure = None;
    for _ in 0..max {
        let parsed = vws_model::parse(&description, Form::Toml)
            .map_err(|e| Ec2Error::internal(format!("the launch description: {e}")))?;
        match ctx
            .run(Command::Create {
                description: parsed,
                form: Form::Toml,
                name: None,
            })
            .await
        {
            Ok(Reply::Workspace(ws)) => created.push(ws.record.id.clone()),
            Ok(_) => return Err(Ec2Error::internal("the core did not answer a workspace")),
            Err(e) => {
                failure = Some(Ec2Error::from_service(e, "InvalidAMIID.NotFound"));
                break;
            }
        }
    }
    if (created.len() as i64) < min {
        rollback(ctx, &created).await;
        return Err(failure.unwrap_or_else(|| Ec2Error::internal("nothing was launched")));
    }
    let facts: Vec<Ec2Instance> = created
        .iter()
        .enumerate()
        .map(|(n, ws)| Ec2Instance {
            workspace: ws.clone(),
            owner: ctx.who.dn.clone(),
            reservation: reservation.clone(),
            image_id: image_id.to_string(),
            instance_type: itype.name.clone(),
            key_name: key_name.clone(),
            user_data: user_data.clone(),
            client_token: token.clone(),
            launch_index: n as i64,
            launched_at: now,
            ready_at: None,
            terminated_at: None,
        })
        .collect();
    if let Err(e) = store.put_ec2_instances(&facts).await {
        rollback(ctx, &created).await;
        return Err(e.into());
    }
    let tagged: Vec<Tag> = created
        .iter()
        .flat_map(|ws| {
            tags.iter().map(move |(k, v)| Tag {
                resource: ids::instance_id(ws),
                key: k.clone(),
                value: v.clone(),
            })
        })
        .collect();
    store.put_tags(&ctx.who.dn, &tagged).await?;

    // Deploy and start each; any failure ends the whole launch.
    for ws in &created {
        let launched = async {
            ctx.run(Command::Deploy {
                id: ws.clone(),
                host: None,
            })
            .await?;
            ctx.run(Command::Transition {
                id: ws.clone(),
                verb: Verb::Start,
            })
            .await
        }
        .await;
        if let Err(e) = launched {
            tracing::warn!(workspace = %ws, error = %e, "RunInstances: a launch failed; destroying what it made");
            rollback(ctx, &created).await;
            for w in &created {
                store
                    .terminate_ec2_instance(w, ctx.service.clock().now())
                    .await?;
            }
            return Err(Ec2Error::from_service(e, "InvalidInstanceID.NotFound"));
        }
        store
            .ec2_instance_ready(ws, ctx.service.clock().now())
            .await?;
    }
    let all = ctx.instances().await?;
    let mine: Vec<&Instance> = all
        .iter()
        .filter(|i| i.facts.reservation == reservation)
        .collect();
    let tags = tags_by_resource(ctx).await?;
    Ok(reservation_node(ctx, &reservation, &mine, &tags))
}

/// Destroys what a failed launch made.
async fn rollback(ctx: &Ctx, created: &[String]) {
    for id in created {
        if let Err(e) = ctx.run(Command::Destroy { id: id.clone() }).await {
            tracing::error!(workspace = %id, error = %e, "RunInstances: rolling back a launch failed");
        }
    }
}

/// Whether an instance passes a DescribeInstances filter.
fn passes(
    i: &Instance,
    f: &crate::params::Filter,
    tags: Option<&Vec<Tag>>,
) -> Result<bool, Ec2Error> {
    Ok(match f.name.as_str() {
        "instance-id" => f.matches(Some(&i.id())),
        "instance-state-name" => f.matches(Some(i.state().0.name())),
        "instance-state-code" => f.matches(Some(&i.state().0.code().to_string())),
        "image-id" => f.matches(Some(&i.facts.image_id)),
        "instance-type" => f.matches(Some(&i.facts.instance_type)),
        "key-name" => f.matches(i.facts.key_name.as_deref()),
        "reservation-id" => f.matches(Some(&i.facts.reservation)),
        "client-token" => f.matches(i.facts.client_token.as_deref()),
        "availability-zone" => true,
        _ => return crate::lookup::tag_filter(f, tags),
    })
}

/// `DescribeInstances`.
pub(crate) async fn describe(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let ids = p.list("InstanceId");
    let filters = p.filters()?;
    let max = p.int("MaxResults")?;
    if !ids.is_empty() && max.is_some() {
        return Err(Ec2Error::invalid(
            "MaxResults cannot be given with InstanceId: ask for the ids, or page through all",
        ));
    }
    if let Some(m) = max {
        if !(5..=1000).contains(&m) {
            return Err(Ec2Error::invalid(format!(
                "MaxResults {m}: must be between 5 and 1000"
            )));
        }
    }
    let instances = if ids.is_empty() {
        ctx.instances().await?
    } else {
        ctx.named(&ids).await?
    };
    let tags = tags_by_resource(ctx).await?;
    let mut kept = Vec::new();
    for i in &instances {
        let mut ok = true;
        for f in &filters {
            ok &= passes(i, f, tags.get(&i.id()))?;
        }
        if ok {
            kept.push(i);
        }
    }
    // Reservations in launch order, paged by reservation.
    let mut order: Vec<String> = Vec::new();
    for i in &kept {
        if !order.contains(&i.facts.reservation) {
            order.push(i.facts.reservation.clone());
        }
    }
    let start = match p.get("NextToken") {
        Some(t) => crate::page::token_offset(t)?,
        None => 0,
    };
    let end = max.map_or(order.len(), |m| (start + m as usize).min(order.len()));
    let page = &order[start.min(order.len())..end];
    let mut body = vec![set(
        "reservationSet",
        page.iter().map(|r| {
            let members: Vec<&Instance> = kept
                .iter()
                .copied()
                .filter(|i| &i.facts.reservation == r)
                .collect();
            reservation_node(ctx, r, &members, &tags)
        }),
    )];
    if end < order.len() {
        body.push(text("nextToken", crate::page::offset_token(end)));
    }
    Ok(body)
}

/// One instance's change for a Start/Stop/TerminateInstances answer.
fn change(id: &str, before: Ec2State, after: Ec2State) -> Vec<Node> {
    vec![
        text("instanceId", id),
        after.node("currentState"),
        before.node("previousState"),
    ]
}

fn require_ids(p: &Params) -> Result<Vec<String>, Ec2Error> {
    let ids = p.list("InstanceId");
    if ids.is_empty() {
        return Err(Ec2Error::missing("InstanceId.1"));
    }
    Ok(ids)
}

/// Refused for an instance that is terminated.
fn alive(i: &Instance) -> Result<&vws_model::records::Workspace, Ec2Error> {
    i.workspace.as_ref().ok_or_else(|| {
        Ec2Error::client(
            "IncorrectInstanceState",
            format!("The instance '{}' is not in a state from which it can be changed: it is terminated", i.id()),
        )
    })
}

/// The named instances, refused as a whole if one of them is terminated.
async fn living(ctx: &Ctx, p: &Params) -> Result<Vec<Instance>, Ec2Error> {
    let named = ctx.named(&require_ids(p)?).await?;
    for i in &named {
        alive(i)?;
    }
    Ok(named)
}

/// `StartInstances`: a stopped instance is deployed if it was checked in,
/// and started (a paused one is unpaused: its memory was kept).
pub(crate) async fn start(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let named = living(ctx, p).await?;
    let mut items = Vec::new();
    for i in &named {
        let ws = alive(i)?;
        let before = i.state().0;
        let id = &i.facts.workspace;
        match ws.record.state {
            State::Running => {}
            State::Paused => verb(ctx, id, Verb::Unpause).await?,
            _ => {
                if ws.record.placement == vws_model::Placement::Repository {
                    ctx.run(Command::Deploy {
                        id: id.clone(),
                        host: None,
                    })
                    .await
                    .map_err(|e| Ec2Error::from_service(e, "InvalidInstanceID.NotFound"))?;
                }
                verb(ctx, id, Verb::Start).await?;
            }
        }
        ctx.service
            .store()
            .ec2_instance_ready(id, ctx.service.clock().now())
            .await?;
        items.push(change(&i.id(), before, Ec2State::Running));
    }
    Ok(vec![set("instancesSet", items)])
}

/// `StopInstances`: running instances are shut down (a paused one too:
/// stopped is where both end).
pub(crate) async fn stop(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let named = living(ctx, p).await?;
    let mut items = Vec::new();
    for i in &named {
        let ws = alive(i)?;
        let before = i.state().0;
        let id = &i.facts.workspace;
        match ws.record.state {
            State::Running => verb(ctx, id, Verb::Stop).await?,
            State::Paused => {
                verb(ctx, id, Verb::Unpause).await?;
                verb(ctx, id, Verb::Stop).await?;
            }
            _ => {}
        }
        items.push(change(&i.id(), before, Ec2State::Stopped));
    }
    Ok(vec![set("instancesSet", items)])
}

/// `RebootInstances`: a stop and a start of each running instance.
pub(crate) async fn reboot(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let named = living(ctx, p).await?;
    for i in &named {
        if alive(i)?.record.state == State::Running {
            verb(ctx, &i.facts.workspace, Verb::Stop).await?;
            verb(ctx, &i.facts.workspace, Verb::Start).await?;
        }
    }
    Ok(vec![text("return", "true")])
}

/// `TerminateInstances`: the workspace is destroyed; the instance stays
/// listed, terminated, for an hour.
pub(crate) async fn terminate(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let named = ctx.named(&require_ids(p)?).await?;
    let mut items = Vec::new();
    for i in &named {
        let before = i.state().0;
        if i.workspace.is_some() {
            match ctx
                .run(Command::Destroy {
                    id: i.facts.workspace.clone(),
                })
                .await
            {
                Ok(_) | Err(vws_service::ServiceError::NotFound(_)) => {}
                Err(e) => return Err(Ec2Error::from_service(e, "InvalidInstanceID.NotFound")),
            }
            ctx.service
                .store()
                .terminate_ec2_instance(&i.facts.workspace, ctx.service.clock().now())
                .await?;
        }
        items.push(change(&i.id(), before, Ec2State::Terminated));
    }
    Ok(vec![set("instancesSet", items)])
}
