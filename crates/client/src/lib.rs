//! A typed client of the vws REST API (`/v1`), failing over between
//! replicas and retrying what a replica's death cut off.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
pub use vws_model::agreement::Agreement;
pub use vws_model::records::Workspace;
use vws_model::records::{ImageRecord, JobRecord, Page, TransitionRecord};
use vws_model::Form;

/// One problem in a refused description.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Detail {
    /// Path of the element at fault.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service refused, in its one error shape.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// Stable code (`invalid_description`, `illegal_transition`, …).
        code: String,
        /// Message for people.
        message: String,
        /// Per-element problems of a refused description.
        details: Vec<Detail>,
    },
    /// The service could not be reached or answered nonsense.
    #[error("cannot reach the vws service at {url}: {source}")]
    Transport {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A local file could not be read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInfo,
}

#[derive(Deserialize)]
struct ErrorInfo {
    code: String,
    message: String,
    #[serde(default)]
    details: Vec<Detail>,
}

/// The service's refusal in its one error shape (or what came instead).
async fn api_error(resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ClientError::Api {
            status,
            code: b.error.code,
            message: b.error.message,
            details: b.error.details,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http".into(),
            message: format!("{status}: {text}"),
            details: vec![],
        },
    }
}

/// Filters for [`Client::list`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ListQuery {
    /// Only this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only this owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Only this category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Cursor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// How a client carries a request through a replica's death: what it
/// retries, and for how long.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// The first pause between two tries (doubled each time).
    first_pause: Duration,
    /// The longest pause.
    max_pause: Duration,
    /// How long after the first try the last may start. It outlasts a
    /// replica's lease (5 s) with room for a load balancer's health checks,
    /// so a request whose replica died is taken over by another.
    within: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            first_pause: Duration::from_millis(200),
            max_pause: Duration::from_secs(2),
            within: Duration::from_secs(30),
        }
    }
}

/// A connection to a vws service: one URL, or several replicas' URLs it
/// fails over between. Every POST and DELETE of up to 1 MiB carries an
/// `Idempotency-Key` (docs/api.md), so such a request is sent again, to the
/// next URL where there are several, without acting twice, when its
/// connection broke, when a load balancer could not place it (its own 502,
/// 503 or 504, not the service's error shape), when its first try is still
/// being handled (409 `idempotency_in_progress`), or when another replica's
/// action holds its workspace (409 `settling`).
#[derive(Clone, Debug)]
pub struct Client {
    bases: Arc<[String]>,
    current: Arc<AtomicUsize>,
    http: reqwest::Client,
    retry: Retry,
}

/// The header that makes a retry safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Base URLs from `URL[,URL…]`, each without its trailing `/` and with a
/// default port written as URLs print it (so each prefixes the URLs of its
/// requests exactly).
fn bases_of(list: &str) -> Arc<[String]> {
    list.split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(|b| {
            reqwest::Url::parse(b)
                .map(|u| u.as_str().trim_end_matches('/').to_string())
                .unwrap_or_else(|_| b.trim_end_matches('/').to_string())
        })
        .collect()
}

