//! The node's copy of the revocation list. A node has no CA key and no view
//! of the CA's deny list, so it fetches the CRL the service signs
//! (`GET /v1/pki/crl`), checks the CA's signature, and serves by it: its
//! API refuses revoked certificates, and QEMU's TLS endpoints (migration,
//! NBD) read it as `ca-crl.pem`. The last good list is kept on disk, so a
//! node restarted while the service is away still refuses what was revoked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vws_pki::Revoked;

/// The node's revocation list and where it keeps it.
#[derive(Clone)]
pub struct Revocation {
    list: Revoked,
    ca_pem: String,
    /// The last CRL that verified (node home).
    saved: PathBuf,
    /// QEMU's credentials folder: `ca-crl.pem` goes there.
    tls_dir: PathBuf,
}

impl Revocation {
    /// Loads the last saved CRL, if it still verifies.
    pub fn load(ca_pem: &str, home: &Path, tls_dir: &Path) -> Revocation {
        let r = Revocation {
            list: Revoked::in_memory(),
            ca_pem: ca_pem.to_string(),
            saved: home.join("crl.pem"),
            tls_dir: tls_dir.to_path_buf(),
        };
        if let Ok(pem) = std::fs::read_to_string(&r.saved) {
            match vws_pki::crl_serials(&r.ca_pem, &pem) {
                Ok(serials) => r.list.replace(serials),
                Err(e) => tracing::warn!(error = %e, "the saved revocation list is not usable"),
            }
        }
        r
    }

    /// The list the node's API checks.
    pub fn list(&self) -> Revoked {
        self.list.clone()
    }

    /// Fetches the service's CRL, checks it, and takes it; returns the
    /// number of revoked serials.
    pub async fn refresh(&self, http: &reqwest::Client, service: &str) -> anyhow::Result<usize> {
        let pem = http
            .get(format!("{service}/v1/pki/crl"))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let serials: HashSet<String> = vws_pki::crl_serials(&self.ca_pem, &pem)?;
        let n = serials.len();
        if serials != self.list.serials() || !self.saved.exists() {
            write_atomically(&self.saved, &pem)?;
            write_atomically(&self.tls_dir.join("ca-crl.pem"), &pem)?;
            if n > 0 {
                tracing::info!(revoked = n, "revocation list updated");
            }
        }
        self.list.replace(serials);
        Ok(n)
    }

    /// Refreshes every `every` until `shutdown`.
    pub async fn keep_fresh(
        self,
        http: reqwest::Client,
        service: crate::service_urls::ServiceUrls,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(every);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Err(e) = self.refresh(&http, &service.current()).await {
                        tracing::debug!(error = %e, "revocation list not refreshed");
                    }
                }
            }
        }
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
