//! The certificate authority that comes with vws (paper §3.2: clients and
//! workspaces authenticate mutually with X.509; authorization looks at the
//! distinguished name and VOMS-style attributes).
//!
//! - A certificate's identity is its subject DN in the slash form
//!   (`/O=Grid/OU=bio/CN=Alice`) plus attributes carried in a private,
//!   non-critical extension ([`EXTENSION_OID`]) as a UTF8String holding JSON
//!   `{"kind": "client"|"node"|"service"|"workspace", "attributes": [[k, v]…]}`.
//!   The kind keeps roles apart: a node certificate cannot act as a client,
//!   nor a client as a node.
//! - Client certificates are for TLS client authentication only; node,
//!   service and workspace certificates for both ends.
//! - Revocation is a deny list of serial numbers beside the CA (`revoked`),
//!   read again whenever it changes; expiry is checked by rustls.
//!
//! One crypto provider for the whole build: ring.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use vws_model::Identity;

pub mod home;
pub mod serve;

/// OID of the vws attributes extension (a private arc).
pub const EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 59051, 1, 1];

/// What a certificate may be used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A user or program calling the API.
    Client,
    /// A VW Manager (node).
    Node,
    /// The workspace service.
    Service,
    /// A workspace's own credential (paper §3.2).
    Workspace,
}

impl Kind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Workspace => "workspace",
        }
    }
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A distinguished name that cannot be used.
    #[error("bad distinguished name {dn:?}: {reason}")]
    BadDn {
        /// The DN given.
        dn: String,
        /// Why.
        reason: String,
    },
    /// A certificate or key that cannot be read.
    #[error("{0}")]
    Bad(String),
    /// No CA where one was expected.
    #[error("no certificate authority in {0} (run `vws ca init`)")]
    NoCa(PathBuf),
    /// A CA already exists.
    #[error("a certificate authority already exists in {0}")]
    CaExists(PathBuf),
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// rcgen refused.
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// DN component names accepted in the slash form, and their rcgen types.
fn dn_type(key: &str) -> Option<DnType> {
    Some(match key {
        "CN" => DnType::CommonName,
        "O" => DnType::OrganizationName,
        "OU" => DnType::OrganizationalUnitName,
        "C" => DnType::CountryName,
        "L" => DnType::LocalityName,
        "ST" => DnType::StateOrProvinceName,
        "DC" => DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
        _ => return None,
    })
}

/// Splits `/O=Grid/OU=bio/CN=Alice` into its components, in order.
pub fn parse_dn(dn: &str) -> Result<Vec<(String, String)>, PkiError> {
    let bad = |reason: &str| PkiError::BadDn {
        dn: dn.into(),
        reason: reason.into(),
    };
    let rest = dn
        .strip_prefix('/')
        .ok_or_else(|| bad("it must start with '/', e.g. /O=Grid/OU=bio/CN=Alice"))?;
    let mut out = Vec::new();
    for part in rest.split('/') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(&format!("component {part:?} is not KEY=VALUE")))?;
        if dn_type(k).is_none() {
            return Err(bad(&format!(
                "unknown component {k:?} (use CN, O, OU, C, L, ST, DC)"
            )));
        }
        if v.is_empty() || v.chars().count() > 64 || v.chars().any(|c| c.is_control()) {
            return Err(bad(&format!(
                "value of {k} must be 1 to 64 printable characters"
            )));
        }
        out.push((k.to_string(), v.to_string()));
    }
    if !out.iter().any(|(k, _)| k == "CN") {
        return Err(bad("it needs a CN"));
    }
    Ok(out)
}

#[derive(Serialize, Deserialize)]
struct Extension {
    kind: Kind,
    #[serde(default)]
    attributes: Vec<(String, String)>,
}

/// DER UTF8String of `s`.
fn der_utf8(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![0x0c];
    match b.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n <= 0xff => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(b);
    out
}

