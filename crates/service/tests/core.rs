//! The factory and repository through the service core: policy, clones,
//! copy-on-write disks, lifetime, visibility and the state machine.

mod common;

use common::*;
use vws_model::{Action, Form, Placement, State};
use vws_service::ServiceError;
use vws_store::{Backend, Filter};

const OPEN: &str = "";

#[tokio::test]
async fn create_clones_the_pool_image_copy_on_write() {
    let h = harness(Backend::Sqlite, OPEN).await;
    let image = h.disk_image("base", "1", 64 << 20).await;
    let ws = h
        .service
        .create(
            &alice(),
            description("base:1", "disk = { size = \"128MiB\" }"),
            Form::Toml,
            None,
        )
        .await
        .unwrap();
    let r = &ws.record;
    assert!(r.id.starts_with("ws-"));
    assert_eq!(
        (r.state, r.placement, r.owner.as_str()),
        (
            State::Shutdown,
            Placement::Repository,
            "/O=Grid/OU=bio/CN=Alice"
        )
    );
    assert_eq!(r.image_id, image.id);
    let disk = r.disk_path.as_deref().unwrap();
    let info = vws_qemu::img::info(std::path::Path::new(disk))
        .await
        .unwrap();
    assert_eq!(info.format, "qcow2");
    assert_eq!(info.virtual_size, 128 << 20);
    let backing = h.service.blobs().path(&image.id.parse().unwrap());
    assert_eq!(
        info.backing_filename.as_deref(),
        Some(backing.to_str().unwrap())
    );
    // An overlay, not a copy: it is tiny next to its 64 MiB base.
    assert!(std::fs::metadata(disk).unwrap().len() < 1 << 20);
    // The EPR names the workspace and a key derived from owner and id.
    assert_eq!(
        ws.epr.address,
        format!("http://127.0.0.1:7480/v1/workspaces/{}", r.id)
    );
    assert_eq!(
        ws.epr.resource_key,
        vws_model::resource_key(&r.owner, &r.id)
    );
    assert_eq!(
        r.terminates_at,
        Some(r.created_at + time::Duration::hours(1))
    );
}

#[tokio::test]
async fn dynamic_accounts_need_a_filesystem_image_and_a_node_that_runs_them() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.disk_image("base", "1", 8 << 20).await;
    h.kernel_image("kern", "1").await;
    let account = |image: &str, extra: &str| {
        let mut d = description(image, extra);
        d.category = vws_model::Category::DynamicAccount;
        d
    };
    // A kernel image is no root filesystem: the element is named.
    let err = h
        .service
        .create(&alice(), account("kern:1", ""), Form::Toml, None)
        .await
        .unwrap_err();
    let ServiceError::Invalid(inv) = err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.0[0].path, "software.image");
    assert!(inv.0[0].message.contains("filesystem image"), "{inv:?}");
    // DHCP (an account has no client for it) and encryption are the VM
    // category's; a pool interface is not.
    let mut d = account("base:1", "disk = { size = \"16MiB\", encrypted = true }");
    d.network.nics.push(vws_model::Nic {
        name: "eth0".into(),
        method: vws_model::NicMethod::Dhcp,
        network: None,
    });
    // One user-mode interface: a second is refused.
    for name in ["eth1", "eth2"] {
        d.network.nics.push(vws_model::Nic {
            name: name.into(),
            method: vws_model::NicMethod::User,
            network: None,
        });
    }
    let err = h
        .service
        .create(&alice(), d, Form::Toml, None)
        .await
        .unwrap_err();
    let ServiceError::Invalid(inv) = err else {
        panic!("{err:?}")
    };
    let paths: Vec<&str> = inv.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "network.nics[0].method",
            "network.nics[2].method",
            "hardware.disk.encrypted"
        ],
        "{inv:?}"
    );
    assert!(inv.0[0].message.contains("method pool"), "{inv:?}");
    assert!(inv.0[1].message.contains("nics[1]"), "{inv:?}");
    // A good one is made with a blank disk (its upper layer) of the size asked.
    let ws = h
        .service
        .create(
            &alice(),
            account("base:1", "disk = { size = \"16MiB\" }"),
            Form::Toml,
            None,
        )
        .await
        .unwrap();
    assert_eq!(ws.record.binding.disk, Some(16 << 20));
    // A node that cannot run accounts is not chosen, and says so.
    let report = vws_model::node::NodeReport {
        cores: 2,
        ram_free: 8 << 30,
        accel: "tcg".into(),
        ..Default::default()
    };
    h.service
        .register_node(vws_model::node::Registration {
            name: "vmonly".into(),
            url: "http://127.0.0.1:9".into(),
            report,
        })
        .await
        .unwrap();
    let e = h
        .service
        .deploy(&alice(), &ws.record.id, None)
        .await
        .unwrap_err();
    assert_eq!(e.status_and_code().0.as_u16(), 503, "{e}");
    assert!(
        e.to_string()
            .contains("no node that is up runs dynamic accounts"),
        "{e}"
    );
    let r = h
        .service
        .workspace(&alice(), &ws.record.id)
        .await
        .unwrap()
        .record;
    assert_eq!((r.placement, r.lock_holder), (Placement::Repository, None));
}

