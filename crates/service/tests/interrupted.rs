//! A service killed while a node carries out a start, stop, pause or
//! unpause (issue: a kill at 0.3 s into a start left the workspace stuck,
//! one during a stop marked it corrupted). The action's intent is in the
//! repository before the node is asked; the next service process finishes
//! it or forgets it by what the node reports when it registers (or at its
//! next heartbeat), so every workspace stays drivable.

mod common;

use std::sync::Arc;

use common::fake_node::FakeNode;
use common::*;
use vws_model::node::Registration;
use vws_model::{Form, Placement, State, Verb};
use vws_service::command::Command;
use vws_service::{Service, ServiceError, Workspace};
use vws_store::Backend;

async fn register(s: &Service, workspaces: &[(&str, &str)]) {
    let reg = Registration {
        name: "a".into(),
        url: "https://a.invalid".into(),
        report: node_report(workspaces),
    };
    s.register_node(reg).await.unwrap();
}

async fn verb(s: &Arc<Service>, id: &str, verb: Verb) -> Result<Workspace, ServiceError> {
    let id = id.to_string();
    s.execute(&alice(), Command::Transition { id, verb })
        .await?
        .into_workspace()
}

/// A workspace deployed on node `a`, in `state`.
async fn deployed(h: &Harness, fake: &Arc<FakeNode>, state: State) -> String {
    h.kernel_image("k", "1").await;
    register(&h.service, &[]).await;
    let d = description("k:1", "ram = \"256MiB\"");
    let id = h
        .service
        .create(&alice(), d, Form::Toml, None)
        .await
        .unwrap()
        .record
        .id;
    h.service.deploy(&alice(), &id, None).await.unwrap();
    if state != State::Shutdown {
        verb(&h.service, &id, Verb::Start).await.unwrap();
    }
    if state == State::Paused {
        verb(&h.service, &id, Verb::Pause).await.unwrap();
    }
    fake.heal();
    id
}

/// Asks `v` of the first service and kills it (drops the call) while the
/// node is carrying it out.
async fn killed_during(h: &Harness, fake: &Arc<FakeNode>, id: &str, v: Verb) {
    fake.fail(&format!("hang {}", v.as_str()));
    let s = h.service.clone();
    let id = id.to_string();
    let call = tokio::spawn(async move { verb(&s, &id, v).await });
    // Until the node has been asked: the intent is written by then.
    while !fake.calls().iter().any(|c| c.starts_with(v.as_str())) {
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    fake.heal();
}

async fn record(s: &Service, id: &str) -> vws_store::WorkspaceRecord {
    s.store().workspace(id).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_start_the_node_finished_is_recorded_by_the_next_service() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    killed_during(&h, &fake, &id, Verb::Start).await;
    assert_eq!(record(&h.service, &id).await.state, State::Shutdown);
    let next = h.reopened(fake.clone()).await;
    register(&next, &[(&id, "running")]).await;
    let r = record(&next, &id).await;
    assert_eq!((r.state, r.placement), (State::Running, Placement::Host));
    let trail = next.store().history(&id).await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("start", "reconciler")
    );
    // Drivable: it stops as any running workspace does.
    let ws = verb(&next, &id, Verb::Stop).await.unwrap();
    assert_eq!(ws.record.state, State::Shutdown);
}

#[tokio::test]
async fn a_start_the_node_never_made_is_forgotten_and_can_be_asked_again() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    killed_during(&h, &fake, &id, Verb::Start).await;
    let next = h.reopened(fake.clone()).await;
    assert!(
        next.store().pending(&id).await.unwrap().is_some(),
        "the intent outlived the kill"
    );
    register(&next, &[(&id, "shutdown")]).await;
    assert_eq!(record(&next, &id).await.state, State::Shutdown);
    assert_eq!(next.store().pending(&id).await.unwrap(), None, "forgotten");
    let ws = verb(&next, &id, Verb::Start).await.unwrap();
    assert_eq!(ws.record.state, State::Running);
}

#[tokio::test]
async fn a_stop_the_node_finished_is_a_stop_not_a_corruption() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Running).await;
    killed_during(&h, &fake, &id, Verb::Stop).await;
    assert_eq!(record(&h.service, &id).await.state, State::Running);
    let next = h.reopened(fake.clone()).await;
    register(&next, &[(&id, "shutdown")]).await;
    let r = record(&next, &id).await;
    assert_eq!((r.state, r.reason), (State::Shutdown, None));
    assert!(r.binding.forwards.is_empty());
    // Drivable: it starts again, and undeploys.
    verb(&next, &id, Verb::Start).await.unwrap();
    verb(&next, &id, Verb::Stop).await.unwrap();
}

