//! The core's door: every command names its ACL class, every client route
//! runs one, and the class is checked by `Service::execute` itself, before
//! the command looks at anything (an ACL denying a class refuses exactly
//! that class's commands, even for things that do not exist).

mod common;

use common::*;
use strum::IntoEnumIterator;
use vws_service::acl::Class;
use vws_service::command::{Command, CommandKind, Verb};
use vws_service::routes::{Rule, ROUTES};
use vws_service::ServiceError;
use vws_store::Backend;

/// One command of each kind, about things that do not exist. The match is
/// exhaustive: a new command does not compile until this test covers it.
fn sample(kind: CommandKind) -> Command {
    use CommandKind as K;
    let id = || "ws-nothere".to_string();
    let job = || "job-nothere".to_string();
    let reference = || "nothere:1".to_string();
    let digest = || format!("sha256:{}", "0".repeat(64));
    let agreement = || "ag-0000000000000000".to_string();
    match kind {
        K::ListWorkspaces => Command::ListWorkspaces(Default::default()),
        K::ShowWorkspace => Command::ShowWorkspace { id: id() },
        K::History => Command::History { id: id() },
        K::Match => Command::Match {
            description: description("nothere:1", ""),
            form: vws_model::Form::Toml,
        },
        K::Create => Command::Create {
            description: description("nothere:1", ""),
            form: vws_model::Form::Toml,
            name: None,
        },
        K::Clone => Command::Clone {
            id: id(),
            name: None,
            changes: None,
        },
        K::Renew => Command::Renew {
            id: id(),
            lifetime: 60,
        },
        K::Destroy => Command::Destroy { id: id() },
        K::Deploy => Command::Deploy {
            id: id(),
            host: None,
        },
        K::Transition => Command::Transition {
            id: id(),
            verb: Verb::Start,
        },
        K::Staging => Command::Staging { id: id() },
        K::Console => Command::Console {
            id: id(),
            follow: false,
        },
        K::Snapshot => Command::Snapshot {
            id: id(),
            name: "snap".into(),
            tag: "1".into(),
        },
        K::Migrate => Command::Migrate {
            id: id(),
            to: "elsewhere".into(),
        },
        K::Migration => Command::Migration { id: id() },
        K::SubmitJob => Command::SubmitJob {
            id: id(),
            job: serde_json::from_value(serde_json::json!({ "argv": ["true"] })).unwrap(),
        },
        K::SubmitBatch => Command::SubmitBatch {
            id: id(),
            jobs: vec![serde_json::from_value(serde_json::json!({ "argv": ["true"] })).unwrap()],
            concurrency: 1,
        },
        K::Jobs => Command::Jobs { id: id() },
        K::Job => Command::Job { job: job() },
        K::JobOutput => Command::JobOutput {
            job: job(),
            follow: false,
        },
        K::CancelJob => Command::CancelJob { job: job() },
        K::PutFile => Command::PutFile {
            id: id(),
            path: "/tmp/x".into(),
            data: b"x".to_vec(),
        },
        K::GetFile => Command::GetFile {
            id: id(),
            path: "/tmp/x".into(),
        },
        K::Images => Command::Images,
        K::Image => Command::Image {
            reference: reference(),
        },
        K::ImportImage => Command::ImportImage(
            serde_json::from_value(
                serde_json::json!({ "name": "new", "tag": "1", "disk": digest() }),
            )
            .unwrap(),
        ),
        K::PullImage => Command::PullImage(
            serde_json::from_value(serde_json::json!({ "reference": "127.0.0.1:1/nothere:1" }))
                .unwrap(),
        ),
        K::PushImage => Command::PushImage {
            reference: reference(),
            push: serde_json::from_value(serde_json::json!({ "target": "127.0.0.1:1/nothere:1" }))
                .unwrap(),
        },
        K::ImportOci => Command::ImportOci(
            serde_json::from_value(serde_json::json!({
                "name": "nothere:1",
                "source": "oci-layout:/nothere",
                "manifest_digest": digest(),
                "config_digest": digest(),
                "layers": []
            }))
            .unwrap(),
        ),
        K::Operation => Command::Operation {
            id: "op-0000000000000000".into(),
        },
        K::RemoveImage => Command::RemoveImage {
            reference: reference(),
        },
        K::SignImage => Command::SignImage {
            reference: reference(),
            certificate: "-----BEGIN CERTIFICATE-----".into(),
            signature: "AAAA".into(),
        },
        K::HasBlob => Command::HasBlob { digest: digest() },
        K::PutBlob => Command::PutBlob {
            digest: digest(),
            body: Box::new(&b"not the digest's bytes"[..]),
        },
        K::ReadBlob => Command::ReadBlob { digest: digest() },
        K::BlobChunks => Command::BlobChunks { digest: digest() },
        K::Nodes => Command::Nodes,
        K::Events => Command::Events { after: Some(0) },
        K::SignInLink => Command::SignInLink,
        K::Networks => Command::Networks,
        K::Network => Command::Network {
            name: "nothere".into(),
        },
        K::CreateAccessKey => Command::CreateAccessKey { identity: None },
        K::AccessKeys => Command::AccessKeys,
        K::RevokeAccessKey => Command::RevokeAccessKey {
            id: "AKIAAAAAAAAAAAAAAAAA".into(),
        },
        K::OfferAgreement => Command::OfferAgreement(
            serde_json::from_value(serde_json::json!({
                "workspace": id(),
                "terms": { "duration": 60 }
            }))
            .unwrap(),
        ),
        K::Agreements => Command::Agreements,
        K::ShowAgreement => Command::ShowAgreement { id: agreement() },
        K::AcceptAgreement => Command::AcceptAgreement { id: agreement() },
        K::CancelAgreement => Command::CancelAgreement { id: agreement() },
        K::Renegotiate => Command::Renegotiate {
            id: agreement(),
            change: Default::default(),
        },
    }
}

