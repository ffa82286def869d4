//! The OCI distribution protocol (through `oci-client`): an image's
//! manifest (an index picks linux/amd64) and config, and its layers as
//! byte streams. Anonymous, basic and bearer-token access (the token
//! dance is the library's); TLS with the system's roots plus a given CA;
//! plain HTTP only for a loopback registry or when asked.

use oci_client::client::{ClientConfig, ClientProtocol, SizedStream};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

/// Who the registry is told we are.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name (basic, or exchanged for a token at the registry's realm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Its password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A bearer token given as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Credentials {
    fn auth(&self) -> RegistryAuth {
        match (&self.token, &self.username, &self.password) {
            (Some(t), _, _) => RegistryAuth::Bearer(t.clone()),
            (None, Some(u), p) => RegistryAuth::Basic(u.clone(), p.clone().unwrap_or_default()),
            _ => RegistryAuth::Anonymous,
        }
    }
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Speak plain HTTP to every registry (otherwise only to loopback ones).
    pub plain_http: bool,
    /// Another CA to trust (PEM), beside the system's roots.
    pub ca_pem: Option<String>,
}

/// A layer as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Its media type (tar, tar+gzip, …).
    pub media_type: String,
}

/// An image resolved at a registry.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What was asked for (a registry reference, or where an imported
    /// image came from).
    pub reference: String,
    /// The image manifest's digest (the platform's, under an index).
    pub manifest_digest: String,
    /// The config blob's digest.
    pub config_digest: String,
    /// The config, parsed.
    pub config: oci_spec::image::ImageConfiguration,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

/// What a registry call failed with, for people.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {message}")]
pub struct RegistryError {
    /// The registry.
    pub registry: String,
    /// What it said or what went wrong.
    pub message: String,
    /// Whether it refused our credentials (or wanted some).
    pub unauthorized: bool,
}

/// A client of one image's registry.
pub struct Registry {
    client: oci_client::Client,
    auth: RegistryAuth,
    reference: Reference,
}

/// Whether a registry host (`host[:port]`) is this machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(registry)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Registry {
    /// A client for `reference`'s registry.
    pub fn new(
        reference: &str,
        credentials: &Credentials,
        c: &Connection,
    ) -> Result<Registry, RegistryError> {
        let reference: Reference = reference.parse().map_err(|e| RegistryError {
            registry: "-".into(),
            message: format!("{reference:?} is not an image reference: {e}"),
            unauthorized: false,
        })?;
        let registry = reference.resolve_registry().to_string();
        let protocol = if c.plain_http {
            ClientProtocol::Http
        } else if is_loopback(&registry) {
            ClientProtocol::HttpsExcept(vec![registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = match &c.ca_pem {
            Some(pem) => vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            }],
            None => Vec::new(),
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        Ok(Registry {
            client: oci_client::Client::new(config),
            auth: credentials.auth(),
            reference,
        })
    }

    fn error(&self, e: oci_client::errors::OciDistributionError) -> RegistryError {
        use oci_client::errors::OciDistributionError as E;
        let unauthorized = matches!(
            &e,
            E::AuthenticationFailure(_) | E::UnauthorizedError { .. }
        ) || matches!(
            &e,
            E::ServerError {
                code: 401 | 403,
                ..
            }
        ) || e.to_string().contains("401");
        RegistryError {
            registry: self.reference.resolve_registry().to_string(),
            message: if unauthorized {
                format!("access refused ({e}): check the credentials in the registries file")
            } else {
                e.to_string()
            },
            unauthorized,
        }
    }

    /// The image's manifest (linux/amd64 under an index), config and layers.
    pub async fn resolve(&self) -> Result<Resolved, RegistryError> {
        let (manifest, digest, config) = self
            .client
            .pull_manifest_and_config(&self.reference, &self.auth)
            .await
            .map_err(|e| self.error(e))?;
        let config_parsed: oci_spec::image::ImageConfiguration = serde_json::from_str(&config)
            .map_err(|e| RegistryError {
                registry: self.reference.resolve_registry().to_string(),
                message: format!("the image config is not an OCI image config: {e}"),
                unauthorized: false,
            })?;
        Ok(Resolved {
            reference: self.reference.whole(),
            manifest_digest: digest,
            config_digest: manifest.config.digest.clone(),
            config: config_parsed,
            layers: manifest
                .layers
                .iter()
                .map(|l| Layer {
                    digest: l.digest.clone(),
                    size: l.size.max(0) as u64,
                    media_type: l.media_type.clone(),
                })
                .collect(),
        })
    }

    /// Pushes an image: its layers (each with its bytes), the config, and
    /// a manifest naming them; the manifest's
    /// digest (what a pull of the reference then finds).
    pub async fn push(
        &self,
        layers: &[(Layer, Vec<u8>)],
        config: &[u8],
    ) -> Result<String, RegistryError> {
        use sha2::Digest as _;
        let digest_of = |b: &[u8]| format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)));
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        if self.auth != RegistryAuth::Anonymous {
            self.client
                .auth(
                    &self.reference,
                    &self.auth,
                    oci_client::RegistryOperation::Push,
                )
                .await
                .map_err(|e| self.error(e))?;
        }
        let config_digest = digest_of(config);
        let mut blobs: Vec<(&str, &[u8])> = layers
            .iter()
            .map(|(l, data)| (l.digest.as_str(), data.as_slice()))
            .collect();
        blobs.push((config_digest.as_str(), config));
        // The registry keeps one copy of a blob it has; this client's
        // version cannot ask first, so each is sent.
        for (digest, data) in blobs {
            self.client
                .push_blob(&self.reference, data, digest)
                .await
                .map_err(|e| self.error(e))?;
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": layers.iter().map(|(l, _)| serde_json::json!({
                "mediaType": l.media_type,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let body = serde_json::to_vec(&manifest).expect("manifests serialize");
        let digest = digest_of(&body);
        self.client
            .push_manifest_raw(
                &self.reference,
                body,
                "application/vnd.oci.image.manifest.v1+json"
                    .parse()
                    .expect("a valid header value"),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(digest)
    }

    /// A layer's bytes, as they come (the caller checks the digest).
    pub async fn layer(&self, layer: &Layer) -> Result<SizedStream, RegistryError> {
        let d = OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            ..Default::default()
        };
        self.client
            .pull_blob_stream(&self.reference, &d)
            .await
            .map_err(|e| self.error(e))
    }
}
