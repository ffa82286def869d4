//! Access keys (for SigV4-signed requests): made for oneself by anyone, for
//! another identity only by an administrator; listed without secrets;
//! revoked by their owner or an administrator, and then no longer found by
//! a front-end checking a signature. On both stores.

mod common;

use common::*;
use vws_service::command::{Command, Reply};
use vws_service::ServiceError;
use vws_store::Backend;

fn document(r: Reply) -> serde_json::Value {
    match r {
        Reply::Document(v) => v,
        _ => panic!("expected a document"),
    }
}

async fn access_keys_on(backend: Backend) {
    let h = harness(backend, "").await;
    let s = &h.service;
    let made = document(
        s.execute(&alice(), Command::CreateAccessKey { identity: None })
            .await
            .unwrap(),
    );
    let id = made["id"].as_str().unwrap().to_string();
    let secret = made["secret"].as_str().unwrap().to_string();
    assert!(id.starts_with("AKIA") && id.len() == 20, "{id}");
    assert_eq!(secret.len(), 40);
    assert_eq!(made["identity"]["dn"], alice().dn);
    vws_service::routes::check_param("key", &id).unwrap();

    // What a front-end checking a signature finds.
    let (found, who) = s.access_key(&id).await.unwrap().unwrap();
    assert_eq!((found, who), (secret.clone(), alice()));

    // Bob may not make a key that acts as Alice; an administrator may.
    let as_alice = Some(alice());
    match s
        .execute(
            &bob(),
            Command::CreateAccessKey {
                identity: as_alice.clone(),
            },
        )
        .await
    {
        Err(ServiceError::Forbidden(m)) => assert!(m.contains("administrator"), "{m}"),
        other => panic!("Bob made a key for Alice: {:?}", other.is_ok()),
    }
    let by_admin = document(
        s.execute(&admin(), Command::CreateAccessKey { identity: as_alice })
            .await
            .unwrap(),
    );
    assert_eq!(by_admin["identity"]["dn"], alice().dn);

    // Listed without secrets: Alice sees her two, Bob none, the admin all.
    let listed = document(s.execute(&alice(), Command::AccessKeys).await.unwrap());
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed.to_string().find(&secret).is_none(),
        "a secret listed"
    );
    let bobs = document(s.execute(&bob(), Command::AccessKeys).await.unwrap());
    assert_eq!(bobs.as_array().unwrap().len(), 0);

    // Bob cannot revoke Alice's key (not found); Alice can, once.
    let revoke = |id: &str| Command::RevokeAccessKey { id: id.into() };
    assert!(matches!(
        s.execute(&bob(), revoke(&id)).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(s.access_key(&id).await.unwrap().is_some());
    s.execute(&alice(), revoke(&id)).await.unwrap();
    assert!(
        s.access_key(&id).await.unwrap().is_none(),
        "a revoked key found"
    );
    assert!(matches!(
        s.execute(&alice(), revoke(&id)).await,
        Err(ServiceError::NotFound(_))
    ));
    let listed = document(s.execute(&alice(), Command::AccessKeys).await.unwrap());
    let revoked = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
}

#[tokio::test]
async fn access_keys_sqlite() {
    access_keys_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn access_keys_postgres() {
    access_keys_on(Backend::Postgres).await;
}
