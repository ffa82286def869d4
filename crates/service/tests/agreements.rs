//! Agreements with the manual clock and a fake node (docs/agreements.md):
//! offers, acceptance, expiry and renegotiation; a reservation staged,
//! started and ended on time to the second; over-commit refused with the
//! earliest feasible start; quotas counting reserved capacity; terms that
//! mean nothing refused with nothing reserved; a best-effort workspace
//! suspended for a reservation and resumed after it; a service restart
//! between acceptance and start. On both stores.

mod common;

use std::sync::Arc;

use common::fake_node::FakeNode;
use common::*;
use vws_model::agreement::{Agreement, AgreementRequest, AgreementState, Renegotiation, Terms};
use vws_model::node::Registration;
use vws_model::{Form, Placement, State};
use vws_service::command::{Command, Reply};
use vws_service::{Service, ServiceError};
use vws_store::Backend;

const GIB: u64 = 1 << 30;

/// Node `a` offers 4 GiB (3.75 GiB beyond the host's reserve).
fn report(s: &Service, workspaces: &[(String, String)]) -> vws_model::node::NodeReport {
    let _ = s;
    let mut r = node_report(&[]);
    r.ram_total = 4 * GIB;
    r.ram_free = 4 * GIB;
    r.workspaces = workspaces.iter().cloned().collect();
    r
}

/// What node `a` holds, as it would report it.
async fn held(s: &Service) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let all = s
        .store()
        .list_workspaces(&vws_store::Filter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    for r in all.items {
        if r.node.as_deref() == Some("a") {
            out.push((r.id.clone(), r.state.as_str().to_string()));
        }
    }
    out
}

async fn register(s: &Service) {
    let reg = Registration {
        name: "a".into(),
        url: "https://a.invalid".into(),
        report: report(s, &[]),
    };
    s.register_node(reg).await.unwrap();
}

/// Moves the clock, lets the node report, and runs one scheduler round.
async fn tick(h: &Harness, s: &Service, secs: i64) {
    h.clock.advance(time::Duration::seconds(secs));
    let r = report(s, &held(s).await);
    s.node_heartbeat("a", r).await.unwrap();
    s.keep_agreements().await.unwrap();
}

async fn setup(backend: Backend, policy: &str) -> (Harness, Arc<FakeNode>) {
    let mut fake = None;
    let h = harness_nodes_policy(backend, policy, |home| {
        let f = Arc::new(FakeNode::returning_memory(home.join("memory")));
        fake = Some(f.clone());
        f
    })
    .await;
    h.kernel_image("k", "1").await;
    register(&h.service).await;
    (h, fake.unwrap())
}

fn ask(
    ram: &str,
    count: u32,
    start: Option<String>,
    latest: Option<String>,
    secs: u64,
) -> AgreementRequest {
    let d = description("k:1", &format!("ram = \"{ram}\""));
    AgreementRequest {
        description: Some(serde_json::from_str(&vws_model::write(&d, Form::Json)).unwrap()),
        workspace: None,
        count: Some(count),
        terms: Terms {
            start,
            latest_start: latest,
            duration: secs,
            at_end: Default::default(),
        },
    }
}

