//! Hostile and malformed requests against the real API: each gets the
//! right status in the one error shape, and none changes the repository
//! (records, history, images).

mod common;

use common::*;
use serde_json::Value;
use vws_store::Backend;

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: impl Into<String>,
    content_type: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> Case {
    Case {
        what,
        method,
        path: path.into(),
        content_type,
        body: body.into(),
        status,
    }
}

const XML: Option<&str> = Some("application/xml");
const TOML: Option<&str> = Some("application/toml");
const JSON: Option<&str> = Some("application/json");

fn toml_with(hardware: &str) -> String {
    format!("category = \"vm\"\n[hardware]\n{hardware}\n[software]\nimage = \"minimal:1\"\n")
}

fn cases(w: &str) -> Vec<Case> {
    let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><virtualWorkspace xmlns="http://vws.example/ns/workspace">&lol3;</virtualWorkspace>"#;
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><virtualWorkspace xmlns="http://vws.example/ns/workspace"><name>&xxe;</name></virtualWorkspace>"#;
    let deep_xml = format!("{}{}", "<a>".repeat(50_000), "</a>".repeat(50_000));
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big = vec![b'x'; 2 << 20];
    let post =
        |what, ct, body: &str, status| case(what, "POST", "/v1/workspaces", ct, body, status);
    vec![
        // Descriptions.
        post("billion laughs", XML, laughs, 422),
        post("external entity", XML, xxe, 422),
        post(
            "unclosed XML",
            XML,
            "<virtualWorkspace xmlns=\"http://vws.example/ns/workspace\">",
            422,
        ),
        post("wrong XML root", XML, "<html/>", 422),
        post("50 000 nested XML elements", XML, &deep_xml, 422),
        post("control characters instead of XML", XML, "\u{0}\u{1}", 422),
        case(
            "invalid UTF-8 bytes",
            "POST",
            "/v1/workspaces",
            XML,
            vec![0xff, 0xfe, 0x3c],
            400,
        ),
        post("negative RAM", TOML, &toml_with("ram = \"-1MiB\""), 422),
        post("zero RAM", TOML, &toml_with("ram = \"0B\""), 422),
        post(
            "absurd RAM",
            TOML,
            &toml_with("ram = \"99999999999TiB\""),
            422,
        ),
        post(
            "RAM as a number too large",
            TOML,
            &toml_with("ram = 18446744073709551615999"),
            422,
        ),
        post("negative cpus", TOML, &toml_with("cpus = -1"), 422),
        post("absurd cpus", TOML, &toml_with("cpus = 1000000000"), 422),
        post(
            "absurd disk",
            TOML,
            &toml_with("disk = { size = \"1000000PiB\" }"),
            422,
        ),
        post(
            "negative lifetime",
            TOML,
            "category = \"vm\"\nlifeCycle = -5\n[software]\nimage = \"minimal:1\"\n",
            422,
        ),
        post(
            "lifetime past policy",
            TOML,
            "category = \"vm\"\nlifeCycle = 2592000\n[software]\nimage = \"minimal:1\"\n",
            403,
        ),
        post(
            "unknown category",
            TOML,
            "category = \"rootkit\"\n[software]\nimage = \"minimal:1\"\n",
            422,
        ),
        post(
            "image path traversal",
            TOML,
            "category = \"vm\"\n[software]\nimage = \"../../etc/passwd\"\n",
            422,
        ),
        post(
            "missing image",
            TOML,
            "category = \"vm\"\n[software]\nimage = \"nope:1\"\n",
            422,
        ),
        post("TOML syntax error", TOML, "category = = \"vm\"", 422),
        post(
            "unknown TOML field",
            TOML,
            "category = \"vm\"\nshell = \"/bin/sh\"\n[software]\nimage = \"minimal:1\"\n",
            422,
        ),
        post("truncated JSON", JSON, "{\"category\":", 422),
        post("JSON of the wrong type", JSON, "[1,2,3]", 422),
        post("10 000 nested JSON arrays", JSON, &deep_json, 422),
        post("empty body", TOML, "", 422),
        case(
            "body over 1 MiB",
            "POST",
            "/v1/workspaces",
            TOML,
            big.clone(),
            413,
        ),
        post("text/plain", Some("text/plain"), "category = \"vm\"", 415),
        post("octet-stream", Some("application/octet-stream"), "x", 415),
        post("no content type", None, "category = \"vm\"", 415),
        case(
            "name with traversal",
            "POST",
            "/v1/workspaces?name=..%2F..%2Fetc",
            TOML,
            toml_with("ram = \"64MiB\""),
            400,
        ),
        case(
            "name with a slash",
            "POST",
            "/v1/workspaces?name=a%2Fb",
            TOML,
            toml_with("ram = \"64MiB\""),
            400,
        ),
        case(
            "name with NUL",
            "POST",
            "/v1/workspaces?name=a%00b",
            TOML,
            toml_with("ram = \"64MiB\""),
            400,
        ),
        case(
            "name of 300 characters",
            "POST",
            format!("/v1/workspaces?name={}", "n".repeat(300)),
            TOML,
            toml_with("ram = \"64MiB\""),
            400,
        ),
        // Images and blobs.
        case(
            "image name traversal",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"../x","tag":"1","disk":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
            400,
        ),
        case(
            "image tag with a slash",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"x","tag":"a/b","disk":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
            400,
        ),
        case(
            "image digest not hex",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"x","tag":"1","disk":"sha256:zz"}"#,
            400,
        ),
        case(
            "image of a missing blob",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"x","tag":"1","disk":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}"#,
            404,
        ),
        case(
            "image kernel without initrd",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"x","tag":"1","kernel":"sha256:1111111111111111111111111111111111111111111111111111111111111111"}"#,
            400,
        ),
        case(
            "image with unknown fields",
            "POST",
            "/v1/images",
            JSON,
            r#"{"name":"x","tag":"1","exec":"rm -rf /"}"#,
            400,
        ),
        case(
            "blob name not a digest",
            "PUT",
            "/v1/blobs/not-a-digest",
            Some("application/octet-stream"),
            "x",
            400,
        ),
        case(
            "blob not matching its digest",
            "PUT",
            "/v1/blobs/sha256:2222222222222222222222222222222222222222222222222222222222222222",
            Some("application/octet-stream"),
            "not those bytes",
            422,
        ),
        case(
            "blob path traversal",
            "GET",
            "/v1/blobs/sha256:..%2F..%2Fetc%2Fpasswd",
            None,
            "",
            400,
        ),
        case("blob dot-dot", "GET", "/v1/blobs/..", None, "", 404),
        case(
            "missing blob",
            "HEAD",
            "/v1/blobs/sha256:3333333333333333333333333333333333333333333333333333333333333333",
            None,
            "",
            404,
        ),
        // Workspaces by id.
        case(
            "id traversal",
            "GET",
            "/v1/workspaces/..%2F..%2Fetc%2Fpasswd",
            None,
            "",
            400,
        ),
        // Path parameters are checked against their grammar first (400):
        // `..`, an encoded `/`, NUL and anything else an id is not.
        case(
            "id of someone's file",
            "GET",
            "/v1/workspaces/%2Fetc%2Fpasswd",
            None,
            "",
            400,
        ),
        // A URL resolves `..` (and `%2E%2E`) before it is sent: no route.
        case("dot-dot id", "DELETE", "/v1/workspaces/..", None, "", 404),
        case(
            "dot-dot, encoded",
            "DELETE",
            "/v1/workspaces/%2E%2E",
            None,
            "",
            404,
        ),
        case(
            "encoded slash in an id",
            "POST",
            "/v1/workspaces/ws-1%2F..%2F..%2Fnodes/start",
            None,
            "",
            400,
        ),
        case(
            "NUL in an id",
            "GET",
            "/v1/workspaces/ws-%00",
            None,
            "",
            400,
        ),
        case(
            "job id with a slash",
            "POST",
            "/v1/jobs/job-0%2F1/cancel",
            None,
            "",
            400,
        ),
        case(
            "malformed digest",
            "HEAD",
            "/v1/blobs/sha256:..",
            None,
            "",
            400,
        ),
        case(
            "image reference with a slash",
            "DELETE",
            "/v1/images/..%2Fworkspaces",
            None,
            "",
            400,
        ),
        case(
            "network name with NUL",
            "GET",
            "/v1/networks/lab%00",
            None,
            "",
            400,
        ),
        case(
            "destroy a missing workspace",
            "DELETE",
            "/v1/workspaces/ws-000000000000",
            None,
            "",
            404,
        ),
        case(
            "negative renewal",
            "POST",
            format!("/v1/workspaces/{w}/renew"),
            JSON,
            r#"{"lifetime": -5}"#,
            400,
        ),
        case(
            "absurd renewal",
            "POST",
            format!("/v1/workspaces/{w}/renew"),
            JSON,
            r#"{"lifetime": 1e30}"#,
            400,
        ),
        case(
            "renewal as a string",
            "POST",
            format!("/v1/workspaces/{w}/renew"),
            JSON,
            r#"{"lifetime": "forever"}"#,
            400,
        ),
        case(
            "clone name traversal",
            "POST",
            format!("/v1/workspaces/{w}/clone"),
            JSON,
            r#"{"name": "../x"}"#,
            400,
        ),
        case(
            "start in the repository",
            "POST",
            format!("/v1/workspaces/{w}/start"),
            None,
            "",
            409,
        ),
        case(
            "snapshot name traversal",
            "POST",
            format!("/v1/workspaces/{w}/snapshot"),
            JSON,
            r#"{"as": "../../x:1"}"#,
            400,
        ),
        case(
            "migrate without a target",
            "POST",
            format!("/v1/workspaces/{w}/migrate"),
            JSON,
            "{}",
            400,
        ),
        case(
            "migrate to a number",
            "POST",
            format!("/v1/workspaces/{w}/migrate"),
            JSON,
            r#"{"to": 5}"#,
            400,
        ),
        case(
            "job argv of the wrong type",
            "POST",
            format!("/v1/workspaces/{w}/jobs"),
            JSON,
            r#"{"argv": "rm -rf /"}"#,
            400,
        ),
        case(
            "batch of absurd concurrency",
            "POST",
            format!("/v1/workspaces/{w}/jobs/batch"),
            JSON,
            r#"{"concurrency": -1, "jobs": []}"#,
            400,
        ),
        case(
            "file path not absolute",
            "GET",
            format!("/v1/workspaces/{w}/files?path=..%2F..%2Fetc%2Fpasswd"),
            None,
            "",
            400,
        ),
        case(
            "negative page size",
            "GET",
            "/v1/workspaces?limit=-1",
            None,
            "",
            400,
        ),
        case(
            "page size over u64",
            "GET",
            "/v1/workspaces?limit=99999999999999999999999",
            None,
            "",
            400,
        ),
        case(
            "forged cursor",
            "GET",
            "/v1/workspaces?after=garbage",
            None,
            "",
            400,
        ),
        case(
            "unknown state filter",
            "GET",
            "/v1/workspaces?state=exploded",
            None,
            "",
            400,
        ),
        case(
            "method not allowed",
            "PATCH",
            "/v1/workspaces",
            JSON,
            "{}",
            405,
        ),
        case(
            "unknown route",
            "GET",
            "/v1/../../etc/passwd",
            None,
            "",
            404,
        ),
        case(
            "job id traversal",
            "POST",
            "/v1/jobs/..%2F..%2Fx/cancel",
            None,
            "",
            400,
        ),
        case(
            "malformed node registration",
            "POST",
            "/v1/nodes",
            JSON,
            r#"{"name": 5}"#,
            400,
        ),
        case(
            "heartbeat of garbage",
            "POST",
            "/v1/nodes/n1/heartbeat",
            JSON,
            "\u{1}\u{2}",
            400,
        ),
    ]
}

