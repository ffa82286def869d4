//! The service's failure paths and rollbacks against a fake node: a node
//! that refuses a deploy, a start, a snapshot, or any step of a live
//! migration leaves the record where the failed action found it (or, past
//! a migration's switch-over, says the workspace is corrupted), and the
//! nodes were asked exactly what undoes the half-done step.

mod common;

use std::sync::Arc;

use common::fake_node::FakeNode;
use common::*;
use vws_model::{Form, Placement, State};
use vws_service::command::{Command, Reply, Verb};
use vws_service::{Service, ServiceError, Workspace};
use vws_store::Backend;

async fn with_nodes(fake: &Arc<FakeNode>, names: &[&str]) -> Harness {
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    h.kernel_image("k", "1").await;
    for name in names {
        let report = node_report(&[]);
        let url = format!("https://{name}.invalid");
        let reg = vws_model::node::Registration {
            name: name.to_string(),
            url,
            report,
        };
        h.service.register_node(reg).await.unwrap();
    }
    h
}

async fn verb(s: &Arc<Service>, id: &str, verb: Verb) -> Result<Workspace, ServiceError> {
    let id = id.to_string();
    s.execute(&alice(), Command::Transition { id, verb })
        .await?
        .into_workspace()
}

async fn record(h: &Harness, id: &str) -> vws_store::WorkspaceRecord {
    h.service.workspace(&alice(), id).await.unwrap().record
}

async fn actions(h: &Harness, id: &str) -> Vec<String> {
    let trail = h.service.store().history(id).await.unwrap();
    trail.into_iter().map(|t| t.action.to_string()).collect()
}

fn status(e: &ServiceError) -> u16 {
    e.status_and_code().0.as_u16()
}

async fn created(h: &Harness) -> String {
    let d = description("k:1", "ram = \"256MiB\"");
    h.service
        .create(&alice(), d, Form::Toml, None)
        .await
        .unwrap()
        .record
        .id
}

#[tokio::test]
async fn a_refused_deploy_or_start_changes_nothing() {
    let fake = Arc::new(FakeNode::default());
    let h = with_nodes(&fake, &["a"]).await;
    let id = created(&h).await;

    fake.fail("deploy");
    let e = h.service.deploy(&alice(), &id, None).await.unwrap_err();
    assert_eq!(status(&e), 502, "{e}");
    assert!(e.to_string().contains("deploy failed on purpose"), "{e}");
    let r = record(&h, &id).await;
    assert_eq!(
        (
            r.state,
            r.placement,
            r.lock_holder.as_deref(),
            r.node.as_deref()
        ),
        (State::Shutdown, Placement::Repository, None, None)
    );
    assert_eq!(
        actions(&h, &id).await,
        ["create", "checkout", "checkout-failed"]
    );

    fake.heal();
    h.service.deploy(&alice(), &id, None).await.unwrap();
    let r = record(&h, &id).await;
    assert_eq!(
        (r.placement, r.node.as_deref()),
        (Placement::Host, Some("a"))
    );

    fake.fail("start");
    let e = verb(&h.service, &id, Verb::Start).await.unwrap_err();
    assert_eq!(status(&e), 502, "{e}");
    let r = record(&h, &id).await;
    assert_eq!((r.state, r.binding.forwards.len()), (State::Shutdown, 0));

    fake.heal();
    let ws = verb(&h.service, &id, Verb::Start).await.unwrap();
    assert_eq!(ws.record.state, State::Running);
    assert_eq!(ws.record.binding.forwards[0].host, "127.0.0.1:18080");
    // A stop forgets the forwards (they live as long as the QEMU).
    let ws = verb(&h.service, &id, Verb::Stop).await.unwrap();
    assert_eq!(
        (ws.record.state, ws.record.binding.forwards.len()),
        (State::Shutdown, 0)
    );
    assert_eq!(
        fake.calls(),
        [
            format!("deploy a {id}"),
            format!("deploy a {id}"),
            format!("start a {id}"),
            format!("start a {id}"),
            format!("stop a {id}"),
        ]
    );
}

