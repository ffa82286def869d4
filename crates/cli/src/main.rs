//! `vws`: virtual workspaces from the command line. A thin layer: the service
//! runs from `vws_service`, every other command is a call to its API.

mod commands;
mod config;
mod output;
mod shutdown;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Virtual workspaces: describe an execution environment, have it created,
/// deployed, started, and run jobs in it.
#[derive(Parser, Debug)]
#[command(name = "vws", version, propagate_version = true, max_term_width = 100)]
#[command(
    after_help = "Quick start:\n  vws up &                          # service on 127.0.0.1:7480 and a local node, state in VWS_HOME\n  vws image import minimal:1 --kernel vmlinuz --initrd initrd.img\n  vws create examples/minimal.xml   # prints the new workspace's id and EPR\n  vws deploy ID && vws start ID\n  vws run ID -- uname -a\n\nExit status: 0 success, 1 refused or failed request, 2 usage error;\n`vws run` exits with the job's status (128+N for signal N)."
)]
pub struct Cli {
    /// State folder [default: ~/.local/share/vws]
    #[arg(long, global = true, env = "VWS_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Service to talk to: its URL, or several replicas' URLs separated by
    /// commas, tried in turn [default: the one `vws up` recorded in VWS_HOME]
    #[arg(long, global = true, env = "VWS_SERVER", value_name = "URL")]
    server: Option<String>,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    /// Client certificate to present [default: VWS_HOME/pki/admin/cert.pem, made by `vws up`]
    #[arg(long, global = true, env = "VWS_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Its private key
    #[arg(long, global = true, env = "VWS_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// CA to trust [default: ca.pem beside --cert, else VWS_HOME/pki/ca/ca.pem]
    #[arg(long, global = true, env = "VWS_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run vws on this machine: the service with its embedded database and a node
    Up(commands::up::UpArgs),
    /// Run the service alone (same settings as `up`)
    Serve(commands::up::UpArgs),
    /// Create a workspace from a description (XML, TOML or JSON; `-` reads stdin)
    Create(commands::workspaces::CreateArgs),
    /// Show which pool images could serve a description, what each lacks,
    /// and the one create would choose (paper §2: workspaces are selected)
    Match(commands::workspaces::CreateArgs),
    /// List workspaces
    #[command(alias = "ls")]
    List(commands::workspaces::ListArgs),
    /// Show a workspace: its record, or its description with --xml/--toml
    Show(commands::workspaces::ShowArgs),
    /// Clone a workspace: a new name and resource with the same description
    Clone(commands::workspaces::CloneArgs),
    /// Destroy workspaces and free their disks
    #[command(alias = "rm")]
    Destroy(commands::workspaces::DestroyArgs),
    /// Set a workspace's termination time to a new lifetime from now
    Renew(commands::workspaces::RenewArgs),
    /// Check a workspace out onto a node: stage its image and disk there
    Deploy(commands::lifecycle::DeployArgs),
    /// Check a workspace back in: its disk (and memory, if paused) returns to the repository
    Undeploy(commands::lifecycle::IdArgs),
    /// Boot a deployed workspace; returns once its guest agent answers
    Start(commands::lifecycle::IdArgs),
    /// Shut a workspace down (gracefully, then hard)
    Stop(commands::lifecycle::IdArgs),
    /// Freeze a running workspace
    Pause(commands::lifecycle::IdArgs),
    /// Thaw a paused workspace (restoring its memory if it was checked in paused)
    Unpause(commands::lifecycle::IdArgs),
    /// Save a paused workspace as a hot image: new workspaces from it are restored, not booted
    Snapshot(commands::lifecycle::SnapshotArgs),
    /// Move a running or paused workspace to another node with live migration
    Migrate(commands::lifecycle::MigrateArgs),
    /// Print a workspace's serial console (-f follows it)
    Console(commands::lifecycle::ConsoleArgs),
    /// Run a job in a running workspace; output streams live, the exit status is the job's
    Run(commands::jobs::RunArgs),
    /// List a workspace's jobs
    Jobs(commands::jobs::JobsArgs),
    /// Show, follow or cancel one job
    #[command(subcommand)]
    Job(commands::jobs::JobCommand),
    /// Copy a file into or out of a running workspace (LOCAL ID:PATH or ID:PATH LOCAL)
    Cp(commands::jobs::CpArgs),
    /// Print the service's events: lifecycle transitions, jobs, nodes, images (-f follows)
    Events(commands::events::EventsArgs),
    /// Print a one-time link that signs a browser in to the web dashboard
    Ui(commands::ui::UiArgs),
    /// Wait for a workspace to reach a state (exit 3 on --timeout)
    Wait(commands::events::WaitArgs),
    /// Run this host's VW Manager (`vws node --service URL`), or `vws node list`
    Node(commands::node::NodeArgs),
    /// Manage the image pool
    #[command(subcommand)]
    Image(commands::images::ImageCommand),
    /// Measure vws (see docs/benchmarks.md)
    Bench(commands::bench::BenchArgs),
    /// Networks and their address pools
    #[command(subcommand)]
    Network(commands::network::NetworkCommand),
    /// The certificate authority (vws up makes one on first run)
    #[command(subcommand)]
    Ca(commands::pki::CaCommand),
    /// Issue, revoke or show certificates
    #[command(subcommand)]
    Cert(commands::pki::CertCommand),
    /// Access keys for SigV4-signed requests: awscli and boto3 against the EC2 front-end
    #[command(subcommand)]
    Key(commands::keys::KeyCommand),
    /// Ask for capacity now or later (an offer to accept, or the earliest start that fits)
    Agree(commands::agreements::AgreeArgs),
    /// List your agreements: offers, reservations, active and past ones
    Agreements,
    /// Show, accept, cancel or renegotiate an agreement
    #[command(subcommand)]
    Agreement(commands::agreements::AgreementCommand),
}

