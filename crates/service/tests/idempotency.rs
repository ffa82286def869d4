//! Idempotency keys on mutating requests: a retried create with the same
//! key answers the first create (one workspace, marked replayed), even when
//! the retries race; the key on another request is 422; a malformed key
//! 400; a retried destroy answers its first 204, not 404; and keys are each
//! caller's own. On both stores.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use vws_store::{Backend, Claim};

const DESC: &str = "category = \"vm\"\nlifeCycle = 600\n[software]\nimage = \"minimal:1\"\n";

async fn keys_on(backend: Backend) {
    let h = harness(backend, "").await;
    h.kernel_image("minimal", "1").await;
    let base = serve_api(&h, alice()).await;
    let http = reqwest::Client::new();
    let create = |key: &str, body: &str| {
        http.post(format!("{base}/v1/workspaces"))
            .header("content-type", "application/toml")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let first = create("k-1", DESC).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let id = first.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let again = create("k-1", DESC).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], id.as_str());
    assert_eq!(
        h.service.store().owner_usage(&alice().dn).await.unwrap().0,
        1
    );

    // The same key on another request; a malformed key.
    let other = create("k-1", &DESC.replace("600", "900")).await.unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        other.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_key_reused"
    );
    assert_eq!(
        create("bad key", DESC).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    // Eight racing retries of one create: one workspace.
    let racing: Vec<_> = (0..8).map(|_| create("k-2", DESC)).collect();
    let mut ids = std::collections::BTreeSet::new();
    for r in futures::future::join_all(racing).await {
        let r = r.unwrap();
        match r.status() {
            StatusCode::CREATED => {
                ids.insert(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        h.service.store().owner_usage(&alice().dn).await.unwrap().0,
        2
    );

    // A retried destroy answers as the first one did.
    let destroy = || {
        http.delete(format!("{base}/v1/workspaces/{id}"))
            .header("idempotency-key", "d-1")
            .send()
    };
    assert_eq!(destroy().await.unwrap().status(), StatusCode::NO_CONTENT);
    let replayed = destroy().await.unwrap();
    assert_eq!(replayed.status(), StatusCode::NO_CONTENT);
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    // Without the key, the same call is what it is now.
    let plain = http
        .delete(format!("{base}/v1/workspaces/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::NOT_FOUND);

    // Keys are each caller's own.
    let store = h.service.store();
    let now = time::OffsetDateTime::now_utc();
    let claim = |replica: &'static str, at: time::OffsetDateTime| async move {
        store
            .claim_idempotency(&bob().dn, "k-1", "another", replica, at)
            .await
            .unwrap()
    };
    let lease = vws_service::replicas::LEASE;
    store
        .renew_replica("r-1", "https://r1", now, now + lease)
        .await
        .unwrap();
    assert_eq!(claim("r-1", now).await, Claim::New);
    // A retry to another replica while the first's replica lives waits.
    assert_eq!(claim("r-2", now).await, Claim::InProgress);
    // That replica's lease runs out (it died): the next retry takes the
    // claim over at once, and only that one.
    let after_lease = now + lease + time::Duration::seconds(1);
    store
        .renew_replica(
            "r-2",
            "https://r2",
            after_lease,
            after_lease + time::Duration::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(claim("r-2", after_lease).await, Claim::New);
    assert_eq!(claim("r-3", after_lease).await, Claim::InProgress);
    // A claim left unanswered by a replica that still lives is taken over
    // once it is old enough.
    let later = after_lease + vws_store::ABANDONED_AFTER + time::Duration::seconds(1);
    for r in ["r-2", "r-3"] {
        store
            .renew_replica(r, "https://r", later, later + lease)
            .await
            .unwrap();
    }
    assert_eq!(claim("r-3", later).await, Claim::New);
    assert_eq!(claim("r-3", later).await, Claim::InProgress);
    assert_eq!(
        store
            .prune_idempotency(later + time::Duration::seconds(1))
            .await
            .unwrap(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_keys() {
    keys_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idempotency_keys() {
    keys_on(Backend::Postgres).await;
}