#[tokio::test]
async fn a_failed_snapshot_leaves_the_workspace_paused_and_no_image() {
    let fake = Arc::new(FakeNode::default());
    let h = with_nodes(&fake, &["a"]).await;
    let id = created(&h).await;
    h.service.deploy(&alice(), &id, None).await.unwrap();
    verb(&h.service, &id, Verb::Start).await.unwrap();
    verb(&h.service, &id, Verb::Pause).await.unwrap();
    fake.fail("snapshot");
    let snap = Command::Snapshot {
        id: id.clone(),
        name: "hot".into(),
        tag: "1".into(),
    };
    let e = h.service.execute(&alice(), snap).await.err().unwrap();
    assert_eq!(status(&e), 502, "{e}");
    assert!(h.service.image(&alice(), "hot:1").await.is_err());
    let r = record(&h, &id).await;
    assert_eq!((r.state, r.placement), (State::Paused, Placement::Host));
    // And it goes on: unpaused where it was.
    let ws = verb(&h.service, &id, Verb::Unpause).await.unwrap();
    assert_eq!(ws.record.state, State::Running);
}

async fn running_on_a(fake: &Arc<FakeNode>) -> (Harness, String) {
    let h = with_nodes(fake, &["a", "b"]).await;
    let id = created(&h).await;
    h.service.deploy(&alice(), &id, Some("a")).await.unwrap();
    verb(&h.service, &id, Verb::Start).await.unwrap();
    (h, id)
}

async fn migrate(h: &Harness, id: &str, to: &str) -> Result<Reply, ServiceError> {
    let cmd = Command::Migrate {
        id: id.into(),
        to: to.into(),
    };
    h.service.execute(&alice(), cmd).await
}

#[tokio::test]
async fn a_migration_that_fails_before_the_switch_over_stays_on_its_source() {
    // The target cannot get ready: nothing was started, nothing to undo.
    let fake = Arc::new(FakeNode::default());
    let (h, id) = running_on_a(&fake).await;
    fake.fail("incoming");
    let e = migrate(&h, &id, "b").await.err().unwrap();
    assert_eq!(status(&e), 502, "{e}");
    let r = record(&h, &id).await;
    assert_eq!((r.state, r.node.as_deref()), (State::Running, Some("a")));
    assert!(!fake.calls().iter().any(|c| c.starts_with("remove")));

    // The source cannot send: the target's waiting QEMU is removed, the
    // failure is in the history, the workspace runs on where it was.
    fake.heal();
    fake.fail("migrate");
    let e = migrate(&h, &id, "b").await.err().unwrap();
    assert_eq!(status(&e), 502, "{e}");
    let calls = fake.calls();
    let tail: Vec<&str> = calls
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            format!("incoming b {id}"),
            format!("migrate a {id}"),
            format!("remove b {id}")
        ]
    );
    let r = record(&h, &id).await;
    assert_eq!(
        (r.state, r.node.as_deref(), r.lock_holder.as_deref()),
        (State::Running, Some("a"), Some("a"))
    );
    assert_eq!(actions(&h, &id).await.last().unwrap(), "migrate-failed");

    // Then it migrates.
    fake.heal();
    let ws = migrate(&h, &id, "b")
        .await
        .unwrap()
        .into_workspace()
        .unwrap();
    assert_eq!(
        (ws.record.state, ws.record.node.as_deref()),
        (State::Running, Some("b"))
    );
}

#[tokio::test]
async fn a_migration_that_fails_after_the_switch_over_is_on_its_target_and_corrupted() {
    let fake = Arc::new(FakeNode::default());
    let (h, id) = running_on_a(&fake).await;
    fake.fail("finish_incoming");
    let e = migrate(&h, &id, "b").await.err().unwrap();
    assert_eq!(status(&e), 502, "{e}");
    let r = record(&h, &id).await;
    assert_eq!((r.state, r.node.as_deref()), (State::Corrupted, Some("b")));
    assert!(
        r.reason.as_deref().unwrap_or("").contains("did not finish"),
        "{:?}",
        r.reason
    );
}

#[tokio::test]
async fn destroy_goes_on_when_the_node_fails_or_cannot_be_reached() {
    let fake = Arc::new(FakeNode::default());
    let (h, first) = running_on_a(&fake).await;
    let second = created(&h).await;
    h.service
        .deploy(&alice(), &second, Some("a"))
        .await
        .unwrap();
    // The record goes whatever the node says: a destroy is never stuck.
    fake.fail("remove");
    h.service.destroy(&alice(), &first).await.unwrap();
    fake.heal();
    fake.fail("unreachable remove");
    h.service.destroy(&alice(), &second).await.unwrap();
    for id in [&first, &second] {
        assert!(h.service.workspace(&alice(), id).await.is_err());
        assert_eq!(actions(&h, id).await.last().unwrap(), "destroy");
        assert!(
            fake.calls().contains(&format!("remove a {id}")),
            "{:?}",
            fake.calls()
        );
    }
}