fn from_der_utf8(b: &[u8]) -> Option<&str> {
    let (&tag, rest) = b.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = match l {
        n if n < 0x80 => (n as usize, rest),
        0x81 => (*rest.first()? as usize, &rest[1..]),
        0x82 if rest.len() >= 2 => (((rest[0] as usize) << 8) | rest[1] as usize, &rest[2..]),
        _ => return None,
    };
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// What to issue.
#[derive(Clone, Debug)]
pub struct Request {
    /// Subject DN, slash form.
    pub dn: String,
    /// Attributes (VOMS-like), e.g. `("role", "admin")`.
    pub attributes: Vec<(String, String)>,
    /// Use.
    pub kind: Kind,
    /// Host names and addresses for the subject alternative names (servers).
    pub hosts: Vec<String>,
    /// Days of validity from now (0: expires at once).
    pub days: u32,
}

/// An issued certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    /// Certificate.
    pub cert_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
    /// Serial number, hex.
    pub serial: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Issued")
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Writes `cert.pem`, `key.pem` (mode 0600) and `ca.pem` into `dir`.
    pub fn write(&self, dir: &Path, ca_pem: &str) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        write_private(&dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).map_err(io(dir))?;
        std::fs::write(dir.join("ca.pem"), ca_pem).map_err(io(dir))?;
        Ok(())
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The certificate authority: `ca.pem`, `ca.key` (0600) and `revoked` in a folder.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    // Positive, and 16 bytes long once DER drops leading zero bytes.
    b[0] = (b[0] & 0x7f).max(1);
    SerialNumber::from_slice(&b)
}

/// A serial in the one form every list compares: lower-case hex without
/// leading zero bytes, as DER encodes it (a serial typed with them, or
/// read from an old list, still matches the certificate's).
fn canonical_serial(hex: &str) -> String {
    let s = hex.trim().to_ascii_lowercase();
    let digits = s.trim_start_matches('0');
    match digits.len() {
        0 if s.is_empty() => String::new(),
        0 => "00".into(),
        n if n % 2 == 1 => format!("0{digits}"),
        _ => digits.into(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Ca {
    /// Makes a new CA in `dir`; refuses if one is there.
    pub fn init(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        if dir.join("ca.pem").exists() {
            return Err(PkiError::CaExists(dir.to_path_buf()));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "vws");
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem"), cert.pem()).map_err(io(dir))?;
        Ca::open(dir)
    }

    /// Opens the CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca, PkiError> {
        let cert_path = dir.join("ca.pem");
        if !cert_path.exists() {
            return Err(PkiError::NoCa(dir.to_path_buf()));
        }
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_path = dir.join("ca.key");
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        // Re-made from the stored one: same subject and key, so what it signs
        // chains to the stored certificate.
        let issuer = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
            key,
        })
    }

    /// Opens the CA in `dir`, making one first if there is none; says whether
    /// it was made.
    pub fn open_or_init(dir: &Path) -> Result<(Ca, bool), PkiError> {
        match Ca::open(dir) {
            Ok(ca) => Ok((ca, false)),
            Err(PkiError::NoCa(_)) => Ok((Ca::init(dir, "vws CA")?, true)),
            Err(e) => Err(e),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The deny list of revoked serials.
    pub fn revoked(&self) -> Revoked {
        Revoked::new(self.dir.join("revoked"))
    }

    /// Issues a certificate.
    pub fn issue(&self, req: &Request) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (k, v) in parse_dn(&req.dn)? {
            dn.push(dn_type(&k).expect("checked by parse_dn"), v);
        }
        params.distinguished_name = dn;
        for a in &req.attributes {
            if a.0.is_empty() || a.0.len() > 64 || a.1.len() > 256 {
                return Err(PkiError::Bad(format!(
                    "attribute {}={} is too long or empty",
                    a.0, a.1
                )));
            }
        }
        let ext = serde_json::to_string(&Extension {
            kind: req.kind,
            attributes: req.attributes.clone(),
        })
        .expect("serializes");
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                EXTENSION_OID,
                der_utf8(&ext),
            ));
        for h in &req.hosts {
            params
                .subject_alt_names
                .push(match h.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(h.clone().try_into()?),
                });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match req.kind {
            Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let serial = random_serial();
        let serial_hex = canonical_serial(&hex(serial.as_ref()));
        params.serial_number = Some(serial);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(req.days as i64);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_hex,
        })
    }

    /// Adds a certificate (PEM) or a serial (hex) to the deny list.
    pub fn revoke(&self, what: &str) -> Result<String, PkiError> {
        let serial = if what.contains("BEGIN CERTIFICATE") {
            let der = first_cert_der(what)?;
            peer_of(&der)?.serial
        } else {
            canonical_serial(what)
        };
        if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(PkiError::Bad(format!("{what:?} is not a serial number")));
        }
        use std::io::Write;
        let path = self.dir.join("revoked");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(f, "{serial}").map_err(io(&path))?;
        Ok(serial)
    }
}

