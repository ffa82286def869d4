//! The EC2 front-end with its real clients: `vws up` serving the EC2 Query
//! API, access keys made with `vws key`, and `tests/ec2/ec2.py` driving it
//! with awscli and boto3 (from PyPI, in the virtualenv scripts/setup
//! makes): run-instances to terminate with the waiters, key pairs, tags,
//! images, errors (an unknown instance, a bad signature, an expired
//! request, a revoked key, another owner's instance), and the same boto3
//! script run against moto in server mode, whose answers must have the
//! same shape once ids and times are masked (docs/ec2.md lists the
//! differences it allows).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn key(home: &std::path::Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["key", "create", "--json"];
    all.extend(args);
    let v: Value = serde_json::from_str(&ok(home, &all)).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

#[test]
fn awscli_and_boto3_drive_the_ec2_front_end() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let (_up, ec2) = ec2_up(home);
    let ami = minimal_ami(home);

    let (bob, bob_secret) = key(home, &["--dn", "/O=Grid/OU=x/CN=Bob"]);
    let (revoked, revoked_secret) = key(home, &[]);
    ok(home, &["key", "revoke", &revoked]);
    // A user may not make a key that acts as someone else.
    let bob_cert = user(home, "bob", "/O=Grid/OU=x/CN=Bob");
    let mut as_bob: Vec<&str> = bob_cert.iter().map(String::as_str).collect();
    as_bob.extend(["key", "create", "--dn", "/O=vws/OU=local/CN=admin"]);
    let refused = vws(home, &as_bob);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("administrator"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let work = home.join("ec2-work");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new(python())
        .arg(root().join("crates/cli/tests/ec2/ec2.py"))
        .env("ENDPOINT", &ec2.endpoint)
        .env("CA", &ec2.ca)
        .env("REGION", &ec2.region)
        .env("IMAGE", &ami)
        .env("TYPE", "vws.micro")
        .env("WORK", &work)
        .env("AWS_ACCESS_KEY_ID", &ec2.key)
        .env("AWS_SECRET_ACCESS_KEY", &ec2.secret)
        .env("BOB_KEY", &bob)
        .env("BOB_SECRET", &bob_secret)
        .env("REVOKED_KEY", &revoked)
        .env("REVOKED_SECRET", &revoked_secret)
        // The environment's bundle would override --ca-bundle for awscli.
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_CONFIG_FILE", work.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", work.join("none"))
        .output()
        .unwrap();
    script_passed(&out, "the EC2 client test", "== done");
    // Every instance the script launched is gone, as terminated.
    let listed: Value = serde_json::from_str(&ok(home, &["list", "--json"])).unwrap();
    let items = listed["items"].as_array().or(listed.as_array()).unwrap();
    assert!(items.is_empty(), "workspaces left: {listed}");
}
