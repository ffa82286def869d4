//! AWS Signature Version 4, checked: the canonical request is rebuilt from
//! what arrived (the raw body hashed before anything decodes it), signed
//! with the key derived from the access key's secret, and compared with the
//! request's signature in constant time (`ring::hmac::verify`). The
//! request's time must be within [`MAX_SKEW`] of ours, and its credential
//! scope must name our region and service.

use axum::http::{HeaderMap, Method};
use ring::hmac;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// How far a request's time may be from ours (AWS allows 5 minutes).
pub const MAX_SKEW: time::Duration = time::Duration::minutes(5);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// Why a request's signature was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No Authorization header (and no presigned query).
    #[error(
        "the request is not signed: it needs an Authorization header (AWS Signature Version 4)"
    )]
    Missing,
    /// The header or the date cannot be read.
    #[error("{0}")]
    Malformed(String),
    /// The key is unknown or revoked.
    #[error("the access key {0} is unknown or revoked")]
    UnknownKey(String),
    /// The scope names another region or service.
    #[error("{0}")]
    WrongScope(String),
    /// The request's time is too far from ours.
    #[error("the request's time {at} is more than 5 minutes from the server's ({now})")]
    Expired {
        /// The request's X-Amz-Date.
        at: String,
        /// Ours.
        now: String,
    },
    /// The signature does not match.
    #[error("the request signature we calculated does not match the signature you provided; check your secret access key and signing method")]
    Mismatch,
}

/// What an Authorization header says.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub key_id: String,
    /// The scope's date (YYYYMMDD).
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// Lower-case names of the signed headers, in order.
    pub signed_headers: Vec<String>,
    /// The signature, hex.
    pub signature: String,
}

/// Reads `AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
pub fn parse_authorization(value: &str) -> Result<Authorization, SigError> {
    let bad = |why: &str| SigError::Malformed(format!("Authorization header: {why}"));
    let rest = value
        .strip_prefix(ALGORITHM)
        .ok_or_else(|| bad("the algorithm must be AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE parts"))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(bad(
            "Credential must be KEY/DATE/REGION/SERVICE/aws4_request",
        ));
    };
    let signed_headers: Vec<String> = signed
        .ok_or_else(|| bad("no SignedHeaders"))?
        .split(';')
        .map(str::to_string)
        .collect();
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(bad("SignedHeaders must include host"));
    }
    let signature = signature.ok_or_else(|| bad("no Signature"))?;
    if signature.len() != 64 || hex::decode(signature).is_err() {
        return Err(bad("Signature must be 64 hex digits"));
    }
    Ok(Authorization {
        key_id: key_id.into(),
        date: date.into(),
        region: region.into(),
        service: service.into(),
        signed_headers,
        signature: signature.into(),
    })
}

/// A request as it arrived.
pub struct Request<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its path, as sent (still percent-encoded).
    pub path: &'a str,
    /// Its query string, as sent, if any.
    pub query: Option<&'a str>,
    /// Its headers (`host` included; for HTTP/2, the URI's authority).
    pub headers: &'a HeaderMap,
    /// Its host, from the Host header or the URI's authority.
    pub host: Option<&'a str>,
    /// Its raw body.
    pub body: &'a [u8],
}

/// What may appear unencoded in a canonical URI or query (RFC 3986's
/// unreserved characters).
const ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &[u8]) -> String {
    percent_encoding::percent_encode(s, ENCODE).to_string()
}

fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    // Each segment encoded once more (as every service but S3 signs it).
    path.split('/')
        .map(|seg| encode(seg.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

fn canonical_query(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (encode(k.as_bytes()), encode(v.as_bytes())))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn header_value(req: &Request, name: &str) -> Result<String, SigError> {
    if name == "host" {
        if let Some(h) = req.host {
            return Ok(h.to_string());
        }
    }
    let values: Vec<String> = req
        .headers
        .get_all(name)
        .iter()
        .map(|v| {
            let v = String::from_utf8_lossy(v.as_bytes());
            v.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect();
    if values.is_empty() {
        return Err(SigError::Malformed(format!(
            "the signed header {name} is not in the request"
        )));
    }
    Ok(values.join(","))
}

/// The request's time: X-Amz-Date (`YYYYMMDDTHHMMSSZ`).
pub fn request_time(headers: &HeaderMap) -> Result<(String, OffsetDateTime), SigError> {
    let raw = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SigError::Malformed("the request has no X-Amz-Date header".into()))?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = time::PrimitiveDateTime::parse(raw, format)
        .map_err(|_| SigError::Malformed(format!("X-Amz-Date {raw:?} is not YYYYMMDDTHHMMSSZ")))?
        .assume_utc();
    Ok((raw.to_string(), at))
}

fn sign(key: &[u8], msg: &str) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg.as_bytes())
}

/// The signing key of a secret for a date, region and service.
fn signing_key(secret: &str, auth: &Authorization) -> hmac::Key {
    let k_date = sign(format!("AWS4{secret}").as_bytes(), &auth.date);
    let k_region = sign(k_date.as_ref(), &auth.region);
    let k_service = sign(k_region.as_ref(), &auth.service);
    let k_signing = sign(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

/// What was signed: the string to sign of the request as it arrived.
pub fn string_to_sign(
    req: &Request,
    auth: &Authorization,
    amz_date: &str,
) -> Result<String, SigError> {
    let body_hash = hex::encode(Sha256::digest(req.body));
    // A client that says what it hashed must have hashed this body.
    let payload = match req
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_string(),
        Some(claimed) if claimed != body_hash => {
            return Err(SigError::Malformed(
                "X-Amz-Content-SHA256 is not the body's SHA-256".into(),
            ))
        }
        _ => body_hash,
    };
    let mut headers = String::new();
    for name in &auth.signed_headers {
        headers.push_str(&format!("{name}:{}\n", header_value(req, name)?));
    }
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        canonical_uri(req.path),
        canonical_query(req.query),
        headers,
        auth.signed_headers.join(";"),
        payload
    );
    Ok(format!(
        "{ALGORITHM}\n{amz_date}\n{}/{}/{}/aws4_request\n{}",
        auth.date,
        auth.region,
        auth.service,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    ))
}

/// Checks a request against the secret of the key its header names.
/// `region` and `service` are ours; `now` is the server's time.
pub fn verify(
    req: &Request,
    auth: &Authorization,
    secret: &str,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Result<(), SigError> {
    if auth.region != region || auth.service != service {
        return Err(SigError::WrongScope(format!(
            "the credential's scope is {}/{}, this endpoint's {region}/{service}",
            auth.region, auth.service
        )));
    }
    let (amz_date, at) = request_time(req.headers)?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::Malformed(format!(
            "the credential's date {} is not X-Amz-Date's {amz_date}",
            auth.date
        )));
    }
    if (at - now).abs() > MAX_SKEW {
        let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
        return Err(SigError::Expired {
            at: amz_date,
            now: now.format(fmt).unwrap_or_default(),
        });
    }
    let to_sign = string_to_sign(req, auth, &amz_date)?;
    let given = hex::decode(&auth.signature).map_err(|_| SigError::Mismatch)?;
    hmac::verify(&signing_key(secret, auth), to_sign.as_bytes(), &given)
        .map_err(|_| SigError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published S3 example (GET Object): its Authorization header
    /// and signature, from the documented canonical request.
    #[test]
    fn the_published_example_verifies_and_a_changed_one_does_not() {
        let mut headers = HeaderMap::new();
        headers.insert("host", "examplebucket.s3.amazonaws.com".parse().unwrap());
        headers.insert("range", "bytes=0-9".parse().unwrap());
        headers.insert(
            "x-amz-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap(),
        );
        headers.insert("x-amz-date", "20130524T000000Z".parse().unwrap());
        let auth = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        )
        .unwrap();
        assert_eq!(auth.key_id, "AKIAIOSFODNN7EXAMPLE");
        let method = Method::GET;
        let req = Request {
            method: &method,
            path: "/test.txt",
            query: None,
            headers: &headers,
            host: None,
            body: b"",
        };
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        assert_eq!(
            string_to_sign(&req, &auth, "20130524T000000Z").unwrap(),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let now = time::macros::datetime!(2013-05-24 00:01:00 UTC);
        assert_eq!(verify(&req, &auth, secret, "us-east-1", "s3", now), Ok(()));
        // Another secret, another body, another region, a later time.
        assert_eq!(
            verify(&req, &auth, "not the secret", "us-east-1", "s3", now),
            Err(SigError::Mismatch)
        );
        let tampered = Request { body: b"x", ..req };
        assert!(verify(&tampered, &auth, secret, "us-east-1", "s3", now).is_err());
        let req = Request {
            body: b"",
            ..tampered
        };
        assert!(matches!(
            verify(&req, &auth, secret, "eu-west-1", "s3", now),
            Err(SigError::WrongScope(_))
        ));
        let later = now + time::Duration::minutes(6);
        assert!(matches!(
            verify(&req, &auth, secret, "us-east-1", "s3", later),
            Err(SigError::Expired { .. })
        ));
    }

    #[test]
    fn malformed_headers_are_named() {
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=x-amz-date, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz",
        ] {
            assert!(matches!(parse_authorization(bad), Err(SigError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn query_strings_are_sorted_and_encoded_once() {
        assert_eq!(canonical_query(Some("b=2&a=x%20y&a=1")), "a=1&a=x%20y&b=2");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri(""), "/");
    }
}
