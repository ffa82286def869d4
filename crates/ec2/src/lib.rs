//! The EC2-compatible front-end: the EC2 Query API, version 2016-11-15, so
//! that awscli, boto3 and other EC2 clients drive vws. It is one more
//! front-end over the service's commands (`Service::execute`), with the
//! same ACLs and ownership as the REST API: a request is signed with AWS
//! Signature Version 4 by an access key (`vws key create`), and runs as
//! the identity the key is bound to. docs/ec2.md lists every action and
//! parameter it takes.
//!
//! Each group of actions is a module; [`dispatch`] is the one table that
//! names them.

pub mod config;
pub mod error;
pub mod ids;
mod images;
mod instances;
mod key_pairs;
mod lookup;
mod page;
pub mod params;
mod regions;
pub mod sigv4;
mod tags;
pub mod xml;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use vws_model::Identity;
use vws_service::command::{Command, Reply};
use vws_service::{Service, ServiceError};

pub use config::Config;
pub use error::Ec2Error;
pub use lookup::Ec2State;

use params::Params;

/// The API version whose shapes this front-end answers with.
pub const API_VERSION: &str = "2016-11-15";

/// The service name requests are signed for.
pub const SIGNING_SERVICE: &str = "ec2";

/// Largest request body read (EC2's Query API limit is about this).
pub const MAX_BODY: usize = 1 << 20;

/// What a request runs with: the core, the settings, who asks.
pub(crate) struct Ctx {
    pub service: Arc<Service>,
    pub config: Arc<Config>,
    pub who: Identity,
    pub host: String,
}

impl Ctx {
    /// Runs a command as the caller.
    pub async fn run(&self, command: Command) -> Result<Reply, ServiceError> {
        self.service.execute(&self.who, command).await
    }

    /// Whose records a listing shows: the caller's, or everyone's for an
    /// administrator (as in the REST API).
    pub fn owner_filter(&self) -> Option<&str> {
        (!self.who.is_admin()).then_some(self.who.dn.as_str())
    }

    /// The host clients reach this endpoint at.
    pub fn endpoint_host(&self) -> &str {
        &self.host
    }
}

#[derive(Clone)]
struct Frontend {
    service: Arc<Service>,
    config: Arc<Config>,
}

/// The front-end's router: the Query API at `/` (POST with a form body, or
/// GET with the parameters in the query string).
pub fn router(service: Arc<Service>, config: Config) -> Router {
    Router::new()
        .route("/", any(endpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Frontend {
            service,
            config: Arc::new(config),
        })
}

async fn endpoint(
    State(f): State<Frontend>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let answer = handle(&f, &method, &uri, &headers, &body).await;
    let (status, text) = match answer {
        Ok((action, nodes)) => (StatusCode::OK, xml::response(&action, &request_id, nodes)),
        Err(e) => {
            tracing::info!(code = %e.code, message = %e.message, "EC2 request refused");
            (e.status, xml::error(&e.code, &e.message, &request_id))
        }
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "text/xml;charset=UTF-8"),
            (
                header::HeaderName::from_static("x-amzn-requestid"),
                request_id.as_str(),
            ),
        ],
        text,
    )
        .into_response()
}

