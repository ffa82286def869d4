//! `vws network list|show`: the networks and their address pools.

use clap::Subcommand;

use crate::output::table;
use crate::Globals;

/// `vws network`.
#[derive(Subcommand, Debug)]
pub enum NetworkCommand {
    /// Networks with their size, used and free addresses
    #[command(alias = "ls")]
    List,
    /// One network; administrators also see which workspace holds which address
    Show {
        /// Network name
        name: String,
    },
}

/// Runs a network verb.
pub async fn run(g: &Globals, c: NetworkCommand) -> anyhow::Result<()> {
    let client = g.client()?;
    match c {
        NetworkCommand::List => {
            let nets = client.networks().await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&nets)?);
                return Ok(());
            }
            let mut t = table(&["NAME", "CIDR", "GATEWAY", "SHARED", "USED", "FREE"]);
            for n in nets {
                let net = &n["network"];
                t.add_row(vec![
                    net["name"].as_str().unwrap_or("").to_string(),
                    net["cidr"].as_str().unwrap_or("").to_string(),
                    net["gateway"].as_str().unwrap_or("-").to_string(),
                    if net["shared"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    }
                    .to_string(),
                    n["used"].to_string(),
                    n["free"].to_string(),
                ]);
            }
            println!("{t}");
        }
        NetworkCommand::Show { name } => {
            let n = client.network(&name).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&n)?);
                return Ok(());
            }
            let net = &n["network"];
            println!(
                "{}  {}  gateway {}  {} used, {} free",
                net["name"].as_str().unwrap_or(""),
                net["cidr"].as_str().unwrap_or(""),
                net["gateway"].as_str().unwrap_or("-"),
                n["used"],
                n["free"]
            );
            if let Some(addrs) = n["addresses"].as_array() {
                let mut t = table(&["ADDRESS", "WORKSPACE", "NIC", "MAC"]);
                for a in addrs {
                    t.add_row(vec![
                        a["address"].as_str().unwrap_or("").to_string(),
                        a["workspace_id"].as_str().unwrap_or("").to_string(),
                        a["nic"].as_str().unwrap_or("").to_string(),
                        a["mac"].as_str().unwrap_or("").to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}
