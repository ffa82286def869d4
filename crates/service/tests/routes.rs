//! The access matrix, generated from the route table: every route, called
//! over mutual TLS by the workspace's owner, another user, a workspace's
//! own certificate, the node that holds the workspace, a node that does not,
//! and a revoked certificate, gets the answer its rule documents. A route
//! added without a rule, or a rule that stops being enforced, fails here.

mod common;

use std::sync::Arc;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use vws_pki::{Ca, Credentials, Kind, Request};
use vws_service::acl::Class;
use vws_service::api::{self, AppState, Auth};
use vws_service::routes::{Rule, ROUTES};
use vws_store::{Backend, Change};

const OWNER: &str = "/O=Grid/OU=bio/CN=Alice";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Owner,
    OtherUser,
    WorkspaceCert,
    HoldingNode,
    OtherNode,
    Revoked,
}

/// What the rule documents for a caller.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Past the guard: the handler answers (any status but 401/403, and no
    /// 404 for what the caller owns).
    Served,
    /// 403: the wrong kind of certificate.
    Forbidden,
    /// 404: someone else's (its existence is not told).
    Hidden,
    /// Refused at the connection or 401: revoked.
    Refused,
}

/// Routes whose path names something of the owner's (so another client
/// gets 404 from the handler, after the guard let it through).
fn owned_by_path(path: &str) -> bool {
    path.contains("{id}")
        || path.contains("{key}")
        || path.contains("{agreement}")
        || path.contains("{operation}")
        || path.contains("{job}") && path.starts_with("/v1/jobs")
}

fn expect(method: &str, path: &str, rule: Rule, who: Who) -> Expect {
    use Expect::*;
    if who == Who::Revoked {
        return Refused;
    }
    let client = matches!(who, Who::Owner | Who::OtherUser);
    let node = matches!(who, Who::HoldingNode | Who::OtherNode);
    match rule {
        Rule::Open => Served,
        Rule::Client(_) if !client => Forbidden,
        // Neither user carries role=admin, which the default ACL asks for.
        Rule::Client(c) if c.class() == Class::Admin => Forbidden,
        Rule::Client(_) if who == Who::OtherUser && owned_by_path(path) => Hidden,
        // Another owner's image name is not theirs to remove.
        Rule::Client(_)
            if who == Who::OtherUser && method == "delete" && path.contains("{reference}") =>
        {
            Forbidden
        }
        Rule::Client(_) => Served,
        Rule::ClientOrNode(_) if who == Who::WorkspaceCert => Forbidden,
        Rule::ClientOrNode(_) => Served,
        Rule::SelfNode if !node => Forbidden,
        // The path names the holding node: the other may not speak for it
        // (registration names the node in its body, checked by the handler).
        Rule::SelfNode if who == Who::OtherNode && path.contains("{name}") => Forbidden,
        Rule::SelfNode => Served,
        Rule::HoldingNode if !node => Forbidden,
        Rule::HoldingNode if who == Who::OtherNode => Hidden,
        Rule::HoldingNode => Served,
    }
}

/// Imports a kernel image of the owner's under `reference`; returns its
/// kernel's digest.
async fn own_image(h: &Harness, owner: &vws_model::Identity, reference: &str) -> String {
    let mut digests = Vec::new();
    for part in ["kernel", "initrd"] {
        let content = format!("{part} of {reference}");
        let d = vws_store::Digest::of(content.as_bytes()).to_string();
        h.service.put_blob(&d, content.as_bytes()).await.unwrap();
        digests.push(d);
    }
    let (name, tag) = reference.split_once(':').unwrap();
    let req = vws_service::pool::ImportRequest {
        name: name.into(),
        tag: tag.into(),
        disk: None,
        kernel: Some(digests[0].clone()),
        initrd: Some(digests[1].clone()),
        cmdline: None,
        visibility: Default::default(),
    };
    h.service.import_image(owner, req).await.unwrap();
    digests.remove(0)
}

