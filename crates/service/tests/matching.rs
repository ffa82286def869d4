//! The catalogue and the factory's matching, on both stores: images read at
//! import (os-release, the dpkg database, the C library, a kernel's
//! version), a named image checked against `sw:os` and `sw:program`
//! (422 naming the element, saying what the image has), the best image
//! chosen when none is named (the choice in the history), and 422 with the
//! nearest candidates when none fits.

mod common;

use common::*;
use vws_model::Form;
use vws_service::ServiceError;
use vws_store::Backend;

/// A real ext4 root filesystem (mkfs.ext4 -d) holding an os-release and a
/// dpkg database with `packages`.
async fn rootfs(h: &Harness, reference: &str, packages: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    std::fs::write(
        root.join("usr/lib/os-release"),
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
    )
    .unwrap();
    let mut status = String::new();
    for (name, version) in packages {
        status.push_str(&format!(
            "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
        ));
    }
    std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
    let img = dir.path().join("root.img");
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("4M")
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(made.success());
    let bytes = std::fs::read(&img).unwrap();
    let digest = vws_store::Digest::of(&bytes).to_string();
    h.service.put_blob(&digest, &bytes[..]).await.unwrap();
    let (name, tag) = reference.split_once(':').unwrap();
    h.service
        .import_image(
            &admin(),
            vws_service::pool::ImportRequest::disk(name, tag, digest, Default::default()),
        )
        .await
        .unwrap();
}

fn xml(image: Option<&str>, requirements: &str) -> vws_model::Description {
    let image = image
        .map(|i| format!("<sw:image>{i}</sw:image>"))
        .unwrap_or_default();
    let text = format!(
        r#"<virtualWorkspace xmlns="urn:vws:workspace:1" xmlns:hw="urn:vws:hardware:1"
    xmlns:sw="urn:vws:software:1">
  <category>vm</category>
  <hw:hardware><hw:ram min="64MiB" max="64MiB"/></hw:hardware>
  <sw:software>{image}{requirements}</sw:software>
</virtualWorkspace>"#
    );
    vws_model::parse(&text, Form::Xml).unwrap()
}

/// A clone of `id` refined by a merge patch.
async fn refine(
    h: &Harness,
    id: &str,
    patch: serde_json::Value,
) -> Result<vws_service::Workspace, ServiceError> {
    h.service
        .clone_workspace(&alice(), id, None, Some(&patch))
        .await
}

fn invalid(e: ServiceError) -> Vec<(String, String)> {
    match e {
        ServiceError::Invalid(i) => i.0.into_iter().map(|f| (f.path, f.message)).collect(),
        other => panic!("expected 422, got {other:?}"),
    }
}

