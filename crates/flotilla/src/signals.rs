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

/// `--exit-with-parent PID`: a process started by a supervisor (an agent for its
/// replicas, `flotilla up` for its servers, agents and gateways) stops as on SIGTERM
/// once the supervisor is gone, even one killed outright, so nothing it started
/// runs on unsupervised.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub(crate) struct ParentWatch {
    /// Stop (as on SIGTERM) once process PID is no longer this one's parent; a
    /// supervisor passes its own id.
    #[arg(long, value_name = "PID")]
    pub(crate) exit_with_parent: Option<u32>,
}

/// How often a watched parent is checked.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

impl ParentWatch {
    /// Refuses to start when the parent to watch is gone already.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if let Some(parent) = self.exit_with_parent {
            let now = current_parent();
            anyhow::ensure!(
                now == Some(parent),
                "--exit-with-parent {parent}: this process's parent is {}, so the process that started it is gone already",
                now.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
            );
        }
        Ok(())
    }

    /// Resolves on a shutdown signal, or once the watched parent is gone (said on
    /// standard error, since the supervisor's log of this process is all there is).
    pub(crate) async fn stop_requested(self) {
        tokio::select! {
            () = shutdown_signal() => {}
            () = self.parent_gone() => eprintln!(
                "flotilla: the process that started this one ({}) is gone; stopping",
                self.exit_with_parent.unwrap_or_default()
            ),
        }
    }

    /// Resolves once the watched parent is no longer this process's parent (it
    /// exited, and this process was handed to init or a subreaper); never without
    /// a parent to watch.
    async fn parent_gone(self) {
        let Some(parent) = self.exit_with_parent else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(PARENT_CHECK);
        loop {
            tick.tick().await;
            if current_parent() != Some(parent) {
                return;
            }
        }
    }
}

/// This process's parent, where the platform says.
fn current_parent() -> Option<u32> {
    #[cfg(unix)]
    {
        Some(std::os::unix::process::parent_id())
    }
    #[cfg(not(unix))]
    {
        None
    }
}
