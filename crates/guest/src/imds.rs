//! The instance metadata service inside a workspace, as EC2's IMDSv2
//! answers it at 169.254.169.254: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` (1–21600) gives a token; every
//! `GET` must carry it (`X-aws-ec2-metadata-token`), or gets 401. The
//! facts are the workspace's own, read from the file the node installs
//! beside its credential (`vws_model::node::InstanceMetadata`, JSON), so
//! nothing here can answer for another workspace. The guest agent serves
//! it in a VM; a dynamic account's PID 1 serves it in the account.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest token lifetime (EC2's: six hours).
pub const MAX_TTL: u64 = 21_600;

/// Where it answers (EC2's link-local address).
pub const ADDRESS: &str = "169.254.169.254";

/// The file name of the metadata beside the credential.
pub const FILE: &str = "metadata.json";

/// Live tokens and when each expires.
#[derive(Default)]
pub struct Tokens(Mutex<HashMap<String, Instant>>);

impl Tokens {
    fn issue(&self, ttl: Duration) -> String {
        let mut bytes = [0u8; 24];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if read.is_err() {
            // No token is better than a guessable one.
            return String::new();
        }
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        live.retain(|_, until| *until > now);
        live.insert(token.clone(), now + ttl);
        token
    }

    fn valid(&self, token: &str) -> bool {
        let live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        live.get(token).is_some_and(|until| *until > Instant::now())
    }
}

/// An answer: status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body (text).
    pub body: Vec<u8>,
}

fn answer(status: u16, body: impl Into<Vec<u8>>) -> Answer {
    Answer {
        status,
        body: body.into(),
    }
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// What a metadata path answers, from the metadata document.
fn lookup(doc: &Value, path: &str) -> Option<Vec<u8>> {
    let keys: Vec<(String, String)> = doc
        .get("public_keys")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    Some((
                        p.get(0)?.as_str()?.to_string(),
                        p.get(1)?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let field = |k: &str| text(doc, k).map(String::into_bytes);
    let listing = |items: Vec<String>| Some(items.join("\n").into_bytes());
    match path.trim_end_matches('/') {
        "/latest" => listing(vec![
            "dynamic".into(),
            "meta-data".into(),
            "user-data".into(),
        ]),
        "/latest/meta-data" => {
            let mut items: Vec<String> = ["ami-id", "hostname", "instance-id"]
                .map(String::from)
                .to_vec();
            if doc.get("instance_type").is_some_and(|t| t.is_string()) {
                items.push("instance-type".into());
            }
            items.push("local-hostname".into());
            if doc.get("local_ipv4").is_some_and(|t| t.is_string()) {
                items.push("local-ipv4".into());
            }
            items.push("placement/".into());
            if !keys.is_empty() {
                items.push("public-keys/".into());
            }
            listing(items)
        }
        "/latest/meta-data/ami-id" => field("ami_id"),
        "/latest/meta-data/instance-id" => field("instance_id"),
        "/latest/meta-data/instance-type" => field("instance_type"),
        "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname" => {
            field("local_hostname")
        }
        "/latest/meta-data/local-ipv4" => field("local_ipv4"),
        "/latest/meta-data/placement" => listing(vec!["availability-zone".into(), "region".into()]),
        "/latest/meta-data/placement/availability-zone" => field("availability_zone"),
        "/latest/meta-data/placement/region" => field("region"),
        "/latest/meta-data/public-keys" if !keys.is_empty() => listing(
            keys.iter()
                .enumerate()
                .map(|(i, (name, _))| format!("{i}={name}"))
                .collect(),
        ),
        p => {
            if let Some(rest) = p.strip_prefix("/latest/meta-data/public-keys/") {
                let (index, tail) = rest.split_once('/').unwrap_or((rest, ""));
                let (_, key) = keys.get(index.parse::<usize>().ok()?)?;
                return match tail {
                    "" => listing(vec!["openssh-key".into()]),
                    "openssh-key" => Some(format!("{key}\n").into_bytes()),
                    _ => None,
                };
            }
            match p {
                "/latest/user-data" => {
                    use base64::Engine;
                    let data = text(doc, "user_data")?;
                    base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .ok()
                }
                "/latest/dynamic/instance-identity/document" => Some(
                    serde_json::to_vec_pretty(&serde_json::json!({
                        "instanceId": text(doc, "instance_id"),
                        "imageId": text(doc, "ami_id"),
                        "instanceType": text(doc, "instance_type"),
                        "availabilityZone": text(doc, "availability_zone"),
                        "region": text(doc, "region"),
                        "privateIp": text(doc, "local_ipv4"),
                        "architecture": "x86_64",
                        "version": "2017-09-30",
                    }))
                    .ok()?,
                ),
                _ => None,
            }
        }
    }
}

/// One request's answer. `headers` are lower-case names.
pub fn respond(
    method: &str,
    path: &str,
    headers: &HashMap<String, String>,
    metadata: &Path,
    tokens: &Tokens,
) -> Answer {
    // A token must not be handed through a proxy (EC2 refuses the same).
    if headers.contains_key("x-forwarded-for") {
        return answer(403, "Forbidden: requests through a proxy are refused\n");
    }
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("PUT", "/latest/api/token") => {
            let ttl = headers
                .get("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.trim().parse::<u64>().ok());
            match ttl {
                Some(t) if (1..=MAX_TTL).contains(&t) => {
                    match tokens.issue(Duration::from_secs(t)) {
                        token if token.is_empty() => answer(503, "no randomness for a token\n"),
                        token => answer(200, token),
                    }
                }
                _ => answer(
                    400,
                    "Bad Request: X-aws-ec2-metadata-token-ttl-seconds must be 1 to 21600\n",
                ),
            }
        }
        ("GET" | "HEAD", _) => {
            let token = headers.get("x-aws-ec2-metadata-token");
            if !token.is_some_and(|t| tokens.valid(t.trim())) {
                return answer(
                    401,
                    "Unauthorized: PUT /latest/api/token first, and send its token\n",
                );
            }
            let doc: Value = match std::fs::read(metadata)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(d) => d,
                None => return answer(404, "Not Found: this workspace has no metadata yet\n"),
            };
            match lookup(&doc, path) {
                Some(body) => answer(200, body),
                None => answer(404, "Not Found\n"),
            }
        }
        (_, _) => answer(405, "Method Not Allowed\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    }
}

fn handle(mut stream: TcpStream, metadata: &Path, tokens: &Tokens) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let (method, path, headers) = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut parsed);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let headers = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<HashMap<_, _>>();
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    headers,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            _ => {
                let _ = stream.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            }
        }
    };
    let a = respond(&method, &path, &headers, metadata, tokens);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        a.status,
        reason(a.status),
        a.body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if method != "HEAD" {
        let _ = stream.write_all(&a.body);
    }
}