fn at(h: &Harness, secs: i64) -> String {
    use vws_service::Clock;
    (h.clock.now() + time::Duration::seconds(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn agreement(
    s: &Arc<Service>,
    who: &vws_model::Identity,
    c: Command,
) -> Result<Agreement, ServiceError> {
    match s.execute(who, c).await? {
        Reply::Agreement(a) => Ok(*a),
        _ => panic!("an agreement command answers an agreement"),
    }
}

async fn offer(s: &Arc<Service>, req: AgreementRequest) -> Result<Agreement, ServiceError> {
    agreement(s, &alice(), Command::OfferAgreement(req)).await
}

async fn accept(s: &Arc<Service>, id: &str) -> Result<Agreement, ServiceError> {
    agreement(s, &alice(), Command::AcceptAgreement { id: id.into() }).await
}

async fn show(s: &Arc<Service>, id: &str) -> Agreement {
    agreement(s, &alice(), Command::ShowAgreement { id: id.into() })
        .await
        .unwrap()
}

fn actions(a: &Agreement) -> Vec<&str> {
    a.history.iter().map(|e| e.action.as_str()).collect()
}

async fn offers_accept_expiry_and_renegotiation_on(backend: Backend) {
    let (h, _fake) = setup(backend, "").await;
    let s = &h.service;
    use vws_service::Clock;
    let now = h.clock.now();
    let first = offer(s, ask("1GiB", 1, None, None, 3600)).await.unwrap();
    assert_eq!(first.state, AgreementState::Offered);
    assert_eq!(
        (first.start, first.end),
        (now, now + time::Duration::hours(1))
    );
    assert_eq!(first.slots.len(), 1);
    assert_eq!(
        (first.slots[0].node.as_str(), first.slots[0].ram),
        ("a", GIB)
    );
    assert_eq!(
        first.offer_expires_at,
        Some(now + time::Duration::seconds(300))
    );

    // The offer holds its capacity: 3 GiB more do not fit beside it now,
    // and the refusal names when they would.
    match offer(s, ask("3GiB", 1, None, None, 60)).await {
        Err(ServiceError::NoCapacity { earliest_start, .. }) => {
            assert_eq!(earliest_start, Some(at(&h, 3600)))
        }
        other => panic!("expected no capacity, got {other:?}"),
    }
    // Someone else's offer is not found, to see or to accept.
    let bobs = agreement(
        s,
        &bob(),
        Command::AcceptAgreement {
            id: first.id.clone(),
        },
    )
    .await;
    assert!(matches!(bobs, Err(ServiceError::NotFound(_))), "{bobs:?}");

    // Unaccepted for 300 s, it expires and releases its capacity.
    tick(&h, s, 300).await;
    assert_eq!(show(s, &first.id).await.state, AgreementState::Expired);
    assert!(
        matches!(accept(s, &first.id).await, Err(ServiceError::Conflict(m)) if m.contains("expired"))
    );
    let big = offer(s, ask("3GiB", 1, None, None, 60)).await.unwrap();

    // A rejected offer cannot be accepted.
    let rejected = agreement(s, &alice(), Command::CancelAgreement { id: big.id.clone() })
        .await
        .unwrap();
    assert_eq!(rejected.state, AgreementState::Cancelled);
    assert!(matches!(
        accept(s, &big.id).await,
        Err(ServiceError::Conflict(_))
    ));

    // Accepted: a reservation, with its workspace made in the repository
    // and held at least until the end.
    let o = offer(s, ask("1GiB", 1, Some(at(&h, 600)), None, 600))
        .await
        .unwrap();
    let r = accept(s, &o.id).await.unwrap();
    assert_eq!(r.state, AgreementState::Reserved);
    let ws = r.slots[0]
        .workspace
        .clone()
        .expect("a workspace for the slot");
    let rec = s.store().workspace(&ws).await.unwrap().unwrap();
    assert_eq!(
        (rec.placement, rec.state),
        (Placement::Repository, State::Shutdown)
    );
    assert!(rec.terminates_at.unwrap() >= r.end);
    assert!(matches!(
        accept(s, &o.id).await,
        Err(ServiceError::Conflict(_))
    ));

    // Renegotiated: twice as long. The new offer replaces it at acceptance
    // and takes over its workspace.
    let change = Renegotiation {
        duration: Some(1200),
        ..Default::default()
    };
    let longer = agreement(
        s,
        &alice(),
        Command::Renegotiate {
            id: r.id.clone(),
            change,
        },
    )
    .await
    .unwrap();
    assert_eq!(longer.replaces.as_deref(), Some(r.id.as_str()));
    assert_eq!(longer.end - longer.start, time::Duration::seconds(1200));
    assert_eq!(show(s, &r.id).await.state, AgreementState::Reserved);
    let longer = accept(s, &longer.id).await.unwrap();
    assert_eq!(longer.state, AgreementState::Reserved);
    assert_eq!(longer.slots[0].workspace.as_deref(), Some(ws.as_str()));
    let old = show(s, &r.id).await;
    assert_eq!(old.state, AgreementState::Replaced);
    assert!(actions(&old).contains(&"replaced"));
    assert!(
        s.store()
            .workspace(&ws)
            .await
            .unwrap()
            .unwrap()
            .terminates_at
            .unwrap()
            >= longer.end
    );
    // A moved start is a renegotiation too: ten minutes later.
    let change = Renegotiation {
        start: Some(at(&h, 1200)),
        ..Default::default()
    };
    let moved = agreement(
        s,
        &alice(),
        Command::Renegotiate {
            id: longer.id.clone(),
            change,
        },
    )
    .await
    .unwrap();
    assert_eq!(moved.start, h.clock.now() + time::Duration::seconds(1200));
}

async fn nonsense_terms_are_refused_on(backend: Backend) {
    let (h, _fake) = setup(backend, "[defaults]\nmax_lifetime = 3600\n").await;
    let s = &h.service;
    let refusals = [
        (ask("1GiB", 1, Some(at(&h, -60)), None, 60), "in the past"),
        (
            ask("1GiB", 1, Some(at(&h, 600)), Some(at(&h, 300)), 60),
            "before the start",
        ),
        (ask("1GiB", 1, None, None, 0), "terms.duration"),
        (ask("1GiB", 1, None, None, 7200), "longer than the 3600s"),
        (ask("1GiB", 0, None, None, 60), "count"),
        (
            ask("1GiB", 1, Some("tomorrow".into()), None, 60),
            "RFC 3339",
        ),
    ];
    for (req, says) in refusals {
        let e = offer(s, req).await.unwrap_err();
        assert!(e.to_string().contains(says), "{e} should say {says:?}");
    }
    let mut both = ask("1GiB", 1, None, None, 60);
    both.workspace = Some("ws-000000000000".into());
    assert!(matches!(
        offer(s, both).await,
        Err(ServiceError::InvalidTerms(_))
    ));
    let bad = AgreementRequest {
        description: Some(serde_json::json!({"category": "vm", "hardware": {"ram": "lots"}})),
        ..ask("1GiB", 1, None, None, 60)
    };
    assert!(matches!(offer(s, bad).await, Err(ServiceError::Invalid(_))));
    assert!(
        s.store().agreements_of(None).await.unwrap().is_empty(),
        "nothing is reserved"
    );
}

async fn on_time_to_the_second_on(backend: Backend) {
    let (h, fake) = setup(backend, "").await;
    let s = &h.service;
    let o = offer(s, ask("1GiB", 1, Some(at(&h, 1000)), None, 60))
        .await
        .unwrap();
    let r = accept(s, &o.id).await.unwrap();
    let ws = r.slots[0].workspace.clone().unwrap();
    let calls = |op: &str| {
        fake.calls()
            .iter()
            .filter(|c| **c == format!("{op} a {ws}"))
            .count()
    };

    // Not staged more than stage_ahead (900 s) before the start.
    tick(&h, s, 99).await;
    assert_eq!(calls("deploy"), 0);
    tick(&h, s, 1).await;
    assert_eq!(calls("deploy"), 1, "staged 900 s ahead: {:?}", fake.calls());
    assert_eq!(show(s, &r.id).await.state, AgreementState::Reserved);
    tick(&h, s, 899).await;
    assert_eq!(calls("start"), 0, "a second early");
    tick(&h, s, 1).await;
    assert_eq!(calls("start"), 1, "on the second");
    let a = show(s, &r.id).await;
    assert_eq!(a.state, AgreementState::Active);
    assert_eq!(actions(&a), ["offer", "accept", "stage", "start"]);
    assert_eq!(
        s.store().workspace(&ws).await.unwrap().unwrap().state,
        State::Running
    );

    // The reserved room is not given to anyone else in the window, even
    // while its owner has the workspace stopped: 3 GiB do not fit beside
    // the reserved 1 GiB on a node of 3.75 GiB, 2 GiB do.
    s.execute(
        &alice(),
        Command::Transition {
            id: ws.clone(),
            verb: vws_model::Verb::Stop,
        },
    )
    .await
    .unwrap();
    for (ram, fits) in [("3GiB", false), ("2GiB", true)] {
        let other = s
            .create(
                &bob(),
                description("k:1", &format!("ram = \"{ram}\"")),
                Form::Toml,
                None,
            )
            .await
            .unwrap()
            .record
            .id;
        let deployed = s.deploy(&bob(), &other, None).await;
        assert_eq!(deployed.is_ok(), fits, "{ram}: {deployed:?}");
        s.destroy(&bob(), &other).await.unwrap();
    }
    s.execute(
        &alice(),
        Command::Transition {
            id: ws.clone(),
            verb: vws_model::Verb::Start,
        },
    )
    .await
    .unwrap();

    tick(&h, s, 59).await;
    assert_eq!(show(s, &r.id).await.state, AgreementState::Active);
    tick(&h, s, 1).await;
    let a = show(s, &r.id).await;
    assert_eq!(a.state, AgreementState::Ended);
    assert_eq!((calls("stop"), calls("undeploy")), (2, 1));
    let rec = s.store().workspace(&ws).await.unwrap().unwrap();
    assert_eq!(
        (rec.placement, rec.state),
        (Placement::Repository, State::Shutdown)
    );
}

async fn over_commit_refused_with_the_earliest_start_on(backend: Backend) {
    let (h, _fake) = setup(backend, "").await;
    let s = &h.service;
    let o = offer(s, ask("3GiB", 1, Some(at(&h, 100)), None, 100))
        .await
        .unwrap();
    accept(s, &o.id).await.unwrap();
    match offer(s, ask("2GiB", 1, Some(at(&h, 150)), None, 10)).await {
        Err(ServiceError::NoCapacity {
            earliest_start,
            message,
        }) => {
            assert_eq!(earliest_start, Some(at(&h, 200)), "{message}")
        }
        other => panic!("expected no capacity, got {other:?}"),
    }
    // Before it, 30 s fit; in a window reaching its end, its end is offered.
    offer(s, ask("2GiB", 1, None, None, 30)).await.unwrap();
    let later = offer(s, ask("2GiB", 1, Some(at(&h, 150)), Some(at(&h, 300)), 10))
        .await
        .unwrap();
    assert_eq!(later.start, {
        use vws_service::Clock;
        h.clock.now() + time::Duration::seconds(200)
    });

    // Over HTTP the refusal is 409 no_capacity with the earliest start.
    let base = serve_api(&h, alice()).await;
    let body = serde_json::to_string(&ask("3GiB", 1, Some(at(&h, 150)), None, 10)).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/agreements"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CONFLICT);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "no_capacity");
    assert_eq!(err["error"]["earliest_start"], at(&h, 210).as_str());
}

async fn quotas_count_reserved_capacity_on(backend: Backend) {
    let (h, _fake) = setup(backend, "[defaults]\nmax_workspaces = 2\n").await;
    let s = &h.service;
    let o = offer(s, ask("512MiB", 2, Some(at(&h, 3600)), None, 60))
        .await
        .unwrap();
    // On offer, the two count already.
    let e = offer(s, ask("512MiB", 1, Some(at(&h, 3600)), None, 60))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Policy(_)), "{e}");
    accept(s, &o.id).await.unwrap();
    let e = s
        .create(
            &alice(),
            description("k:1", "ram = \"256MiB\""),
            Form::Toml,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::Policy(_)),
        "reserved workspaces count: {e}"
    );
    let e = offer(s, ask("512MiB", 1, Some(at(&h, 7200)), None, 60))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::Policy(_)), "{e}");
    // Bob's quota is his own.
    s.create(
        &bob(),
        description("k:1", "ram = \"256MiB\""),
        Form::Toml,
        None,
    )
    .await
    .unwrap();
}