/// The query and JSON body a route takes, where it needs them.
fn request_of(method: &str, path: &str) -> (&'static str, Option<serde_json::Value>) {
    use serde_json::json;
    let body = match (method, path.rsplit('/').next().unwrap_or("")) {
        ("post", "renew") => Some(json!({ "lifetime": 60 })),
        ("post", "snapshot") => Some(json!({ "as": "snap:1" })),
        ("post", "migrate") => Some(json!({ "to": "node-b" })),
        ("post", "jobs") => Some(json!({ "argv": ["true"] })),
        ("post", "batch") => Some(json!({ "jobs": [{ "argv": ["true"] }] })),
        ("post", "agreements") => Some(json!({
            "description": { "category": "vm", "software": { "image": "base:1" } },
            "terms": { "duration": 60 }
        })),
        ("post", "offers") => Some(json!({ "duration": 120 })),
        // Nothing listens there: the pull's operation fails after the guard.
        ("post", "pull") => Some(json!({ "reference": "127.0.0.1:9/nothere:1" })),
        ("post", "push") => Some(json!({ "target": "127.0.0.1:9/nothere:1" })),
        ("post", "oci") => Some(json!({
            "name": "imported:1",
            "source": "oci-layout:/nothere",
            "manifest_digest": format!("sha256:{}", "0".repeat(64)),
            "config_digest": format!("sha256:{}", "0".repeat(64)),
            "layers": []
        })),
        _ => None,
    };
    let query = if path.ends_with("/files") {
        "?path=/tmp/x"
    } else {
        ""
    };
    (query, body)
}

/// A distinct access key id for each request (`n` in base 32).
fn access_key_id(mut n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut digits = vec![b'A'; 16];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[n % 32];
        n /= 32;
    }
    format!("AKIA{}", String::from_utf8(digits).unwrap())
}

