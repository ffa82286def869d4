//! A service on a fresh database and state folder, with images in its pool.
#![allow(dead_code)]

pub mod fake_node;

use std::sync::Arc;

use vws_model::Identity;
use vws_service::command::{Command, Reply};
use vws_service::pool::ImportRequest;
use vws_service::{Clock, ManualClock, Policy, Service, ServiceError, Settings, Workspace};
use vws_store::testing::{fresh, TestDb};
use vws_store::Backend;

pub struct Harness {
    pub service: Arc<Service>,
    pub clock: Arc<ManualClock>,
    pub home: tempfile::TempDir,
    pub db: TestDb,
}

pub fn alice() -> Identity {
    Identity::new("/O=Grid/OU=bio/CN=Alice")
}

pub fn bob() -> Identity {
    Identity::new("/O=Grid/OU=bio/CN=Bob")
}

pub fn admin() -> Identity {
    Identity {
        dn: "/O=Grid/CN=Admin".into(),
        attributes: vec![("role".into(), "admin".into())],
    }
}

pub async fn harness(backend: Backend, policy: &str) -> Harness {
    let db = fresh(backend).await;
    let home = tempfile::tempdir().unwrap();
    harness_on(db, home, policy).await
}

pub async fn harness_on(db: TestDb, home: tempfile::TempDir, policy: &str) -> Harness {
    harness_full(
        db,
        home,
        policy,
        Default::default(),
        Default::default(),
        None,
    )
    .await
}

/// A harness whose service speaks to its nodes through `nodes`.
pub async fn harness_nodes(
    backend: Backend,
    nodes: Arc<dyn vws_service::node_client::NodeClient>,
) -> Harness {
    let db = fresh(backend).await;
    let home = tempfile::tempdir().unwrap();
    harness_full(
        db,
        home,
        "",
        Default::default(),
        Default::default(),
        Some(nodes),
    )
    .await
}

/// A harness with `policy` whose service speaks to its nodes through
/// the node `nodes(home)` makes.
pub async fn harness_nodes_policy(
    backend: Backend,
    policy: &str,
    nodes: impl FnOnce(&std::path::Path) -> Arc<dyn vws_service::node_client::NodeClient>,
) -> Harness {
    let db = fresh(backend).await;
    let home = tempfile::tempdir().unwrap();
    let nodes = nodes(home.path());
    harness_full(
        db,
        home,
        policy,
        Default::default(),
        Default::default(),
        Some(nodes),
    )
    .await
}

/// A harness whose service enforces the access control list `acl` (TOML).
pub async fn harness_acl(backend: Backend, acl: &str) -> Harness {
    let db = fresh(backend).await;
    let home = tempfile::tempdir().unwrap();
    let acl = vws_service::acl::Acl::from_toml(acl).unwrap();
    harness_full(db, home, "", Default::default(), acl, None).await
}

/// A harness with networks of its own.
#[allow(dead_code)]
pub async fn harness_networks(backend: Backend, networks: &str) -> Harness {
    let db = fresh(backend).await;
    let home = tempfile::tempdir().unwrap();
    let networks = vws_service::network::Networks::from_toml(networks).unwrap();
    harness_full(db, home, "", networks, Default::default(), None).await
}

async fn harness_full(
    db: TestDb,
    home: tempfile::TempDir,
    policy: &str,
    networks: vws_service::network::Networks,
    acl: vws_service::acl::Acl,
    nodes: Option<Arc<dyn vws_service::node_client::NodeClient>>,
) -> Harness {
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let settings = Settings {
        credentials: None,
        ca_dir: None,
        boot_image: vws_service::DEFAULT_BOOT_IMAGE.into(),
        acl,
        networks,
        home: home.path().to_path_buf(),
        public_url: "http://127.0.0.1:7480".into(),
        policy: Policy::from_toml(policy).unwrap(),
    };
    let mut service = Service::open(db.store().await, settings, clock.clone() as Arc<dyn Clock>)
        .await
        .unwrap();
    if let Some(nodes) = nodes {
        service = service.with_nodes(nodes);
    }
    Harness {
        service: Arc::new(service),
        clock,
        home,
        db,
    }
}

impl Harness {
    /// The same repository and state folder opened by a new service
    /// process, as after the first was killed (the first is left as it
    /// was, mid-call if it was).
    pub async fn reopened(
        &self,
        nodes: Arc<dyn vws_service::node_client::NodeClient>,
    ) -> Arc<Service> {
        Arc::new(self.another(Policy::default()).await.with_nodes(nodes))
    }

