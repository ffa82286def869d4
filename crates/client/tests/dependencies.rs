//! The client stays a thin HTTP library: the API's types come from
//! `vws-model`, and nothing of the repository's database reaches it.

#[test]
fn the_client_does_not_pull_in_a_database_library() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "vws-client",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.lines().any(|l| l.starts_with("vws-model ")), "{tree}");
    let crates: Vec<&str> = tree
        .lines()
        .filter(|l| {
            l.starts_with("sqlx") || l.starts_with("vws-store ") || l.starts_with("libsqlite3")
        })
        .collect();
    assert!(crates.is_empty(), "vws-client depends on {crates:?}");
}