async fn fingerprint(http: &reqwest::Client, base: &str, w: &str) -> Value {
    let get = |p: String| {
        let http = http.clone();
        async move {
            http.get(p)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    serde_json::json!({
        "workspaces": get(format!("{base}/v1/workspaces?limit=1000")).await,
        "images": get(format!("{base}/v1/images")).await,
        "history": get(format!("{base}/v1/workspaces/{w}/history")).await,
    })
}

#[tokio::test]
async fn hostile_requests_get_their_status_and_change_nothing() {
    let h = harness(Backend::Sqlite, "").await;
    h.kernel_image("minimal", "1").await;
    let base = serve_api(&h, alice()).await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{base}/v1/workspaces"))
        .header("content-type", "application/toml")
        .body(toml_with("ram = \"64MiB\""))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let w = created["id"].as_str().unwrap().to_string();
    let before = fingerprint(&http, &base, &w).await;
    let all = cases(&w);
    assert!(all.len() >= 50, "{} cases", all.len());
    let mut wrong = Vec::new();
    for c in &all {
        let mut req = http.request(c.method.parse().unwrap(), format!("{base}{}", c.path));
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.body(c.body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let head = c.method == "HEAD";
        let body: Value = if head {
            Value::Null
        } else {
            resp.json().await.unwrap_or(Value::Null)
        };
        let shaped =
            head || (body["error"]["code"].is_string() && body["error"]["message"].is_string());
        if status != c.status || !shaped {
            wrong.push(format!(
                "{}: {} {} → {status} {body}",
                c.what, c.method, c.path
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert_eq!(
        fingerprint(&http, &base, &w).await,
        before,
        "no hostile request changed the repository"
    );
}
