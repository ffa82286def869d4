//! The grammar of the API's path parameters (workspace and job ids,
//! digests, image references, node and network names), checked before
//! anything reads them.

/// Checks a path parameter against its grammar before anything else reads
/// it: workspace ids (`ws-` and 12 hex digits), job ids (`job-` and 12),
/// digests (`sha256:` and 64), image references (`name:tag` or a digest),
/// node and network names (1–63 of letters, digits, `.`, `_`, `-`, the
/// first a letter or digit), access key ids (`AKIA` and 16 of A-Z, 2-7),
/// agreement ids (`ag-` and 16 hex digits), operation ids (`op-` and 16). The
/// message names the parameter and its grammar (400 `bad_request`).
pub fn check_param(name: &str, value: &str) -> Result<(), String> {
    let hex = |prefix: &str, len: usize| {
        value.strip_prefix(prefix).is_some_and(|h| {
            h.len() == len
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    let (ok, grammar) = match name {
        "id" => (hex("ws-", 12), "a workspace id (ws- and 12 hex digits)"),
        "job" => (hex("job-", 12), "a job id (job- and 12 hex digits)"),
        "operation" => (hex("op-", 16), "an operation id (op- and 16 hex digits)"),
        "agreement" => (hex("ag-", 16), "an agreement id (ag- and 16 hex digits)"),
        "digest" => (
            vws_model::is_digest(value),
            "a digest (sha256: and 64 hex digits)",
        ),
        "reference" => (
            value.parse::<vws_model::ImageRef>().is_ok(),
            "an image reference (NAME:TAG or sha256:…)",
        ),
        "name" => (
            value.len() <= 63
                && value
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "a name (1 to 63 letters, digits, '.', '_' or '-', from a letter or digit)",
        ),
        "key" => (
            value.strip_prefix("AKIA").is_some_and(|k| {
                k.len() == 16
                    && k.bytes()
                        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
            }),
            "an access key id (AKIA and 16 of A-Z, 2-7)",
        ),
        _ => (true, ""),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{{{name}}} {value:?} is not {grammar}"))
    }
}