#[test]
fn every_command_has_a_class_and_a_route() {
    let all: Vec<CommandKind> = CommandKind::iter().collect();
    assert_eq!(all.len(), 50, "{all:?}");
    for kind in &all {
        assert_eq!(sample(*kind).kind(), *kind);
        let routed = ROUTES
            .iter()
            .any(|r| matches!(r.rule, Rule::Client(k) | Rule::ClientOrNode(k) if k == *kind));
        assert!(routed, "command {} has no route", kind.as_str());
    }
    // The classes as docs/security.md lists them.
    let by_class = |c: Class| -> Vec<&str> {
        all.iter()
            .filter(|k| k.class() == c)
            .map(|k| k.as_str())
            .collect()
    };
    assert_eq!(
        by_class(Class::Manage),
        [
            "renew",
            "destroy",
            "deploy",
            "transition",
            "cancel-agreement"
        ]
    );
    assert_eq!(by_class(Class::Move), ["snapshot", "migrate"]);
    assert_eq!(by_class(Class::Admin), ["nodes"]);
    assert_eq!(
        by_class(Class::Create).len()
            + by_class(Class::Read).len()
            + by_class(Class::Run).len()
            + by_class(Class::Image).len(),
        all.len() - 8
    );
    // The five lifecycle verbs are one command, each with its own route.
    for verb in Verb::ALL {
        let path = format!("/v1/workspaces/{{id}}/{}", verb.as_str());
        assert!(
            ROUTES
                .iter()
                .any(|r| r.path == path && r.rule == Rule::Client(CommandKind::Transition)),
            "{path}"
        );
    }
}

#[tokio::test]
async fn execute_checks_the_class_before_anything_else() {
    for denied in Class::ALL {
        // Bob may do everything (admin included) but one class.
        let acl = format!(
            r#"
[[rule]]
name = "no {0} for Bob"
actions = ["{0}"]
dn = "*CN=Bob"
effect = "deny"

[[rule]]
actions = ["*"]
dn = "*CN=Bob"
effect = "allow"
"#,
            denied.as_str()
        );
        let h = harness_acl(Backend::Sqlite, &acl).await;
        for kind in CommandKind::iter() {
            let result = h.service.execute(&bob(), sample(kind)).await;
            let forbidden = matches!(result, Err(ServiceError::Forbidden(_)));
            assert_eq!(
                forbidden,
                kind.class() == denied,
                "{} (class {}) with {} denied: {}",
                kind.as_str(),
                kind.class().as_str(),
                denied.as_str(),
                match &result {
                    Ok(_) => "answered".to_string(),
                    Err(e) => e.to_string(),
                }
            );
        }
    }
}
