//! The XML form of a description (paper §2.1; schema in `schema/`).
//!
//! Parsing goes through a small element tree so that every error can name the
//! element at fault. Document type declarations are refused outright, so entity
//! expansion ("billion laughs") and external entities cannot happen.

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use quick_xml::Writer;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::description::*;
use crate::size::ByteSize;
use crate::state::State;
use crate::validate::InvalidDescription;

/// Namespace of the generic part.
pub const NS_WS: &str = "urn:vws:workspace:1";
/// Namespace of the hardware section.
pub const NS_HW: &str = "urn:vws:hardware:1";
/// Namespace of the network section.
pub const NS_NET: &str = "urn:vws:network:1";
/// Namespace of the software section.
pub const NS_SW: &str = "urn:vws:software:1";
/// Namespace of the capability section.
pub const NS_CAP: &str = "urn:vws:capability:1";

const MAX_DEPTH: usize = 16;

#[derive(Debug)]
struct Node {
    ns: Option<String>,
    local: String,
    /// The path of this element as written, for messages.
    path: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

fn err(path: &str, message: impl Into<String>) -> InvalidDescription {
    InvalidDescription::one(path, message)
}

fn utf8(bytes: &[u8], path: &str) -> Result<String, InvalidDescription> {
    String::from_utf8(bytes.to_vec()).map_err(|_| err(path, "not valid UTF-8"))
}

/// Reads an XML document into an element tree, refusing DTDs and unknown entities.
fn read_tree(input: &str) -> Result<Node, InvalidDescription> {
    let mut reader = NsReader::from_str(input);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<Node> = Vec::new();
    loop {
        let position = reader.buffer_position();
        let here = stack.last().map_or("/".to_string(), |n| n.path.clone());
        let syntax =
            |e: quick_xml::Error| err(&here, format!("malformed XML at byte {position}: {e}"));
        let (ns, event) = reader.read_resolved_event().map_err(syntax)?;
        let ns = match ns {
            ResolveResult::Bound(n) => Some(utf8(n.as_ref(), &here)?),
            ResolveResult::Unbound => None,
            ResolveResult::Unknown(p) => {
                return Err(err(
                    &here,
                    format!(
                        "namespace prefix {:?} is not declared",
                        String::from_utf8_lossy(&p)
                    ),
                ))
            }
        };
        match event {
            Event::Start(e) | Event::Empty(e) if stack.len() >= MAX_DEPTH => {
                let _ = e;
                return Err(err(
                    &here,
                    format!("elements nested deeper than {MAX_DEPTH} levels"),
                ));
            }
            Event::Start(ref e) | Event::Empty(ref e) => {
                let qname = utf8(e.name().as_ref(), &here)?;
                let local = utf8(e.local_name().as_ref(), &here)?;
                let parent = stack.last().map_or(String::new(), |n| n.path.clone());
                let index = stack
                    .last()
                    .map(|p| {
                        p.children
                            .iter()
                            .filter(|c| c.local == local && c.ns == ns)
                            .count()
                    })
                    .unwrap_or(0);
                let path = if index == 0 {
                    format!("{parent}/{qname}")
                } else {
                    format!("{parent}/{qname}[{}]", index + 1)
                };
                let mut attrs = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&path, format!("malformed attribute: {e}")))?;
                    if a.key.as_namespace_binding().is_some() {
                        continue;
                    }
                    let key = utf8(a.key.as_ref(), &path)?;
                    let value = a
                        .unescape_value()
                        .map_err(|e| {
                            err(
                                &format!("{path}/@{key}"),
                                format!("bad attribute value: {e}"),
                            )
                        })?
                        .into_owned();
                    attrs.push((key, value));
                }
                let node = Node {
                    ns,
                    local,
                    path,
                    attrs,
                    text: String::new(),
                    children: Vec::new(),
                };
                if matches!(event, Event::Empty(_)) {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => return finish(&mut reader, node),
                    }
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| err("/", "unexpected closing tag"))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return finish(&mut reader, node),
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| err(&here, format!("bad text: {e}")))?;
                match stack.last_mut() {
                    Some(n) => n.text.push_str(&text),
                    None => return Err(err("/", "text outside the root element")),
                }
            }
            Event::CData(c) => {
                let text = utf8(&c.into_inner(), &here)?;
                match stack.last_mut() {
                    Some(n) => n.text.push_str(&text),
                    None => return Err(err("/", "CDATA outside the root element")),
                }
            }
            Event::DocType(_) => {
                return Err(err(
                    "/",
                    "document type declarations (DOCTYPE) are not accepted",
                ));
            }
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => {
                return Err(err(
                    &here,
                    "the document ended before the root element was closed",
                ))
            }
        }
    }
}