#[tokio::test]
async fn a_pause_and_an_unpause_are_finished_at_the_next_heartbeat() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Running).await;
    killed_during(&h, &fake, &id, Verb::Pause).await;
    // The node stayed up (`vws serve` apart from `vws node`): no new
    // registration, its heartbeat says how things are.
    let next = h.reopened(fake.clone()).await;
    next.node_heartbeat("a", node_report(&[(&id, "paused")]))
        .await
        .unwrap();
    assert_eq!(record(&next, &id).await.state, State::Paused);
    fake.fail("hang unpause");
    let s = next.clone();
    let id2 = id.clone();
    let call = tokio::spawn(async move { verb(&s, &id2, Verb::Unpause).await });
    while !fake.calls().iter().any(|c| c.starts_with("unpause")) {
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    fake.heal();
    let third = h.reopened(fake.clone()).await;
    third
        .node_heartbeat("a", node_report(&[(&id, "running")]))
        .await
        .unwrap();
    assert_eq!(record(&third, &id).await.state, State::Running);
}

#[tokio::test]
async fn an_action_in_flight_in_this_process_is_left_to_it() {
    // A heartbeat while this process's own start is still waiting on the
    // node does not record it ahead of the start's own answer.
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    fake.fail("hang start");
    let s = h.service.clone();
    let id2 = id.clone();
    let call = tokio::spawn(async move { verb(&s, &id2, Verb::Start).await });
    while !fake.calls().iter().any(|c| c.starts_with("start")) {
        tokio::task::yield_now().await;
    }
    h.service
        .node_heartbeat("a", node_report(&[(&id, "running")]))
        .await
        .unwrap();
    assert_eq!(record(&h.service, &id).await.state, State::Shutdown);
    call.abort();
}

#[tokio::test]
async fn a_stop_still_under_way_ends_as_a_stop_when_the_node_says_the_guest_went() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Running).await;
    killed_during(&h, &fake, &id, Verb::Stop).await;
    let next = h.reopened(fake.clone()).await;
    // Still powering off when the node registers again...
    register(&next, &[(&id, "running")]).await;
    assert_eq!(record(&next, &id).await.state, State::Running);
    // ...then the guest is gone: the stop that was asked for.
    let ev = vws_model::node::NodeEvent {
        id: id.clone(),
        reason: "qemu exited".into(),
    };
    next.node_event("a", ev).await.unwrap();
    let r = record(&next, &id).await;
    assert_eq!((r.state, r.reason), (State::Shutdown, None));
    // A guest that dies with no stop asked for is still a corruption.
    verb(&next, &id, Verb::Start).await.unwrap();
    let ev = vws_model::node::NodeEvent {
        id: id.clone(),
        reason: "qemu exited".into(),
    };
    next.node_event("a", ev).await.unwrap();
    assert_eq!(record(&next, &id).await.state, State::Corrupted);
}

#[tokio::test]
async fn a_destroy_interrupted_while_the_node_removes_it_is_finished() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Running).await;
    fake.fail("hang remove");
    let s = h.service.clone();
    let id2 = id.clone();
    let call = tokio::spawn(async move { s.destroy(&alice(), &id2).await });
    while !fake.calls().iter().any(|c| c.starts_with("remove")) {
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    fake.heal();
    assert!(
        record_of(&h.service, &id).await.is_some(),
        "killed before the record went"
    );
    // The node has removed it; the next service finishes the destroy
    // instead of finding it gone and calling it corrupted.
    let next = h.reopened(fake.clone()).await;
    register(&next, &[]).await;
    assert!(record_of(&next, &id).await.is_none());
    let trail = next.store().history(&id).await.unwrap();
    let last = trail.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("destroy", "reconciler")
    );
    assert!(!trail.iter().any(|t| t.action.as_str() == "corrupt"));
}

async fn record_of(s: &Service, id: &str) -> Option<vws_store::WorkspaceRecord> {
    s.store().workspace(id).await.unwrap()
}

#[tokio::test]
async fn an_undeploy_is_recorded_once_the_node_let_the_workspace_go() {
    for node_kept_it in [false, true] {
        let fake = Arc::new(FakeNode::default());
        let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
        let id = deployed(&h, &fake, State::Shutdown).await;
        killed_during(&h, &fake, &id, Verb::Undeploy).await;
        let next = h.reopened(fake.clone()).await;
        let report: &[(&str, &str)] = if node_kept_it {
            &[(&id, "shutdown")]
        } else {
            &[]
        };
        register(&next, report).await;
        let r = record(&next, &id).await;
        if node_kept_it {
            // Not checked in: still on its node, and undeploy works again.
            assert_eq!(
                (r.placement, r.node.as_deref()),
                (Placement::Host, Some("a"))
            );
            let ws = verb(&next, &id, Verb::Undeploy).await.unwrap();
            assert_eq!(ws.record.placement, Placement::Repository);
        } else {
            assert_eq!(
                (r.state, r.placement, r.node, r.lock_holder),
                (State::Shutdown, Placement::Repository, None, None)
            );
            // Drivable: deployed again.
            next.deploy(&alice(), &id, None).await.unwrap();
        }
    }
}
