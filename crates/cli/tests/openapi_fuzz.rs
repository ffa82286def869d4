//! The OpenAPI document is exact: schemathesis (installed by scripts/setup)
//! generates requests from it against a running `vws up` and checks every
//! answer. No server error, no status the document does not list, no
//! answer that breaks its schema, nothing the document allows refused as
//! malformed, nothing it forbids accepted. Fixed seed and example count, so
//! a run is the same run in CI; the stateful phase (chains of calls) is
//! left out.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_openapi_document_says_exactly_what_the_api_does() {
    let st = root().join("target/py/bin/st");
    assert!(
        st.exists(),
        "{} is missing: scripts/setup installs schemathesis",
        st.display()
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = vws_up(home, &[]);
    let server: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("server.json")).unwrap()).unwrap();
    let url = server["url"].as_str().unwrap();
    let admin = home.join("pki/admin");
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(root().join("crates/cli/tests/fuzz/schemathesis.toml"))
        .arg("run")
        .arg(root().join("crates/service/openapi.json"))
        .args(["--url", url])
        .arg("--request-cert")
        .arg(admin.join("cert.pem"))
        .arg("--request-cert-key")
        .arg(admin.join("key.pem"))
        .arg("--tls-verify")
        .arg(admin.join("ca.pem"))
        .args([
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            "--seed",
            "1",
            "--no-color",
            // A followed event stream never ends, so a request for it would
            // never be judged; crates/cli/tests/events.rs tests it.
            "--exclude-path",
            "/v1/events",
        ])
        .current_dir(home)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found the API and its document apart:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("generated"), "{report}");
}
