//! What a client asks first: DescribeRegions, DescribeAvailabilityZones
//! and DescribeInstanceTypes, from the front-end's settings.

use crate::error::Ec2Error;
use crate::params::Params;
use crate::xml::{el, set, strings, text, Node};
use crate::Ctx;

/// `DescribeRegions`: the one region.
pub(crate) async fn describe_regions(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let names = p.list("RegionName");
    let region = &ctx.config.region;
    if let Some(other) = names.iter().find(|n| *n != region) {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            format!("Invalid region: {other} (this endpoint serves {region})"),
        ));
    }
    Ok(vec![set(
        "regionInfo",
        [vec![
            text("regionName", region),
            text("regionEndpoint", ctx.endpoint_host()),
            text("optInStatus", "opt-in-not-required"),
        ]],
    )])
}

/// `DescribeAvailabilityZones`: the one zone.
pub(crate) async fn describe_zones(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let zone = &ctx.config.zone;
    if let Some(other) = p.list("ZoneName").iter().find(|n| *n != zone) {
        return Err(Ec2Error::client(
            "InvalidParameterValue",
            format!("The zone '{other}' does not exist"),
        ));
    }
    Ok(vec![set(
        "availabilityZoneInfo",
        [vec![
            text("zoneName", zone),
            text("zoneState", "available"),
            text("regionName", &ctx.config.region),
            set("messageSet", Vec::<Vec<Node>>::new()),
            text("optInStatus", "opt-in-not-required"),
            text("zoneId", format!("{}-az1", ctx.config.region)),
            text("groupName", &ctx.config.region),
            text("networkBorderGroup", &ctx.config.region),
            text("zoneType", "availability-zone"),
        ]],
    )])
}

/// `DescribeInstanceTypes`: the configured table.
pub(crate) async fn describe_instance_types(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let wanted = p.list("InstanceType");
    for w in &wanted {
        if ctx.config.instance_type(w).is_none() {
            return Err(Ec2Error::client(
                "InvalidInstanceType",
                format!("The following supplied instance types do not exist: [{w}]"),
            ));
        }
    }
    let items = ctx
        .config
        .instance_types
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.name))
        .map(|t| {
            vec![
                text("instanceType", &t.name),
                text("currentGeneration", "true"),
                text("freeTierEligible", "false"),
                strings("supportedUsageClasses", &["on-demand"]),
                strings("supportedRootDeviceTypes", &["instance-store"]),
                strings("supportedVirtualizationTypes", &["hvm"]),
                text("bareMetal", "false"),
                text("hypervisor", "xen"),
                el(
                    "processorInfo",
                    vec![strings("supportedArchitectures", &["x86_64"])],
                ),
                el(
                    "vCpuInfo",
                    vec![
                        text("defaultVCpus", t.vcpus),
                        text("defaultCores", t.vcpus),
                        text("defaultThreadsPerCore", 1),
                    ],
                ),
                el("memoryInfo", vec![text("sizeInMiB", t.ram_mib)]),
                text("instanceStorageSupported", "false"),
                text("hibernationSupported", "true"),
                text("burstablePerformanceSupported", "false"),
                text("dedicatedHostsSupported", "false"),
                text("autoRecoverySupported", "false"),
            ]
        });
    Ok(vec![set("instanceTypeSet", items)])
}
