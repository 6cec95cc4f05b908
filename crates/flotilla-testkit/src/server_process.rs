//! A `flotilla server` in a process of its own, and a steady stream of writes to
//! feed it: what the memory test and the memory benchmark measure from outside.

use crate::net::free_addr;
use crate::wait::{TestResult, eventually};
use flotilla_client::{RegistryClient, TransportSecurity};
use flotilla_core::Command;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A one-member plaintext federation in a child process; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Where it serves.
    pub addr: SocketAddr,
    _data: TempDir,
}

/// A server's log as its status answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStatus {
    pub applied_index: u64,
    pub last_snapshot_index: u64,
    pub log_entries: u64,
}

impl ServerProcess {
    /// Starts `binary server --init` (no fsync) with `extra` flags and `env` added to
    /// its environment, and waits until it leads its federation.
    pub async fn start(
        binary: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> TestResult<ServerProcess> {
        let data = tempfile::tempdir()?;
        let addr = free_addr()?;
        let child = std::process::Command::new(binary)
            .args(["server", "--init", "--federation", crate::FEDERATION])
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", &addr.to_string(), "--no-fsync"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let server = ServerProcess {
            child,
            addr,
            _data: data,
        };
        eventually("the server leads", Duration::from_secs(30), || async {
            let mut client = server.client().ok()?;
            client
                .status()
                .await
                .ok()
                .filter(|s| s.leader_id != 0)
                .map(|_| ())
        })
        .await?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of this server.
    pub fn client(&self) -> Result<RegistryClient, flotilla_client::Error> {
        RegistryClient::new(&self.addr.to_string(), &TransportSecurity::Plaintext)
    }

    /// The server's resident memory, in bytes (`None` without `/proc`).
    pub fn resident_bytes(&self) -> Option<u64> {
        flotilla_up::supervisor::resident_bytes(self.pid())
    }

    /// How far its log went, its latest snapshot and the entries it keeps.
    pub async fn log_status(&self) -> TestResult<LogStatus> {
        let s = self.client()?.status().await?;
        Ok(LogStatus {
            applied_index: s.applied_index,
            last_snapshot_index: s.last_snapshot_index,
            log_entries: s.log_entries,
        })
    }

    /// Sends heartbeats for `clusters` clusters (`c0`, `c1`, …, registered first)
    /// until the server's log reaches `index`: the steady writes of a quiet
    /// federation, as fast as the server takes them. Returns the index reached.
    /// Concurrent proposals may share a log entry, so the log is measured, not the
    /// proposals counted.
    pub async fn feed_until(&self, clusters: usize, index: u64) -> TestResult<u64> {
        const ROUND: u64 = 1_000;
        loop {
            let reached = self.log_status().await?.applied_index;
            if reached >= index {
                return Ok(reached);
            }
            self.feed_heartbeats(clusters, ROUND.min(index - reached), 2)
                .await?;
        }
    }

    /// Registers `clusters` clusters (`c0`, `c1`, …) and sends `commands` heartbeats
    /// for them from `concurrency` callers at once.
    pub async fn feed_heartbeats(
        &self,
        clusters: usize,
        commands: u64,
        concurrency: usize,
    ) -> TestResult<()> {
        let names: Vec<String> = (0..clusters.max(1)).map(|i| format!("c{i}")).collect();
        let mut client = self.client()?;
        for name in &names {
            client.propose(&register(name)).await?;
        }
        let callers = concurrency.max(1) as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..callers {
            let mut client = self.client()?;
            let names = names.clone();
            let share = commands / callers + u64::from(caller < commands % callers);
            tasks.spawn(async move {
                for i in 0..share {
                    let cluster = names[(caller + i) as usize % names.len()].clone();
                    let reply = client.propose(&Command::Heartbeat { cluster }).await?;
                    if !reply.applied {
                        return Err(reply.rejection_message.into());
                    }
                }
                TestResult::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers a cluster named `name` in region `europe`, with nothing else set.
pub fn register(name: &str) -> Command {
    Command::RegisterCluster {
        spec: flotilla_core::fixtures::cluster(name, "europe"),
    }
}
