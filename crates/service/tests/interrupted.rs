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

/// Another replica's action in flight is its own while that replica's
/// lease runs: a heartbeat reaching a second replica meanwhile leaves it,
/// even where the node's report would settle it; once the lease has run
/// out (the replica was killed) the next heartbeat settles it.
#[tokio::test]
async fn postgres_an_action_of_a_live_replica_is_left_to_it_until_its_lease_ends() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Postgres, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    h.service.renew_lease().await.unwrap();
    killed_during(&h, &fake, &id, Verb::Start).await;
    let other = h.reopened(fake.clone()).await;
    other.renew_lease().await.unwrap();
    let live: Vec<String> = other
        .replicas()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.instance)
        .collect();
    assert!(live.contains(&h.service.instance().to_string()), "{live:?}");
    assert_eq!(live.len(), 2, "{live:?}");
    let running = node_report(&[(&id, "running")]);
    other.node_heartbeat("a", running.clone()).await.unwrap();
    assert_eq!(record(&other, &id).await.state, State::Shutdown);
    assert!(other.store().pending(&id).await.unwrap().is_some());
    // The first replica stops renewing: past its lease the intent is
    // the survivor's to settle.
    h.clock
        .advance(vws_service::replicas::LEASE + time::Duration::milliseconds(1));
    other.renew_lease().await.unwrap();
    other.node_heartbeat("a", running).await.unwrap();
    let r = record(&other, &id).await;
    assert_eq!(r.state, State::Running);
    assert_eq!(other.store().pending(&id).await.unwrap(), None);
    let ws = verb(&other, &id, Verb::Stop).await.unwrap();
    assert_eq!(ws.record.state, State::Shutdown);
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

async fn register_as(s: &Service, name: &str, workspaces: &[(&str, &str)]) {
    let reg = Registration {
        name: name.into(),
        url: format!("https://{name}.invalid"),
        report: node_report(workspaces),
    };
    s.register_node(reg).await.unwrap();
}

/// Runs `call` on the first service and kills it (drops the call) once
/// the node has been asked for `op`, which never answers.
async fn killed_while<T: Send + 'static>(
    fake: &Arc<FakeNode>,
    op: &str,
    call: impl std::future::Future<Output = T> + Send + 'static,
) {
    fake.fail(&format!("hang {op}"));
    let call = tokio::spawn(call);
    while !fake
        .calls()
        .iter()
        .any(|c| c.starts_with(&format!("{op} ")))
    {
        tokio::task::yield_now().await;
    }
    call.abort();
    let _ = call.await;
    fake.heal();
}

async fn created(h: &Harness) -> String {
    h.kernel_image("k", "1").await;
    let d = description("k:1", "ram = \"256MiB\"");
    h.service
        .create(&alice(), d, Form::Toml, None)
        .await
        .unwrap()
        .record
        .id
}

async fn last_action(s: &Service, id: &str) -> (String, String) {
    let trail = s.store().history(id).await.unwrap();
    let last = trail.last().unwrap();
    (last.action.to_string(), last.actor.clone())
}

/// A service killed while node `a` stages a new workspace.
async fn deploy_killed() -> (Arc<FakeNode>, Harness, String) {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    register(&h.service, &[]).await;
    let id = created(&h).await;
    let (s, i) = (h.service.clone(), id.clone());
    killed_while(&fake, "deploy", async move {
        s.deploy(&alice(), &i, None).await
    })
    .await;
    (fake, h, id)
}

