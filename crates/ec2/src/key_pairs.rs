//! Key pairs: CreateKeyPair (a new ed25519 or RSA key; the private half
//! returned once, in OpenSSH's format), ImportKeyPair (an OpenSSH public
//! key), DescribeKeyPairs, DeleteKeyPair. Only the public half is kept;
//! fingerprints are OpenSSH's SHA-256 ones. A launch's key reaches the
//! instance through its metadata (`public-keys/0/openssh-key`).

use base64::Engine;
use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey};
use vws_store::{KeyPair, StoreError};

use crate::error::Ec2Error;
use crate::ids;
use crate::lookup::{key_not_found, tag_set, tags_by_resource};
use crate::params::Params;
use crate::xml::{opt, set, text, Node};
use crate::Ctx;

fn check_name(name: &str) -> Result<(), Ec2Error> {
    if name.is_empty()
        || name.len() > 255
        || !name.is_ascii()
        || name.chars().any(|c| c.is_control())
    {
        return Err(Ec2Error::invalid(format!(
            "key name {name:?}: 1 to 255 printable ASCII characters"
        )));
    }
    Ok(())
}

async fn keep(ctx: &Ctx, name: &str, public: &PublicKey) -> Result<KeyPair, Ec2Error> {
    let key_type = match public.algorithm() {
        ssh_key::Algorithm::Ed25519 => "ed25519",
        ssh_key::Algorithm::Rsa { .. } => "rsa",
        other => {
            return Err(Ec2Error::client(
                "InvalidKey.Format",
                format!(
                    "{} keys are not supported: use ssh-ed25519 or ssh-rsa",
                    other.as_str()
                ),
            ))
        }
    };
    let k = KeyPair {
        owner: ctx.who.dn.clone(),
        name: name.into(),
        id: ids::fresh("key"),
        key_type: key_type.into(),
        fingerprint: public.fingerprint(HashAlg::Sha256).to_string(),
        public_key: public
            .to_openssh()
            .map_err(|e| Ec2Error::internal(format!("encoding the public key: {e}")))?,
        created_at: ctx.service.clock().now(),
    };
    match ctx.service.store().put_key_pair(&k).await {
        Ok(()) => Ok(k),
        Err(StoreError::Duplicate(_)) => Err(Ec2Error::client(
            "InvalidKeyPair.Duplicate",
            format!("The keypair '{name}' already exists."),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `CreateKeyPair`.
pub(crate) async fn create(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let name = p.require("KeyName")?;
    check_name(name)?;
    if let Some(f) = p.get("KeyFormat") {
        if f != "pem" {
            return Err(Ec2Error::invalid(format!(
                "KeyFormat {f:?}: only pem (OpenSSH's private key format) is offered"
            )));
        }
    }
    let mut rng = ssh_key::rand_core::OsRng;
    let private = match p.get("KeyType").unwrap_or("rsa") {
        "ed25519" => PrivateKey::random(&mut rng, ssh_key::Algorithm::Ed25519),
        "rsa" => ssh_key::private::RsaKeypair::random(&mut rng, 2048).map(PrivateKey::from),
        other => {
            return Err(Ec2Error::invalid(format!(
                "KeyType {other:?}: rsa or ed25519"
            )))
        }
    }
    .map_err(|e| Ec2Error::internal(format!("making the key: {e}")))?;
    let k = keep(ctx, name, private.public_key()).await?;
    let material = private
        .to_openssh(LineEnding::LF)
        .map_err(|e| Ec2Error::internal(format!("encoding the key: {e}")))?;
    Ok(vec![
        text("keyName", &k.name),
        text("keyFingerprint", &k.fingerprint),
        text("keyMaterial", material.as_str()),
        text("keyPairId", &k.id),
    ])
}

/// `ImportKeyPair`: `PublicKeyMaterial` is the base64 of an OpenSSH
/// public key line (what awscli sends for `fileb://key.pub`).
pub(crate) async fn import(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let name = p.require("KeyName")?;
    check_name(name)?;
    let material = p.require("PublicKeyMaterial")?;
    let bad = |why: String| {
        Ec2Error::client(
            "InvalidKey.Format",
            format!("Key is not in valid OpenSSH public key format: {why}"),
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(material.trim())
        .map_err(|_| bad("PublicKeyMaterial is not base64".into()))?;
    let line = String::from_utf8(raw).map_err(|_| bad("not text".into()))?;
    let public = PublicKey::from_openssh(line.trim()).map_err(|e| bad(e.to_string()))?;
    let k = keep(ctx, name, &public).await?;
    Ok(vec![
        text("keyName", &k.name),
        text("keyFingerprint", &k.fingerprint),
        text("keyPairId", &k.id),
    ])
}

/// `DescribeKeyPairs`.
pub(crate) async fn describe(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let names = p.list("KeyName");
    let key_ids = p.list("KeyPairId");
    let filters = p.filters()?;
    let with_public = p.bool("IncludePublicKey")?.unwrap_or(false);
    let keys = ctx.service.store().key_pairs(&ctx.who.dn).await?;
    for n in &names {
        if !keys.iter().any(|k| &k.name == n) {
            return Err(key_not_found(n));
        }
    }
    for i in &key_ids {
        if !keys.iter().any(|k| &k.id == i) {
            return Err(Ec2Error::client(
                "InvalidKeyPair.NotFound",
                format!("The key pair ID '{i}' does not exist"),
            ));
        }
    }
    let tags = tags_by_resource(ctx).await?;
    let mut items = Vec::new();
    for k in &keys {
        if (!names.is_empty() && !names.contains(&k.name))
            || (!key_ids.is_empty() && !key_ids.contains(&k.id))
        {
            continue;
        }
        let mut ok = true;
        for f in &filters {
            ok &= match f.name.as_str() {
                "key-name" => f.matches(Some(&k.name)),
                "key-pair-id" => f.matches(Some(&k.id)),
                "fingerprint" => f.matches(Some(&k.fingerprint)),
                "key-type" => f.matches(Some(&k.key_type)),
                other => {
                    return Err(Ec2Error::invalid(format!(
                        "The filter '{other}' is invalid"
                    )))
                }
            };
        }
        if !ok {
            continue;
        }
        let mut n = vec![text("keyPairId", &k.id), text("keyType", &k.key_type)];
        n.extend(tag_set(tags.get(&k.id)));
        n.extend([
            text("keyName", &k.name),
            text("keyFingerprint", &k.fingerprint),
        ]);
        n.extend(opt("publicKey", with_public.then_some(&k.public_key)));
        n.push(text(
            "createTime",
            k.created_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        ));
        items.push(n);
    }
    Ok(vec![set("keySet", items)])
}

/// `DeleteKeyPair`: by name or id; deleting one that does not exist
/// succeeds, as in EC2.
pub(crate) async fn delete(ctx: &Ctx, p: &Params) -> Result<Vec<Node>, Ec2Error> {
    let which = p
        .get("KeyName")
        .or_else(|| p.get("KeyPairId"))
        .ok_or_else(|| Ec2Error::missing("KeyName"))?;
    ctx.service
        .store()
        .delete_key_pair(&ctx.who.dn, which)
        .await?;
    Ok(vec![text("return", "true")])
}