impl Client {
    /// A client of the service at `base` (e.g. `https://127.0.0.1:7480`;
    /// several replicas' URLs separated by commas).
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        Client::with_http(base, http)
    }

    /// A client using a ready HTTP client (e.g. one presenting a TLS
    /// client certificate: [`vws_pki::Credentials::http_client`]).
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            bases: bases_of(base),
            current: Arc::new(AtomicUsize::new(0)),
            http,
            retry: Retry::default(),
        }
    }

    /// A client presenting `credentials` over mutual TLS.
    pub fn with_credentials(
        base: &str,
        credentials: &vws_pki::Credentials,
    ) -> anyhow::Result<Client> {
        let http = credentials
            .http_client()?
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Client::with_http(base, http))
    }

    /// The service's base URL (the one in use, where there are several).
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(i).map(String::as_str).unwrap_or("")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Moves to the next base URL after `from` failed (unless another
    /// request moved on already), and points `request` at it.
    fn fail_over(&self, from: &str, request: &mut reqwest::Request) {
        if self.bases.len() < 2 {
            return;
        }
        if self.base() == from {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
        let to = self.base().to_string();
        if let Some(rest) = request.url().as_str().strip_prefix(from) {
            if let Ok(u) = reqwest::Url::parse(&format!("{to}{rest}")) {
                *request.url_mut() = u;
            }
        }
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let transport = |source| ClientError::Transport {
            url: url.into(),
            source,
        };
        let mut request = req.build().map_err(transport)?;
        // The service keeps at most 1 MiB of a keyed request (docs/api.md):
        // a larger one goes without a key.
        let small = request
            .body()
            .is_none_or(|b| b.as_bytes().is_some_and(|b| b.len() <= 1 << 20));
        if matches!(*request.method(), Method::POST | Method::DELETE)
            && small
            && !request.headers().contains_key(IDEMPOTENCY_KEY)
        {
            let key = uuid::Uuid::new_v4().to_string();
            let value = reqwest::header::HeaderValue::from_str(&key).expect("a UUID is a header");
            request.headers_mut().insert(IDEMPOTENCY_KEY, value);
        }
        // What may be sent twice: a read, a put of the same bytes, or a
        // request its key makes safe. (A refused connection never sent it.)
        let idempotent = matches!(*request.method(), Method::GET | Method::HEAD | Method::PUT)
            || request.headers().contains_key(IDEMPOTENCY_KEY);
        let started = Instant::now();
        let mut pause = self.retry.first_pause;
        let mut refused = 0;
        loop {
            // A streamed body cannot be sent twice: such a request is tried once.
            let again = request.try_clone();
            let base = self.base().to_string();
            let why = match self.http.execute(request).await {
                Err(e) if e.is_timeout() => return Err(transport(e)),
                // Nothing listens there: the next URL, until each was tried
                // (a service that is not running is said at once).
                Err(e) if e.is_connect() => {
                    refused += 1;
                    if again.is_none() || refused >= self.bases.len() {
                        return Err(transport(e));
                    }
                    e.to_string()
                }
                // Cut off mid-request (its replica died, or the proxy's).
                Err(e) => match again {
                    Some(_) if idempotent && started.elapsed() < self.retry.within => {
                        refused = 0;
                        e.to_string()
                    }
                    _ => return Err(transport(e)),
                },
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => {
                    let err = api_error(resp).await;
                    let ClientError::Api { status, code, .. } = &err else {
                        return Err(err);
                    };
                    // A proxy's own answer (not the service's error shape):
                    // no replica took the request.
                    let unplaced =
                        idempotent && matches!(status.as_u16(), 502..=504) && code == "http";
                    // The first try, or another replica's action on the
                    // same workspace, still running or being settled.
                    let passing = unplaced
                        || (*status == StatusCode::CONFLICT
                            && matches!(code.as_str(), "idempotency_in_progress" | "settling"));
                    if !passing || again.is_none() || started.elapsed() >= self.retry.within {
                        return Err(err);
                    }
                    refused = 0;
                    err.to_string()
                }
            };
            let mut next = again.expect("only a request that can be sent again gets here");
            self.fail_over(&base, &mut next);
            tracing::warn!(
                "{base}: {why}; trying again{}",
                if self.base() != base {
                    format!(" on {}", self.base())
                } else {
                    String::new()
                }
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.retry.max_pause);
            request = next;
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, ClientError> {
        self.send(req, url)
            .await?
            .json()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.into(),
                source,
            })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.json(req, &url).await
    }

    /// Is the service up?
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::GET, "/v1/health", None).await
    }

    /// Creates a workspace from a description's text in the given form.
    pub async fn create(
        &self,
        text: String,
        form: Form,
        name: Option<&str>,
    ) -> Result<Workspace, ClientError> {
        let url = self.url("/v1/workspaces");
        let mut req = self
            .http
            .post(&url)
            .header("content-type", form.content_type())
            .body(text);
        if let Some(n) = name {
            req = req.query(&[("name", n)]);
        }
        self.json(req, &url).await
    }

    /// The pool's images judged against a description (`POST /v1/match`):
    /// the candidates, best first, and the one create would choose.
    pub async fn match_description(
        &self,
        text: String,
        form: Form,
    ) -> Result<serde_json::Value, ClientError> {
        let url = self.url("/v1/match");
        let req = self
            .http
            .post(&url)
            .header("content-type", form.content_type())
            .body(text);
        self.json(req, &url).await
    }

    /// One page of workspaces.
    pub async fn list(&self, q: &ListQuery) -> Result<Page<Workspace>, ClientError> {
        let url = self.url("/v1/workspaces");
        self.json(self.http.get(&url).query(q), &url).await
    }

    /// Every workspace matching `q`, following the pages.
    pub async fn list_all(&self, q: &ListQuery) -> Result<Vec<Workspace>, ClientError> {
        let mut q = q.clone();
        q.limit = Some(1000);
        let mut all = Vec::new();
        loop {
            let page = self.list(&q).await?;
            all.extend(page.items);
            match page.next {
                Some(n) => q.after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// One workspace.
    pub async fn show(&self, id: &str) -> Result<Workspace, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/workspaces/{id}", id = seg(id)),
            None,
        )
        .await
    }

    /// A workspace's full description in the XML or TOML form.
    pub async fn description(&self, id: &str, form: Form) -> Result<String, ClientError> {
        let url = self.url(&format!("/v1/workspaces/{id}", id = seg(id)));
        let resp = self
            .send(
                self.http.get(&url).header("accept", form.content_type()),
                &url,
            )
            .await?;
        resp.text()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    /// A workspace's history.
    pub async fn history(&self, id: &str) -> Result<Vec<TransitionRecord>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/workspaces/{id}/history", id = seg(id)),
            None,
        )
        .await
    }

    /// Clones a workspace.
    pub async fn clone_workspace(
        &self,
        id: &str,
        name: Option<&str>,
        changes: Option<&serde_json::Value>,
    ) -> Result<Workspace, ClientError> {
        let mut body = serde_json::json!({ "name": name });
        if let Some(c) = changes {
            body["changes"] = c.clone();
        }
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/clone", id = seg(id)),
            Some(body),
        )
        .await
    }

    /// Sets the termination time to `seconds` from now.
    pub async fn renew(&self, id: &str, seconds: u64) -> Result<Workspace, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/renew", id = seg(id)),
            Some(serde_json::json!({ "lifetime": seconds })),
        )
        .await
    }

    /// Destroys a workspace.
    pub async fn destroy(&self, id: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/workspaces/{id}", id = seg(id)));
        self.send(self.http.delete(&url), &url).await.map(drop)
    }

    /// Every image in the pool.
    pub async fn images(&self) -> Result<Vec<ImageRecord>, ClientError> {
        self.call(Method::GET, "/v1/images", None).await
    }

    /// One image.
    pub async fn image(&self, reference: &str) -> Result<ImageRecord, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/images/{reference}", reference = seg(reference)),
            None,
        )
        .await
    }

    /// Removes an image tag (and the image with its last tag).
    pub async fn remove_image(&self, reference: &str) -> Result<(), ClientError> {
        let url = self.url(&format!(
            "/v1/images/{reference}",
            reference = seg(reference)
        ));
        self.send(self.http.delete(&url), &url).await.map(drop)
    }

    /// Whether the service already holds a blob.
    pub async fn has_blob(&self, digest: &str) -> Result<bool, ClientError> {
        let url = self.url(&format!("/v1/blobs/{digest}", digest = seg(digest)));
        match self.send(self.http.head(&url), &url).await {
            Ok(_) => Ok(true),
            Err(ClientError::Api {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Uploads a file as a blob under its digest; `progress` is called with
    /// each chunk's length as it leaves.
    pub async fn upload_blob(
        &self,
        path: &Path,
        digest: &str,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<(), ClientError> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let stream =
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).inspect(move |chunk| {
                if let Ok(c) = chunk {
                    progress(c.len() as u64);
                }
            });
        let url = self.url(&format!("/v1/blobs/{digest}", digest = seg(digest)));
        let req = self
            .http
            .put(&url)
            .header("content-length", len)
            .body(reqwest::Body::wrap_stream(stream));
        self.send(req, &url).await.map(drop)
    }

    /// Registers an image from uploaded blobs.
    pub async fn import_image(
        &self,
        request: serde_json::Value,
    ) -> Result<ImageRecord, ClientError> {
        self.call(Method::POST, "/v1/images", Some(request)).await
    }

    /// Starts pulling an OCI image into the pool; its operation.
    pub async fn pull_image(
        &self,
        request: serde_json::Value,
    ) -> Result<vws_model::records::Operation, ClientError> {
        self.call(Method::POST, "/v1/images/pull", Some(request))
            .await
    }

    /// Registers an OCI image whose config and layers were uploaded; its
    /// operation.
    pub async fn import_oci(
        &self,
        request: serde_json::Value,
    ) -> Result<vws_model::records::Operation, ClientError> {
        self.call(Method::POST, "/v1/images/oci", Some(request))
            .await
    }

    /// Starts pushing a pool image to a registry; its operation.
    pub async fn push_image(
        &self,
        reference: &str,
        request: serde_json::Value,
    ) -> Result<vws_model::records::Operation, ClientError> {
        let path = format!("/v1/images/{r}/push", r = seg(reference));
        self.call(Method::POST, &path, Some(request)).await
    }

    /// How far a long-running operation has come.
    pub async fn operation(&self, id: &str) -> Result<vws_model::records::Operation, ClientError> {
        let path = format!("/v1/operations/{id}", id = seg(id));
        self.call(Method::GET, &path, None).await
    }

    /// Checks a workspace out onto a node (`host`, or one the service picks).
    pub async fn deploy(&self, id: &str, host: Option<&str>) -> Result<Workspace, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/deploy", id = seg(id)),
            Some(serde_json::json!({ "host": host })),
        )
        .await
    }

    /// A lifecycle action without arguments: `undeploy`, `start`, `stop`, `pause`, `unpause`.
    pub async fn action(&self, id: &str, verb: vws_model::Verb) -> Result<Workspace, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/{}", verb.as_str(), id = seg(id)),
            None,
        )
        .await
    }

    /// Staging progress of a deploy in flight: `{done, total, moved}`.
    pub async fn staging(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/workspaces/{id}/staging", id = seg(id)),
            None,
        )
        .await
    }

    /// The console as a stream of bytes; with `follow`, until the guest shuts down.
    pub async fn console(&self, id: &str, follow: bool) -> Result<reqwest::Response, ClientError> {
        let url = self.url(&format!("/v1/workspaces/{id}/console", id = seg(id)));
        self.send(self.http.get(&url).query(&[("follow", follow)]), &url)
            .await
    }

    /// Events after `after` (none: from now on) as they come; with
    /// `follow` false, only those there already. Returns once the service
    /// answered, so that nothing that happens after the call is missed; a
    /// dropped connection is resumed from the last event seen.
    pub async fn events(
        &self,
        after: Option<i64>,
        follow: bool,
    ) -> Result<impl futures::Stream<Item = Result<Event, ClientError>> + '_, ClientError> {
        use futures::StreamExt;
        let url = self.url("/v1/events");
        let first = self.event_stream(&url, after, follow).await?;
        Ok(futures::stream::unfold(
            (after, Some(first), false),
            move |(mut after, mut stream, mut done)| {
                let url = url.clone();
                async move {
                    loop {
                        if done {
                            return None;
                        }
                        let Some(s) = stream.as_mut() else {
                            match self.event_stream(&url, after, follow).await {
                                Ok(s) => stream = Some(s),
                                Err(e) => return Some((Err(e), (after, None, true))),
                            }
                            continue;
                        };
                        match s.next().await {
                            // Where the stream starts (its id), no event.
                            Some(Ok(ev)) if ev.event == "ready" => {
                                if let Ok(seq) = ev.id.parse() {
                                    after = Some(seq);
                                }
                            }
                            Some(Ok(ev)) => match serde_json::from_str::<Event>(&ev.data) {
                                Ok(e) => {
                                    after = Some(e.seq);
                                    return Some((Ok(e), (after, stream, false)));
                                }
                                Err(e) => {
                                    let bad = ClientError::Api {
                                        status: reqwest::StatusCode::BAD_GATEWAY,
                                        code: "bad_event".into(),
                                        message: format!(
                                            "an event the service sent is not one: {e}"
                                        ),
                                        details: vec![],
                                    };
                                    return Some((Err(bad), (after, None, true)));
                                }
                            },
                            // Ended: done unless following, when the
                            // connection is made again from the last seen.
                            None if !follow => done = true,
                            None | Some(Err(_)) => {
                                stream = None;
                                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            }
                        }
                    }
                }
            },
        ))
    }

    async fn event_stream(
        &self,
        url: &str,
        after: Option<i64>,
        follow: bool,
    ) -> Result<EventSource, ClientError> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;
        let mut req = self.http.get(url).query(&[("follow", follow)]);
        if let Some(a) = after {
            req = req.query(&[("after", a)]);
        }
        Ok(self
            .send(req, url)
            .await?
            .bytes_stream()
            .eventsource()
            .boxed())
    }

    /// A one-time secret that signs a browser in to the dashboard as this
    /// client, and when it expires.
    pub async fn sign_in_link(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, "/v1/ui/links", None).await
    }

    /// A new access key for SigV4-signed requests (the EC2 front-end),
    /// acting as this client or, for an administrator, as `identity`; the
    /// answer holds the secret, shown this once.
    pub async fn create_access_key(
        &self,
        identity: Option<&vws_model::Identity>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = identity.map(|i| serde_json::json!({ "identity": i }));
        self.call(Method::POST, "/v1/keys", body).await
    }

    /// This client's access keys (everyone's for an administrator).
    pub async fn access_keys(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call(Method::GET, "/v1/keys", None).await
    }

    /// Asks for capacity (docs/agreements.md): the offer, or a refusal
    /// (409 `no_capacity`, its message naming the earliest start that fits).
    pub async fn offer_agreement(
        &self,
        req: &vws_model::agreement::AgreementRequest,
    ) -> Result<Agreement, ClientError> {
        let body = serde_json::to_value(req).expect("requests serialize");
        self.call(Method::POST, "/v1/agreements", Some(body)).await
    }

    /// This client's agreements (everyone's for an administrator).
    pub async fn agreements(&self) -> Result<Vec<Agreement>, ClientError> {
        self.call(Method::GET, "/v1/agreements", None).await
    }

    /// One agreement, with its history.
    pub async fn agreement(&self, id: &str) -> Result<Agreement, ClientError> {
        let path = format!("/v1/agreements/{id}", id = seg(id));
        self.call(Method::GET, &path, None).await
    }

    /// `accept` or `cancel` an agreement.
    pub async fn agreement_action(&self, id: &str, action: &str) -> Result<Agreement, ClientError> {
        let path = format!("/v1/agreements/{id}/{action}", id = seg(id));
        self.call(Method::POST, &path, None).await
    }

    /// A new offer against an agreement.
    pub async fn renegotiate(
        &self,
        id: &str,
        change: &vws_model::agreement::Renegotiation,
    ) -> Result<Agreement, ClientError> {
        let path = format!("/v1/agreements/{id}/offers", id = seg(id));
        let body = serde_json::to_value(change).expect("changes serialize");
        self.call(Method::POST, &path, Some(body)).await
    }

    /// Revokes an access key.
    pub async fn revoke_access_key(&self, id: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/keys/{id}", id = seg(id)));
        self.send(self.http.delete(&url), &url).await.map(drop)
    }

    /// The nodes.
    pub async fn nodes(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call(Method::GET, "/v1/nodes", None).await
    }

    /// Networks with their pools' use.
    pub async fn networks(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        self.call(Method::GET, "/v1/networks", None).await
    }

    /// One network (with its addresses, for administrators).
    pub async fn network(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/networks/{name}", name = seg(name)),
            None,
        )
        .await
    }

    /// Starts a job; `request` is `{argv, env?, cwd?, stdin? (base64), timeout?}`.
    pub async fn submit_job(
        &self,
        id: &str,
        request: serde_json::Value,
    ) -> Result<JobRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/jobs", id = seg(id)),
            Some(request),
        )
        .await
    }

    /// One job.
    pub async fn job(&self, job: &str) -> Result<JobRecord, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/jobs/{job}", job = seg(job)),
            None,
        )
        .await
    }

    /// A workspace's jobs.
    pub async fn jobs(&self, id: &str) -> Result<Vec<JobRecord>, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/workspaces/{id}/jobs", id = seg(id)),
            None,
        )
        .await
    }

    /// Cancels a job.
    pub async fn cancel_job(&self, job: &str) -> Result<JobRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/jobs/{job}/cancel", job = seg(job)),
            None,
        )
        .await
    }

    /// A job's events as an NDJSON byte stream.
    pub async fn job_output(
        &self,
        job: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let url = self.url(&format!("/v1/jobs/{job}/output", job = seg(job)));
        self.send(self.http.get(&url).query(&[("follow", follow)]), &url)
            .await
    }

    /// Writes a file into a running workspace.
    pub async fn put_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/workspaces/{id}/files", id = seg(id)));
        self.send(
            self.http.put(&url).query(&[("path", path)]).body(data),
            &url,
        )
        .await
        .map(drop)
    }

    /// Reads a file from a running workspace.
    pub async fn get_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("/v1/workspaces/{id}/files", id = seg(id)));
        let resp = self
            .send(self.http.get(&url).query(&[("path", path)]), &url)
            .await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport { url, source })?
            .to_vec())
    }

    /// Adds a signature (base64) over an image's content id, made with the
    /// key of `cert_pem`.
    pub async fn sign_image(
        &self,
        reference: &str,
        cert_pem: &str,
        signature: &str,
    ) -> Result<ImageRecord, ClientError> {
        self.call(
            Method::POST,
            &format!(
                "/v1/images/{reference}/signature",
                reference = seg(reference)
            ),
            Some(serde_json::json!({ "certificate": cert_pem, "signature": signature })),
        )
        .await
    }

    /// Live-migrates a workspace to node `to`; returns once it runs there.
    pub async fn migrate(&self, id: &str, to: &str) -> Result<Workspace, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/migrate", id = seg(id)),
            Some(serde_json::json!({ "to": to })),
        )
        .await
    }

    /// Progress of a migration in flight.
    pub async fn migration(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/v1/workspaces/{id}/migration", id = seg(id)),
            None,
        )
        .await
    }

    /// Saves a paused workspace as a hot image `name:tag`.
    pub async fn snapshot(&self, id: &str, as_: &str) -> Result<ImageRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/v1/workspaces/{id}/snapshot", id = seg(id)),
            Some(serde_json::json!({ "as": as_ })),
        )
        .await
    }
}

/// A server-sent event stream.
type EventSource = futures::stream::BoxStream<
    'static,
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
>;

/// An event of the service's log.
pub use vws_model::records::Event;

/// One path segment, percent-encoded so that an id or reference from the
/// command line stays one segment of its route: `/`, `%`, `?`, `#` and
/// every byte outside the unreserved set are encoded, and so are dots, so
/// that `..` cannot climb to another route (clients normalize `..` before
/// sending). The service decodes it back.
pub fn seg(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~')
        .remove(b':');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_cannot_climb() {
        assert_eq!(super::seg("../nodes"), "%2E%2E%2Fnodes");
        assert_eq!(super::seg("minimal:1"), "minimal:1");
        assert_eq!(super::seg("sha256:ab12"), "sha256:ab12");
        assert_eq!(super::seg("a b?#%"), "a%20b%3F%23%25");
    }
}
