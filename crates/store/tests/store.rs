//! The repository's persistence, run identically on SQLite and PostgreSQL.

use time::{Duration, OffsetDateTime};
use vws_model::{parse, Category, Form, ImageRef, Placement, State};
use vws_store::testing::fresh;
use vws_store::{
    Backend, Binding, Change, Filter, ImageFile, ImageKind, ImageRecord, Store, StoreError,
    WorkspaceRecord,
};

fn now() -> OffsetDateTime {
    // Millisecond precision, as stored.
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap()
}

fn record(id: &str, owner: &str, name: &str, created: OffsetDateTime) -> WorkspaceRecord {
    let d = parse(
        "category = \"vm\"\n[hardware]\nram = \"256MiB\"\n[software]\nimage = \"minimal:1\"\n",
        Form::Toml,
    )
    .unwrap();
    WorkspaceRecord {
        id: id.into(),
        name: name.into(),
        owner: owner.into(),
        description: d,
        binding: Binding {
            cpus: Some(1),
            ram: None,
            disk: Some(1 << 20),
            forwards: vec![],
        },
        state: State::Shutdown,
        placement: Placement::Repository,
        node: None,
        lock_holder: None,
        lock_since: None,
        image_id: format!("sha256:{}", "a".repeat(64)),
        disk_path: Some(format!("/disks/{id}.qcow2")),
        reason: None,
        created_at: created,
        terminates_at: Some(created + Duration::hours(1)),
        modified_at: created,
        version: 1,
        device_images: vec![],
    }
}

fn change(action: &str) -> Change<'static> {
    Change {
        action: vws_model::records::HistoryAction::parse(action).expect("a history entry"),
        actor: "/CN=test",
        detail: None,
    }
}