#[tokio::test]
async fn bad_references_and_disks_name_the_element() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.disk_image("base", "1", 64 << 20).await;
    let err = h
        .service
        .create(&alice(), description("nothere:1", ""), Form::Toml, None)
        .await
        .unwrap_err();
    let ServiceError::Invalid(inv) = err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.0[0].path, "software.image");
    assert!(inv.0[0].message.contains("not in the pool"));
    let err = h
        .service
        .create(
            &alice(),
            description("base:1", "disk = { size = \"16MiB\" }"),
            Form::Xml,
            None,
        )
        .await
        .unwrap_err();
    let ServiceError::Invalid(inv) = err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.0[0].path, "/virtualWorkspace/hw:hardware/hw:disk/@size");
    let err = h
        .service
        .create(
            &alice(),
            description(
                "base:1",
                "devices = [{ type = \"cdrom\", image = \"iso:9\" }]",
            ),
            Form::Json,
            None,
        )
        .await
        .unwrap_err();
    let ServiceError::Invalid(inv) = err else {
        panic!("{err:?}")
    };
    assert_eq!(inv.0[0].path, "hardware.devices[0].image");
    let err = h
        .service
        .create(
            &alice(),
            description("base:1", ""),
            Form::Toml,
            Some("../x".into()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::BadRequest(_)), "{err:?}");
    // Nothing was left behind by any refusal.
    assert_eq!(
        std::fs::read_dir(h.home.path().join("disks"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn policy_refusals_carry_a_reason() {
    let policy = r#"
        [defaults]
        max_workspaces = 2
        max_total_ram = "1GiB"
        max_lifetime = 7200
        allowed_images = ["base:*"]
        allowed_categories = ["vm"]
    "#;
    let h = harness(Backend::Sqlite, policy).await;
    h.disk_image("base", "1", 1 << 20).await;
    // A different size, so different content: same bytes would be the same image.
    h.disk_image("other", "1", 2 << 20).await;
    let refused = |e: ServiceError| match e {
        ServiceError::Policy(reason) => reason,
        other => panic!("expected a policy refusal, got {other:?}"),
    };
    let reason = refused(
        h.service
            .create(&alice(), description("other:1", ""), Form::Toml, None)
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("image other:1 is not allowed"), "{reason}");
    let mut da = description("base:1", "");
    da.category = vws_model::Category::DynamicAccount;
    let reason = refused(
        h.service
            .create(&alice(), da, Form::Toml, None)
            .await
            .unwrap_err(),
    );
    assert!(
        reason.contains("category \"dynamic account\" is not allowed"),
        "{reason}"
    );
    let mut long = description("base:1", "");
    long.life_cycle = Some(7201);
    let reason = refused(
        h.service
            .create(&alice(), long, Form::Toml, None)
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("longer than the 7200s"), "{reason}");
    let big = description("base:1", "ram = { min = \"256MiB\", max = \"2GiB\" }");
    let reason = refused(
        h.service
            .create(&alice(), big, Form::Toml, None)
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("the limit is 1 GiB"), "{reason}");
    for _ in 0..2 {
        h.service
            .create(
                &alice(),
                description("base:1", "ram = \"256MiB\""),
                Form::Toml,
                None,
            )
            .await
            .unwrap();
    }
    let reason = refused(
        h.service
            .create(
                &alice(),
                description("base:1", "ram = \"256MiB\""),
                Form::Toml,
                None,
            )
            .await
            .unwrap_err(),
    );
    assert!(reason.contains("already has 2 workspaces"), "{reason}");
    // Limits are per owner.
    h.service
        .create(
            &bob(),
            description("base:1", "ram = \"256MiB\""),
            Form::Toml,
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn clone_is_a_new_resource_with_the_same_description() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.disk_image("base", "1", 8 << 20).await;
    let src = h
        .service
        .create(
            &alice(),
            description("base:1", ""),
            Form::Toml,
            Some("src".into()),
        )
        .await
        .unwrap();
    let copy = h
        .service
        .clone_workspace(&alice(), &src.record.id, Some("copy".into()), None)
        .await
        .unwrap();
    assert_ne!(copy.record.id, src.record.id);
    assert_ne!(copy.epr.resource_key, src.epr.resource_key);
    assert_ne!(copy.record.disk_path, src.record.disk_path);
    assert_eq!(copy.record.description, src.record.description);
    let history = h.service.history(&alice(), &copy.record.id).await.unwrap();
    assert_eq!(
        history[0].detail.as_deref(),
        Some(format!("clone of {}", src.record.id).as_str())
    );
    let dup = h
        .service
        .clone_workspace(&alice(), &src.record.id, Some("copy".into()), None)
        .await
        .unwrap_err();
    assert!(matches!(dup, ServiceError::Conflict(_)), "{dup:?}");
    // Someone else's workspace cannot be cloned, or even seen.
    assert!(matches!(
        h.service
            .clone_workspace(&bob(), &src.record.id, None, None)
            .await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn others_workspaces_are_not_found_but_admins_see_all() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.kernel_image("k", "1").await;
    let a = h
        .service
        .create(&alice(), description("k:1", ""), Form::Toml, None)
        .await
        .unwrap();
    h.service
        .create(&bob(), description("k:1", ""), Form::Toml, None)
        .await
        .unwrap();
    assert!(matches!(
        h.service.workspace(&bob(), &a.record.id).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        h.service.destroy(&bob(), &a.record.id).await,
        Err(ServiceError::NotFound(_))
    ));
    assert!(h.service.workspace(&alice(), &a.record.id).await.is_ok());
    assert_eq!(
        h.service
            .list(&alice(), Filter::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let snoop = Filter {
        owner: Some(bob().dn),
        ..Default::default()
    };
    assert!(h
        .service
        .list(&alice(), snoop)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(
        h.service
            .list(&admin(), Filter::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(h.service.workspace(&admin(), &a.record.id).await.is_ok());
}

#[tokio::test]
async fn destroy_removes_record_and_disk_and_keeps_history() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.disk_image("base", "1", 8 << 20).await;
    let ws = h
        .service
        .create(&alice(), description("base:1", ""), Form::Toml, None)
        .await
        .unwrap();
    let disk = ws.record.disk_path.clone().unwrap();
    h.service.destroy(&alice(), &ws.record.id).await.unwrap();
    assert!(!std::path::Path::new(&disk).exists());
    assert!(matches!(
        h.service.workspace(&alice(), &ws.record.id).await,
        Err(ServiceError::NotFound(_))
    ));
    let trail = h.service.store().history(&ws.record.id).await.unwrap();
    assert_eq!(
        trail.iter().map(|t| t.action.as_str()).collect::<Vec<_>>(),
        ["create", "destroy"]
    );
}

#[tokio::test]
async fn the_reaper_destroys_expired_workspaces_and_renewal_postpones_it() {
    let h = harness(Backend::Sqlite, "[defaults]\nmax_lifetime = 86400").await;
    h.disk_image("base", "1", 8 << 20).await;
    let mut short = description("base:1", "");
    short.life_cycle = Some(60);
    let a = h
        .service
        .create(&alice(), short.clone(), Form::Toml, Some("a".into()))
        .await
        .unwrap();
    let b = h
        .service
        .create(&alice(), short, Form::Toml, Some("b".into()))
        .await
        .unwrap();
    h.clock.advance(time::Duration::seconds(59));
    assert!(h.service.reap().await.unwrap().is_empty());
    h.service.renew(&alice(), &b.record.id, 3600).await.unwrap();
    let too_long = h
        .service
        .renew(&alice(), &b.record.id, 86401)
        .await
        .unwrap_err();
    assert!(matches!(too_long, ServiceError::Policy(_)), "{too_long:?}");
    h.clock.advance(time::Duration::seconds(1));
    assert_eq!(h.service.reap().await.unwrap(), vec![a.record.id.clone()]);
    assert!(!std::path::Path::new(a.record.disk_path.as_deref().unwrap()).exists());
    assert!(h.service.workspace(&alice(), &b.record.id).await.is_ok());
    let trail = h.service.store().history(&a.record.id).await.unwrap();
    assert_eq!(trail.last().unwrap().actor, "reaper");
    h.clock.advance(time::Duration::seconds(3600));
    assert_eq!(h.service.reap().await.unwrap(), vec![b.record.id.clone()]);
}

#[tokio::test]
async fn the_reaper_loop_runs_on_its_own() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.kernel_image("k", "1").await;
    let mut d = description("k:1", "");
    d.life_cycle = Some(5);
    let ws = h
        .service
        .create(&alice(), d, Form::Toml, None)
        .await
        .unwrap();
    h.clock.advance(time::Duration::seconds(10));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(vws_service::repository::run_reaper(
        h.service.clone(),
        std::time::Duration::from_millis(20),
        async {
            let _ = stopped.await;
        },
    ));
    // The manual clock already says the lifetime is over; the loop only has to notice.
    for _ in 0..250 {
        if h.service.workspace(&alice(), &ws.record.id).await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(matches!(
        h.service.workspace(&alice(), &ws.record.id).await,
        Err(ServiceError::NotFound(_))
    ));
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn transitions_follow_the_table_and_are_recorded() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.kernel_image("k", "1").await;
    let id = h
        .service
        .create(&alice(), description("k:1", ""), Form::Toml, None)
        .await
        .unwrap()
        .record
        .id;
    let err = h
        .service
        .record_transition(&alice(), &id, Action::Start, None)
        .await
        .unwrap_err();
    let ServiceError::Illegal(ill) = err else {
        panic!("{err:?}")
    };
    assert_eq!(ill.state, State::Shutdown);
    assert_eq!(err_status(ServiceError::Illegal(ill)), 409);
    for (action, state, placement) in [
        (Action::Deploy, State::Shutdown, Placement::Host),
        (Action::Start, State::Running, Placement::Host),
        (Action::Pause, State::Paused, Placement::Host),
        (Action::Undeploy, State::Paused, Placement::Repository),
    ] {
        let ws = h
            .service
            .record_transition(&alice(), &id, action, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (ws.record.state, ws.record.placement),
            (state, placement),
            "{action}"
        );
    }
    let ws = h
        .service
        .record_transition(
            &alice(),
            &id,
            Action::Corrupt,
            Some("qemu exited with status 1".into()),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ws.record.reason.as_deref(),
        Some("qemu exited with status 1")
    );
    assert!(matches!(
        h.service
            .record_transition(&alice(), &id, Action::Deploy, None)
            .await,
        Err(ServiceError::Illegal(_))
    ));
    assert!(h
        .service
        .record_transition(&alice(), &id, Action::Destroy, None)
        .await
        .unwrap()
        .is_none());
    let trail = h.service.store().history(&id).await.unwrap();
    let actions: Vec<_> = trail.iter().map(|t| t.action.as_str()).collect();
    assert_eq!(
        actions,
        ["create", "deploy", "start", "pause", "undeploy", "corrupt", "destroy"]
    );
}

fn err_status(e: ServiceError) -> u16 {
    e.status_and_code().0.as_u16()
}

#[tokio::test]
async fn images_in_use_stay_and_unused_ones_go_with_their_files() {
    let h = harness(Backend::Sqlite, OPEN).await;
    let image = h.disk_image("base", "1", 4 << 20).await;
    let blob = h.service.blobs().path(&image.id.parse().unwrap());
    let ws = h
        .service
        .create(&alice(), description("base:1", ""), Form::Toml, None)
        .await
        .unwrap();
    let err = h
        .service
        .remove_image(&admin(), "base:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Conflict(_)), "{err:?}");
    assert!(blob.exists());
    h.service.destroy(&alice(), &ws.record.id).await.unwrap();
    h.service.remove_image(&admin(), "base:1").await.unwrap();
    assert!(!blob.exists());
    assert!(matches!(
        h.service.image(&admin(), "base:1").await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn imports_check_their_content() {
    let h = harness(Backend::Sqlite, OPEN).await;
    let good = vws_store::Digest::of(b"abc").to_string();
    let err = h.service.put_blob(&good, &b"abd"[..]).await.unwrap_err();
    assert_eq!(err_status(err), 422);
    let req = vws_service::pool::ImportRequest {
        name: "x".into(),
        tag: "1".into(),
        disk: Some(good.clone()),
        kernel: None,
        initrd: None,
        cmdline: None,
        visibility: Default::default(),
    };
    // The blob was never stored (it did not match its digest): not found.
    assert_eq!(
        err_status(
            h.service
                .import_image(&admin(), req.clone())
                .await
                .unwrap_err()
        ),
        404
    );
    let bad_name = vws_service::pool::ImportRequest {
        name: "../etc".into(),
        ..req
    };
    assert_eq!(
        err_status(
            h.service
                .import_image(&admin(), bad_name)
                .await
                .unwrap_err()
        ),
        400
    );
    // A qcow2 overlay with a backing file is refused: pool images stand alone.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.raw");
    let over = dir.path().join("o.qcow2");
    vws_qemu::img::create(&base, "raw", 1 << 20).await.unwrap();
    vws_qemu::img::create_overlay(&base, "raw", &over, None)
        .await
        .unwrap();
    let bytes = std::fs::read(&over).unwrap();
    let d = vws_store::Digest::of(&bytes).to_string();
    h.service.put_blob(&d, &bytes[..]).await.unwrap();
    let req = vws_service::pool::ImportRequest {
        name: "o".into(),
        tag: "1".into(),
        disk: Some(d),
        kernel: None,
        initrd: None,
        cmdline: None,
        visibility: Default::default(),
    };
    let err = h.service.import_image(&admin(), req).await.unwrap_err();
    assert!(err.to_string().contains("backing file"), "{err}");
}

#[tokio::test]
async fn a_restart_removes_disks_without_records() {
    let db = vws_store::testing::fresh(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let h = harness_on(db, home, OPEN).await;
    h.disk_image("base", "1", 1 << 20).await;
    let ws = h
        .service
        .create(&alice(), description("base:1", ""), Form::Toml, None)
        .await
        .unwrap();
    // As if a crash struck between making a disk and recording it.
    let orphan = h.home.path().join("disks/ws-orphan.qcow2");
    std::fs::write(&orphan, b"x").unwrap();
    let Harness { db, home, .. } = h;
    let h = harness_on(db, home, OPEN).await;
    assert!(!orphan.exists());
    assert!(std::path::Path::new(ws.record.disk_path.as_deref().unwrap()).exists());
    assert!(h.service.workspace(&alice(), &ws.record.id).await.is_ok());
}

#[tokio::test]
async fn nodes_are_lost_when_heartbeats_stop_and_nothing_is_placed_on_them() {
    let h = harness(Backend::Sqlite, OPEN).await;
    h.kernel_image("k", "1").await;
    let report = vws_model::node::NodeReport {
        cores: 2,
        ram_free: 8 << 30,
        accel: "tcg".into(),
        ..Default::default()
    };
    let reg = vws_model::node::Registration {
        name: "n1".into(),
        url: "http://127.0.0.1:9".into(),
        report: report.clone(),
    };
    h.service.register_node(reg).await.unwrap();
    assert_eq!(h.service.nodes().await.unwrap()[0].status, "up");
    h.clock.advance(time::Duration::seconds(9));
    h.service
        .node_heartbeat("n1", report.clone())
        .await
        .unwrap();
    h.clock.advance(time::Duration::seconds(9));
    assert_eq!(
        h.service.nodes().await.unwrap()[0].status,
        "up",
        "a heartbeat keeps it up"
    );
    h.clock.advance(time::Duration::seconds(2));
    assert_eq!(h.service.nodes().await.unwrap()[0].status, "lost");
    let ws = h
        .service
        .create(&alice(), description("k:1", ""), Form::Toml, None)
        .await
        .unwrap();
    let err = h
        .service
        .deploy(&alice(), &ws.record.id, None)
        .await
        .unwrap_err();
    assert_eq!(err_status(err), 503, "no node is up");
    let err = h
        .service
        .deploy(&alice(), &ws.record.id, Some("n1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lost"), "{err}");
    // Nothing changed: still in the repository, no lock.
    let r = h
        .service
        .workspace(&alice(), &ws.record.id)
        .await
        .unwrap()
        .record;
    assert_eq!((r.placement, r.lock_holder), (Placement::Repository, None));
    assert!(matches!(
        h.service.node_heartbeat("n2", report).await,
        Err(ServiceError::NotFound(_))
    ));
}

#[tokio::test]
async fn blobs_no_image_names_are_collected_after_an_hour() {
    let h = harness(Backend::Sqlite, OPEN).await;
    let image = h.kernel_image("k", "1").await;
    // What an interrupted snapshot or upload leaves: a blob no image names.
    let stray = b"half of a hot image".to_vec();
    let d = vws_store::Digest::of(&stray).to_string();
    h.service.put_blob(&d, &stray[..]).await.unwrap();
    assert_eq!(
        h.service.collect_orphan_blobs().await.unwrap(),
        0,
        "too young"
    );
    assert_eq!(
        h.service.has_blob(&d).await.unwrap(),
        Some(stray.len() as u64)
    );
    h.clock.advance(time::Duration::minutes(61));
    h.service.reap().await.unwrap();
    assert_eq!(h.service.has_blob(&d).await.unwrap(), None, "collected");
    for f in &image.files {
        assert!(
            h.service.has_blob(&f.digest).await.unwrap().is_some(),
            "an image's blob stays"
        );
    }
}

#[tokio::test]
async fn jobs_go_with_their_workspace_and_history_after_thirty_days() {
    let h = harness(Backend::Sqlite, "[defaults]\nmax_lifetime = 31536000\n").await;
    h.kernel_image("k", "1").await;
    let d = || description("k:1", "");
    let gone = h
        .service
        .create(&alice(), d(), Form::Toml, None)
        .await
        .unwrap()
        .record
        .id;
    // A year's lifetime: the reaper leaves it alone through the test.
    let long = "category = \"vm\"\nlifeCycle = 31536000\n[software]\nimage = \"k:1\"\n";
    let long = vws_model::parse(long, Form::Toml).unwrap();
    let kept = h
        .service
        .create(&alice(), long, Form::Toml, None)
        .await
        .unwrap()
        .record
        .id;
    let job = exited_job("job-0123456789ab", &gone, &alice().dn, "n1");
    h.service.store().insert_job(&job).await.unwrap();
    h.service.destroy(&alice(), &gone).await.unwrap();
    assert!(
        h.service.store().job(&job.id).await.unwrap().is_none(),
        "the job went with it"
    );
    // Its history is kept for thirty days after the destroy, then pruned;
    // a live workspace keeps all of its own.
    h.clock.advance(time::Duration::days(29));
    h.service.reap().await.unwrap();
    assert_eq!(h.service.store().history(&gone).await.unwrap().len(), 2);
    h.clock.advance(time::Duration::days(2));
    h.service.reap().await.unwrap();
    assert!(h.service.store().history(&gone).await.unwrap().is_empty());
    assert_eq!(h.service.store().history(&kept).await.unwrap().len(), 1);
}
