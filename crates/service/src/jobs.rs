//! Jobs in workspaces (paper §3.1, the job manager's role): submitted to the
//! workspace's node, run by the guest agent, recorded in the repository.

use serde::Deserialize;
use vws_model::node::{JobReport, JobRequest};
use vws_model::records::JobState;
use vws_model::{Identity, State};
use vws_store::JobRecord;

use crate::core::Service;
use crate::error::ServiceError;

/// A job as a client submits it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Standard input (base64).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds before it is killed.
    #[serde(default)]
    pub timeout: Option<u64>,
}

impl Service {
    /// Starts a job in a running workspace.
    pub(crate) async fn submit_job(
        &self,
        who: &Identity,
        id: &str,
        s: Submit,
    ) -> Result<JobRecord, ServiceError> {
        let job = self.new_job(who, id, &s, JobState::Running).await?;
        self.store.insert_job(&job).await?;
        self.dispatch(job, s).await
    }

    /// Checks a submission and makes its record.
    async fn new_job(
        &self,
        who: &Identity,
        id: &str,
        s: &Submit,
        state: JobState,
    ) -> Result<JobRecord, ServiceError> {
        let r = self.visible(who, id).await?;
        if r.state != State::Running {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is {}; jobs run in running workspaces",
                r.state
            )));
        }
        self.settled(&r).await?;
        if s.argv.is_empty() || s.argv.len() > 4096 || s.argv.iter().any(|a| a.contains('\0')) {
            return Err(ServiceError::BadRequest(
                "argv must hold 1 to 4096 arguments without NUL".into(),
            ));
        }
        Ok(JobRecord {
            id: format!("job-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            workspace_id: r.id.clone(),
            owner: who.dn.clone(),
            node: r.node.clone().unwrap_or_default(),
            argv: s.argv.clone(),
            state,
            exit_code: None,
            signal: None,
            timed_out: false,
            message: None,
            cancelled: false,
            output_bytes: 0,
            created_at: self.clock.now(),
            ended_at: None,
        })
    }

    /// Hands a recorded job to its node; a refusal fails the job.
    async fn dispatch(&self, mut job: JobRecord, s: Submit) -> Result<JobRecord, ServiceError> {
        let result = async {
            let (s, user) = self.with_image_defaults(&job.workspace_id, s).await?;
            let node = self.live_node(&job.node).await?;
            let req = JobRequest {
                job: job.id.clone(),
                argv: s.argv,
                env: s.env,
                cwd: s.cwd,
                stdin: s.stdin,
                timeout: s.timeout,
                user,
            };
            self.nodes.run_job(&node, &job.workspace_id, &req).await
        }
        .await;
        if let Err(e) = result {
            job.state = JobState::Failed;
            job.message = Some(e.to_string());
            job.ended_at = Some(self.clock.now());
            self.store.update_job(&job).await?;
            return Err(e);
        }
        if job.state != JobState::Running {
            job.state = JobState::Running;
            self.store.update_job(&job).await?;
        }
        tracing::info!(job = %job.id, workspace = %job.workspace_id, "job started");
        Ok(job)
    }

    /// A job in a workspace made from an OCI image runs with the image's
    /// `Env` (the job's own variables win), in its `WorkingDir` unless the
    /// job names a folder, and, in a VM, as its `User` (a dynamic
    /// account's jobs run as its leased uid, which stands for that user).
    async fn with_image_defaults(
        &self,
        id: &str,
        mut s: Submit,
    ) -> Result<(Submit, Option<String>), ServiceError> {
        let Some(r) = self.store.workspace(id).await? else {
            return Ok((s, None));
        };
        let image = self
            .store
            .image(&vws_model::ImageRef::Digest(r.image_id.clone()))
            .await?;
        let Some(oci) = image.and_then(|i| i.manifest.oci) else {
            return Ok((s, None));
        };
        let mut env: Vec<(String, String)> = oci
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| !s.env.iter().any(|(mine, _)| mine == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.append(&mut s.env);
        s.env = env;
        if s.cwd.is_none() {
            s.cwd = oci.working_dir;
        }
        let account = r.description.category == vws_model::Category::DynamicAccount;
        let user = oci.user.filter(|_| !account);
        Ok((s, user))
    }

    /// Runs a list of jobs in one workspace (the paper's "mapping groups of
    /// jobs to one workspace"), at most `concurrency` at a time. Every job is
    /// recorded at once as `queued`; the batch then feeds them to the node.
    pub(crate) async fn submit_batch(
        self: &std::sync::Arc<Self>,
        who: &Identity,
        id: &str,
        jobs: Vec<Submit>,
        concurrency: usize,
    ) -> Result<Vec<JobRecord>, ServiceError> {
        if jobs.is_empty() || jobs.len() > 10_000 {
            return Err(ServiceError::BadRequest(
                "a batch holds 1 to 10000 jobs".into(),
            ));
        }
        if concurrency == 0 {
            return Err(ServiceError::BadRequest(
                "concurrency must be at least 1".into(),
            ));
        }
        let mut queued = Vec::with_capacity(jobs.len());
        for s in &jobs {
            let job = self.new_job(who, id, s, JobState::Queued).await?;
            queued.push(job);
        }
        for job in &queued {
            self.store.insert_job(job).await?;
        }
        let me = self.clone();
        let work: Vec<(JobRecord, Submit)> = queued.iter().cloned().zip(jobs).collect();
        // More at once than there are jobs means all at once (and a
        // semaphore holds at most usize::MAX >> 3 permits).
        let concurrency = concurrency.min(work.len().max(1));
        tokio::spawn(async move {
            let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
            for (job, s) in work {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let id = job.id.clone();
                    if me.dispatch(job, s).await.is_ok() {
                        // Hold the slot until the job ends.
                        while let Ok(Some(j)) = me.store.job(&id).await {
                            if j.state != JobState::Running {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                    drop(permit);
                });
            }
        });
        Ok(queued)
    }

    /// One job the caller may see.
    pub(crate) async fn job(&self, who: &Identity, job: &str) -> Result<JobRecord, ServiceError> {
        match self.store.job(job).await? {
            Some(j) if j.owner == who.dn || who.is_admin() => Ok(j),
            _ => Err(ServiceError::NotFound(format!("job {job} not found"))),
        }
    }

    /// A workspace's jobs.
    pub(crate) async fn jobs(
        &self,
        who: &Identity,
        id: &str,
    ) -> Result<Vec<JobRecord>, ServiceError> {
        self.visible(who, id).await?;
        Ok(self.store.jobs_of(id).await?)
    }

    /// Cancels a running job.
    pub(crate) async fn cancel_job(
        &self,
        who: &Identity,
        job: &str,
    ) -> Result<JobRecord, ServiceError> {
        let mut j = self.job(who, job).await?;
        if j.state != JobState::Running {
            return Err(ServiceError::Conflict(format!("job {job} is {}", j.state)));
        }
        j.cancelled = true;
        self.store.update_job(&j).await?;
        let node = self.live_node(&j.node).await?;
        self.nodes.cancel_job(&node, job).await?;
        Ok(j)
    }

    /// The job's output events (NDJSON) from the start, following if asked.
    pub(crate) async fn job_output(
        &self,
        who: &Identity,
        job: &str,
        follow: bool,
    ) -> Result<reqwest::Response, ServiceError> {
        let j = self.job(who, job).await?;
        let node = self.live_node(&j.node).await?;
        self.nodes.job_output(&node, job, follow).await
    }

    /// A node reports that a job ended.
    pub async fn job_ended(
        &self,
        node: &str,
        job: &str,
        rep: JobReport,
    ) -> Result<(), ServiceError> {
        let Some(mut j) = self.store.job(job).await? else {
            return Ok(());
        };
        if j.node != node || j.state != JobState::Running {
            return Ok(());
        }
        j.state = match (rep.outcome.as_str(), j.cancelled) {
            ("exited", true) => JobState::Cancelled,
            ("exited", false) => JobState::Exited,
            _ => JobState::Failed,
        };
        j.exit_code = rep.code;
        j.signal = rep.signal;
        j.timed_out = rep.timed_out;
        j.message = rep.message;
        j.output_bytes = rep.output_bytes;
        j.ended_at = Some(self.clock.now());
        self.store.update_job(&j).await?;
        Ok(())
    }

    /// Copies a file into a running workspace.
    pub(crate) async fn put_file(
        &self,
        who: &Identity,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let (node, path) = self.file_target(who, id, path).await?;
        self.nodes
            .put_file(&node, id, &path, data)
            .await
            .map_err(|e| {
                in_guest(e, |m| {
                    ServiceError::BadRequest(format!("writing {path} in {id}: {m}"))
                })
            })
    }

    /// Copies a file out of a running workspace.
    pub(crate) async fn get_file(
        &self,
        who: &Identity,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let (node, path) = self.file_target(who, id, path).await?;
        self.nodes.get_file(&node, id, &path).await.map_err(|e| {
            in_guest(e, |m| {
                ServiceError::NotFound(format!("reading {path} in {id}: {m}"))
            })
        })
    }

    async fn file_target(
        &self,
        who: &Identity,
        id: &str,
        path: &str,
    ) -> Result<(vws_store::NodeRecord, String), ServiceError> {
        // The request is checked before the state: a bad path is bad whatever
        // the workspace is doing.
        if !path.starts_with('/') || path.contains('\0') || path.len() > 4096 {
            return Err(ServiceError::BadRequest(format!(
                "{path:?} is not an absolute path in the workspace"
            )));
        }
        let r = self.visible(who, id).await?;
        if r.state != State::Running {
            return Err(ServiceError::Conflict(format!(
                "workspace {id} is {}; files move in and out of running workspaces",
                r.state
            )));
        }
        Ok((self.node_of(&r).await?, normalized(path)))
    }
}

/// An absolute path with `.`, `..` and repeated slashes resolved as the
/// guest would (never above `/`), so that the path a copy names is the one
/// it reaches: `/tmp/../etc/x` is `/etc/x`.
fn normalized(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// A file copy the guest refused (no such file, no room, …) is the
/// client's problem, as `as_client` says; one the workspace's own
/// permissions refused is 403; a node that cannot be reached stays a bad
/// gateway.
fn in_guest(e: ServiceError, as_client: impl FnOnce(&str) -> ServiceError) -> ServiceError {
    match &e {
        ServiceError::Node { code, message, .. } if code != "node_unreachable" => {
            if message.to_ascii_lowercase().contains("permission denied") {
                ServiceError::Forbidden(format!("the workspace's permissions refuse it: {message}"))
            } else {
                as_client(message)
            }
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(code: &str, message: &str) -> ServiceError {
        ServiceError::Node {
            node: "n1".into(),
            status: axum::http::StatusCode::BAD_GATEWAY,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn a_guests_refusal_is_the_clients_and_its_permissions_are_403() {
        let not_found = |m: &str| ServiceError::NotFound(m.into());
        let e = in_guest(
            node("node_error", "cat: /x: No such file or directory"),
            not_found,
        );
        assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
        let e = in_guest(
            node("node_error", "sh: can't create /etc/x: Permission denied"),
            not_found,
        );
        assert_eq!(e.status_and_code().0.as_u16(), 403, "{e:?}");
        let e = in_guest(node("node_unreachable", "cannot reach node n1"), not_found);
        assert_eq!(e.status_and_code().0.as_u16(), 502, "{e:?}");
    }

    #[test]
    fn paths_are_resolved_as_the_guest_would() {
        for (given, want) in [
            ("/tmp/../etc/x", "/etc/x"),
            ("/../../etc//passwd", "/etc/passwd"),
            ("/a/./b/", "/a/b"),
            ("/", "/"),
        ] {
            assert_eq!(normalized(given), want, "{given}");
        }
    }
}
