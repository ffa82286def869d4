//! The description in its three forms: the ARCHITECTURE.md §3 document,
//! equivalence across forms, round trips, every validation error, and a
//! property test that no input makes a parser panic.

use proptest::prelude::*;
use vws_model::{parse, write, ByteSize, Category, Epr, Form, NicMethod, State};

fn example(name: &str) -> String {
    let path = format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_architecture_document_parses() {
    let d = parse(&example("paper.xml"), Form::Xml).expect("the §3 document parses");
    assert_eq!(d.category, Category::Vm);
    assert_eq!(d.life_cycle, Some(3600));
    assert_eq!(d.hardware.cpus.min, 1);
    assert_eq!(d.hardware.cpus.max, 2);
    assert_eq!(d.hardware.ram.min, ByteSize(256 << 20));
    assert_eq!(d.hardware.ram.max, ByteSize(1 << 30));
    assert_eq!(
        d.hardware.disk.as_ref().map(|d| d.size),
        Some(ByteSize(2 << 30))
    );
    assert_eq!(d.hardware.devices[0].image, "data-iso:1");
    assert_eq!(d.network.nics[0].method, NicMethod::Pool);
    assert_eq!(d.software.image.as_deref(), Some("minimal:1"));
    assert_eq!(d.software.programs[0].name, "emboss");
    assert_eq!(
        d.capability.startup.as_deref(),
        Some("/bin/sh -c 'echo ready'")
    );
    assert_eq!(d.capability.services[0].port, 8080);
    assert_eq!(d.state, Some(State::Shutdown));
}

#[test]
fn toml_and_json_forms_say_the_same() {
    let xml = parse(&example("paper.xml"), Form::Xml)
        .unwrap()
        .without_server_fields();
    let toml = parse(&example("paper.toml"), Form::Toml).unwrap();
    let json = parse(&example("paper.json"), Form::Json).unwrap();
    assert_eq!(xml, toml);
    assert_eq!(xml, json);
}

#[test]
fn every_form_round_trips_with_server_fields() {
    let mut d = parse(&example("paper.xml"), Form::Xml).unwrap();
    d.state = Some(State::Paused);
    d.epr = Some(Epr {
        address: "http://127.0.0.1:7480/v1/workspaces/ws-1".into(),
        resource_key: "abc".into(),
    });
    d.creation_time = Some(time::macros::datetime!(2026-11-24 08:00:00 UTC));
    d.last_modified = Some(time::macros::datetime!(2026-11-24 09:30:15.5 UTC));
    for form in [Form::Xml, Form::Toml, Form::Json] {
        let text = write(&d, form);
        let back = parse(&text, form)
            .unwrap_or_else(|e| panic!("{form:?} did not parse back: {e}\n{text}"));
        assert_eq!(back, d, "{form:?} round trip\n{text}");
    }
}

#[test]
fn minimal_forms_get_defaults() {
    let d = parse(
        "category = \"dynamic account\"\n[software]\nimage = \"debian:12\"\n",
        Form::Toml,
    )
    .unwrap();
    assert_eq!(d.category, Category::DynamicAccount);
    assert_eq!(d.hardware.cpus.min, 1);
    assert!(d.hardware.disk.is_none());
    let d = parse(
        r#"{"category":"vm","software":{"image":"minimal:1"},"hardware":{"ram":"1GiB","cpus":2}}"#,
        Form::Json,
    )
    .unwrap();
    assert_eq!(d.hardware.ram.min, d.hardware.ram.max);
    assert_eq!(d.hardware.cpus.max, 2);
}

/// Replaces `from` in the paper document and returns the single error's path and message.
fn xml_error(from: &str, to: &str) -> (String, String) {
    let doc = example("paper.xml");
    assert!(doc.contains(from), "{from:?} not in the document");
    let err =
        parse(&doc.replacen(from, to, 1), Form::Xml).expect_err(&format!("{to:?} must be refused"));
    (err.0[0].path.clone(), err.0[0].message.clone())
}

fn toml_error(from: &str, to: &str) -> (String, String) {
    let doc = example("paper.toml");
    assert!(doc.contains(from), "{from:?} not in the document");
    let err = parse(&doc.replacen(from, to, 1), Form::Toml)
        .expect_err(&format!("{to:?} must be refused"));
    (err.0[0].path.clone(), err.0[0].message.clone())
}

fn json_error(from: &str, to: &str) -> (String, String) {
    let doc = example("paper.json");
    assert!(doc.contains(from), "{from:?} not in the document");
    let err = parse(&doc.replacen(from, to, 1), Form::Json)
        .expect_err(&format!("{to:?} must be refused"));
    (err.0[0].path.clone(), err.0[0].message.clone())
}

#[test]
fn xml_errors_name_the_element() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "<hw:cpus min=\"1\" max=\"2\"/>",
            "<hw:cpus min=\"1\" max=\"2\"/><hw:gpu/>",
            "/virtualWorkspace/hw:hardware/hw:gpu",
            "unknown element",
        ),
        (
            "min=\"256MiB\"",
            "min=\"256 parsecs\"",
            "/virtualWorkspace/hw:hardware/hw:ram/@min",
            "not a size",
        ),
        (
            "min=\"256MiB\"",
            "min=\"4GiB\"",
            "/virtualWorkspace/hw:hardware/hw:ram",
            "greater than max",
        ),
        (
            "min=\"1\" max=\"2\"",
            "min=\"3\" max=\"2\"",
            "/virtualWorkspace/hw:hardware/hw:cpus",
            "greater than max",
        ),
        (
            "min=\"1\" max=\"2\"",
            "min=\"0\" max=\"2\"",
            "/virtualWorkspace/hw:hardware/hw:cpus/@min",
            "at least 1",
        ),
        (
            "min=\"1\" max=\"2\"",
            "min=\"1\" max=\"100000\"",
            "/virtualWorkspace/hw:hardware/hw:cpus/@max",
            "largest allowed",
        ),
        (
            "min=\"1\" max=\"2\"",
            "min=\"one\" max=\"2\"",
            "/virtualWorkspace/hw:hardware/hw:cpus/@min",
            "not a number",
        ),
        (
            "max=\"1GiB\"",
            "max=\"4TiB\"",
            "/virtualWorkspace/hw:hardware/hw:ram/@max",
            "largest allowed",
        ),
        (
            "min=\"256MiB\"",
            "min=\"0\"",
            "/virtualWorkspace/hw:hardware/hw:ram/@min",
            "greater than zero",
        ),
        (
            "size=\"2GiB\"",
            "size=\"0\"",
            "/virtualWorkspace/hw:hardware/hw:disk/@size",
            "greater than zero",
        ),
        (
            "size=\"2GiB\"",
            "size=\"1000TiB\"",
            "/virtualWorkspace/hw:hardware/hw:disk/@size",
            "largest allowed",
        ),
        (
            "type=\"qcow2\"",
            "type=\"vmdk\"",
            "/virtualWorkspace/hw:hardware/hw:disk/@type",
            "not a disk type",
        ),
        (
            "access=\"rw\"",
            "access=\"rwx\"",
            "/virtualWorkspace/hw:hardware/hw:disk/@access",
            "not an access mode",
        ),
        (
            "type=\"cdrom\"",
            "type=\"floppy\"",
            "/virtualWorkspace/hw:hardware/hw:device/@type",
            "not a device type",
        ),
        (
            "image=\"data-iso:1\"",
            "image=\"../../etc/passwd\"",
            "/virtualWorkspace/hw:hardware/hw:device[1]/@image",
            "not an image reference",
        ),
        (
            ">vm<",
            ">container<",
            "/virtualWorkspace/category",
            "not one of",
        ),
        (
            "vmm=\"qemu\"",
            "vmm=\"xen\"",
            "/virtualWorkspace/category/@vmm",
            "not a supported vmm",
        ),
        (
            "vmm=\"qemu\">vm<",
            "vmm=\"qemu\">dynamic account<",
            "/virtualWorkspace/category/@vmm",
            "only meaningful",
        ),
        (
            "<state>shutdown</state>",
            "<state>frozen</state>",
            "/virtualWorkspace/state",
            "not one of",
        ),
        (
            "<lifeCycle>3600</lifeCycle>",
            "<lifeCycle>0</lifeCycle>",
            "/virtualWorkspace/lifeCycle",
            "positive",
        ),
        (
            "<lifeCycle>3600</lifeCycle>",
            "<lifeCycle>-5</lifeCycle>",
            "/virtualWorkspace/lifeCycle",
            "not a number of seconds",
        ),
        (
            "<lifeCycle>3600</lifeCycle>",
            "<lifeCycle>999999999999</lifeCycle>",
            "/virtualWorkspace/lifeCycle",
            "ten years",
        ),
        (
            "method=\"pool\"",
            "method=\"carrier-pigeon\"",
            "/virtualWorkspace/net:network/net:nic/@method",
            "not a method",
        ),
        (
            "name=\"eth0\"",
            "name=\"eth0 with spaces\"",
            "/virtualWorkspace/net:network/net:nic[1]/@name",
            "not an interface name",
        ),
        (
            "<net:nic name=\"eth0\" method=\"pool\"/>",
            "<net:nic name=\"eth0\" method=\"pool\"/><net:nic name=\"eth0\" method=\"user\"/>",
            "/virtualWorkspace/net:network/net:nic[2]/@name",
            "named twice",
        ),
        (
            "<sw:image>minimal:1</sw:image>",
            "<sw:image>../minimal</sw:image>",
            "/virtualWorkspace/sw:software/sw:image",
            "not an image reference",
        ),
        // Requirements that cannot mean anything name their element.
        (
            "<sw:program name=\"emboss\" version=\"6.6\"/>",
            "<sw:program name=\"emboss\" min=\"six!\"/>",
            "/virtualWorkspace/sw:software/sw:program[1]/@min",
            "not a version",
        ),
        (
            "<sw:program name=\"emboss\" version=\"6.6\"/>",
            "<sw:program name=\"emboss\" min=\"7\" max=\"6.6\"/>",
            "/virtualWorkspace/sw:software/sw:program[1]/@min",
            "above max",
        ),
        (
            "distribution=\"debian-12\"",
            "distribution=\"Debian 12\"",
            "/virtualWorkspace/sw:software/sw:os/@distribution",
            "not a distribution",
        ),
        (
            "port=\"8080\"",
            "port=\"0\"",
            "/virtualWorkspace/cap:capability/cap:service[1]/@port",
            "between 1 and 65535",
        ),
        (
            "port=\"8080\"",
            "port=\"70000\"",
            "/virtualWorkspace/cap:capability/cap:service/@port",
            "port number",
        ),
        (
            "protocol=\"tcp\"",
            "protocol=\"sctp\"",
            "/virtualWorkspace/cap:capability/cap:service/@protocol",
            "not a protocol",
        ),
        (
            "<cap:startup>/bin/sh -c 'echo ready'</cap:startup>",
            "<cap:startup>  </cap:startup>",
            "/virtualWorkspace/cap:capability/cap:startup",
            "must not be empty",
        ),
        (
            "<hw:ram min=\"256MiB\" max=\"1GiB\"/>",
            "<hw:ram min=\"256MiB\" max=\"1GiB\" turbo=\"yes\"/>",
            "/virtualWorkspace/hw:hardware/hw:ram/@turbo",
            "unknown attribute",
        ),
        (
            "<sw:os kernel=\"6.1\"",
            "<os kernel=\"6.1\"",
            "/virtualWorkspace/sw:software/os",
            "unknown element",
        ),
        (
            "<state>shutdown</state>",
            "<state>shutdown</state><state>running</state>",
            "/virtualWorkspace/state[2]",
            "more than once",
        ),
        (
            "<sw:os kernel",
            "<bogus:os kernel",
            "/virtualWorkspace/sw:software",
            "not declared",
        ),
    ];
    for (from, to, path, message) in cases {
        let (got_path, got_message) = xml_error(from, to);
        assert_eq!(&got_path, path, "path for {to:?} ({got_message})");
        assert!(
            got_message.contains(message),
            "message for {to:?}: {got_message:?} lacks {message:?}"
        );
    }
}

