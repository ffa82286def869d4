//! How a long-running command (`vws up`, `vws serve`, `vws node`) is told
//! to stop.

/// Waits for Ctrl-C or SIGTERM.
pub async fn signalled() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
