//! What an OCI image config says, as a workspace's defaults: the startup
//! program (`Entrypoint` then `Cmd`), the jobs' environment and folder,
//! the user, the served ports and the labels.

use std::collections::BTreeMap;

pub use vws_model::software::OciOrigin;

/// Quotes a word for `/bin/sh`.
fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r#"'\''"#))
    }
}

/// `Entrypoint` and `Cmd` as one shell command line (none when both are
/// empty).
pub fn startup(o: &OciOrigin) -> Option<String> {
    let words: Vec<String> = o
        .entrypoint
        .iter()
        .chain(&o.cmd)
        .map(|w| quote(w))
        .collect();
    (!words.is_empty()).then(|| format!("exec {}", words.join(" ")))
}

/// The origin record of an image resolved at `reference`.
pub fn origin(r: &crate::registry::Resolved) -> (OciOrigin, BTreeMap<String, String>) {
    let c = r.config.config();
    let c = c.as_ref();
    let origin = OciOrigin {
        reference: r.reference.clone(),
        manifest_digest: r.manifest_digest.clone(),
        config_digest: r.config_digest.clone(),
        layers: r.layers.iter().map(|l| l.digest.clone()).collect(),
        architecture: r.config.architecture().to_string(),
        os: r.config.os().to_string(),
        entrypoint: c.and_then(|c| c.entrypoint().clone()).unwrap_or_default(),
        cmd: c.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        env: c.and_then(|c| c.env().clone()).unwrap_or_default(),
        working_dir: c
            .and_then(|c| c.working_dir().clone())
            .filter(|w| !w.is_empty()),
        user: c.and_then(|c| c.user().clone()).filter(|u| !u.is_empty()),
        exposed_ports: c
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default(),
        // Known once the layers are applied.
        shell: false,
        derived_from: None,
    };
    let labels = c
        .and_then(|c| c.labels().clone())
        .map(|l| l.into_iter().collect())
        .unwrap_or_default();
    (origin, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_and_cmd_become_one_quoted_line() {
        let o = OciOrigin {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo it's $HOME".into()],
            ..Default::default()
        };
        assert_eq!(
            startup(&o).unwrap(),
            r#"exec /bin/sh -c 'echo it'\''s $HOME'"#
        );
        assert_eq!(startup(&OciOrigin::default()), None);
    }
}
