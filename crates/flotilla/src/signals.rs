//! How the long-running commands learn that it is time to stop.

/// Resolves on SIGTERM (what Kubernetes, process supervisors and the local
/// materializer send) or Ctrl-C. If no handler can be installed at all, it never
/// resolves: the process then serves until it is killed, rather than stopping at once.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}
