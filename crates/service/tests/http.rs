//! The REST API over real HTTP: the three description forms, the one error
//! shape with the right statuses, the OpenAPI document matching the routes,
//! and concurrent creates on both database backends.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use vws_service::api;
use vws_store::Backend;

struct Api {
    base: String,
    http: reqwest::Client,
    h: Harness,
}

async fn api(backend: Backend, policy: &str) -> Api {
    let h = harness(backend, policy).await;
    h.kernel_image("minimal", "1").await;
    let base = serve_api(&h, alice()).await;
    Api {
        base,
        http: reqwest::Client::new(),
        h,
    }
}

fn example(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../../examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const TOML_DESC: &str = "category = \"vm\"\nlifeCycle = 600\n[software]\nimage = \"minimal:1\"\n";

impl Api {
    async fn create(&self, ct: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/workspaces", self.base))
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

async fn error_of(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    let body: Value = resp.json().await.expect("errors are JSON");
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "one error shape: {body}"
    );
    body["error"].clone()
}

#[tokio::test]
async fn descriptions_in_every_form_create_workspaces() {
    let a = api(Backend::Sqlite, "").await;
    let xml = example("minimal.xml");
    let json =
        serde_json::to_string(&vws_model::parse(&xml, vws_model::Form::Xml).unwrap()).unwrap();
    for (ct, body) in [
        ("application/xml", xml.clone()),
        ("application/toml", TOML_DESC.to_string()),
        ("application/json", json),
    ] {
        let resp = a.create(ct, body).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{ct}");
        assert!(
            resp.headers().get("x-request-id").is_some(),
            "request ids come back"
        );
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let ws: Value = resp.json().await.unwrap();
        assert_eq!(
            location,
            format!("/v1/workspaces/{}", ws["id"].as_str().unwrap())
        );
        assert_eq!(ws["state"], "shutdown");
        assert_eq!(
            ws["epr"]["address"],
            format!("http://127.0.0.1:7480{location}")
        );
    }
    // A workspace written as XML parses back to the description it was made from.
    let ws: Value = a
        .create("application/xml", xml.clone())
        .await
        .json()
        .await
        .unwrap();
    let url = format!("{}/v1/workspaces/{}", a.base, ws["id"].as_str().unwrap());
    let text = a
        .http
        .get(&url)
        .header("accept", "application/xml")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let back = vws_model::parse(&text, vws_model::Form::Xml).unwrap();
    assert_eq!(back.state, Some(vws_model::State::Shutdown));
    assert!(back.epr.is_some() && back.creation_time.is_some());
    assert_eq!(
        back.without_server_fields(),
        vws_model::parse(&xml, vws_model::Form::Xml).unwrap()
    );

    let page: Value = a
        .http
        .get(format!(
            "{}/v1/workspaces?state=shutdown&category=vm",
            a.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 4);
    let page: Value = a
        .http
        .get(format!("{}/v1/workspaces?limit=3", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    assert!(page["next"].is_string());
}

#[tokio::test]
async fn errors_have_one_shape_and_the_right_status() {
    let a = api(Backend::Sqlite, "").await;
    let e = error_of(
        a.create(
            "application/toml",
            TOML_DESC.replace("minimal:1", "minimal:../1"),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(e["code"], "invalid_description");
    assert_eq!(e["details"][0]["path"], "software.image");
    let e = error_of(
        a.create(
            "application/xml",
            example("paper.xml").replace("min=\"256MiB\"", "min=\"2TiB\""),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        e["details"][0]["path"],
        "/virtualWorkspace/hw:hardware/hw:ram/@min"
    );
    let e = error_of(
        a.create("text/plain", TOML_DESC).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    assert_eq!(e["code"], "unsupported_media_type");
    error_of(
        a.create("application/toml", vec![b'#'; 2 << 20]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    error_of(
        a.create("application/toml", vec![0xff, 0xfe]).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let e = error_of(
        a.http
            .get(format!("{}/v1/nothing", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert!(e["message"].as_str().unwrap().contains("no such API route"));
    error_of(
        a.http
            .patch(format!("{}/v1/workspaces", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    error_of(
        a.http
            .get(format!("{}/v1/workspaces/ws-000000000000", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    error_of(
        a.http
            .get(format!("{}/v1/workspaces?state=melted", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    error_of(
        a.http
            .get(format!("{}/v1/workspaces?limit=0", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    error_of(
        a.http
            .get(format!("{}/v1/workspaces?after=nonsense", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    error_of(
        a.http
            .get(format!("{}/v1/workspaces?bogus=1", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;

    let ws: Value = a
        .create("application/toml", TOML_DESC)
        .await
        .json()
        .await
        .unwrap();
    let id = ws["id"].as_str().unwrap();
    let renew = format!("{}/v1/workspaces/{id}/renew", a.base);
    error_of(
        a.http
            .post(&renew)
            .header("content-type", "application/json")
            .body("{\"lifetime\": \"soon\"}")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    error_of(
        a.http
            .post(&renew)
            .header("content-type", "text/plain")
            .body("{\"lifetime\": 5}")
            .send()
            .await
            .unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    error_of(
        a.http
            .post(&renew)
            .header("content-type", "application/json")
            .body("{\"lifetime\": 99999999}")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    let ok = a
        .http
        .post(&renew)
        .header("content-type", "application/json")
        .body("{\"lifetime\": 60}")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let clone = a
        .http
        .post(format!("{}/v1/workspaces/{id}/clone", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(clone.status(), StatusCode::CREATED);
    let history: Value = a
        .http
        .get(format!("{}/v1/workspaces/{id}/history", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history[1]["action"], "renew");
    // Nothing a refused request did left a trace: 2 workspaces (one and its clone).
    let page: Value = a
        .http
        .get(format!("{}/v1/workspaces", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let del = a
        .http
        .delete(format!("{}/v1/workspaces/{id}", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    error_of(
        a.http
            .delete(format!("{}/v1/workspaces/{id}", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn blobs_are_verified_and_images_registered() {
    let a = api(Backend::Sqlite, "").await;
    let content = b"kernel bytes for the api test".to_vec();
    let digest = vws_store::Digest::of(&content).to_string();
    let url = format!("{}/v1/blobs/{digest}", a.base);
    assert_eq!(
        a.http.head(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let e = error_of(
        a.http
            .put(&url)
            .body(b"tampered".to_vec())
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(e["code"], "digest_mismatch");
    error_of(
        a.http
            .put(format!("{}/v1/blobs/sha256:nothex", a.base))
            .body("x")
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(
        a.http
            .put(&url)
            .body(content.clone())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let head = a.http.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        content.len().to_string().as_str()
    );
    let req = serde_json::json!({"name": "mine", "tag": "2", "kernel": digest, "initrd": digest});
    let resp = a
        .http
        .post(format!("{}/v1/images", a.base))
        .json(&req)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let image: Value = resp.json().await.unwrap();
    assert_eq!(image["tags"][0], "mine:2");
    let bad = serde_json::json!({"name": "mine", "tag": "3", "kernel": digest});
    error_of(
        a.http
            .post(format!("{}/v1/images", a.base))
            .json(&bad)
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let unknown = serde_json::json!({"name": "mine", "colour": "red"});
    error_of(
        a.http
            .post(format!("{}/v1/images", a.base))
            .json(&unknown)
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let list: Value = a
        .http
        .get(format!("{}/v1/images", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        a.http
            .delete(format!("{}/v1/images/mine:2", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    error_of(
        a.http
            .get(format!("{}/v1/images/mine:2", a.base))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let a = api(Backend::Sqlite, "").await;
    let doc: Value = a
        .http
        .get(format!("{}/v1/openapi.json", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc, serde_json::from_str::<Value>(api::OPENAPI).unwrap());
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let served: BTreeSet<_> = api::routes()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    // And every listed route is really served (not the fallback's "no such route").
    for (method, path) in api::routes() {
        let url = format!(
            "{}{}",
            a.base,
            path.replace("{id}", "ws-000000000000")
                .replace("{reference}", "x:1")
                .replace("{digest}", "sha256:00")
                .replace("{name}", "n1")
                .replace("{job}", "job-000000000000")
        );
        let resp = a
            .http
            .request(method.to_uppercase().parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        assert_ne!(
            resp.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if resp.status() == StatusCode::NOT_FOUND && method != "head" {
            let body: Value = resp.json().await.unwrap();
            assert!(
                !body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("no such API route"),
                "{method} {path} is not routed"
            );
        }
    }
}

async fn fifty_concurrent_creates(backend: Backend) {
    let a = api(backend, "[defaults]\nmax_workspaces = 1000").await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (http, base) = (a.http.clone(), a.base.clone());
            tokio::spawn(async move {
                let resp = http
                    .post(format!("{base}/v1/workspaces?name=w{i}"))
                    .header("content-type", "application/toml")
                    .body(TOML_DESC)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                resp.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.unwrap()), "duplicate id");
    }
    let page: Value = a
        .http
        .get(format!("{}/v1/workspaces?limit=1000", a.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: BTreeSet<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, ids, "every accepted create is listed exactly once");
    let names: BTreeSet<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 50);
}

async fn concurrent_creates_respect_the_limit(backend: Backend) {
    let a = api(backend, "[defaults]\nmax_workspaces = 20").await;
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let (http, base) = (a.http.clone(), a.base.clone());
            tokio::spawn(async move {
                http.post(format!("{base}/v1/workspaces"))
                    .header("content-type", "application/toml")
                    .body(TOML_DESC)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 20);
    assert_eq!(
        a.h.service
            .store()
            .owner_usage(&alice().dn)
            .await
            .unwrap()
            .0,
        20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_fifty_concurrent_creates() {
    fifty_concurrent_creates(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fifty_concurrent_creates() {
    fifty_concurrent_creates(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_creates_respect_the_limit() {
    concurrent_creates_respect_the_limit(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_creates_respect_the_limit() {
    concurrent_creates_respect_the_limit(Backend::Postgres).await;
}
