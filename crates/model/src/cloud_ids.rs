//! EC2-style names of vws things, shared by the EC2 front-end and the
//! instance metadata a workspace is given: a workspace `ws-0123456789ab` is
//! instance `i-0123456789ab`; an image is `ami-` and the first 17 hex digits
//! of its content digest.

/// The instance id of a workspace id.
pub fn instance_id(workspace: &str) -> String {
    format!("i-{}", workspace.trim_start_matches("ws-"))
}

/// The image id of a content digest (`sha256:…`).
pub fn image_id(digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("ami-{}", &hex[..17.min(hex.len())])
}