fn finish(reader: &mut NsReader<&[u8]>, root: Node) -> Result<Node, InvalidDescription> {
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(root),
            Ok(Event::Comment(_) | Event::PI(_)) => {}
            Ok(Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => {}
            Ok(_) => return Err(err("/", "content after the root element")),
            Err(e) => {
                return Err(err(
                    "/",
                    format!("malformed XML after the root element: {e}"),
                ))
            }
        }
    }
}

impl Node {
    fn is(&self, ns: &str, local: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.local == local
    }

    fn attr_path(&self, key: &str) -> String {
        format!("{}/@{key}", self.path)
    }

    /// Checks that only the listed attributes are present.
    fn only_attrs(&self, allowed: &[&str]) -> Result<(), InvalidDescription> {
        for (k, _) in &self.attrs {
            if !allowed.contains(&k.as_str()) {
                let expected = if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(err(
                    &self.attr_path(k),
                    format!("unknown attribute {k:?} (expected: {expected})"),
                ));
            }
        }
        Ok(())
    }

    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn required_attr(&self, key: &str) -> Result<&str, InvalidDescription> {
        self.attr(key).ok_or_else(|| {
            err(
                &self.attr_path(key),
                format!("attribute {key:?} is required"),
            )
        })
    }

    fn no_children(&self) -> Result<(), InvalidDescription> {
        match self.children.first() {
            Some(c) => Err(err(
                &c.path,
                "unexpected element: this element holds only text",
            )),
            None => Ok(()),
        }
    }

    fn leaf_text(&self) -> Result<&str, InvalidDescription> {
        self.no_children()?;
        Ok(self.text.trim())
    }

    fn no_text(&self) -> Result<(), InvalidDescription> {
        if self.text.trim().is_empty() {
            Ok(())
        } else {
            Err(err(
                &self.path,
                format!("unexpected text {:?}", self.text.trim()),
            ))
        }
    }

    fn unknown(&self, expected: &str) -> InvalidDescription {
        let ns = self.ns.as_deref().unwrap_or("no namespace");
        err(
            &self.path,
            format!(
                "unknown element {:?} in {ns} (expected {expected})",
                self.local
            ),
        )
    }
}