/// Settings every command may need.
#[derive(Args, Debug, Clone)]
pub struct Globals {
    home: PathBuf,
    server: Option<String>,
    json: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

impl Globals {
    /// A client of the service this environment points at.
    pub fn client(&self) -> anyhow::Result<vws_client::Client> {
        let url = config::server_url(self.server.clone(), &self.home)?;
        vws_client::Client::with_credentials(&url, &commands::pki::client_credentials(self)?)
    }
}

fn init_logs(verbose: u8, serving: bool) {
    let default = match (verbose, serving) {
        (0, true) | (1, _) => "info",
        (0, false) => "warn",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},sqlx=warn,qapi=error"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Output piped into `head` ends a client command quietly, as with any Unix
/// tool, instead of a panic on the broken pipe. A connection to the service
/// that breaks (the service killed during an upload) is an error with a
/// message instead: the signal ends the command only when standard output
/// is what broke.
#[allow(unsafe_code)]
fn quiet_sigpipe() {
    extern "C" fn on_sigpipe(_: libc::c_int) {
        let mut out = libc::pollfd {
            fd: 1,
            events: 0,
            revents: 0,
        };
        // SAFETY: poll(2) and _exit(2) are async-signal-safe; `out` lives
        // on this handler's stack for the call.
        unsafe {
            if libc::poll(&mut out, 1, 0) == 1 && out.revents & (libc::POLLERR | libc::POLLHUP) != 0
            {
                libc::_exit(128 + libc::SIGPIPE);
            }
        }
    }
    // SAFETY: runs first in main, before any other thread exists; the
    // handler only calls async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGPIPE,
            on_sigpipe as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

fn main() -> ExitCode {
    // The node's namespace helper for dynamic accounts: handled before
    // anything else starts a thread (it forks and enters namespaces).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__sandbox") {
        vws_node::sandbox::main(&args[2..]);
    }
    let cli = Cli::parse();
    let serving = matches!(
        cli.command,
        Command::Up(_) | Command::Serve(_) | Command::Node(_)
    );
    // Benchmarks run a service and a node in this process too.
    if !serving && !matches!(cli.command, Command::Bench(_)) {
        // Only for short-lived client commands: a server must see EPIPE on a
        // peer that went away (a stopped VM's sockets), never die of it.
        quiet_sigpipe();
    }
    init_logs(cli.verbose, serving);
    let home = match config::home(cli.home) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let g = Globals {
        home,
        server: cli.server,
        json: cli.json,
        cert: cli.cert,
        key: cli.key,
        ca: cli.ca,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(a) => commands::up::run(&g, a, true).await,
            Command::Serve(a) => commands::up::run(&g, a, false).await,
            Command::Deploy(a) => commands::lifecycle::deploy(&g, a).await,
            Command::Undeploy(a) => {
                commands::lifecycle::action(&g, a, vws_model::Verb::Undeploy, "undeployed").await
            }
            Command::Start(a) => {
                commands::lifecycle::action(&g, a, vws_model::Verb::Start, "started").await
            }
            Command::Stop(a) => {
                commands::lifecycle::action(&g, a, vws_model::Verb::Stop, "stopped").await
            }
            Command::Pause(a) => {
                commands::lifecycle::action(&g, a, vws_model::Verb::Pause, "paused").await
            }
            Command::Unpause(a) => {
                commands::lifecycle::action(&g, a, vws_model::Verb::Unpause, "unpaused").await
            }
            Command::Console(a) => commands::lifecycle::console(&g, a).await,
            Command::Snapshot(a) => commands::lifecycle::snapshot(&g, a).await,
            Command::Migrate(a) => commands::lifecycle::migrate(&g, a).await,
            Command::Node(a) => commands::node::run(&g, a).await,
            Command::Events(a) => commands::events::events(&g, a).await,
            Command::Wait(a) => commands::events::wait(&g, a).await,
            Command::Ui(a) => commands::ui::run(&g, a).await,
            Command::Key(c) => commands::keys::run(&g, c).await,
            Command::Agree(a) => commands::agreements::agree(&g, a).await,
            Command::Agreements => commands::agreements::list(&g).await,
            Command::Agreement(c) => commands::agreements::agreement(&g, c).await,
            Command::Run(a) => commands::jobs::run(&g, a).await,
            Command::Jobs(a) => commands::jobs::list(&g, a).await,
            Command::Job(c) => commands::jobs::job(&g, c).await,
            Command::Cp(a) => commands::jobs::cp(&g, a).await,
            Command::Create(a) => commands::workspaces::create(&g, a).await,
            Command::Match(a) => commands::workspaces::match_description(&g, a).await,
            Command::List(a) => commands::workspaces::list(&g, a).await,
            Command::Show(a) => commands::workspaces::show(&g, a).await,
            Command::Clone(a) => commands::workspaces::clone(&g, a).await,
            Command::Destroy(a) => commands::workspaces::destroy(&g, a).await,
            Command::Renew(a) => commands::workspaces::renew(&g, a).await,
            Command::Image(c) => commands::images::run(&g, c).await,
            Command::Bench(a) => commands::bench::run(&g, a).await,
            Command::Ca(c) => commands::pki::ca(&g, c),
            Command::Network(c) => commands::network::run(&g, c).await,
            Command::Cert(c) => commands::pki::cert(&g, c),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(commands::jobs::ExitWith(code)) = e.downcast_ref() {
                return ExitCode::from(*code);
            }
            commands::report(&e);
            ExitCode::from(1)
        }
    }
}