async fn best_effort_suspended_and_resumed_on(backend: Backend) {
    let (h, fake) = setup(backend, "").await;
    let s = &h.service;
    // Two best-effort workspaces of 1.5 GiB run on the node.
    let mut running = Vec::new();
    for _ in 0..2 {
        let id = s
            .create(
                &alice(),
                description("k:1", "ram = \"1536MiB\""),
                Form::Toml,
                None,
            )
            .await
            .unwrap()
            .record
            .id;
        s.deploy(&alice(), &id, None).await.unwrap();
        s.execute(
            &alice(),
            Command::Transition {
                id: id.clone(),
                verb: vws_model::Verb::Start,
            },
        )
        .await
        .unwrap();
        running.push(id);
        h.clock.advance(time::Duration::seconds(1));
    }
    // A reservation of 2 GiB from 60 s on needs one of them gone.
    let o = offer(s, ask("2GiB", 1, Some(at(&h, 60)), None, 60))
        .await
        .unwrap();
    let r = accept(s, &o.id).await.unwrap();
    // Room is made make_room_ahead (10 s) before the start, and kept: the
    // suspended workspace is not resumed into it.
    tick(&h, s, 50).await;
    let (older, newer) = (&running[0], &running[1]);
    assert_eq!(show(s, &r.id).await.state, AgreementState::Reserved);
    let early = s.store().workspace(newer).await.unwrap().unwrap();
    assert_eq!(
        (early.placement, early.state),
        (Placement::Repository, State::Paused),
        "suspended ahead of the start"
    );
    tick(&h, s, 10).await;
    let a = show(s, &r.id).await;
    assert_eq!(a.state, AgreementState::Active, "{:?}", a.history);
    let newer_rec = s.store().workspace(newer).await.unwrap().unwrap();
    assert_eq!(
        (newer_rec.placement, newer_rec.state),
        (Placement::Repository, State::Paused),
        "the newest goes first"
    );
    let older_rec = s.store().workspace(older).await.unwrap().unwrap();
    assert_eq!(older_rec.state, State::Running, "one is enough");
    let history = s.history(&alice(), newer).await.unwrap();
    let suspend = history
        .iter()
        .find(|t| t.action == vws_model::records::HistoryAction::Suspend)
        .expect("the suspension is in its history");
    assert!(suspend.detail.as_deref().unwrap().contains(&r.id));
    assert!(suspend.detail.as_deref().unwrap().contains("newest first"));
    let calls = fake.calls();
    let pos = |c: String| {
        calls
            .iter()
            .position(|x| *x == c)
            .unwrap_or_else(|| panic!("{c} in {calls:?}"))
    };
    let ws = a.slots[0].workspace.clone().unwrap();
    assert!(pos(format!("pause a {newer}")) < pos(format!("undeploy a {newer}")));
    assert!(pos(format!("undeploy a {newer}")) < pos(format!("start a {ws}")));
    // Still in its time: it stays suspended.
    tick(&h, s, 30).await;
    assert_eq!(
        s.store().workspace(newer).await.unwrap().unwrap().placement,
        Placement::Repository
    );
    // At the end the reservation is checked in and the room returns.
    tick(&h, s, 30).await;
    assert_eq!(show(s, &r.id).await.state, AgreementState::Ended);
    let back = s.store().workspace(newer).await.unwrap().unwrap();
    assert_eq!(
        (back.placement, back.state),
        (Placement::Host, State::Running),
        "resumed"
    );
    assert!(s.store().suspensions().await.unwrap().is_empty());
    let history = s.history(&alice(), newer).await.unwrap();
    assert!(history
        .iter()
        .any(|t| t.action == vws_model::records::HistoryAction::Resume));
}