async fn records_round_trip_and_filter(store: Store) {
    let t = now();
    let a = record("ws-a", "/CN=alice", "one", t);
    store
        .insert_workspace(
            &a,
            Change {
                action: vws_model::records::HistoryAction::Create,
                actor: "/CN=alice",
                detail: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(store.workspace("ws-a").await.unwrap(), Some(a.clone()));
    assert_eq!(store.workspace("ws-missing").await.unwrap(), None);

    let mut b = record("ws-b", "/CN=bob", "one", t + Duration::milliseconds(1));
    b.description.category = Category::DynamicAccount;
    store
        .insert_workspace(
            &b,
            Change {
                action: vws_model::records::HistoryAction::Create,
                actor: "/CN=bob",
                detail: None,
            },
        )
        .await
        .unwrap();
    // Names are unique per owner.
    let dup = record("ws-c", "/CN=alice", "one", t);
    assert!(matches!(
        store
            .insert_workspace(
                &dup,
                Change {
                    action: vws_model::records::HistoryAction::Create,
                    actor: "/CN=alice",
                    detail: None
                }
            )
            .await,
        Err(StoreError::Duplicate(_))
    ));

    let all = store.list_workspaces(&Filter::default()).await.unwrap();
    assert_eq!(
        all.items.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["ws-a", "ws-b"]
    );
    let bob = store
        .list_workspaces(&Filter {
            owner: Some("/CN=bob".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bob.items.len(), 1);
    let vms = store
        .list_workspaces(&Filter {
            category: Some(Category::Vm),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(vms.items[0].id, "ws-a");
    let running = store
        .list_workspaces(&Filter {
            state: Some(State::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(running.items.is_empty());

    assert_eq!(
        store.owner_usage("/CN=alice").await.unwrap(),
        (1, 256 << 20)
    );
    assert_eq!(store.owner_usage("/CN=nobody").await.unwrap(), (0, 0));
}

async fn pages_cover_everything_once(store: Store) {
    let t = now();
    for i in 0..25 {
        // Several records share a creation time: the cursor must still be exact.
        let r = record(
            &format!("ws-{i:03}"),
            "/CN=p",
            &format!("n{i}"),
            t + Duration::milliseconds(i / 3),
        );
        store
            .insert_workspace(
                &r,
                Change {
                    action: vws_model::records::HistoryAction::Create,
                    actor: "/CN=p",
                    detail: None,
                },
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_workspaces(&Filter {
                limit: Some(7),
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.into_iter().map(|r| r.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let want: Vec<_> = (0..25).map(|i| format!("ws-{i:03}")).collect();
    assert_eq!(seen, want);
    assert!(matches!(
        store
            .list_workspaces(&Filter {
                after: Some("garbage".into()),
                ..Default::default()
            })
            .await,
        Err(StoreError::BadCursor(_))
    ));
}

async fn updates_are_versioned_and_history_is_kept(store: Store) {
    let t = now();
    let mut a = record("ws-h", "/CN=alice", "h", t);
    let cdrom = format!("sha256:{}", "c".repeat(64));
    a.device_images = vec![cdrom.clone()];
    store
        .insert_workspace(
            &a,
            Change {
                action: vws_model::records::HistoryAction::Create,
                actor: "/CN=alice",
                detail: None,
            },
        )
        .await
        .unwrap();
    let mut next = a.clone();
    next.state = State::Shutdown;
    next.placement = Placement::Host;
    next.node = Some("node-1".into());
    next.lock_holder = Some("node-1".into());
    next.lock_since = Some(t);
    next.modified_at = t + Duration::seconds(1);
    store
        .update_workspace(
            &mut next,
            Change {
                detail: Some("node-1".into()),
                ..change("deploy")
            },
        )
        .await
        .unwrap();
    assert_eq!(next.version, 2);
    assert_eq!(store.workspace("ws-h").await.unwrap(), Some(next.clone()));

    // A writer holding the old version loses.
    let mut stale = a.clone();
    stale.state = State::Corrupted;
    assert!(matches!(
        store.update_workspace(&mut stale, change("corrupt")).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.delete_workspace(&a, t, change("destroy")).await,
        Err(StoreError::Conflict(_))
    ));

    assert_eq!(store.workspaces_using_image(&cdrom).await.unwrap(), 1);
    store
        .delete_workspace(&next, t + Duration::seconds(2), change("destroy"))
        .await
        .unwrap();
    assert_eq!(store.workspaces_using_image(&cdrom).await.unwrap(), 0);
    assert_eq!(store.workspace("ws-h").await.unwrap(), None);
    let h = store.history("ws-h").await.unwrap();
    let actions: Vec<_> = h
        .iter()
        .map(|e| {
            (
                e.seq,
                e.action.as_str(),
                e.to_state.as_deref(),
                e.placement.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            (1, "create", Some("shutdown"), Some("repository")),
            (2, "deploy", Some("shutdown"), Some("host")),
            (3, "destroy", None, None)
        ]
    );
    assert_eq!(h[1].detail.as_deref(), Some("node-1"));
    assert_eq!(h[2].from_state.as_deref(), Some("shutdown"));
    // Retention: the history of a workspace destroyed before the cut goes;
    // one destroyed after it stays.
    let destroyed = t + Duration::seconds(2);
    assert_eq!(store.prune_history(destroyed).await.unwrap(), 0);
    assert_eq!(
        store
            .prune_history(destroyed + Duration::seconds(1))
            .await
            .unwrap(),
        3
    );
    assert!(store.history("ws-h").await.unwrap().is_empty());
}

async fn expiry_is_found_by_time(store: Store) {
    let t = now();
    let mut short = record("ws-short", "/CN=a", "short", t);
    short.terminates_at = Some(t + Duration::seconds(10));
    let mut forever = record("ws-forever", "/CN=a", "forever", t);
    forever.terminates_at = None;
    store
        .insert_workspace(
            &short,
            Change {
                action: vws_model::records::HistoryAction::Create,
                actor: "/CN=a",
                detail: None,
            },
        )
        .await
        .unwrap();
    store
        .insert_workspace(
            &forever,
            Change {
                action: vws_model::records::HistoryAction::Create,
                actor: "/CN=a",
                detail: None,
            },
        )
        .await
        .unwrap();
    assert!(store
        .expired(t + Duration::seconds(9))
        .await
        .unwrap()
        .is_empty());
    let gone = store.expired(t + Duration::seconds(10)).await.unwrap();
    assert_eq!(
        gone.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["ws-short"]
    );
    assert_eq!(store.disk_paths().await.unwrap().len(), 2);
    assert_eq!(
        store.workspaces_using_image(&short.image_id).await.unwrap(),
        2
    );
}

async fn images_tags_and_blobs(store: Store) {
    let t = now();
    let image = |id: &str| ImageRecord {
        id: id.into(),
        kind: ImageKind::Kernel,
        format: None,
        virtual_size: 0,
        stored_size: 30,
        files: vec![
            ImageFile {
                role: vws_model::node::BlobRole::Kernel,
                digest: format!("{id}-k"),
                size: 20,
            },
            ImageFile {
                role: vws_model::node::BlobRole::Initrd,
                digest: format!("{id}-i"),
                size: 10,
            },
        ],
        cmdline: Some("console=ttyS0".into()),
        owner: "/CN=admin".into(),
        created_at: t,
        tags: vec![],
        machine: (id.ends_with('2')).then_some(vws_store::HotMachine {
            ram: 256 << 20,
            cpus: 1,
        }),
        signer: None,
        visibility: vws_store::Visibility::Public,
        manifest: Default::default(),
    };
    let admin = vws_store::Publisher {
        dn: "/CN=admin",
        admin: false,
    };
    let one = image(&format!("sha256:{}", "1".repeat(64)));
    let two = image(&format!("sha256:{}", "2".repeat(64)));
    store.put_image(&one, "minimal", "1", admin).await.unwrap();
    store
        .sign_image(&one.id, "/O=Grid/CN=Signer", "c2ln")
        .await
        .unwrap();
    store
        .put_image(&one, "minimal", "latest", admin)
        .await
        .unwrap();
    let found = store
        .image(&ImageRef::tagged("minimal", "1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.tags, ["minimal:1", "minimal:latest"]);
    assert_eq!(
        found.file(vws_model::node::BlobRole::Initrd).unwrap().size,
        10
    );
    assert_eq!(found.signer.as_deref(), Some("/O=Grid/CN=Signer"));
    assert_eq!(
        store
            .image(&ImageRef::Digest(one.id.clone()))
            .await
            .unwrap()
            .unwrap()
            .id,
        one.id
    );
    // A name belongs to its first publisher: someone else cannot move or
    // add its tags, and nothing is written when refused.
    let bob = vws_store::Publisher {
        dn: "/CN=bob",
        admin: false,
    };
    for tag in ["latest", "2"] {
        let err = store
            .put_image(&two, "minimal", tag, bob)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, vws_store::StoreError::NameTaken { owner, .. } if owner == "/CN=admin"),
            "{err}"
        );
    }
    assert_eq!(
        store.list_images().await.unwrap().len(),
        1,
        "refused: nothing written"
    );
    assert_eq!(
        store.image_name_owner("minimal").await.unwrap().as_deref(),
        Some("/CN=admin")
    );
    // An administrator may move it; the name keeps its owner.
    let root = vws_store::Publisher {
        dn: "/CN=root",
        admin: true,
    };
    store.put_image(&two, "minimal", "2", root).await.unwrap();
    assert_eq!(
        store.image_name_owner("minimal").await.unwrap().as_deref(),
        Some("/CN=admin")
    );
    assert!(store.untag_image("minimal", "2").await.unwrap());
    // Re-tagging moves the tag.
    store
        .put_image(&two, "minimal", "latest", admin)
        .await
        .unwrap();
    let latest = store
        .image(&"minimal:latest".parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.id, two.id);
    assert_eq!(latest.machine, two.machine, "a hot image keeps its machine");
    assert!(latest.machine.is_some());
    assert_eq!(store.list_images().await.unwrap().len(), 2);
    assert_eq!(store.referenced_blobs().await.unwrap().len(), 4);
    assert!(store.untag_image("minimal", "1").await.unwrap());
    assert!(!store.untag_image("minimal", "1").await.unwrap());
    store.delete_image(&one.id).await.unwrap();
    assert!(store
        .image(&ImageRef::Digest(one.id.clone()))
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.referenced_blobs().await.unwrap().len(), 2);
}

async fn concurrent_inserts_lose_nothing(store: Store) {
    let t = now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let r = record(
                    &format!("ws-c{i:02}"),
                    "/CN=c",
                    &format!("c{i}"),
                    t + Duration::milliseconds(i),
                );
                store
                    .insert_workspace(
                        &r,
                        Change {
                            action: vws_model::records::HistoryAction::Create,
                            actor: "/CN=c",
                            detail: None,
                        },
                    )
                    .await
            })
        })
        .collect();
    for t in futures::future::join_all(tasks).await {
        t.unwrap().unwrap();
    }
    let page = store
        .list_workspaces(&Filter {
            limit: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<_> = page.items.iter().map(|r| r.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 50);
}

async fn nodes_and_jobs(store: Store) {
    use vws_model::node::NodeReport;
    use vws_store::JobRecord;
    let t = now();
    let mut report = NodeReport {
        cores: 2,
        ram_free: 1 << 30,
        accel: "tcg".into(),
        ..Default::default()
    };
    report.workspaces.insert("ws-a".into(), "running".into());
    store
        .register_node("n1", "http://127.0.0.1:1", &report, t)
        .await
        .unwrap();
    assert!(store
        .node_heartbeat("n1", &report, t + Duration::seconds(2))
        .await
        .unwrap());
    assert!(!store.node_heartbeat("n2", &report, t).await.unwrap());
    let n = store.node("n1").await.unwrap().unwrap();
    assert_eq!(
        (n.report.clone(), n.last_seen, n.registered_at),
        (report.clone(), t + Duration::seconds(2), t)
    );
    // Registering again replaces the record.
    store
        .register_node(
            "n1",
            "http://127.0.0.1:2",
            &report,
            t + Duration::seconds(3),
        )
        .await
        .unwrap();
    assert_eq!(store.nodes().await.unwrap().len(), 1);
    assert_eq!(
        store.node("n1").await.unwrap().unwrap().url,
        "http://127.0.0.1:2"
    );

    let mut job = JobRecord {
        id: "job-1".into(),
        workspace_id: "ws-a".into(),
        owner: "/CN=a".into(),
        node: "n1".into(),
        argv: vec!["sh".into(), "-c".into(), "echo 'quoted' \"too\"".into()],
        state: vws_model::records::JobState::Running,
        exit_code: None,
        signal: None,
        timed_out: false,
        message: None,
        cancelled: false,
        output_bytes: 0,
        created_at: t,
        ended_at: None,
    };
    store.insert_job(&job).await.unwrap();
    assert_eq!(store.job("job-1").await.unwrap(), Some(job.clone()));
    job.state = vws_model::records::JobState::Cancelled;
    job.signal = Some(15);
    job.cancelled = true;
    job.timed_out = true;
    job.output_bytes = 10_000_000;
    job.ended_at = Some(t + Duration::seconds(1));
    store.update_job(&job).await.unwrap();
    let mut second = job.clone();
    second.id = "job-2".into();
    second.created_at = t + Duration::milliseconds(5);
    store.insert_job(&second).await.unwrap();
    let jobs = store.jobs_of("ws-a").await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        ["job-1", "job-2"]
    );
    assert_eq!(jobs[0], job);
    assert!(store.jobs_of("ws-b").await.unwrap().is_empty());
}

async fn account_leases_are_unique_per_node(store: Store) {
    let t = now();
    // 40 workspaces race for the 30 uids of one node's range.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .lease_account("n1", 5000, 5029, &format!("ws-{i:02}"), t)
                    .await
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in futures::future::join_all(tasks).await {
        got.push(t.unwrap().unwrap());
    }
    let mut uids: Vec<u32> = got.iter().flatten().copied().collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids, (5000..=5029).collect::<Vec<_>>());
    assert_eq!(got.iter().filter(|g| g.is_none()).count(), 10);
    // A holder asking again keeps its uid; another node's range is separate.
    let (i, uid) = got
        .iter()
        .enumerate()
        .find_map(|(i, g)| g.map(|u| (i, u)))
        .unwrap();
    let holder = format!("ws-{i:02}");
    assert_eq!(store.account_of(&holder).await.unwrap().unwrap().uid, uid);
    assert_eq!(
        store
            .lease_account("n1", 5000, 5029, &holder, t)
            .await
            .unwrap(),
        Some(uid)
    );
    assert_eq!(store.release_account(&holder).await.unwrap(), 1);
    assert_eq!(
        store
            .lease_account("n1", 5000, 5029, "ws-new", t)
            .await
            .unwrap(),
        Some(uid),
        "a released uid is leased again"
    );
    assert_eq!(
        store
            .lease_account("n2", 5000, 5029, "ws-other", t)
            .await
            .unwrap(),
        Some(5000)
    );
    assert_eq!(store.account_leases().await.unwrap().len(), 31);
    // No workspace record holds any of them: all are orphans.
    assert_eq!(store.release_orphan_accounts().await.unwrap(), 31);
    assert!(store.account_leases().await.unwrap().is_empty());
}

/// Images are registered while another writer (a node's heartbeats) keeps
/// committing: none of the registrations fails (SQLite refused a
/// transaction that read before it wrote, "database is locked", at once).
async fn images_register_beside_other_writers(store: Store) {
    let t = now();
    let report = vws_model::node::NodeReport::default();
    store
        .register_node("n1", "http://127.0.0.1:1", &report, t)
        .await
        .unwrap();
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let beats = {
        let (store, beating) = (store.clone(), beating.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while beating.load(std::sync::atomic::Ordering::Relaxed) {
                store.node_heartbeat("n1", &report, t).await.unwrap();
                n += 1;
            }
            n
        })
    };
    for i in 0..200 {
        let id = format!("sha256:{i:064}");
        let image = ImageRecord {
            id: id.clone(),
            kind: ImageKind::Disk,
            format: Some("raw".into()),
            virtual_size: 1 << 20,
            stored_size: 1 << 20,
            files: vec![ImageFile {
                role: vws_model::node::BlobRole::Disk,
                digest: id.clone(),
                size: 1 << 20,
            }],
            cmdline: None,
            owner: "/CN=admin".into(),
            created_at: t,
            tags: vec![],
            machine: None,
            signer: None,
            visibility: vws_store::Visibility::Public,
            manifest: Default::default(),
        };
        // Twice: registering known content again only moves the tag.
        for tag in ["a", "b"] {
            store
                .put_image(
                    &image,
                    &format!("img{i}"),
                    tag,
                    vws_store::Publisher {
                        dn: "/CN=admin",
                        admin: false,
                    },
                )
                .await
                .unwrap();
        }
    }
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(beats.await.unwrap() > 0, "the other writer ran meanwhile");
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = super::fresh(super::Backend::Sqlite).await;
                super::$name(db.store().await).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let db = super::fresh(super::Backend::Postgres).await;
                let store = db.store().await;
                assert_eq!(store.backend(), super::Backend::Postgres);
                super::$name(store).await;
            })*
        }
    };
}

on_both_backends!(
    images_register_beside_other_writers,
    records_round_trip_and_filter,
    pages_cover_everything_once,
    updates_are_versioned_and_history_is_kept,
    expiry_is_found_by_time,
    images_tags_and_blobs,
    concurrent_inserts_lose_nothing,
    nodes_and_jobs,
    account_leases_are_unique_per_node,
);
