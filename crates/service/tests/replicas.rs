//! Admission decided in the database: two service processes on one
//! repository, creating for the same owner at once, admit exactly the
//! quota between them (the owner's row is locked in the insert's
//! transaction; no lock lives in a process's memory). And an image removed
//! by one while the other creates from it is either removed with no
//! workspace using it, or kept for the workspace. On both stores.

mod common;

use common::*;
use vws_service::command::Command;
use vws_service::ServiceError;
use vws_store::Backend;

const POLICY: &str = "[defaults]\nmax_workspaces = 20\nmax_total_ram = \"1TiB\"\n";

async fn quota_exact_across_replicas(backend: Backend) {
    let h = harness(backend, POLICY).await;
    h.kernel_image("base", "1").await;
    let replicas = [h.service.clone(), h.replica(POLICY).await];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let s = replicas[i % 2].clone();
            tokio::spawn(async move {
                s.execute(
                    &alice(),
                    Command::Create {
                        description: description("base:1", ""),
                        form: vws_model::Form::Toml,
                        name: None,
                    },
                )
                .await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => created += 1,
            Err(ServiceError::Policy(m)) => {
                assert!(m.contains("limit is 20"), "{m}");
                refused += 1
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((created, refused), (20, 20));
    assert_eq!(
        h.service.store().owner_usage(&alice().dn).await.unwrap().0,
        20
    );
}

/// The owner's kept counts (what admission reads) against its records,
/// after creates and destroys of workspaces of several sizes ran at once
/// on two replicas: a count that drifted would admit too many or too few.
async fn kept_counts_match_the_records(backend: Backend) {
    let h = harness(backend, POLICY).await;
    h.kernel_image("base", "1").await;
    let replicas = [h.service.clone(), h.replica(POLICY).await];
    let size = |i: usize| {
        format!(
            "ram = {{ min = \"64MiB\", max = \"{}MiB\" }}",
            128 << (i % 3)
        )
    };
    let create = |i: usize| {
        let s = replicas[i % 2].clone();
        let hardware = size(i);
        tokio::spawn(async move {
            s.execute(
                &alice(),
                Command::Create {
                    description: description("base:1", &hardware),
                    form: vws_model::Form::Toml,
                    name: None,
                },
            )
            .await
        })
    };
    let mut ids = Vec::new();
    for t in (0..16).map(create).collect::<Vec<_>>() {
        ids.push(
            t.await
                .unwrap()
                .unwrap()
                .into_workspace()
                .unwrap()
                .record
                .id,
        );
    }
    // Half destroyed while as many again are created, some over the quota.
    let destroys: Vec<_> = ids
        .iter()
        .step_by(2)
        .enumerate()
        .map(|(i, id)| {
            let (s, id) = (replicas[i % 2].clone(), id.clone());
            tokio::spawn(async move { s.execute(&alice(), Command::Destroy { id }).await })
        })
        .collect();
    let creates: Vec<_> = (16..32).map(create).collect();
    for t in destroys {
        t.await.unwrap().unwrap();
    }
    for t in creates {
        match t.await.unwrap() {
            Ok(_) => {}
            Err(ServiceError::Policy(m)) => assert!(m.contains("limit is 20"), "{m}"),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    let records = h
        .service
        .store()
        .list_workspaces(&vws_store::Filter {
            owner: Some(alice().dn),
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap()
        .items;
    let (count, ram) = h.service.store().owner_usage(&alice().dn).await.unwrap();
    assert!(
        records.len() > 8 && records.len() <= 20,
        "{}",
        records.len()
    );
    assert_eq!(count, records.len() as u64);
    assert_eq!(ram, records.iter().map(|r| r.ram_quota()).sum::<u64>());
}

async fn removal_and_create_race(backend: Backend) {
    let h = harness(backend, POLICY).await;
    let other = h.replica(POLICY).await;
    for round in 0..10 {
        let name = format!("racy{round}");
        h.kernel_image(&name, "1").await;
        let reference = format!("{name}:1");
        let (a, b) = (h.service.clone(), other.clone());
        let r2 = reference.clone();
        let create = tokio::spawn(async move {
            a.execute(
                &admin(),
                Command::Create {
                    description: description(&r2, ""),
                    form: vws_model::Form::Toml,
                    name: None,
                },
            )
            .await
        });
        let remove = tokio::spawn(async move {
            b.execute(&admin(), Command::RemoveImage { reference })
                .await
        });
        let (created, removed) = (create.await.unwrap(), remove.await.unwrap());
        match (&created, &removed) {
            // Removed first: the create found no image (or found it gone).
            (Err(_), Ok(_)) => {}
            // Created first: the removal saw the workspace and refused.
            (Ok(ws), Err(ServiceError::Conflict(_))) => {
                let ws = match ws {
                    vws_service::command::Reply::Workspace(w) => w,
                    _ => panic!("not a workspace"),
                };
                let image = h
                    .service
                    .store()
                    .image(&vws_model::ImageRef::Digest(ws.record.image_id.clone()))
                    .await
                    .unwrap();
                assert!(
                    image.is_some(),
                    "round {round}: a workspace's image was removed"
                );
            }
            _ => panic!(
                "round {round}: created {:?}, removed {:?}",
                created.as_ref().err().map(|e| e.to_string()),
                removed.as_ref().err().map(|e| e.to_string())
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_quota_exact_across_replicas() {
    quota_exact_across_replicas(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_quota_exact_across_replicas() {
    quota_exact_across_replicas(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_image_removal_and_create_race() {
    removal_and_create_race(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_image_removal_and_create_race() {
    removal_and_create_race(Backend::Postgres).await;
}

/// An event one replica commits wakes a follower on another at once
/// (LISTEN/NOTIFY), and the follower reads it from the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_events_of_one_replica_wake_followers_on_another() {
    use futures::StreamExt;
    let h = harness(Backend::Postgres, POLICY).await;
    h.kernel_image("base", "1").await;
    let other = h.replica(POLICY).await;
    assert!(h.service.store().event_wakeups().is_some());
    let mut wake = other.store().event_wakeups().unwrap();
    // The listener is listening once it gives its first wake-up.
    tokio::time::timeout(std::time::Duration::from_secs(10), wake.changed())
        .await
        .expect("the listener starts")
        .unwrap();
    wake.borrow_and_update();
    let (_, stream) = vws_service::events::follow(other.clone(), admin(), None, true)
        .await
        .unwrap();
    let mut stream = Box::pin(stream);
    let made = h
        .service
        .create(
            &alice(),
            description("base:1", ""),
            vws_model::Form::Toml,
            None,
        )
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), wake.changed())
        .await
        .expect("the commit was announced to the other replica")
        .unwrap();
    let ev = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
        .await
        .expect("the follower woke")
        .unwrap();
    assert_eq!(ev.subject, made.record.id);
}

#[test]
fn sqlite_has_no_listener() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let h = harness(Backend::Sqlite, POLICY).await;
        assert!(h.service.store().event_wakeups().is_none());
    });
}

/// A pull a replica was running when it died is reported failed as soon as
/// that replica's lease has run out, by any replica (no longer only once
/// it has not moved for two minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_operation_of_a_dead_replica_is_reported_failed() {
    use vws_model::records::{Operation, OperationState};
    use vws_service::command::Reply;
    use vws_service::Clock;
    let h = harness(Backend::Postgres, POLICY).await;
    let other = h.replica(POLICY).await;
    let now = h.clock.now();
    let op = Operation {
        id: "op-0123456789abcdef".into(),
        owner: admin().dn,
        kind: "pull".into(),
        target: "127.0.0.1:5000/x:1".into(),
        state: OperationState::Running,
        phase: "layers".into(),
        layers: vec![],
        image: None,
        error: None,
        created_at: now,
        modified_at: now,
    };
    other
        .store()
        .put_operation(&op, other.instance())
        .await
        .unwrap();
    let seen = |s: std::sync::Arc<vws_service::Service>| async move {
        match s
            .execute(
                &admin(),
                Command::Operation {
                    id: "op-0123456789abcdef".into(),
                },
            )
            .await
            .unwrap()
        {
            Reply::Operation(op) => *op,
            _ => unreachable!("an operation"),
        }
    };
    assert_eq!(seen(h.service.clone()).await.state, OperationState::Running);
    h.clock
        .advance(vws_service::replicas::LEASE + time::Duration::milliseconds(1));
    h.service.renew_lease().await.unwrap();
    let op = seen(h.service.clone()).await;
    assert_eq!(op.state, OperationState::Failed);
    assert!(op.error.unwrap().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_kept_counts_match_the_records() {
    kept_counts_match_the_records(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_kept_counts_match_the_records() {
    kept_counts_match_the_records(Backend::Postgres).await;
}
