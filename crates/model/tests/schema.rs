//! The XML the code writes is valid against the shipped XSD, checked by a real
//! validator (`xmllint --schema`, Debian's libxml2-utils; scripts/test installs it).

use std::process::Command;

use vws_model::{parse, write, Epr, Form, State};

fn schema() -> String {
    format!("{}/../../schema/workspace.xsd", env!("CARGO_MANIFEST_DIR"))
}

fn xmllint(doc: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.xml");
    std::fs::write(&file, doc).unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--schema", &schema()])
        .arg(&file)
        .output()
        .expect(
            "xmllint is needed for this test: apt-get install libxml2-utils (scripts/test does)",
        );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn written_xml_validates_against_the_schema() {
    let src = std::fs::read_to_string(format!(
        "{}/../../examples/paper.xml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut d = parse(&src, Form::Xml).unwrap();
    // As the service writes it: with every server-owned field filled in.
    d.state = Some(State::Running);
    d.epr = Some(Epr {
        address: "http://127.0.0.1:7480/v1/workspaces/ws-0123".into(),
        resource_key: "9f86d081884c7d65".into(),
    });
    d.creation_time = Some(time::macros::datetime!(2026-11-24 08:00:00 UTC));
    d.last_modified = Some(time::macros::datetime!(2026-11-24 08:00:01.25 UTC));
    for doc in [
        write(&d, Form::Xml),
        write(&d.clone().without_server_fields(), Form::Xml),
    ] {
        let (ok, stderr) = xmllint(&doc);
        assert!(ok, "xmllint refused what vws wrote:\n{stderr}\n{doc}");
    }
    // Written from the other forms too.
    let toml = std::fs::read_to_string(format!(
        "{}/../../examples/paper.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let (ok, stderr) = xmllint(&write(&parse(&toml, Form::Toml).unwrap(), Form::Xml));
    assert!(ok, "{stderr}");
}

#[test]
fn the_validator_really_checks() {
    let doc = r#"<virtualWorkspace xmlns="urn:vws:workspace:1"><category>vm</category><bogus/></virtualWorkspace>"#;
    let (ok, _) = xmllint(doc);
    assert!(!ok, "xmllint must refuse an unknown element");
}

#[test]
fn every_example_parses_and_its_xml_validates() {
    let dir = format!("{}/../../examples", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        let form = match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => Form::Xml,
            Some("toml") => Form::Toml,
            Some("json") => Form::Json,
            _ => continue,
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let d = parse(&text, form).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Requirements without an image, and version ranges, are the
        // schema's too.
        let (ok, stderr) = xmllint(&write(&d, Form::Xml));
        assert!(ok, "{}: {stderr}", path.display());
        seen += 1;
    }
    assert!(seen >= 7, "{seen} examples");
}