/// Serves `listener` (bound to 169.254.169.254:80) until the process ends,
/// a thread per connection.
pub fn serve(listener: TcpListener, metadata: PathBuf) {
    let tokens = Arc::new(Tokens::default());
    let metadata = Arc::new(metadata);
    for stream in listener.incoming().flatten() {
        let (tokens, metadata) = (tokens.clone(), metadata.clone());
        std::thread::spawn(move || handle(stream, &metadata, &tokens));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_first_then_the_workspace_s_own_facts() {
        let dir = std::env::temp_dir().join(format!("vws-imds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(FILE);
        std::fs::write(
            &file,
            r#"{"instance_id":"i-0123456789ab","ami_id":"ami-0f87b6c1e9ab36978","instance_type":"vws.micro",
               "local_hostname":"ws-0123456789ab","local_ipv4":"10.0.2.15","availability_zone":"vws-local-a",
               "region":"vws-local","public_keys":[["mykey","ssh-ed25519 AAAA me"]],"user_data":"aGVsbG8="}"#,
        )
        .unwrap();
        let tokens = Tokens::default();
        let h = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let get = |path: &str, headers: &HashMap<String, String>| {
            respond("GET", path, headers, &file, &tokens)
        };
        assert_eq!(get("/latest/meta-data/instance-id", &h(&[])).status, 401);
        assert_eq!(
            respond("PUT", "/latest/api/token", &h(&[]), &file, &tokens).status,
            400
        );
        assert_eq!(
            respond(
                "PUT",
                "/latest/api/token",
                &h(&[("x-aws-ec2-metadata-token-ttl-seconds", "99999")]),
                &file,
                &tokens
            )
            .status,
            400
        );
        let with_proxy = h(&[
            ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(
            respond("PUT", "/latest/api/token", &with_proxy, &file, &tokens).status,
            403
        );
        let t = respond(
            "PUT",
            "/latest/api/token",
            &h(&[("x-aws-ec2-metadata-token-ttl-seconds", "60")]),
            &file,
            &tokens,
        );
        assert_eq!(t.status, 200);
        let token = String::from_utf8(t.body).unwrap();
        let auth = h(&[("x-aws-ec2-metadata-token", &token)]);
        let body = |p: &str| String::from_utf8(get(p, &auth).body).unwrap();
        assert_eq!(body("/latest/meta-data/instance-id"), "i-0123456789ab");
        assert_eq!(body("/latest/meta-data/local-ipv4"), "10.0.2.15");
        assert_eq!(
            body("/latest/meta-data/placement/availability-zone"),
            "vws-local-a"
        );
        assert_eq!(body("/latest/meta-data/public-keys/"), "0=mykey");
        assert_eq!(
            body("/latest/meta-data/public-keys/0/openssh-key"),
            "ssh-ed25519 AAAA me\n"
        );
        assert_eq!(body("/latest/user-data"), "hello");
        assert!(body("/latest/meta-data/").contains("instance-id\n"));
        assert_eq!(get("/latest/meta-data/nothing", &auth).status, 404);
        assert_eq!(
            get(
                "/latest/meta-data/instance-id",
                &h(&[("x-aws-ec2-metadata-token", "forged")])
            )
            .status,
            401
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
