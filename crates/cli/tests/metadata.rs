//! The instance metadata service inside workspaces (169.254.169.254,
//! IMDSv2): two VM instances launched through the EC2 front-end (with a
//! key pair and user data) and a dynamic account each read their own
//! facts with a token, are refused without one (401) or through a proxy
//! (403), and see only their own: the service answers inside each
//! workspace from its own file, never by source address.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// The IMDSv2 flow with busybox's nc: a token, then each path; prints
/// `KEY=VALUE` lines.
const PROBE: &str = r#"
req() { printf "$1 $2 HTTP/1.0\r\n$3\r\n" | nc 169.254.169.254 80; }
tok=$(req PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 60\r\n" | tail -n1)
get() { req GET "$1" "X-aws-ec2-metadata-token: $tok\r\n" | tail -n1; }
echo "instance=$(get /latest/meta-data/instance-id)"
echo "ami=$(get /latest/meta-data/ami-id)"
echo "hostname=$(get /latest/meta-data/local-hostname)"
echo "zone=$(get /latest/meta-data/placement/availability-zone)"
echo "ipv4=$(get /latest/meta-data/local-ipv4)"
echo "key=$(get /latest/meta-data/public-keys/0/openssh-key)"
echo "userdata=$(get /latest/user-data)"
echo "notoken=$(req GET /latest/meta-data/instance-id '' | head -n1)"
echo "forged=$(req GET /latest/meta-data/instance-id 'X-aws-ec2-metadata-token: 0123\r\n' | head -n1)"
echo "proxied=$(req PUT /latest/api/token 'X-aws-ec2-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 10.0.2.16\r\n' | head -n1)"
"#;

fn probe(home: &std::path::Path, id: &str) -> std::collections::HashMap<String, String> {
    let out = ok(home, &["run", id, "--", "sh", "-c", PROBE]);
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn workspaces_read_their_own_metadata() {
    let python = root().join("target/py/bin/python");
    assert!(
        python.exists(),
        "scripts/setup installs boto3 into target/py"
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let _up = vws_up(home, &["--ec2-listen", "127.0.0.1:0"]);
    let server: Value =
        serde_json::from_str(&std::fs::read_to_string(home.join("server.json")).unwrap()).unwrap();
    import_minimal(home, &minimal_guest());
    let image: Value =
        serde_json::from_str(&ok(home, &["image", "show", "minimal:1", "--json"])).unwrap();
    let ami = vws_model::cloud_ids::image_id(image["id"].as_str().unwrap());
    let key: Value = serde_json::from_str(&ok(home, &["key", "create", "--json"])).unwrap();

    // Two instances with a key pair and user data, through boto3.
    let launch = r#"
import boto3, os, sys
c = boto3.client("ec2", endpoint_url=os.environ["ENDPOINT"], region_name=os.environ["REGION"],
                 aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
                 verify=os.environ["CA"])
c.import_key_pair(KeyName="mine", PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb2CwSvTjgLp5JFgMTw8iUlJF3KXJrWCdXJkz6Ks3Mv me@here")
r = c.run_instances(ImageId=os.environ["IMAGE"], InstanceType="vws.micro", MinCount=2, MaxCount=2,
                    KeyName="mine", UserData="hello from user data")
print(" ".join(i["InstanceId"] for i in r["Instances"]))
"#;
    let out = Command::new(&python)
        .args(["-c", launch])
        .env("ENDPOINT", server["ec2"]["url"].as_str().unwrap())
        .env("REGION", server["ec2"]["region"].as_str().unwrap())
        .env("KEY", key["id"].as_str().unwrap())
        .env("SECRET", key["secret"].as_str().unwrap())
        .env("CA", home.join("pki/ca/ca.pem"))
        .env("IMAGE", &ami)
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let instances: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(instances.len(), 2, "{instances:?}");
    for instance in &instances {
        let ws = format!("ws-{}", instance.trim_start_matches("i-"));
        let m = probe(home, &ws);
        assert_eq!(m["instance"], *instance, "{m:?}");
        assert_eq!(m["ami"], ami);
        assert_eq!(m["hostname"], ws);
        assert_eq!(m["zone"], "vws-local-a");
        assert_eq!(m["ipv4"], "10.0.2.15");
        assert!(
            m["key"].starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            "{m:?}"
        );
        assert_eq!(m["userdata"], "hello from user data");
        assert!(m["notoken"].contains(" 401 "), "{m:?}");
        assert!(m["forged"].contains(" 401 "), "{m:?}");
        assert!(m["proxied"].contains(" 403 "), "{m:?}");
    }

    // A dynamic account has the service too, in its own network namespace.
    let desc = tiny_account(home);
    let id = create(home, &desc);
    ok(home, &["deploy", &id]);
    ok(home, &["start", &id]);
    let m = probe(home, &id);
    assert_eq!(
        m["instance"],
        format!("i-{}", id.trim_start_matches("ws-")),
        "{m:?}"
    );
    assert_eq!(m["hostname"], id);
    assert!(
        m["userdata"].is_empty() || m["userdata"] == "Not Found",
        "{m:?}"
    );
    assert!(m["notoken"].contains(" 401 "), "{m:?}");
    assert!(m["proxied"].contains(" 403 "), "{m:?}");
    // Its jobs cannot stop the service: it is PID 1's.
    let _ = vws(home, &["run", &id, "--", "sh", "-c", "kill -9 -1; true"]);
    assert_eq!(probe(home, &id)["instance"], m["instance"]);
    for w in instances
        .iter()
        .map(|i| format!("ws-{}", i.trim_start_matches("i-")))
        .chain([id])
    {
        ok(home, &["destroy", &w]);
    }
}