#[test]
fn toml_and_json_errors_name_the_field() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "cpus = { min = 1, max = 2 }",
            "cpus = { min = 1, max = 2 }\ngpu = 1",
            "hardware.gpu",
            "unknown field",
        ),
        (
            "min = \"256MiB\"",
            "min = \"256 parsecs\"",
            "hardware.ram.min",
            "not a size",
        ),
        (
            "min = \"256MiB\"",
            "min = \"8GiB\"",
            "hardware.ram",
            "greater than max",
        ),
        (
            "min = \"256MiB\"",
            "min = -1",
            "hardware.ram.min",
            "negative",
        ),
        (
            "size = \"2GiB\"",
            "size = \"0B\"",
            "hardware.disk.size",
            "greater than zero",
        ),
        (
            "category = \"vm\"",
            "category = \"container\"",
            "category",
            "unknown variant",
        ),
        (
            "method = \"pool\"",
            "method = \"teleport\"",
            "network.nics[0].method",
            "unknown variant",
        ),
        (
            "image = \"minimal:1\"",
            "image = \"/etc/passwd\"",
            "software.image",
            "not an image reference",
        ),
        (
            "port = 8080",
            "port = 0",
            "capability.services[0].port",
            "between 1 and 65535",
        ),
        (
            "port = 8080",
            "port = 123456",
            "capability.services[0].port",
            "",
        ),
        ("lifeCycle = 3600", "lifeCycle = 0", "lifeCycle", "positive"),
        (
            "lifeCycle = 3600",
            "lifecycle = 3600",
            "lifecycle",
            "unknown field",
        ),
    ];
    for (from, to, path, message) in cases {
        let (got_path, got_message) = toml_error(from, to);
        assert_eq!(&got_path, path, "path for {to:?} ({got_message})");
        assert!(
            got_message.contains(message),
            "message for {to:?}: {got_message:?} lacks {message:?}"
        );
    }
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "\"max\": \"1GiB\"",
            "\"max\": \"1 gigaflop\"",
            "hardware.ram.max",
            "not a size",
        ),
        (
            "\"max\": 2",
            "\"max\": 0",
            "hardware.cpus.max",
            "at least 1",
        ),
        (
            "\"image\": \"minimal:1\"",
            "\"image\": \"minimal:1\", \"color\": \"red\"",
            "software.color",
            "unknown field",
        ),
        (
            "\"name\": \"eth0\"",
            "\"name\": \"\"",
            "network.nics[0].name",
            "not an interface name",
        ),
        (
            "\"startup\": \"/bin/sh -c 'echo ready'\"",
            "\"startup\": 7",
            "capability.startup",
            "invalid type",
        ),
    ];
    for (from, to, path, message) in cases {
        let (got_path, got_message) = json_error(from, to);
        assert_eq!(&got_path, path, "path for {to:?} ({got_message})");
        assert!(
            got_message.contains(message),
            "message for {to:?}: {got_message:?} lacks {message:?}"
        );
    }
}