/// The DER of the first certificate in a PEM text.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut r = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut r).next();
    first
        .ok_or_else(|| PkiError::Bad("no certificate in the PEM text".into()))?
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Bad(format!("reading a certificate: {e}")))
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// DN and attributes.
    pub identity: Identity,
    /// What the certificate is for.
    pub kind: Kind,
    /// Serial number, hex.
    pub serial: String,
}

/// Reads the identity out of a certificate (DER).
pub fn peer_of(der: &[u8]) -> Result<Peer, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::Bad(format!("parsing a certificate: {e}")))?;
    let registry = x509_parser::objects::oid_registry();
    let mut dn = String::new();
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let key = match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok("domainComponent") => "DC".to_string(),
                Ok(k) => k.to_string(),
                Err(_) => attr.attr_type().to_id_string(),
            };
            let value = attr
                .as_str()
                .map_err(|e| PkiError::Bad(format!("a DN value: {e}")))?;
            dn.push_str(&format!("/{key}={value}"));
        }
    }
    let oid = x509_parser::der_parser::oid::Oid::from(EXTENSION_OID)
        .map_err(|_| PkiError::Bad("extension OID".into()))?;
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .and_then(|e| from_der_utf8(e.value))
        .and_then(|s| serde_json::from_str::<Extension>(s).ok())
        .ok_or_else(|| PkiError::Bad("the certificate has no vws attributes extension".into()))?;
    Ok(Peer {
        identity: Identity {
            dn,
            attributes: ext.attributes,
        },
        kind: ext.kind,
        serial: canonical_serial(&hex(cert.raw_serial())),
    })
}

/// Serials refused although their certificates verify. Kept in a file
/// (the CA's `revoked`, re-read when it changes), or in memory, replaced
/// from a CRL the service signs (nodes, which have no CA key).
#[derive(Clone)]
pub struct Revoked {
    path: Option<PathBuf>,
    cache: Arc<Mutex<(Option<std::time::SystemTime>, HashSet<String>)>>,
}

impl Revoked {
    /// The list kept in `path` (absent: nothing revoked).
    pub fn new(path: PathBuf) -> Self {
        Revoked {
            path: Some(path),
            cache: Arc::default(),
        }
    }

    /// An empty list kept in memory, filled by [`Revoked::replace`].
    pub fn in_memory() -> Self {
        Revoked {
            path: None,
            cache: Arc::default(),
        }
    }

    /// Replaces an in-memory list (serials in hex).
    pub fn replace(&self, serials: HashSet<String>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.1 = serials.iter().map(|s| canonical_serial(s)).collect();
    }

    /// Every revoked serial (hex, lower case).
    pub fn serials(&self) -> HashSet<String> {
        self.refresh();
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.1.clone()
    }

    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != modified {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            cache.1 = text
                .lines()
                .map(canonical_serial)
                .filter(|l| !l.is_empty())
                .collect();
            cache.0 = modified;
        }
    }

    /// Whether `serial` (hex) is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        self.refresh();
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.1.contains(&canonical_serial(serial))
    }
}

/// How long a CRL the CA signs stays valid (the service signs a new one on
/// every request; nodes fetch it every few seconds).
pub const CRL_VALIDITY: time::Duration = time::Duration::days(7);