fn parse_attr<T, E: std::fmt::Display>(
    node: &Node,
    key: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, InvalidDescription> {
    node.attr(key)
        .map(|v| parse(v).map_err(|e| err(&node.attr_path(key), e.to_string())))
        .transpose()
}

fn once<T>(slot: &mut Option<T>, node: &Node, value: T) -> Result<(), InvalidDescription> {
    if slot.is_some() {
        return Err(err(
            &node.path,
            format!("element {:?} appears more than once", node.local),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn enum_text<T>(
    node: &Node,
    parse: fn(&str) -> Option<T>,
    expected: &str,
) -> Result<T, InvalidDescription> {
    let text = node.leaf_text()?;
    parse(text).ok_or_else(|| err(&node.path, format!("{text:?} is not one of {expected}")))
}

fn datetime(node: &Node) -> Result<OffsetDateTime, InvalidDescription> {
    node.only_attrs(&[])?;
    let text = node.leaf_text()?;
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| err(&node.path, format!("{text:?} is not an xs:dateTime ({e})")))
}

fn integer<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.trim().parse().map_err(|_| format!("{s:?} is not {what}"))
}

fn range<T: Copy + PartialOrd>(
    node: &Node,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Range<T>, InvalidDescription> {
    node.only_attrs(&["min", "max"])?;
    node.no_children()?;
    let min = parse_attr(node, "min", &parse)?;
    let max = parse_attr(node, "max", &parse)?;
    match (min, max, node.text.trim()) {
        (Some(min), Some(max), "") => Ok(Range { min, max }),
        (Some(v), None, "") | (None, Some(v), "") => Ok(Range::exactly(v)),
        (None, None, "") => Err(err(
            &node.path,
            "expected attributes min and max (or a value as text)",
        )),
        (None, None, text) => parse(text)
            .map(Range::exactly)
            .map_err(|e| err(&node.path, e)),
        _ => Err(err(
            &node.path,
            "give either min/max attributes or a value as text, not both",
        )),
    }
}

fn size(s: &str) -> Result<ByteSize, String> {
    s.parse::<ByteSize>().map_err(|e| e.to_string())
}

fn text_attr(node: &Node, key: &str) -> Option<String> {
    node.attr(key).map(str::to_string)
}

/// Parses the XML form. Structural errors (unknown elements, bad values) name
/// the XML path; semantic checks are left to [`crate::validate`].
pub fn from_xml(input: &str) -> Result<Description, InvalidDescription> {
    let root = read_tree(input)?;
    if !root.is(NS_WS, "virtualWorkspace") {
        return Err(err(
            &root.path,
            format!(
                "the root element must be virtualWorkspace in namespace {NS_WS}, found {:?}",
                root.local
            ),
        ));
    }
    root.only_attrs(&[])?;
    root.no_text()?;
    let mut category = None;
    let mut vmm = None;
    let mut state = None;
    let mut epr = None;
    let mut creation_time = None;
    let mut life_cycle = None;
    let mut last_modified = None;
    let mut hardware = None;
    let mut network = None;
    let mut software = None;
    let mut capability = None;
    for child in &root.children {
        let ns = child.ns.as_deref().unwrap_or("");
        match (ns, child.local.as_str()) {
            (NS_WS, "category") => {
                child.only_attrs(&["vmm"])?;
                let cat = enum_text(child, Category::parse, "\"vm\", \"dynamic account\"")?;
                vmm = parse_attr(child, "vmm", |v| match v {
                    "qemu" => Ok(Vmm::Qemu),
                    other => Err(format!("{other:?} is not a supported vmm (expected \"qemu\")")),
                })?;
                once(&mut category, child, cat)?;
            }
            (NS_WS, "state") => {
                child.only_attrs(&[])?;
                let s = enum_text(child, State::parse, "shutdown, paused, running, corrupted")?;
                once(&mut state, child, s)?;
            }
            (NS_WS, "EPR") => once(&mut epr, child, read_epr(child)?)?,
            (NS_WS, "creationTime") => once(&mut creation_time, child, datetime(child)?)?,
            (NS_WS, "lastModified") => once(&mut last_modified, child, datetime(child)?)?,
            (NS_WS, "lifeCycle") => {
                child.only_attrs(&[])?;
                let v = integer::<u64>(child.leaf_text()?, "a number of seconds").map_err(|m| err(&child.path, m))?;
                once(&mut life_cycle, child, v)?;
            }
            (NS_HW, "hardware") => once(&mut hardware, child, read_hardware(child)?)?,
            (NS_NET, "network") => once(&mut network, child, read_network(child)?)?,
            (NS_SW, "software") => once(&mut software, child, read_software(child)?)?,
            (NS_CAP, "capability") => once(&mut capability, child, read_capability(child)?)?,
            _ => {
                return Err(child.unknown(
                    "category, state, EPR, creationTime, lifeCycle, lastModified, hw:hardware, net:network, sw:software, cap:capability",
                ))
            }
        }
    }
    let category = category.ok_or_else(|| {
        err(
            "/virtualWorkspace/category",
            "element category is required (vm or dynamic account)",
        )
    })?;
    let software = software.ok_or_else(|| {
        err(
            "/virtualWorkspace/sw:software",
            "element sw:software with sw:image is required",
        )
    })?;
    Ok(Description {
        category,
        vmm,
        state,
        epr,
        creation_time,
        life_cycle,
        last_modified,
        hardware: hardware.unwrap_or_default(),
        network: network.unwrap_or_default(),
        software,
        capability: capability.unwrap_or_default(),
    })
}

fn read_epr(node: &Node) -> Result<Epr, InvalidDescription> {
    node.only_attrs(&[])?;
    node.no_text()?;
    let (mut address, mut key) = (None, None);
    for c in &node.children {
        match (c.ns.as_deref(), c.local.as_str()) {
            (Some(NS_WS), "Address") => once(&mut address, c, c.leaf_text()?.to_string())?,
            (Some(NS_WS), "ResourceKey") => once(&mut key, c, c.leaf_text()?.to_string())?,
            _ => return Err(c.unknown("Address, ResourceKey")),
        }
    }
    Ok(Epr {
        address: address.ok_or_else(|| {
            err(
                &format!("{}/Address", node.path),
                "element Address is required",
            )
        })?,
        resource_key: key.ok_or_else(|| {
            err(
                &format!("{}/ResourceKey", node.path),
                "element ResourceKey is required",
            )
        })?,
    })
}

fn read_hardware(node: &Node) -> Result<Hardware, InvalidDescription> {
    node.only_attrs(&[])?;
    node.no_text()?;
    let mut hw = Hardware::default();
    let (mut cpus, mut ram, mut disk) = (None, None, None);
    for c in &node.children {
        match (c.ns.as_deref(), c.local.as_str()) {
            (Some(NS_HW), "cpus") => once(
                &mut cpus,
                c,
                range(c, |s| integer::<u32>(s, "a number of cpus"))?,
            )?,
            (Some(NS_HW), "ram") => once(&mut ram, c, range(c, size)?)?,
            (Some(NS_HW), "disk") => {
                c.only_attrs(&["size", "type", "access", "encrypted"])?;
                c.leaf_text()?;
                let d = Disk {
                    size: parse_attr(c, "size", size)?.ok_or_else(|| {
                        err(&c.attr_path("size"), "attribute \"size\" is required")
                    })?,
                    kind: parse_attr(c, "type", |v| match v {
                        "qcow2" => Ok(DiskType::Qcow2),
                        "raw" => Ok(DiskType::Raw),
                        o => Err(format!("{o:?} is not a disk type (expected qcow2 or raw)")),
                    })?
                    .unwrap_or_default(),
                    access: parse_attr(c, "access", |v| match v {
                        "rw" => Ok(Access::ReadWrite),
                        "ro" => Ok(Access::ReadOnly),
                        o => Err(format!("{o:?} is not an access mode (expected rw or ro)")),
                    })?
                    .unwrap_or_default(),
                    encrypted: parse_attr(c, "encrypted", |v| match v {
                        "true" | "1" => Ok(true),
                        "false" | "0" => Ok(false),
                        o => Err(format!("{o:?} is not a boolean (expected true or false)")),
                    })?
                    .unwrap_or(false),
                };
                once(&mut disk, c, d)?;
            }
            (Some(NS_HW), "device") => {
                c.only_attrs(&["type", "image"])?;
                c.leaf_text()?;
                let kind = match c.required_attr("type")? {
                    "cdrom" => DeviceType::Cdrom,
                    o => {
                        return Err(err(
                            &c.attr_path("type"),
                            format!("{o:?} is not a device type (expected cdrom)"),
                        ))
                    }
                };
                hw.devices.push(Device {
                    kind,
                    image: c.required_attr("image")?.to_string(),
                });
            }
            _ => return Err(c.unknown("hw:cpus, hw:ram, hw:disk, hw:device")),
        }
    }
    if let Some(c) = cpus {
        hw.cpus = c;
    }
    if let Some(r) = ram {
        hw.ram = r;
    }
    hw.disk = disk;
    Ok(hw)
}

fn read_network(node: &Node) -> Result<Network, InvalidDescription> {
    node.only_attrs(&[])?;
    node.no_text()?;
    let mut net = Network::default();
    for c in &node.children {
        if !c.is(NS_NET, "nic") {
            return Err(c.unknown("net:nic"));
        }
        c.only_attrs(&["name", "method", "network"])?;
        c.leaf_text()?;
        let method = match c.required_attr("method")? {
            "pool" => NicMethod::Pool,
            "dhcp" => NicMethod::Dhcp,
            "user" => NicMethod::User,
            "none" => NicMethod::None,
            o => {
                return Err(err(
                    &c.attr_path("method"),
                    format!("{o:?} is not a method (expected pool, dhcp, user or none)"),
                ))
            }
        };
        net.nics.push(Nic {
            name: c.required_attr("name")?.to_string(),
            method,
            network: parse_attr(c, "network", |v| Ok::<_, String>(v.to_string()))?,
        });
    }
    Ok(net)
}

fn read_software(node: &Node) -> Result<Software, InvalidDescription> {
    node.only_attrs(&[])?;
    node.no_text()?;
    let (mut image, mut os) = (None, None);
    let mut programs = Vec::new();
    for c in &node.children {
        match (c.ns.as_deref(), c.local.as_str()) {
            (Some(NS_SW), "image") => {
                c.only_attrs(&[])?;
                once(&mut image, c, c.leaf_text()?.to_string())?;
            }
            (Some(NS_SW), "os") => {
                c.only_attrs(&["kernel", "distribution", "init"])?;
                c.leaf_text()?;
                once(
                    &mut os,
                    c,
                    Os {
                        kernel: text_attr(c, "kernel"),
                        distribution: text_attr(c, "distribution"),
                        init: text_attr(c, "init"),
                    },
                )?;
            }
            (Some(NS_SW), "program") => {
                c.only_attrs(&["name", "version", "min", "max"])?;
                c.leaf_text()?;
                programs.push(Program {
                    name: c.required_attr("name")?.to_string(),
                    version: text_attr(c, "version"),
                    min: text_attr(c, "min"),
                    max: text_attr(c, "max"),
                });
            }
            _ => return Err(c.unknown("sw:image, sw:os, sw:program")),
        }
    }
    Ok(Software {
        image,
        os,
        programs,
    })
}

fn read_capability(node: &Node) -> Result<Capability, InvalidDescription> {
    node.only_attrs(&[])?;
    node.no_text()?;
    let mut cap = Capability::default();
    let mut startup = None;
    for c in &node.children {
        match (c.ns.as_deref(), c.local.as_str()) {
            (Some(NS_CAP), "startup") => {
                c.only_attrs(&[])?;
                once(&mut startup, c, c.leaf_text()?.to_string())?;
            }
            (Some(NS_CAP), "service") => {
                c.only_attrs(&["port", "protocol"])?;
                c.leaf_text()?;
                let port = integer::<u16>(c.required_attr("port")?, "a port number (1 to 65535)")
                    .map_err(|m| err(&c.attr_path("port"), m))?;
                let protocol = parse_attr(c, "protocol", |v| match v {
                    "tcp" => Ok(Protocol::Tcp),
                    "udp" => Ok(Protocol::Udp),
                    o => Err(format!("{o:?} is not a protocol (expected tcp or udp)")),
                })?
                .unwrap_or_default();
                cap.services.push(Service { port, protocol });
            }
            _ => return Err(c.unknown("cap:startup, cap:service")),
        }
    }
    cap.startup = startup;
    Ok(cap)
}

/// Writes the XML form, in the element order the schema's sequences require.
pub fn to_xml(d: &Description) -> String {
    let mut w = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing to a Vec cannot fail.
    let mut put = |e: Event| w.write_event(e).expect("writing XML to memory");
    put(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let root = BytesStart::new("virtualWorkspace").with_attributes([
        ("xmlns", NS_WS),
        ("xmlns:hw", NS_HW),
        ("xmlns:net", NS_NET),
        ("xmlns:sw", NS_SW),
        ("xmlns:cap", NS_CAP),
    ]);
    put(Event::Start(root));
    let mut category = BytesStart::new("category");
    if let Some(v) = d.vmm {
        category.push_attribute(("vmm", v.as_str()));
    }
    text_el(&mut put, category, d.category.as_str());
    if let Some(s) = d.state {
        text_el(&mut put, BytesStart::new("state"), s.as_str());
    }
    if let Some(epr) = &d.epr {
        put(Event::Start(BytesStart::new("EPR")));
        text_el(&mut put, BytesStart::new("Address"), &epr.address);
        text_el(&mut put, BytesStart::new("ResourceKey"), &epr.resource_key);
        put(Event::End(BytesEnd::new("EPR")));
    }
    if let Some(t) = d.creation_time {
        text_el(&mut put, BytesStart::new("creationTime"), &rfc3339(t));
    }
    if let Some(lc) = d.life_cycle {
        text_el(&mut put, BytesStart::new("lifeCycle"), &lc.to_string());
    }
    if let Some(t) = d.last_modified {
        text_el(&mut put, BytesStart::new("lastModified"), &rfc3339(t));
    }

    let hw = &d.hardware;
    put(Event::Start(BytesStart::new("hw:hardware")));
    put(Event::Empty(range_el(
        "hw:cpus",
        hw.cpus.min.to_string(),
        hw.cpus.max.to_string(),
    )));
    put(Event::Empty(range_el(
        "hw:ram",
        hw.ram.min.to_string(),
        hw.ram.max.to_string(),
    )));
    if let Some(disk) = &hw.disk {
        let size = disk.size.to_string();
        let mut attrs = vec![
            ("size", size.as_str()),
            ("type", disk.kind.as_str()),
            ("access", disk.access.as_str()),
        ];
        if disk.encrypted {
            attrs.push(("encrypted", "true"));
        }
        put(Event::Empty(
            BytesStart::new("hw:disk").with_attributes(attrs),
        ));
    }
    for dev in &hw.devices {
        put(Event::Empty(BytesStart::new("hw:device").with_attributes(
            [("type", dev.kind.as_str()), ("image", dev.image.as_str())],
        )));
    }
    put(Event::End(BytesEnd::new("hw:hardware")));

    if !d.network.nics.is_empty() {
        put(Event::Start(BytesStart::new("net:network")));
        for nic in &d.network.nics {
            let mut attrs = vec![("name", nic.name.as_str()), ("method", nic.method.as_str())];
            if let Some(n) = &nic.network {
                attrs.push(("network", n.as_str()));
            }
            put(Event::Empty(
                BytesStart::new("net:nic").with_attributes(attrs),
            ));
        }
        put(Event::End(BytesEnd::new("net:network")));
    }

    let sw = &d.software;
    put(Event::Start(BytesStart::new("sw:software")));
    if let Some(image) = &sw.image {
        text_el(&mut put, BytesStart::new("sw:image"), image);
    }
    if let Some(os) = &sw.os {
        let mut e = BytesStart::new("sw:os");
        if let Some(k) = &os.kernel {
            e.push_attribute(("kernel", k.as_str()));
        }
        if let Some(dist) = &os.distribution {
            e.push_attribute(("distribution", dist.as_str()));
        }
        if let Some(init) = &os.init {
            e.push_attribute(("init", init.as_str()));
        }
        put(Event::Empty(e));
    }
    for p in &sw.programs {
        let mut e = BytesStart::new("sw:program");
        e.push_attribute(("name", p.name.as_str()));
        for (attr, v) in [("version", &p.version), ("min", &p.min), ("max", &p.max)] {
            if let Some(v) = v {
                e.push_attribute((attr, v.as_str()));
            }
        }
        put(Event::Empty(e));
    }
    put(Event::End(BytesEnd::new("sw:software")));

    let cap = &d.capability;
    if cap.startup.is_some() || !cap.services.is_empty() {
        put(Event::Start(BytesStart::new("cap:capability")));
        if let Some(s) = &cap.startup {
            text_el(&mut put, BytesStart::new("cap:startup"), s);
        }
        for s in &cap.services {
            put(Event::Empty(
                BytesStart::new("cap:service").with_attributes([
                    ("port", s.port.to_string().as_str()),
                    ("protocol", s.protocol.as_str()),
                ]),
            ));
        }
        put(Event::End(BytesEnd::new("cap:capability")));
    }
    put(Event::End(BytesEnd::new("virtualWorkspace")));
    let mut out = String::from_utf8(w.into_inner()).expect("quick-xml writes UTF-8");
    out.push('\n');
    out
}

fn text_el(put: &mut impl FnMut(Event), start: BytesStart, text: &str) {
    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
    put(Event::Start(start));
    put(Event::Text(BytesText::new(text)));
    put(Event::End(BytesEnd::new(name)));
}

fn range_el(name: &str, min: String, max: String) -> BytesStart<'_> {
    BytesStart::new(name).with_attributes([("min", min.as_str()), ("max", max.as_str())])
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("every OffsetDateTime formats as RFC 3339")
}
