//! Who may call each route: every (method, path) the API serves, with the
//! caller kinds it admits and the ACL class it needs, in one table. A guard
//! in front of every route (`api::guard`) reads the table before any handler runs (and
//! before anything is read from the repository for the caller). The router
//! is built from this table (`api::router`), so no route exists without a
//! rule; tests hold the table equal to the OpenAPI document and to the
//! table in docs/security.md.

use axum::http::Method;

use crate::command::CommandKind;
pub use crate::path_params::check_param;

/// Who a route admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Any certificate of the CA (health, the OpenAPI document).
    Open,
    /// A client certificate, running the command (which checks the ACL
    /// class it needs, [`CommandKind::class`]). Workspace-scoped commands
    /// then show only the caller's own (others' are 404).
    Client(CommandKind),
    /// A node speaking for itself: the `{name}` in the path (or in the
    /// registration) is its certificate's name.
    SelfNode,
    /// The node that holds workspace `{id}`: the one it is checked out to,
    /// deployed on, or being migrated to. Any other caller: 404 for nodes,
    /// 403 for other kinds.
    HoldingNode,
    /// A client running the command, or any node (pool blobs: every node
    /// stages images). What a client may read is then limited to the
    /// images it may use.
    ClientOrNode(CommandKind),
}

impl Rule {
    /// How the rule reads in docs/security.md's table.
    pub fn describe(self) -> String {
        match self {
            Rule::Open => "any certificate".into(),
            Rule::Client(c) => format!("client · `{}` ({})", c.class().as_str(), c.as_str()),
            Rule::SelfNode => "node (itself)".into(),
            Rule::HoldingNode => "node holding the workspace".into(),
            Rule::ClientOrNode(c) => format!(
                "client · `{}` ({}), or node",
                c.class().as_str(),
                c.as_str()
            ),
        }
    }
}

/// One served route.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Lower-case HTTP method.
    pub method: &'static str,
    /// Path as the router and the OpenAPI document spell it.
    pub path: &'static str,
    /// Who may call it.
    pub rule: Rule,
}

const fn r(method: &'static str, path: &'static str, rule: Rule) -> Route {
    Route { method, path, rule }
}

use CommandKind::*;
use Rule::*;