/// The request's host: the Host header, or HTTP/2's authority.
fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Checks the signature: who the request is from.
async fn authenticate(
    f: &Frontend,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Identity, Ec2Error> {
    use sigv4::SigError;
    let refused = |e: SigError| match e {
        SigError::Missing => Ec2Error::new(
            StatusCode::UNAUTHORIZED,
            "MissingAuthenticationToken",
            e.to_string(),
        ),
        SigError::Malformed(_) => Ec2Error::client("IncompleteSignature", e.to_string()),
        SigError::Expired { .. } => Ec2Error::client("RequestExpired", e.to_string()),
        SigError::UnknownKey(_) | SigError::WrongScope(_) | SigError::Mismatch => {
            Ec2Error::auth(e.to_string())
        }
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .ok_or(SigError::Missing)
        .map_err(refused)?;
    let auth = sigv4::parse_authorization(header).map_err(refused)?;
    let (secret, who) = f
        .service
        .access_key(&auth.key_id)
        .await
        .map_err(|e| Ec2Error::internal(e.to_string()))?
        .ok_or_else(|| refused(SigError::UnknownKey(auth.key_id.clone())))?;
    let req = sigv4::Request {
        method,
        path: uri.path(),
        query: uri.query(),
        headers,
        host: host_of(uri, headers),
        body,
    };
    sigv4::verify(
        &req,
        &auth,
        &secret,
        &f.config.region,
        SIGNING_SERVICE,
        f.service.clock().now(),
    )
    .map_err(refused)?;
    Ok(who)
}

async fn handle(
    f: &Frontend,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Vec<xml::Node>), Ec2Error> {
    let who = authenticate(f, method, uri, headers, body).await?;
    // Parameters from the query string, then the form body.
    let mut raw = uri.query().unwrap_or("").as_bytes().to_vec();
    if *method == Method::POST && !body.is_empty() {
        if !raw.is_empty() {
            raw.push(b'&');
        }
        raw.extend_from_slice(body);
    }
    let params = Params::parse(&raw);
    let action = params.require("Action")?.to_string();
    let ctx = Ctx {
        service: f.service.clone(),
        config: f.config.clone(),
        who,
        host: host_of(uri, headers).unwrap_or("").to_string(),
    };
    tracing::debug!(action = %action, who = %ctx.who.dn, "EC2 request");
    let nodes = dispatch(&ctx, &action, &params).await?;
    Ok((action, nodes))
}

/// The actions, each to its module's function.
async fn dispatch(ctx: &Ctx, action: &str, p: &Params) -> Result<Vec<xml::Node>, Ec2Error> {
    match action {
        "RunInstances" => instances::run(ctx, p).await,
        "DescribeInstances" => instances::describe(ctx, p).await,
        "StartInstances" => instances::start(ctx, p).await,
        "StopInstances" => instances::stop(ctx, p).await,
        "RebootInstances" => instances::reboot(ctx, p).await,
        "TerminateInstances" => instances::terminate(ctx, p).await,
        "DescribeImages" => images::describe(ctx, p).await,
        "CreateImage" => images::create(ctx, p).await,
        "DeregisterImage" => images::deregister(ctx, p).await,
        "CreateKeyPair" => key_pairs::create(ctx, p).await,
        "ImportKeyPair" => key_pairs::import(ctx, p).await,
        "DescribeKeyPairs" => key_pairs::describe(ctx, p).await,
        "DeleteKeyPair" => key_pairs::delete(ctx, p).await,
        "CreateTags" => tags::create(ctx, p).await,
        "DeleteTags" => tags::delete(ctx, p).await,
        "DescribeTags" => tags::describe(ctx, p).await,
        "DescribeRegions" => regions::describe_regions(ctx, p).await,
        "DescribeAvailabilityZones" => regions::describe_zones(ctx, p).await,
        "DescribeInstanceTypes" => regions::describe_instance_types(ctx, p).await,
        other => Err(Ec2Error::client(
            "InvalidAction",
            format!("The action {other} is not valid for this web service."),
        )),
    }
}

/// The actions [`dispatch`] answers, for docs and tests.
pub const ACTIONS: &[&str] = &[
    "RunInstances",
    "DescribeInstances",
    "StartInstances",
    "StopInstances",
    "RebootInstances",
    "TerminateInstances",
    "DescribeImages",
    "CreateImage",
    "DeregisterImage",
    "CreateKeyPair",
    "ImportKeyPair",
    "DescribeKeyPairs",
    "DeleteKeyPair",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "DescribeRegions",
    "DescribeAvailabilityZones",
    "DescribeInstanceTypes",
];

/// Serves the front-end on `listener` over TLS with the service's
/// certificate (clients trust the vws CA; they present no certificate:
/// their requests are signed) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    credentials: &vws_pki::Credentials,
    service: Arc<Service>,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = Arc::new(credentials.server_config_without_client_auth()?);
    vws_pki::serve::serve_tls_without_client_certificates(
        listener,
        tls,
        router(service, config),
        shutdown,
    )
    .await?;
    Ok(())
}