async fn catalogue_and_matching(backend: Backend) {
    let h = harness(backend, "").await;
    h.kernel_image("minimal", "1").await;
    rootfs(&h, "plain:1", &[("libc6", "2.36-9+deb12u9")]).await;
    rootfs(
        &h,
        "emboss-old:1",
        &[("libc6", "2.36-9"), ("emboss", "6.5.7-1")],
    )
    .await;
    h.clock.advance(time::Duration::seconds(5));
    rootfs(
        &h,
        "emboss:1",
        &[("libc6", "2.36-9+deb12u9"), ("emboss", "6.6.0+dfsg-12")],
    )
    .await;

    // Read at import, without booting anything.
    let i = h.service.image(&alice(), "emboss:1").await.unwrap();
    assert_eq!(i.manifest.distribution.as_deref(), Some("debian"));
    assert_eq!(i.manifest.release.as_deref(), Some("12"));
    assert_eq!(i.manifest.libc.as_deref(), Some("2.36-9+deb12u9"));
    assert_eq!(i.manifest.arch.as_deref(), Some("amd64"));
    assert_eq!(i.manifest.packages["emboss"], "6.6.0+dfsg-12");
    let k = h.service.image(&alice(), "minimal:1").await.unwrap();
    assert_eq!(k.manifest.kernel.as_deref(), Some("6.1.0-test"));

    // A named image is checked: the element is named, and what it has said.
    let program = r#"<sw:program name="emboss" min="6.6"/>"#;
    let e = h
        .service
        .create(&alice(), xml(Some("plain:1"), program), Form::Xml, None)
        .await
        .unwrap_err();
    let got = invalid(e);
    assert_eq!(
        got[0].0, "/virtualWorkspace/sw:software/sw:program[1]",
        "{got:?}"
    );
    assert!(got[0].1.contains("no such package"), "{got:?}");
    let e = h
        .service
        .create(
            &alice(),
            xml(Some("emboss-old:1"), program),
            Form::Xml,
            None,
        )
        .await
        .unwrap_err();
    let got = invalid(e);
    assert!(
        got[0].1.contains("at least 6.6") && got[0].1.contains("6.5.7-1"),
        "{got:?}"
    );
    let os = r#"<sw:os distribution="ubuntu"/>"#;
    let got = invalid(
        h.service
            .create(&alice(), xml(Some("emboss:1"), os), Form::Xml, None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        got[0].0,
        "/virtualWorkspace/sw:software/sw:os/@distribution"
    );
    assert!(got[0].1.contains("Debian GNU/Linux 12"), "{got:?}");
    // The boot kernel's version counts for a root filesystem VM.
    h.service
        .create(
            &alice(),
            xml(
                Some("emboss:1"),
                r#"<sw:os kernel="6.1" distribution="debian-12"/>"#,
            ),
            Form::Xml,
            None,
        )
        .await
        .unwrap();

    // No image named: the best that fits, and the choice in the history.
    let ws = h
        .service
        .create(
            &alice(),
            xml(None, r#"<sw:program name="emboss" min="6.5"/>"#),
            Form::Xml,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        ws.record.description.software.image.as_deref(),
        Some("emboss:1"),
        "the newest of two"
    );
    let history = h.service.history(&alice(), &ws.record.id).await.unwrap();
    let said = history[0].detail.clone().unwrap_or_default();
    assert!(
        said.contains("emboss:1 chosen") && said.contains("newest"),
        "{said}"
    );
    let m = h
        .service
        .match_description(&alice(), &xml(None, program), Form::Xml)
        .await
        .unwrap();
    assert_eq!(m.chosen.as_deref(), Some("emboss:1"));
    assert!(m
        .candidates
        .iter()
        .any(|c| c.image == "emboss-old:1" && !c.fits));

    // Nothing fits: 422 with the nearest candidates and what each lacks.
    let got = invalid(
        h.service
            .create(
                &alice(),
                xml(None, r#"<sw:program name="emboss" min="7"/>"#),
                Form::Xml,
                None,
            )
            .await
            .unwrap_err(),
    );
    assert!(got[0].1.contains("no image meets"), "{got:?}");
    assert!(
        got.iter()
            .any(|(p, m)| p == "/virtualWorkspace/sw:software/sw:program[1]"
                && m.contains("nearest candidate emboss:1")),
        "{got:?}"
    );
    // Refining (paper §2): a clone changes its description on the way and
    // is checked as a create is.
    let src = h
        .service
        .create(&alice(), xml(Some("emboss:1"), ""), Form::Xml, None)
        .await
        .unwrap();
    let narrowed = refine(
        &h,
        &src.record.id,
        serde_json::json!({ "hardware": { "ram": { "min": "32MiB" } } }),
    )
    .await
    .unwrap();
    assert_eq!(narrowed.record.description.hardware.ram.min.0, 32 << 20);
    assert_eq!(narrowed.record.image_id, src.record.image_id);
    let got = invalid(
        refine(
            &h,
            &src.record.id,
            serde_json::json!({ "software": { "programs": [{ "name": "water" }] } }),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(got[0].0, "software.programs[0]", "{got:?}");
    let other = refine(
        &h,
        &src.record.id,
        serde_json::json!({ "software": { "image": "emboss-old:1" } }),
    )
    .await
    .unwrap();
    assert_eq!(
        other.record.description.software.image.as_deref(),
        Some("emboss-old:1")
    );
    let chosen = refine(
        &h,
        &src.record.id,
        serde_json::json!({ "software": { "image": null,
                "programs": [{ "name": "emboss", "max": "6.6" }] } }),
    )
    .await
    .unwrap();
    assert_eq!(
        chosen.record.description.software.image.as_deref(),
        Some("emboss-old:1"),
        "only the older one is at most 6.6"
    );
    let got = invalid(
        refine(
            &h,
            &src.record.id,
            serde_json::json!({ "hardware": { "ram": { "min": "lots" } } }),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(got[0].0, "hardware.ram.min", "{got:?}");

    // Neither an image nor a requirement: nothing to go by.
    assert!(invalid(
        h.service
            .create(&alice(), xml(None, ""), Form::Xml, None)
            .await
            .unwrap_err()
    )[0]
    .1
    .contains("name an image"));
}

#[tokio::test]
async fn sqlite_catalogue_and_matching() {
    catalogue_and_matching(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_catalogue_and_matching() {
    catalogue_and_matching(Backend::Postgres).await;
}
