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

/// `--supervisor-record FILE`: a replica started by an agent with a state
/// directory runs while the agent that the record names is alive. Once it is gone,
/// the replica waits `--orphan-grace` for a restarted agent to take the record over
/// (and adopt it), then stops as on SIGTERM.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct SupervisorWatch {
    /// The agent's record of its replicas (`STATE/replicas.json`); the agent passes it.
    #[arg(long, value_name = "FILE", conflicts_with = "exit_with_parent")]
    pub(crate) supervisor_record: Option<std::path::PathBuf>,
    /// How long to wait for a new agent once the recorded one is gone.
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub(crate) orphan_grace: flotilla_core::Millis,
}

impl SupervisorWatch {
    /// Refuses to start when no live agent is recorded in the file.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        if let Some(file) = &self.supervisor_record {
            anyhow::ensure!(
                flotilla_agent::materializer::records::supervised(file),
                "--supervisor-record {}: it names no running agent",
                file.display()
            );
        }
        Ok(())
    }

    /// Resolves once no agent has supervised this process for `orphan_grace`
    /// (said on standard error); never without a record to watch.
    pub(crate) async fn orphaned(&self) {
        let Some(file) = &self.supervisor_record else {
            return std::future::pending().await;
        };
        let grace = std::time::Duration::from_millis(self.orphan_grace.0);
        let mut last_supervised = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(PARENT_CHECK);
        loop {
            tick.tick().await;
            if flotilla_agent::materializer::records::supervised(file) {
                last_supervised = tokio::time::Instant::now();
            } else if last_supervised.elapsed() >= grace {
                eprintln!(
                    "flotilla: no agent has supervised this replica for {grace:?} ({} names none running); stopping",
                    file.display()
                );
                return;
            }
        }
    }
}