impl Ca {
    /// A certificate revocation list (PEM, signed by the CA) of every
    /// revoked serial: what nodes and QEMU (`ca-crl.pem`) check against.
    pub fn crl_pem(&self) -> Result<String, PkiError> {
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        let mut serials: Vec<String> = self.revoked().serials().into_iter().collect();
        serials.sort();
        for serial in serials {
            let Ok(bytes) = hex::decode(&serial) else {
                continue;
            };
            revoked_certs.push(rcgen::RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + CRL_VALIDITY,
            crl_number: SerialNumber::from(now.unix_timestamp() as u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer, &self.key)?.pem()?)
    }
}

/// The revoked serials of a CRL (PEM), after checking that `ca_pem`'s key
/// signed it and that it has not expired.
pub fn crl_serials(ca_pem: &str, crl_pem: &str) -> Result<HashSet<String>, PkiError> {
    let ca_der = first_cert_der(ca_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| PkiError::Bad(format!("parsing the CA certificate: {e}")))?;
    let der = rustls_pemfile::read_one(&mut crl_pem.as_bytes())
        .map_err(|e| PkiError::Bad(format!("reading a CRL: {e}")))?;
    let Some(rustls_pemfile::Item::Crl(der)) = der else {
        return Err(PkiError::Bad("the text is not a PEM X509 CRL".into()));
    };
    let (_, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| PkiError::Bad(format!("parsing a CRL: {e}")))?;
    crl.verify_signature(ca.public_key())
        .map_err(|e| PkiError::Bad(format!("the CRL is not signed by the CA: {e}")))?;
    if crl
        .next_update()
        .is_some_and(|t| t.timestamp() < time::OffsetDateTime::now_utc().unix_timestamp())
    {
        return Err(PkiError::Bad("the CRL has expired".into()));
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|r| canonical_serial(&hex(r.raw_serial())))
        .collect())
}

/// A certificate, its key and the CA to trust, as PEM text.
#[derive(Clone)]
pub struct Credentials {
    /// Trusted CA.
    pub ca_pem: String,
    /// Own certificate.
    pub cert_pem: String,
    /// Own private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

impl Credentials {
    /// Reads `cert`, `key` and `ca` files.
    pub fn read(cert: &Path, key: &Path, ca: &Path) -> Result<Credentials, PkiError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(io(p));
        Ok(Credentials {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }

    /// Reads `cert.pem`, `key.pem` and `ca.pem` from a folder.
    pub fn from_dir(dir: &Path) -> Result<Credentials, PkiError> {
        Credentials::read(
            &dir.join("cert.pem"),
            &dir.join("key.pem"),
            &dir.join("ca.pem"),
        )
    }

    /// The identity these credentials carry.
    pub fn peer(&self) -> Result<Peer, PkiError> {
        peer_of(&first_cert_der(&self.cert_pem)?)
    }

    /// An HTTP client builder that presents these credentials and trusts
    /// only the CA (no built-in roots).
    pub fn http_client(&self) -> Result<reqwest::ClientBuilder, PkiError> {
        let identity =
            reqwest::Identity::from_pem(format!("{}\n{}", self.cert_pem, self.key_pem).as_bytes())
                .map_err(|e| PkiError::Bad(format!("client identity: {e}")))?;
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
            .map_err(|e| PkiError::Bad(format!("CA certificate: {e}")))?;
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity))
    }

    /// A TLS server configuration that asks for no client certificate (for
    /// a front-end whose requests authenticate themselves).
    pub fn server_config_without_client_auth(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = self.chain_and_key()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn chain_and_key(
        &self,
    ) -> Result<
        (
            Vec<rustls::pki_types::CertificateDer<'static>>,
            rustls::pki_types::PrivateKeyDer<'static>,
        ),
        PkiError,
    > {
        let mut r = self.cert_pem.as_bytes();
        let chain = rustls_pemfile::certs(&mut r)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::Bad(format!("reading the certificate: {e}")))?;
        let mut r = self.key_pem.as_bytes();
        let key = rustls_pemfile::private_key(&mut r)
            .map_err(|e| PkiError::Bad(format!("reading the key: {e}")))?
            .ok_or_else(|| PkiError::Bad("no private key in the key file".into()))?;
        Ok((chain, key))
    }

