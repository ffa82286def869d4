//! One module per group of verbs.

pub mod agreements;
pub mod bench;
pub mod events;
pub mod image_build;
pub mod image_pull;
pub mod images;
pub mod jobs;
pub mod keys;
pub mod lifecycle;
pub mod network;
pub mod node;
pub mod pki;
pub mod ui;
pub mod up;
pub mod upload;
pub mod workspaces;

/// Prints an error for people: the service's message, each description
/// problem on its own line, and the chain of causes.
pub fn report(e: &anyhow::Error) {
    if e.downcast_ref::<jobs::ExitWith>().is_some() {
        return;
    }
    if let Some(vws_client::ClientError::Api {
        details,
        message,
        code,
        ..
    }) = e.downcast_ref()
    {
        if details.is_empty() {
            eprintln!("error: {message} [{code}]");
        } else {
            eprintln!("error: the description was refused:");
            for d in details {
                eprintln!("  {}: {}", d.path, d.message);
            }
        }
        return;
    }
    eprintln!("error: {e:#}");
}
