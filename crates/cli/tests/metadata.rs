//! The instance metadata service inside workspaces (169.254.169.254,
//! IMDSv2): two VM instances launched through the EC2 front-end (with a
//! key pair and user data) and a dynamic account each read their own
//! facts with a token, are refused without one (401) or through a proxy
//! (403), and see only their own: the service answers inside each
//! workspace from its own file, never by source address.

mod common;

use common::*;

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
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let (_up, ec2) = ec2_up(home);
    let ami = minimal_ami(home);

    // Two instances with a key pair and user data, through boto3.
    let launch = format!(
        "{BOTO3_CLIENT}{}",
        r#"
c.import_key_pair(KeyName="mine", PublicKeyMaterial=b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb2CwSvTjgLp5JFgMTw8iUlJF3KXJrWCdXJkz6Ks3Mv me@here")
r = c.run_instances(ImageId=os.environ["IMAGE"], InstanceType="vws.micro", MinCount=2, MaxCount=2,
                    KeyName="mine", UserData="hello from user data")
print(" ".join(i["InstanceId"] for i in r["Instances"]))
"#
    );
    let launched = ec2.boto3(&launch, &[("IMAGE", &ami)]);
    let instances: Vec<String> = launched.split_whitespace().map(str::to_string).collect();
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