    /// A TLS server configuration that requires client certificates chained
    /// to the CA (expired ones fail the handshake).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(first_cert_der(&self.ca_pem)?.into())
            .map_err(PkiError::Tls)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| PkiError::Bad(format!("client verifier: {e}")))?;
        let (chain, key) = self.chain_and_key()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dn: &str, kind: Kind) -> Request {
        Request {
            dn: dn.into(),
            attributes: vec![("vo".into(), "bio".into()), ("role".into(), "admin".into())],
            kind,
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            days: 30,
        }
    }

    #[test]
    fn issued_certificates_carry_dn_attributes_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test CA").unwrap();
        assert!(matches!(
            Ca::init(dir.path(), "again"),
            Err(PkiError::CaExists(_))
        ));
        let issued = ca
            .issue(&req("/O=Grid/OU=bio/CN=Alice", Kind::Client))
            .unwrap();
        let peer = peer_of(&first_cert_der(&issued.cert_pem).unwrap()).unwrap();
        assert_eq!(peer.identity.dn, "/O=Grid/OU=bio/CN=Alice");
        assert!(peer.identity.is_admin() && peer.identity.has("vo", "bio"));
        assert_eq!(peer.kind, Kind::Client);
        assert_eq!(peer.serial, issued.serial);
        // A reopened CA signs certificates that chain to the same root.
        let again = Ca::open(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let node = again
            .issue(&req("/O=vws/OU=nodes/CN=n1", Kind::Node))
            .unwrap();
        assert_eq!(
            peer_of(&first_cert_der(&node.cert_pem).unwrap())
                .unwrap()
                .kind,
            Kind::Node
        );
        let creds = Credentials {
            ca_pem: ca.cert_pem().into(),
            cert_pem: node.cert_pem.clone(),
            key_pem: node.key_pem.clone(),
        };
        creds.server_config().unwrap();
        assert!(
            !format!("{node:?}").contains("PRIVATE"),
            "keys are never printed"
        );
    }

    #[test]
    fn the_crl_lists_what_was_revoked_and_only_the_ca_signs_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(&dir.path().join("ca"), "test").unwrap();
        let a = ca.issue(&req("/CN=a", Kind::Client)).unwrap();
        let b = ca.issue(&req("/CN=b", Kind::Service)).unwrap();
        let empty = ca.crl_pem().unwrap();
        assert!(empty.contains("BEGIN X509 CRL"), "{empty}");
        assert!(crl_serials(ca.cert_pem(), &empty).unwrap().is_empty());
        ca.revoke(&b.cert_pem).unwrap();
        let crl = ca.crl_pem().unwrap();
        let serials = crl_serials(ca.cert_pem(), &crl).unwrap();
        assert!(serials.contains(&b.serial) && !serials.contains(&a.serial));
        // Another CA's list is refused, and so is something that is no CRL.
        let other = Ca::init(&dir.path().join("other"), "other").unwrap();
        assert!(crl_serials(other.cert_pem(), &crl).is_err());
        assert!(crl_serials(ca.cert_pem(), ca.cert_pem()).is_err());
        // An in-memory list takes what the CRL says.
        let list = Revoked::in_memory();
        assert!(!list.contains(&b.serial));
        list.replace(serials);
        assert!(list.contains(&b.serial.to_uppercase()) && !list.contains(&a.serial));
    }

    #[test]
    fn dns_are_checked() {
        assert_eq!(
            parse_dn("/O=Grid/OU=bio/CN=Alice").unwrap(),
            vec![
                ("O".to_string(), "Grid".to_string()),
                ("OU".into(), "bio".into()),
                ("CN".into(), "Alice".into())
            ]
        );
        for bad in [
            "O=Grid/CN=x",
            "/O=Grid",
            "/X=1/CN=a",
            "/CN=",
            "/CN=a\nb",
            "/CN",
        ] {
            assert!(parse_dn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revocation_by_serial_or_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test CA").unwrap();
        let a = ca.issue(&req("/CN=a", Kind::Client)).unwrap();
        let b = ca.issue(&req("/CN=b", Kind::Client)).unwrap();
        let revoked = ca.revoked();
        assert!(!revoked.contains(&a.serial));
        assert_eq!(ca.revoke(&a.cert_pem).unwrap(), a.serial);
        assert!(revoked.contains(&a.serial) && !revoked.contains(&b.serial));
        ca.revoke(&b.serial.to_uppercase()).unwrap();
        assert!(revoked.contains(&b.serial));
        assert!(ca.revoke("not-hex").is_err());
    }

    #[test]
    fn serials_with_leading_zero_bytes_match_their_certificates() {
        assert_eq!(canonical_serial("006BA0f8"), "6ba0f8");
        assert_eq!(canonical_serial("0006ba0f"), "06ba0f");
        assert_eq!(canonical_serial(" 0000 "), "00");
        assert_eq!(canonical_serial(""), "");
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test CA").unwrap();
        let a = ca.issue(&req("/CN=a", Kind::Client)).unwrap();
        // A list written with the zero-padded form still denies the peer.
        ca.revoke(&format!("0000{}", a.serial)).unwrap();
        let der = first_cert_der(&a.cert_pem).unwrap();
        assert!(ca.revoked().contains(&peer_of(&der).unwrap().serial));
    }

    #[test]
    fn der_strings_of_all_lengths() {
        for n in [0, 5, 127, 128, 255, 256, 4000] {
            let s = "x".repeat(n);
            assert_eq!(from_der_utf8(&der_utf8(&s)), Some(s.as_str()));
        }
        assert_eq!(from_der_utf8(&[0x0c, 0x05, b'a']), None);
    }
}

/// What an image signature covers: the image's content id, which commits to
/// every file's digest and the kernel command line.
pub fn image_signing_message(image_id: &str) -> Vec<u8> {
    format!("vws image signature v1\n{image_id}\n").into_bytes()
}

impl Credentials {
    /// Signs `msg` with these credentials' key (ECDSA P-256, SHA-256, ASN.1).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, PkiError> {
        let mut r = self.key_pem.as_bytes();
        let key = rustls_pemfile::private_key(&mut r)
            .map_err(|e| PkiError::Bad(format!("reading the key: {e}")))?
            .ok_or_else(|| PkiError::Bad("no private key".into()))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            key.secret_der(),
            &rng,
        )
        .map_err(|e| PkiError::Bad(format!("the key cannot sign: {e}")))?;
        pair.sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| PkiError::Bad(format!("signing: {e}")))
    }
}

