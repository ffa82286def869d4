//! `vws key create|list|revoke`: access keys that stand for an identity in
//! requests signed with AWS Signature Version 4 (awscli, boto3 and the EC2
//! front-end: docs/ec2.md).

use anyhow::Context;
use clap::Subcommand;

use crate::output::table;
use crate::Globals;

/// `vws key`.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Make an access key (the secret is printed this once). As yourself,
    /// or, for an administrator, as another DN with its attributes
    Create {
        /// The DN the key acts as [default: this client's own identity]
        #[arg(long, value_name = "DN")]
        dn: Option<String>,
        /// An attribute of that identity, KEY=VALUE (repeatable; with --dn)
        #[arg(long = "attr", value_name = "KEY=VALUE", requires = "dn")]
        attrs: Vec<String>,
        /// Print the lines of an AWS credentials file section instead
        #[arg(long, conflicts_with = "dn")]
        aws: bool,
    },
    /// Your access keys (everyone's for an administrator), without secrets
    #[command(alias = "ls")]
    List,
    /// Revoke an access key: requests signed with it are refused from then on
    Revoke {
        /// The key id (AKIA…)
        id: String,
    },
}

/// Runs a key verb.
pub async fn run(g: &Globals, c: KeyCommand) -> anyhow::Result<()> {
    let client = g.client()?;
    match c {
        KeyCommand::Create { dn, attrs, aws } => {
            let identity = match dn {
                Some(dn) => {
                    let mut who = vws_model::Identity::new(dn);
                    for attr in &attrs {
                        let (k, v) = attr
                            .split_once('=')
                            .with_context(|| format!("--attr {attr:?}: expected KEY=VALUE"))?;
                        who.attributes.push((k.to_string(), v.to_string()));
                    }
                    Some(who)
                }
                None => None,
            };
            let key = client.create_access_key(identity.as_ref()).await?;
            let (id, secret) = (
                key["id"].as_str().unwrap_or_default(),
                key["secret"].as_str().unwrap_or_default(),
            );
            if g.json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else if aws {
                println!("aws_access_key_id = {id}\naws_secret_access_key = {secret}");
            } else {
                println!("access key id      {id}");
                println!("secret access key  {secret}");
                println!(
                    "acts as            {}",
                    key["identity"]["dn"].as_str().unwrap_or("")
                );
                eprintln!("(the secret is shown only now; `vws key revoke {id}` ends the key)");
            }
        }
        KeyCommand::List => {
            let keys = client.access_keys().await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
                return Ok(());
            }
            let mut t = table(&["ID", "ACTS AS", "CREATED", "REVOKED"]);
            for k in keys {
                t.add_row(vec![
                    k["id"].as_str().unwrap_or("").to_string(),
                    k["identity"]["dn"].as_str().unwrap_or("").to_string(),
                    k["created_at"].as_str().unwrap_or("").to_string(),
                    k["revoked_at"].as_str().unwrap_or("-").to_string(),
                ]);
            }
            println!("{t}");
        }
        KeyCommand::Revoke { id } => {
            client.revoke_access_key(&id).await?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}