    /// A new service process over this repository and state folder.
    async fn another(&self, policy: Policy) -> Service {
        let settings = Settings {
            credentials: None,
            ca_dir: None,
            boot_image: vws_service::DEFAULT_BOOT_IMAGE.into(),
            acl: Default::default(),
            networks: Default::default(),
            home: self.home.path().to_path_buf(),
            public_url: "http://127.0.0.1:7480".into(),
            policy,
        };
        let clock = self.clock.clone() as Arc<dyn Clock>;
        Service::open(self.db.store().await, settings, clock)
            .await
            .unwrap()
    }

    /// Another service process on the same repository and state folder,
    /// with `policy`: a second replica.
    pub async fn replica(&self, policy: &str) -> Arc<Service> {
        Arc::new(self.another(Policy::from_toml(policy).unwrap()).await)
    }

    /// Imports a raw disk image of `size` bytes as `name:tag`.
    pub async fn disk_image(&self, name: &str, tag: &str, size: u64) -> vws_store::ImageRecord {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        vws_qemu::img::create(&path, "raw", size).await.unwrap();
        // A boot sector's signature: a disk that boots by itself (a blank
        // one would be refused for a VM at create).
        {
            use std::io::{Seek, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            f.seek(std::io::SeekFrom::Start(510)).unwrap();
            f.write_all(&[0x55, 0xaa]).unwrap();
        }
        let bytes = tokio::fs::File::open(&path).await.unwrap();
        let digest = {
            let data = std::fs::read(&path).unwrap();
            vws_store::Digest::of(&data).to_string()
        };
        self.service.put_blob(&digest, bytes).await.unwrap();
        let req = ImportRequest::disk(name, tag, digest, Default::default());
        self.service.import_image(&admin(), req).await.unwrap()
    }

    /// Imports a (fake-content) kernel and initrd pair as `name:tag`.
    pub async fn kernel_image(&self, name: &str, tag: &str) -> vws_store::ImageRecord {
        let mut digests = Vec::new();
        for content in [fake_kernel(name), format!("initrd {name}").into_bytes()] {
            let d = vws_store::Digest::of(&content).to_string();
            self.service.put_blob(&d, &content[..]).await.unwrap();
            digests.push(d);
        }
        let req = ImportRequest {
            name: name.into(),
            tag: tag.into(),
            disk: None,
            kernel: Some(digests[0].clone()),
            initrd: Some(digests[1].clone()),
            cmdline: Some("console=ttyS0".into()),
            visibility: Default::default(),
        };
        self.service.import_image(&admin(), req).await.unwrap()
    }
}

/// A healthy node's report with room for a few workspaces, holding
/// `workspaces` (id, state as the node sees it).
pub fn node_report(workspaces: &[(&str, &str)]) -> vws_model::node::NodeReport {
    vws_model::node::NodeReport {
        cores: 4,
        ram_total: 16 << 30,
        ram_free: 16 << 30,
        disk_free: 100 << 30,
        accel: "tcg".into(),
        health: "ok".into(),
        workspaces: workspaces
            .iter()
            .map(|(id, s)| (id.to_string(), s.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// A job of `owner`'s that ran in `workspace` on `node` and exited 0.
pub fn exited_job(id: &str, workspace: &str, owner: &str, node: &str) -> vws_store::JobRecord {
    vws_store::JobRecord {
        id: id.into(),
        workspace_id: workspace.into(),
        owner: owner.into(),
        node: node.into(),
        argv: vec!["true".into()],
        state: vws_model::records::JobState::Exited,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        message: None,
        cancelled: false,
        output_bytes: 0,
        created_at: time::OffsetDateTime::now_utc(),
        ended_at: None,
    }
}

/// A stand-in kernel: only a bzImage setup header (its version string,
/// `6.1.0-test`, where the header points), then the image's name.
pub fn fake_kernel(name: &str) -> Vec<u8> {
    let mut k = vec![0u8; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    // The version string's offset, less 0x200.
    k[0x20e..0x210].copy_from_slice(&(0x100u16).to_le_bytes());
    k[0x300..0x30a].copy_from_slice(b"6.1.0-test");
    k.extend_from_slice(format!("kernel {name}").as_bytes());
    k
}

/// A TOML description using `image`, with extra TOML appended under [hardware].
pub fn description(image: &str, hardware: &str) -> vws_model::Description {
    let text = format!("category = \"vm\"\nlifeCycle = 3600\n[hardware]\n{hardware}\n[software]\nimage = \"{image}\"\n");
    vws_model::parse(&text, vws_model::Form::Toml).unwrap()
}

/// Serves the API of `h` on a loopback port, every request acting as `who`;
/// returns its base URL.
#[allow(dead_code)]
pub async fn serve_api(h: &Harness, who: Identity) -> String {
    let state = vws_service::api::AppState {
        service: h.service.clone(),
        auth: vws_service::api::Auth::Local(who),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(vws_service::api::serve(
        vws_service::api::router(state),
        listener,
        std::future::pending(),
        std::time::Duration::from_secs(1),
    ));
    base
}

/// The core's commands as the tests call them: each goes through
/// [`Service::execute`], the one door (ACL class first), as a front-end's
/// would.
#[allow(async_fn_in_trait)]
pub trait Commands {
    async fn run(&self, who: &Identity, c: Command) -> Result<Reply, ServiceError>;

    async fn create(
        &self,
        who: &Identity,
        description: vws_model::Description,
        form: vws_model::Form,
        name: Option<String>,
    ) -> Result<Workspace, ServiceError> {
        self.run(
            who,
            Command::Create {
                description,
                form,
                name,
            },
        )
        .await?
        .into_workspace()
    }

    async fn clone_workspace(
        &self,
        who: &Identity,
        id: &str,
        name: Option<String>,
        changes: Option<&serde_json::Value>,
    ) -> Result<Workspace, ServiceError> {
        let (id, changes) = (id.to_string(), changes.cloned());
        self.run(who, Command::Clone { id, name, changes })
            .await?
            .into_workspace()
    }

    async fn deploy(
        &self,
        who: &Identity,
        id: &str,
        host: Option<&str>,
    ) -> Result<Workspace, ServiceError> {
        let (id, host) = (id.to_string(), host.map(str::to_string));
        self.run(who, Command::Deploy { id, host })
            .await?
            .into_workspace()
    }

    async fn workspace(&self, who: &Identity, id: &str) -> Result<Workspace, ServiceError> {
        let id = id.to_string();
        self.run(who, Command::ShowWorkspace { id })
            .await?
            .into_workspace()
    }

    async fn renew(
        &self,
        who: &Identity,
        id: &str,
        lifetime: u64,
    ) -> Result<Workspace, ServiceError> {
        let id = id.to_string();
        self.run(who, Command::Renew { id, lifetime })
            .await?
            .into_workspace()
    }

    async fn destroy(&self, who: &Identity, id: &str) -> Result<(), ServiceError> {
        let id = id.to_string();
        self.run(who, Command::Destroy { id }).await.map(drop)
    }

    async fn history(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Vec<vws_store::TransitionRecord>, ServiceError> {
        let id = id.to_string();
        match self.run(who, Command::History { id }).await? {
            Reply::History(h) => Ok(h),
            _ => panic!("History answers a history"),
        }
    }

    async fn list(
        &self,
        who: &Identity,
        filter: vws_store::Filter,
    ) -> Result<vws_store::Page<Workspace>, ServiceError> {
        match self.run(who, Command::ListWorkspaces(filter)).await? {
            Reply::Workspaces(p) => Ok(p),
            _ => panic!("ListWorkspaces answers a page"),
        }
    }

    async fn import_image(
        &self,
        who: &Identity,
        req: ImportRequest,
    ) -> Result<vws_store::ImageRecord, ServiceError> {
        image_of(self.run(who, Command::ImportImage(req)).await?)
    }

    async fn image(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<vws_store::ImageRecord, ServiceError> {
        let reference = reference.to_string();
        image_of(self.run(who, Command::Image { reference }).await?)
    }

    async fn remove_image(&self, who: &Identity, reference: &str) -> Result<(), ServiceError> {
        let reference = reference.to_string();
        self.run(who, Command::RemoveImage { reference })
            .await
            .map(drop)
    }

    async fn match_description(
        &self,
        who: &Identity,
        description: &vws_model::Description,
        form: vws_model::Form,
    ) -> Result<vws_service::matching::Match, ServiceError> {
        let description = description.clone();
        match self.run(who, Command::Match { description, form }).await? {
            Reply::Match(m) => Ok(m),
            _ => panic!("Match answers a match"),
        }
    }
}

fn image_of(r: Reply) -> Result<vws_store::ImageRecord, ServiceError> {
    match r {
        Reply::Image(i) => Ok(*i),
        _ => panic!("an image command answers an image"),
    }
}

impl Commands for Arc<Service> {
    async fn run(&self, who: &Identity, c: Command) -> Result<Reply, ServiceError> {
        self.execute(who, c).await
    }
}