/// Every route the API serves, with its rule. The router, the OpenAPI
/// document and docs/security.md list exactly these (tests hold them
/// together).
pub const ROUTES: &[Route] = &[
    r("get", "/v1/health", Open),
    r("get", "/v1/openapi.json", Open),
    r("get", "/v1/workspaces", Client(ListWorkspaces)),
    r("post", "/v1/workspaces", Client(Create)),
    r("post", "/v1/match", Client(Match)),
    r("get", "/v1/workspaces/{id}", Client(ShowWorkspace)),
    r("delete", "/v1/workspaces/{id}", Client(Destroy)),
    r("post", "/v1/workspaces/{id}/clone", Client(Clone)),
    r("post", "/v1/workspaces/{id}/renew", Client(Renew)),
    r("get", "/v1/workspaces/{id}/history", Client(History)),
    r("get", "/v1/images", Client(Images)),
    r("post", "/v1/images", Client(ImportImage)),
    r("post", "/v1/images/pull", Client(PullImage)),
    r("post", "/v1/images/oci", Client(ImportOci)),
    r("post", "/v1/images/{reference}/push", Client(PushImage)),
    r("get", "/v1/operations/{operation}", Client(Operation)),
    r("get", "/v1/images/{reference}", Client(Image)),
    r("delete", "/v1/images/{reference}", Client(RemoveImage)),
    r(
        "post",
        "/v1/images/{reference}/signature",
        Client(SignImage),
    ),
    r("head", "/v1/blobs/{digest}", ClientOrNode(HasBlob)),
    r("put", "/v1/blobs/{digest}", ClientOrNode(PutBlob)),
    r("get", "/v1/blobs/{digest}", ClientOrNode(ReadBlob)),
    r("get", "/v1/blobs/{digest}/chunks", ClientOrNode(BlobChunks)),
    r("post", "/v1/workspaces/{id}/deploy", Client(Deploy)),
    r("post", "/v1/workspaces/{id}/snapshot", Client(Snapshot)),
    r("post", "/v1/workspaces/{id}/migrate", Client(Migrate)),
    r("get", "/v1/workspaces/{id}/migration", Client(Migration)),
    r("post", "/v1/workspaces/{id}/undeploy", Client(Transition)),
    r("post", "/v1/workspaces/{id}/start", Client(Transition)),
    r("post", "/v1/workspaces/{id}/stop", Client(Transition)),
    r("post", "/v1/workspaces/{id}/pause", Client(Transition)),
    r("post", "/v1/workspaces/{id}/unpause", Client(Transition)),
    r("get", "/v1/workspaces/{id}/staging", Client(Staging)),
    r("get", "/v1/workspaces/{id}/console", Client(Console)),
    r("get", "/v1/workspaces/{id}/disk", HoldingNode),
    r("put", "/v1/workspaces/{id}/disk", HoldingNode),
    r("get", "/v1/workspaces/{id}/disk/chunks", HoldingNode),
    r("get", "/v1/workspaces/{id}/memory", HoldingNode),
    r("put", "/v1/workspaces/{id}/memory", HoldingNode),
    r("get", "/v1/workspaces/{id}/memory/chunks", HoldingNode),
    r("get", "/v1/nodes", Client(Nodes)),
    r("get", "/v1/events", Client(Events)),
    r("post", "/v1/ui/links", Client(SignInLink)),
    r("post", "/v1/keys", Client(CreateAccessKey)),
    r("get", "/v1/keys", Client(AccessKeys)),
    r("delete", "/v1/keys/{key}", Client(RevokeAccessKey)),
    r("post", "/v1/agreements", Client(OfferAgreement)),
    r("get", "/v1/agreements", Client(Agreements)),
    r("get", "/v1/agreements/{agreement}", Client(ShowAgreement)),
    r(
        "post",
        "/v1/agreements/{agreement}/accept",
        Client(AcceptAgreement),
    ),
    r(
        "post",
        "/v1/agreements/{agreement}/cancel",
        Client(CancelAgreement),
    ),
    r(
        "post",
        "/v1/agreements/{agreement}/offers",
        Client(Renegotiate),
    ),
    r("get", "/v1/networks", Client(Networks)),
    r("get", "/v1/networks/{name}", Client(Network)),
    r("get", "/v1/pki/crl", Open),
    r("post", "/v1/nodes", SelfNode),
    r("post", "/v1/nodes/{name}/heartbeat", SelfNode),
    r("post", "/v1/nodes/{name}/events", SelfNode),
    r("post", "/v1/nodes/{name}/jobs/{job}", SelfNode),
    r("get", "/v1/workspaces/{id}/jobs", Client(Jobs)),
    r("post", "/v1/workspaces/{id}/jobs", Client(SubmitJob)),
    r(
        "post",
        "/v1/workspaces/{id}/jobs/batch",
        Client(SubmitBatch),
    ),
    r("get", "/v1/jobs/{job}", Client(Job)),
    r("get", "/v1/jobs/{job}/output", Client(JobOutput)),
    r("post", "/v1/jobs/{job}/cancel", Client(CancelJob)),
    r("get", "/v1/workspaces/{id}/files", Client(GetFile)),
    r("put", "/v1/workspaces/{id}/files", Client(PutFile)),
];

/// The rule of a matched route (none: the route is not in the table).
pub fn rule_of(method: &Method, path: &str) -> Option<Rule> {
    // HEAD requests are also routed to GET handlers by axum.
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method.eq_ignore_ascii_case(method.as_str()))
        .or_else(|| {
            (method == Method::HEAD)
                .then(|| ROUTES.iter().find(|r| r.path == path && r.method == "get"))
                .flatten()
        })
        .map(|r| r.rule)
}

/// A node's name: its certificate's CN.
pub fn node_name(peer: &vws_pki::Peer) -> Option<String> {
    common_name(&peer.identity.dn)
}

/// The CN of a slash-form DN.
pub fn common_name(dn: &str) -> Option<String> {
    dn.rsplit('/')
        .find_map(|c| c.strip_prefix("CN="))
        .map(str::to_string)
}

/// docs/security.md's table of routes, generated from [`ROUTES`].
pub fn markdown_table() -> String {
    let mut out = String::from("| method | path | who may call it |\n|---|---|---|\n");
    for r in ROUTES {
        out.push_str(&format!(
            "| {} | `{}` | {} |\n",
            r.method.to_uppercase(),
            r.path,
            r.rule.describe()
        ));
    }
    out
}
