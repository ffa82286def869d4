//! `vws ui`: a one-time link that signs a browser in to the dashboard as
//! the identity this CLI presents.

use anyhow::Context;
use clap::Args;

use crate::Globals;

/// `vws ui`.
#[derive(Args, Debug)]
pub struct UiArgs {
    /// The dashboard's base URL [default: the one `vws up` recorded]
    #[arg(long, env = "VWS_UI_URL", value_name = "URL")]
    url: Option<String>,
}

/// Prints the link (JSON with --json: the link and when it expires).
pub async fn run(g: &Globals, a: UiArgs) -> anyhow::Result<()> {
    let base = match a.url {
        Some(u) => u,
        None => {
            let file = crate::config::server_file(&g.home);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {} (is vws up running?)", file.display()))?;
            let server: crate::config::ServerFile = serde_json::from_str(&text)?;
            server.ui.context(
                "this vws serves no dashboard (started with --ui-listen off); give its URL with --url",
            )?
        }
    };
    let link = g.client()?.sign_in_link().await?;
    let token = link["token"].as_str().unwrap_or_default();
    let url = format!("{}/ui/login?token={token}", base.trim_end_matches('/'));
    if g.json {
        println!(
            "{}",
            serde_json::json!({ "url": url, "expires_at": link["expires_at"] })
        );
    } else {
        println!("{url}");
        eprintln!("(works once, for ten minutes; the session lasts twelve hours)");
    }
    Ok(())
}