/// Checks that `cert_pem` was issued by the CA and is within its validity,
/// that it is not revoked, and that `signature` over `msg` is its key's;
/// returns whose it is.
pub fn verify_signature(
    ca_pem: &str,
    cert_pem: &str,
    revoked: Option<&Revoked>,
    msg: &[u8],
    signature: &[u8],
) -> Result<Peer, PkiError> {
    let ca_der = first_cert_der(ca_pem)?;
    let der = first_cert_der(cert_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| PkiError::Bad(format!("the CA certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Bad(format!("the signer's certificate: {e}")))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| PkiError::Bad("the signer's certificate was not issued by this CA".into()))?;
    if !cert.validity().is_valid() {
        return Err(PkiError::Bad("the signer's certificate has expired".into()));
    }
    let peer = peer_of(&der)?;
    if revoked.is_some_and(|r| r.contains(&peer.serial)) {
        return Err(PkiError::Bad("the signer's certificate is revoked".into()));
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &cert.public_key().subject_public_key.data,
    )
    .verify(msg, signature)
    .map_err(|_| PkiError::Bad("the signature does not match the image".into()))?;
    Ok(peer)
}

#[cfg(test)]
mod signing_tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_message_and_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::init(dir.path(), "test CA").unwrap();
        let issued = ca
            .issue(&Request {
                dn: "/O=Grid/CN=Signer".into(),
                attributes: vec![],
                kind: Kind::Client,
                hosts: vec![],
                days: 1,
            })
            .unwrap();
        let creds = Credentials {
            ca_pem: ca.cert_pem().into(),
            cert_pem: issued.cert_pem.clone(),
            key_pem: issued.key_pem.clone(),
        };
        let msg = image_signing_message("sha256:abc");
        let sig = creds.sign(&msg).unwrap();
        let peer = verify_signature(ca.cert_pem(), &issued.cert_pem, None, &msg, &sig).unwrap();
        assert_eq!(peer.identity.dn, "/O=Grid/CN=Signer");
        let other = image_signing_message("sha256:abd");
        assert!(verify_signature(ca.cert_pem(), &issued.cert_pem, None, &other, &sig).is_err());
        let dir2 = tempfile::tempdir().unwrap();
        let ca2 = Ca::init(dir2.path(), "other").unwrap();
        assert!(verify_signature(ca2.cert_pem(), &issued.cert_pem, None, &msg, &sig).is_err());
        ca.revoke(&issued.serial).unwrap();
        assert!(verify_signature(
            ca.cert_pem(),
            &issued.cert_pem,
            Some(&ca.revoked()),
            &msg,
            &sig
        )
        .is_err());
    }
}
