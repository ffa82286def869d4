//! A stock cloud-style image under vws: `vws image build --bootable`
//! makes a Debian disk with its own bootloader, kernel, systemd,
//! cloud-init and openssh-server (and the vws agent as a service); an
//! instance launched from it through the EC2 front-end, with a key pair
//! and user data, boots by itself, reads its NoCloud seed and reaches
//! `cloud-init status --wait` → done: host name set, the key in the
//! default user's authorized_keys, user data's runcmd run. Jobs reach it
//! through the agent.

mod common;

use common::*;
use serde_json::Value;

/// The bootable image, built once into target/ (rebuilt when the agent or
/// the recipe is newer).
fn cloud_image(home: &std::path::Path) -> std::path::PathBuf {
    let image = root().join("target/vws-test-cloud.img");
    let agent = root().join("target/guest/x86_64-unknown-linux-gnu/release/vws-agent");
    let recipe = root().join("crates/cli/src/commands/image_build.rs");
    let stale = |img: &std::path::Path| {
        let m = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(img).is_none() || m(img) < m(&agent) || m(img) < m(&recipe)
    };
    if stale(&image) {
        let part = image.with_extension(format!("part-{}", std::process::id()));
        ok(
            home,
            &[
                "image",
                "build",
                "cloud-build:1",
                "--from",
                "debian",
                "--bootable",
                "--agent",
                agent.to_str().unwrap(),
                "--out",
                part.to_str().unwrap(),
            ],
        );
        std::fs::rename(&part, &image).unwrap();
    }
    image
}

#[test]
fn a_cloud_image_boots_and_cloud_init_is_done() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let _reap = Reap(home.to_path_buf());
    let (_up, ec2) = ec2_up(home);
    minimal_guest(); // builds the static agent the image installs
    let disk = cloud_image(home);
    let imported = ok(
        home,
        &[
            "image",
            "import",
            "cloud:1",
            "--disk",
            disk.to_str().unwrap(),
            "--json",
        ],
    );
    let image: Value = serde_json::from_str(&imported).unwrap();
    let ami = vws_model::cloud_ids::image_id(image["id"].as_str().unwrap());
    let pubkey =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb2CwSvTjgLp5JFgMTw8iUlJF3KXJrWCdXJkz6Ks3Mv me@here";
    let launch = format!(
        "{BOTO3_CLIENT}{}",
        r##"
c.import_key_pair(KeyName="mine", PublicKeyMaterial=os.environ["PUBKEY"].encode())
user_data = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo ran-by-cloud-init > /var/tmp/runcmd']\n"
r = c.run_instances(ImageId=os.environ["IMAGE"], InstanceType="vws.small", MinCount=1, MaxCount=1,
                    KeyName="mine", UserData=user_data)
print(r["Instances"][0]["InstanceId"])
"##
    );
    let started = std::time::Instant::now();
    let instance = ec2.boto3(&launch, &[("IMAGE", &ami), ("PUBKEY", pubkey)]);
    let ws = format!("ws-{}", instance.trim_start_matches("i-"));
    eprintln!("booted to its agent in {:.1?}", started.elapsed());
    let waited = vws(
        home,
        &["run", &ws, "--", "cloud-init", "status", "--wait", "--long"],
    );
    let status = String::from_utf8_lossy(&waited.stdout).into_owned();
    eprintln!(
        "cloud-init ended {:.1?} after the launch",
        started.elapsed()
    );
    if !status.contains("status: done") {
        let log = vws(
            home,
            &[
                "run",
                &ws,
                "--",
                "tail",
                "-n",
                "40",
                "/var/log/cloud-init.log",
            ],
        );
        panic!(
            "cloud-init did not finish: {status}\n{}\nits log:\n{}",
            String::from_utf8_lossy(&waited.stderr),
            String::from_utf8_lossy(&log.stdout)
        );
    }
    assert_eq!(ok(home, &["run", &ws, "--", "hostname"]).trim(), ws);
    let keys = ok(
        home,
        &["run", &ws, "--", "cat", "/home/debian/.ssh/authorized_keys"],
    );
    assert!(keys.contains(pubkey), "{keys}");
    assert_eq!(
        ok(home, &["run", &ws, "--", "cat", "/var/tmp/runcmd"]).trim(),
        "ran-by-cloud-init"
    );
    let seed = ok(
        home,
        &["run", &ws, "--", "cloud-init", "query", "v1.instance_id"],
    );
    assert_eq!(seed.trim(), instance);

    // CreateImage of the stopped instance is a disk image of what it wrote;
    // an instance from it boots with that, as a new instance to cloud-init.
    let again = format!(
        "{BOTO3_CLIENT}{}",
        r##"
i = os.environ["INSTANCE"]
c.stop_instances(InstanceIds=[i])
c.get_waiter("instance_stopped").wait(InstanceIds=[i], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
ami = c.create_image(InstanceId=i, Name="cloud-saved")["ImageId"]
c.get_waiter("image_available").wait(ImageIds=[ami], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
r = c.run_instances(ImageId=ami, InstanceType="vws.small", MinCount=1, MaxCount=1)
print(r["Instances"][0]["InstanceId"])
"##
    );
    let second = ec2.boto3(&again, &[("INSTANCE", &instance)]);
    let ws2 = format!("ws-{}", second.trim_start_matches("i-"));
    let saved: Value = serde_json::from_str(&ok(
        home,
        &["image", "show", "cloud-saved:latest", "--json"],
    ))
    .unwrap();
    assert_eq!(saved["kind"], "disk", "{saved}");
    assert_eq!(
        ok(home, &["run", &ws2, "--", "cat", "/var/tmp/runcmd"]).trim(),
        "ran-by-cloud-init",
        "the new instance's disk is the first one's"
    );
    let waited = ok(home, &["run", &ws2, "--", "cloud-init", "status", "--wait"]);
    assert!(waited.contains("status: done"), "{waited}");
    assert_eq!(ok(home, &["run", &ws2, "--", "hostname"]).trim(), ws2);
    for w in [&ws, &ws2] {
        ok(home, &["destroy", w]);
    }
}