#[tokio::test]
async fn a_deploy_the_node_finished_is_rolled_back_and_can_be_asked_again() {
    let (fake, h, id) = deploy_killed().await;
    let r = record(&h.service, &id).await;
    assert_eq!(r.lock_holder.as_deref(), Some("a"), "locked while staging");
    let next = h.reopened(fake.clone()).await;
    // The node staged it meanwhile: what it staged goes, the lock too.
    register(&next, &[(&id, "shutdown")]).await;
    assert!(
        fake.calls().contains(&format!("remove a {id}")),
        "{:?}",
        fake.calls()
    );
    let r = record(&next, &id).await;
    assert_eq!(
        (r.placement, r.lock_holder, r.node),
        (Placement::Repository, None, None)
    );
    assert_eq!(
        last_action(&next, &id).await,
        ("checkout-failed".to_string(), "reconciler".to_string())
    );
    assert_eq!(next.store().pending(&id).await.unwrap(), None);
    let ws = next.deploy(&alice(), &id, None).await.unwrap();
    assert_eq!(ws.record.placement, Placement::Host);
}

#[tokio::test]
async fn a_deploy_still_staging_is_left_to_finish_then_rolled_back() {
    let (fake, h, id) = deploy_killed().await;
    let next = h.reopened(fake.clone()).await;
    // The fake answers staging progress: still staging, so it waits.
    register(&next, &[]).await;
    assert!(next.store().pending(&id).await.unwrap().is_some());
    assert_eq!(record(&next, &id).await.lock_holder.as_deref(), Some("a"));
    // Staging ended without a deploy (none in the report, no progress):
    // rolled back at the next heartbeat, nothing to remove.
    fake.fail("staging");
    next.node_heartbeat("a", node_report(&[])).await.unwrap();
    let r = record(&next, &id).await;
    assert_eq!((r.lock_holder, r.placement), (None, Placement::Repository));
    assert!(!fake.calls().iter().any(|c| c.starts_with("remove")));
    fake.heal();
    next.deploy(&alice(), &id, None).await.unwrap();
}

async fn running_on_a(h: &Harness) -> String {
    register_as(&h.service, "a", &[]).await;
    register_as(&h.service, "b", &[]).await;
    let id = created(h).await;
    h.service.deploy(&alice(), &id, Some("a")).await.unwrap();
    verb(&h.service, &id, Verb::Start).await.unwrap();
    id
}

async fn migrate(s: Arc<Service>, id: String) {
    let cmd = Command::Migrate { id, to: "b".into() };
    let _ = s.execute(&alice(), cmd).await;
}

#[tokio::test]
async fn a_migration_whose_source_still_holds_the_guest_is_rolled_back() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = running_on_a(&h).await;
    killed_while(&fake, "migrate", migrate(h.service.clone(), id.clone())).await;
    let next = h.reopened(fake.clone()).await;
    // The target is back; the source's guest ended paused (its QEMU's
    // migration completed on its own, or the node stopped it).
    register_as(&next, "b", &[(&id, "paused")]).await;
    register_as(&next, "a", &[(&id, "paused")]).await;
    let calls = fake.calls();
    assert!(calls.contains(&format!("remove b {id}")), "{calls:?}");
    assert!(calls.contains(&format!("unpause a {id}")), "{calls:?}");
    let r = record(&next, &id).await;
    assert_eq!((r.state, r.node.as_deref()), (State::Running, Some("a")));
    assert_eq!(
        last_action(&next, &id).await,
        ("migrate-failed".to_string(), "reconciler".to_string())
    );
    // Drivable: it migrates when asked again.
    let cmd = Command::Migrate {
        id: id.clone(),
        to: "b".into(),
    };
    let ws = next
        .execute(&alice(), cmd)
        .await
        .unwrap()
        .into_workspace()
        .unwrap();
    assert_eq!(ws.record.node.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_migration_past_its_switch_over_is_finished_on_the_target() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = running_on_a(&h).await;
    let mut job = exited_job("job-1", &id, &alice().dn, "a");
    job.state = vws_model::records::JobState::Running;
    h.service.store().insert_job(&job).await.unwrap();
    killed_while(&fake, "migrate", migrate(h.service.clone(), id.clone())).await;
    let next = h.reopened(fake.clone()).await;
    // The target does not answer yet: nothing is decided, and the source
    // registers all the same.
    fake.fail("unreachable finish_incoming");
    register_as(&next, "a", &[]).await;
    assert!(next.store().pending(&id).await.unwrap().is_some());
    assert_eq!(record(&next, &id).await.node.as_deref(), Some("a"));
    // Meanwhile nothing is sent to where it may no longer be.
    let job = Command::SubmitJob {
        id: id.clone(),
        job: serde_json::from_value(serde_json::json!({ "argv": ["true"] })).unwrap(),
    };
    let refused = next.execute(&alice(), job).await.err().unwrap();
    assert!(refused.to_string().contains("being settled"), "{refused}");
    assert_eq!(refused.status_and_code().0.as_u16(), 409);
    // With the target back, the source no longer holding the guest: the
    // switch-over happened, and is finished on the target.
    fake.heal();
    register_as(&next, "b", &[(&id, "paused")]).await;
    next.node_heartbeat("a", node_report(&[])).await.unwrap();
    assert!(fake.calls().contains(&format!("finish_incoming b {id}")));
    let r = record(&next, &id).await;
    assert_eq!((r.state, r.node.as_deref()), (State::Running, Some("b")));
    assert_eq!(next.store().pending(&id).await.unwrap(), None);
    let j = next.store().job("job-1").await.unwrap().unwrap();
    assert_eq!(j.state, vws_model::records::JobState::Failed);
    assert!(j.message.unwrap_or_default().contains("migration"));
    let ws = verb(&next, &id, Verb::Stop).await.unwrap();
    assert_eq!(ws.record.state, State::Shutdown);
}