fn issue(ca: &Ca, dn: &str, kind: Kind, attrs: &[(&str, &str)]) -> vws_pki::Issued {
    ca.issue(&Request {
        dn: dn.into(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        kind,
        hosts: if kind == Kind::Client {
            vec![]
        } else {
            vec!["127.0.0.1".into()]
        },
        days: 1,
    })
    .unwrap()
}

fn client(ca: &Ca, issued: &vws_pki::Issued) -> reqwest::Client {
    Credentials {
        ca_pem: ca.cert_pem().into(),
        cert_pem: issued.cert_pem.clone(),
        key_pem: issued.key_pem.clone(),
    }
    .http_client()
    .unwrap()
    .timeout(std::time::Duration::from_secs(10))
    .build()
    .unwrap()
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_its_rule_says() {
    // One workspace per request: room for all of them.
    let h = harness(
        Backend::Sqlite,
        "[defaults]\nmax_workspaces = 100000\nmax_total_ram = \"10TiB\"\n",
    )
    .await;
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::init(pki.path(), "test CA").unwrap();
    let server = issue(&ca, "/O=vws/CN=service", Kind::Service, &[]);
    let revoked = issue(&ca, OWNER, Kind::Client, &[]);
    ca.revoke(&revoked.serial).unwrap();
    let callers = [
        (Who::Owner, issue(&ca, OWNER, Kind::Client, &[])),
        (
            Who::OtherUser,
            issue(&ca, "/O=Grid/OU=x/CN=Bob", Kind::Client, &[]),
        ),
        (
            Who::WorkspaceCert,
            issue(&ca, "/O=vws/OU=workspaces/CN=ws-1", Kind::Workspace, &[]),
        ),
        (
            Who::HoldingNode,
            issue(&ca, "/O=vws/CN=node-a", Kind::Node, &[]),
        ),
        (
            Who::OtherNode,
            issue(&ca, "/O=vws/CN=node-b", Kind::Node, &[]),
        ),
        (Who::Revoked, revoked),
    ];
    let tls = Arc::new(
        Credentials {
            ca_pem: ca.cert_pem().into(),
            cert_pem: server.cert_pem.clone(),
            key_pem: server.key_pem.clone(),
        }
        .server_config()
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let state = AppState {
        service: h.service.clone(),
        auth: Auth::Tls,
    };
    tokio::spawn(vws_pki::serve::serve_tls(
        listener,
        tls,
        Some(ca.revoked()),
        api::router(state),
        std::future::pending(),
    ));

    // What the paths name, fresh for each request: the owner's image and
    // its blob, a workspace checked out to node-a with its memory saved, and
    // a job.
    h.kernel_image("base", "1").await;
    // Both nodes registered, at an address where nothing listens: calls to
    // them fail after the guard (502), as a lost node's would.
    for name in ["node-a", "node-b"] {
        h.service
            .register_node(vws_model::node::Registration {
                name: name.into(),
                url: "http://127.0.0.1:9".into(),
                report: Default::default(),
            })
            .await
            .unwrap();
    }
    let owner = vws_model::Identity::new(OWNER);
    let mut served = 0;
    let mut wrong = Vec::new();
    let mut n = 0;
    for route in ROUTES {
        for (who, cert) in &callers {
            n += 1;
            let reference = format!("img{n}:1");
            let blob = own_image(&h, &owner, &reference).await;
            let ws = h
                .service
                .create(
                    &owner,
                    description("base:1", "disk = { size = \"1MiB\" }"),
                    vws_model::Form::Toml,
                    None,
                )
                .await
                .unwrap();
            let id = ws.record.id.clone();
            let mut r = h.service.store().workspace(&id).await.unwrap().unwrap();
            r.placement = vws_model::Placement::Host;
            r.node = Some("node-a".into());
            r.lock_holder = Some("node-a".into());
            h.service
                .store()
                .update_workspace(
                    &mut r,
                    Change {
                        action: vws_model::records::HistoryAction::Deploy,
                        actor: "test",
                        detail: None,
                    },
                )
                .await
                .unwrap();
            std::fs::create_dir_all(h.home.path().join("memory")).unwrap();
            std::fs::write(h.home.path().join(format!("memory/{id}.state")), b"ram").unwrap();
            let job = format!("job-{}", &id[3..]);
            h.service
                .store()
                .insert_job(&exited_job(&job, &id, OWNER, "node-a"))
                .await
                .unwrap();
            let key = access_key_id(n);
            h.service
                .store()
                .put_access_key(
                    &vws_store::AccessKey {
                        id: key.clone(),
                        dn: OWNER.into(),
                        identity: serde_json::to_string(&owner).unwrap(),
                        created_at: time::OffsetDateTime::now_utc(),
                        revoked_at: None,
                    },
                    "secret",
                )
                .await
                .unwrap();
            let agreement = format!("ag-{:016x}", n);
            let offer = vws_model::agreement::Agreement {
                id: agreement.clone(),
                owner: OWNER.into(),
                state: vws_model::agreement::AgreementState::Offered,
                description: serde_json::Value::Null,
                workspace: Some(id.clone()),
                slots: vec![],
                start: time::OffsetDateTime::now_utc(),
                end: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
                at_end: Default::default(),
                offer_expires_at: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(1)),
                replaces: None,
                history: vec![],
                version: 1,
            };
            let (from, to) = (offer.start, offer.end);
            h.service
                .store()
                .insert_agreement_planned(from, to, |_| Ok::<_, ()>(offer))
                .await
                .unwrap()
                .unwrap();
            let operation = format!("op-{:016x}", n);
            h.service
                .store()
                .put_operation(
                    &vws_model::records::Operation {
                        id: operation.clone(),
                        owner: OWNER.into(),
                        kind: "pull".into(),
                        target: "127.0.0.1:9/nothere:1".into(),
                        state: vws_model::records::OperationState::Done,
                        phase: "done".into(),
                        layers: vec![],
                        image: None,
                        error: None,
                        created_at: time::OffsetDateTime::now_utc(),
                        modified_at: time::OffsetDateTime::now_utc(),
                    },
                    h.service.instance(),
                )
                .await
                .unwrap();
            let path = route
                .path
                .replace("{operation}", &operation)
                .replace("{agreement}", &agreement)
                .replace("{key}", &key)
                .replace("{id}", &id)
                .replace("{reference}", &reference)
                .replace("{digest}", &blob)
                .replace(
                    "{name}",
                    if route.path.contains("/networks/") {
                        "default"
                    } else {
                        "node-a"
                    },
                )
                .replace("{job}", &job);
            // A well-formed request, so that what decides is who asks.
            let (query, body) = request_of(route.method, route.path);
            let mut req = client(&ca, cert).request(
                route.method.to_uppercase().parse().unwrap(),
                format!("{base}{path}{query}"),
            );
            if let Some(body) = body {
                req = req.json(&body);
            }
            let answer = req.send().await;
            let want = expect(route.method, route.path, route.rule, *who);
            let got = match answer {
                Err(_) => Expect::Refused,
                Ok(resp) => match resp.status() {
                    StatusCode::UNAUTHORIZED => Expect::Refused,
                    StatusCode::FORBIDDEN => {
                        let body = resp.text().await.unwrap_or_default();
                        // In the one error shape (HEAD answers have no body).
                        if route.method != "head" && !body.contains("\"error\"") {
                            wrong.push(format!(
                                "{} {}: 403 body {body:?}",
                                route.method, route.path
                            ));
                        }
                        Expect::Forbidden
                    }
                    StatusCode::NOT_FOUND => {
                        let body = resp.text().await.unwrap_or_default();
                        // The handler's own "nothing there" for a caller allowed to
                        // look is not hiding; a name in the path that is absent is.
                        if body.contains("no such API route") {
                            wrong.push(format!("{} {} is not routed", route.method, route.path));
                        }
                        Expect::Hidden
                    }
                    _ => Expect::Served,
                },
            };
            if got == Expect::Served {
                served += 1;
            }
            // The one handler 404 an allowed caller may see: a network not
            // configured in this harness.
            let tolerated = want == Expect::Served
                && got == Expect::Hidden
                && route.path.starts_with("/v1/networks/");
            if got != want && !tolerated {
                wrong.push(format!(
                    "{} {} as {who:?}: expected {want:?}, got {got:?}",
                    route.method, route.path
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    assert!(served > ROUTES.len(), "{served} requests served");
}

#[test]
fn every_routed_path_has_a_rule_and_the_rules_are_the_documented_ones() {
    // The guard answers 500 for a route missing from the table; the OpenAPI
    // test holds the table equal to the router. Here: each client rule's
    // class is what docs/security.md and the OpenAPI document say.
    let doc: serde_json::Value = serde_json::from_str(api::OPENAPI).unwrap();
    let security = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/security.md"
    ))
    .unwrap();
    assert!(
        security.contains(&vws_service::routes::markdown_table()),
        "docs/security.md's route table is not the code's; it should read:\n{}",
        vws_service::routes::markdown_table()
    );
    for r in ROUTES {
        let access = &doc["paths"][r.path][r.method]["x-vws-access"];
        let class = match r.rule {
            Rule::Client(c) | Rule::ClientOrNode(c) => Some(c.class().as_str()),
            _ => None,
        };
        assert_eq!(
            access["aclClass"].as_str(),
            class,
            "{} {}: the OpenAPI document's x-vws-access",
            r.method,
            r.path
        );
    }
    // Staging routes are for the holding node alone.
    for r in ROUTES.iter().filter(|r| {
        r.path.ends_with("/disk")
            || r.path.ends_with("/memory")
            || r.path.contains("/disk/")
            || r.path.contains("/memory/")
    }) {
        assert_eq!(r.rule, Rule::HoldingNode, "{} {}", r.method, r.path);
    }
}

#[test]
fn path_parameters_are_documented_with_the_grammar_the_server_checks() {
    let doc: Value = serde_json::from_str(vws_service::api::OPENAPI).unwrap();
    let samples = [
        ("id", "ws-0123456789ab"),
        ("job", "job-0123456789ab"),
        ("digest", &*format!("sha256:{}", "a".repeat(64))),
        ("name", "node-1.lab_a"),
        ("reference", "debian:12"),
        ("key", "AKIAABCDEFGHIJ234567"),
        ("agreement", "ag-0123456789abcdef"),
        ("operation", "op-0123456789abcdef"),
    ];
    for r in ROUTES {
        let op = &doc["paths"][r.path][r.method];
        let params: Vec<&Value> = doc["paths"][r.path]["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .filter(|p| p["in"] == "path")
            .collect();
        if !r.path.contains('{') {
            continue;
        }
        assert!(
            op["responses"]["400"].is_object(),
            "{} {} answers 400 for a malformed parameter",
            r.method,
            r.path
        );
        for p in params {
            let name = p["name"].as_str().unwrap();
            let (_, good) = samples.iter().find(|(n, _)| *n == name).unwrap();
            assert_eq!(vws_service::routes::check_param(name, good), Ok(()));
            for bad in ["..", "a/b", "", "x\0"] {
                assert!(
                    vws_service::routes::check_param(name, bad).is_err(),
                    "{name} {bad:?}"
                );
            }
            if name != "reference" {
                let pattern = p["schema"]["pattern"].as_str().unwrap_or_default();
                assert!(
                    pattern.starts_with('^') && pattern.ends_with('$'),
                    "{} {}: {{{name}}} has its pattern in the document",
                    r.method,
                    r.path
                );
            }
        }
    }
}