async fn a_restart_between_accept_and_start_changes_nothing_on(backend: Backend) {
    let (h, fake) = setup(backend, "").await;
    let o = offer(&h.service, ask("1GiB", 1, Some(at(&h, 1200)), None, 60))
        .await
        .unwrap();
    let r = accept(&h.service, &o.id).await.unwrap();
    let ws = r.slots[0].workspace.clone().unwrap();
    // Another service process on the same repository, after the first died.
    let next = h.reopened(fake.clone()).await;
    assert_eq!(show(&next, &r.id).await, r);
    tick(&h, &next, 300).await;
    assert!(fake.calls().contains(&format!("deploy a {ws}")));
    tick(&h, &next, 900).await;
    let a = show(&next, &r.id).await;
    assert_eq!(a.state, AgreementState::Active);
    assert_eq!(
        actions(&a),
        ["offer", "accept", "stage", "start"],
        "started on time"
    );
}

async fn a_missed_start_is_reported_on(backend: Backend) {
    let (h, _fake) = setup(backend, "").await;
    let s = &h.service;
    let late = accept(
        s,
        &offer(s, ask("1GiB", 1, Some(at(&h, 10)), None, 600))
            .await
            .unwrap()
            .id,
    )
    .await
    .unwrap();
    let gone = accept(
        s,
        &offer(s, ask("1GiB", 1, Some(at(&h, 10)), None, 20))
            .await
            .unwrap()
            .id,
    )
    .await
    .unwrap();
    // No scheduler ran for a minute.
    tick(&h, s, 70).await;
    let a = show(s, &late.id).await;
    assert_eq!(a.state, AgreementState::Active);
    let missed = a
        .history
        .iter()
        .find(|e| e.action == "missed-start")
        .expect("reported");
    assert!(
        missed.detail.as_deref().unwrap().contains("60s late"),
        "{missed:?}"
    );
    let g = show(s, &gone.id).await;
    assert_eq!(g.state, AgreementState::Ended);
    assert!(actions(&g).contains(&"missed-start"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_offers_accept_expiry_and_renegotiation() {
    offers_accept_expiry_and_renegotiation_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_offers_accept_expiry_and_renegotiation() {
    offers_accept_expiry_and_renegotiation_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nonsense_terms_are_refused() {
    nonsense_terms_are_refused_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nonsense_terms_are_refused() {
    nonsense_terms_are_refused_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_time_to_the_second() {
    on_time_to_the_second_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_time_to_the_second() {
    on_time_to_the_second_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_over_commit_refused_with_the_earliest_start() {
    over_commit_refused_with_the_earliest_start_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_commit_refused_with_the_earliest_start() {
    over_commit_refused_with_the_earliest_start_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_quotas_count_reserved_capacity() {
    quotas_count_reserved_capacity_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_quotas_count_reserved_capacity() {
    quotas_count_reserved_capacity_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_best_effort_suspended_and_resumed() {
    best_effort_suspended_and_resumed_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_best_effort_suspended_and_resumed() {
    best_effort_suspended_and_resumed_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_restart_between_accept_and_start_changes_nothing() {
    a_restart_between_accept_and_start_changes_nothing_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_restart_between_accept_and_start_changes_nothing() {
    a_restart_between_accept_and_start_changes_nothing_on(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_missed_start_is_reported() {
    a_missed_start_is_reported_on(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_missed_start_is_reported() {
    a_missed_start_is_reported_on(Backend::Postgres).await;
}