#[tokio::test]
async fn a_start_whose_node_went_away_is_settled_by_what_the_node_says_when_back() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    // The node dies while starting the guest (whose QEMU lives on).
    fake.fail("unreachable start");
    let e = verb(&h.service, &id, Verb::Start).await.unwrap_err();
    assert!(e.node_unreachable(), "{e}");
    fake.heal();
    assert!(
        h.service.store().pending(&id).await.unwrap().is_some(),
        "the outcome is unknown: the intent stays"
    );
    // The same service hears from the restarted node: the guest runs.
    register(&h.service, &[(&id, "running")]).await;
    let r = record(&h.service, &id).await;
    assert_eq!(r.state, State::Running);
    assert_eq!(
        last_action(&h.service, &id).await,
        ("start".to_string(), "reconciler".to_string())
    );
    verb(&h.service, &id, Verb::Stop).await.unwrap();
}

#[tokio::test]
async fn what_a_node_holds_that_no_record_places_there_is_removed_when_it_registers() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Running).await;
    let undeployed = created(&h).await;
    register(
        &h.service,
        &[
            (&id, "running"),
            ("ws-000000000001", "running"),
            (&undeployed, "shutdown"),
        ],
    )
    .await;
    let removed: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("remove"))
        .collect();
    assert_eq!(
        removed,
        [
            format!("remove a {undeployed}"),
            "remove a ws-000000000001".to_string()
        ]
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert_eq!(record(&h.service, &id).await.state, State::Running);
}

#[tokio::test]
async fn an_action_the_node_is_still_carrying_out_is_left_until_it_is_done() {
    let fake = Arc::new(FakeNode::default());
    let h = harness_nodes(Backend::Sqlite, fake.clone()).await;
    let id = deployed(&h, &fake, State::Shutdown).await;
    killed_during(&h, &fake, &id, Verb::Start).await;
    let next = h.reopened(fake.clone()).await;
    // The guest is not up yet and the node is still starting it: a
    // "not running" now must not make the start forgotten.
    let mut report = node_report(&[(&id, "shutdown")]);
    report.busy.insert(id.clone(), "start".into());
    let reg = Registration {
        name: "a".into(),
        url: "https://a.invalid".into(),
        report,
    };
    next.register_node(reg).await.unwrap();
    assert!(next.store().pending(&id).await.unwrap().is_some());
    next.node_heartbeat("a", node_report(&[(&id, "running")]))
        .await
        .unwrap();
    assert_eq!(record(&next, &id).await.state, State::Running);
}