#[test]
fn several_problems_are_reported_together() {
    let doc = example("paper.toml")
        .replace("port = 8080", "port = 0")
        .replace("lifeCycle = 3600", "lifeCycle = 0");
    let err = parse(&doc, Form::Toml).unwrap_err();
    let paths: Vec<_> = err.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["lifeCycle", "capability.services[0].port"]);
}

#[test]
fn dtds_and_entities_are_refused() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<virtualWorkspace xmlns="urn:vws:workspace:1"><category>&lol2;</category></virtualWorkspace>"#;
    let err = parse(laughs, Form::Xml).unwrap_err();
    assert!(err.to_string().contains("DOCTYPE"), "{err}");
    let external = r#"<virtualWorkspace xmlns="urn:vws:workspace:1"><category>&xxe;</category></virtualWorkspace>"#;
    assert!(parse(external, Form::Xml).is_err());
    let deep = format!(
        "<virtualWorkspace xmlns=\"urn:vws:workspace:1\">{}",
        "<a>".repeat(100)
    );
    assert!(parse(&deep, Form::Xml)
        .unwrap_err()
        .to_string()
        .contains("deeper"));
}

#[test]
fn wrong_root_or_namespace_is_refused() {
    let e = parse("<workspace/>", Form::Xml).unwrap_err();
    assert!(
        e.to_string()
            .contains("root element must be virtualWorkspace"),
        "{e}"
    );
    let e = parse(
        "<virtualWorkspace><category>vm</category></virtualWorkspace>",
        Form::Xml,
    )
    .unwrap_err();
    assert!(e.to_string().contains("urn:vws:workspace:1"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_input_makes_a_parser_panic(s in "\\PC{0,400}") {
        for form in [Form::Xml, Form::Toml, Form::Json] {
            let _ = parse(&s, form);
        }
    }

    #[test]
    fn mutated_documents_never_panic(cut in 0usize..1200, insert in "[<>/=\"a-z:&;0-9 ]{0,12}") {
        for name in ["paper.xml", "paper.toml", "paper.json"] {
            let doc = example(name);
            let at = doc.char_indices().map(|(i, _)| i).nth(cut % doc.chars().count()).unwrap_or(0);
            let mutated = format!("{}{}{}", &doc[..at], insert, &doc[at..]);
            let form = Form::from_extension(name).unwrap();
            if let Ok(d) = parse(&mutated, form) {
                // Whatever parses writes back and parses to the same thing.
                prop_assert_eq!(parse(&write(&d, form), form).unwrap(), d);
            }
        }
    }
}

#[test]
fn encrypted_disks_in_every_form() {
    let xml =
        example("paper.xml").replacen(r#"access="rw"/>"#, r#"access="rw" encrypted="true"/>"#, 1);
    let d = parse(&xml, Form::Xml).unwrap();
    assert!(d.hardware.disk.as_ref().unwrap().encrypted);
    for form in [Form::Xml, Form::Toml, Form::Json] {
        assert_eq!(parse(&write(&d, form), form).unwrap(), d, "{form:?}");
    }
    let (path, message) = xml_error(
        r#"type="qcow2" access="rw"/>"#,
        r#"type="raw" access="rw" encrypted="true"/>"#,
    );
    assert_eq!(path, "/virtualWorkspace/hw:hardware/hw:disk/@encrypted");
    assert!(message.contains("only qcow2"), "{message}");
    let (path, _) = xml_error(r#"access="rw"/>"#, r#"access="rw" encrypted="maybe"/>"#);
    assert_eq!(path, "/virtualWorkspace/hw:hardware/hw:disk/@encrypted");
}

#[test]
fn numbers_too_large_for_their_field_name_the_field() {
    for (text, form, path) in [
        (
            "category = \"vm\"\nlifeCycle = 18446744073709551615\n[software]\nimage = \"k:1\"\n",
            Form::Toml,
            "lifeCycle",
        ),
        (
            "category = \"vm\"\n[hardware]\nram = 99999999999999999999\n",
            Form::Toml,
            "hardware.ram",
        ),
        (
            r#"{"category":"vm","lifeCycle":18446744073709551615,"software":{"image":"k:1"}}"#,
            Form::Json,
            "lifeCycle",
        ),
        (
            "category = \"vm\"\n[hardware]\nram = \"1000000000000GiB\"\n",
            Form::Toml,
            "hardware.ram",
        ),
    ] {
        let e = parse(text, form).unwrap_err();
        assert_eq!(e.0[0].path, path, "{text}: {e}");
    }
    let e = parse(
        "category = \"vm\"\n[hardware]\nram = \"1000000000000GiB\"\n",
        Form::Toml,
    )
    .unwrap_err();
    assert!(e.0[0].message.contains("too large"), "{e}");
}
