//! The agent's only way to the registry: [`RegistryLink`].
//!
//! The agent needs three things from the registry: propose a command, learn whether
//! core applied or refused it, and read the registry's state. Keeping them behind a
//! small trait lets the link switch to the typed `flotilla.v1` API (with mTLS and
//! join tokens) without touching the reporter or the materializer, and lets tests
//! count proposals by wrapping a real link.
//!
//! [`FederationClient`] is today's implementation: the registry's JSON-command
//! service (`flotilla_registry::RegistryClient`) over a list of federation servers.
//! Any server will do: followers forward writes to the leader. A server that does not
//! answer is left for the next one in the list; the caller decides how long to wait
//! before trying again (see [`crate::backoff`]).

use crate::AgentError;
use flotilla_core::{Command, PlacedReplica, Rejection, State};
use flotilla_registry::{RegistryClient, TransportSecurity};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// What the agent needs from the registry.
///
/// `propose` answers `Ok(())` when core applied the command, and
/// [`AgentError::Rejected`] when core refused it (nothing changed); any other error
/// means the outcome is unknown and [`AgentError::retryable`] says whether to try
/// again. Commands the agent sends are idempotent (a registration, a whole
/// inventory, a lease renewal, a phase), so trying again is always safe.
pub trait RegistryLink: Send + Sync + 'static {
    fn propose(&self, command: &Command) -> impl Future<Output = Result<(), AgentError>> + Send;

    /// The registry's state as one server holds it now (may be a little behind the
    /// leader). Only the Kubernetes materializer reads it, for workload specs.
    fn read_state(&self) -> impl Future<Output = Result<State, AgentError>> + Send;

    /// The replicas placed on `cluster`, as a blocking query: once they differ from
    /// `known_version` (0: at once), or after `wait` without a change. Answers
    /// `(version, replicas)` from one server's copy (may be a little behind the
    /// leader; the materializer acts on differences and converges either way).
    fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<(u64, Vec<PlacedReplica>), AgentError>> + Send;
}

/// The registry's JSON-command service on any of a list of servers.
#[derive(Debug)]
pub struct FederationClient {
    servers: Vec<(String, RegistryClient)>,
    /// Index of the server tried first; moves on when one fails.
    current: AtomicUsize,
    /// Bounds every call: a server that accepted the connection but cannot answer
    /// (no quorum) must not hold the agent up.
    timeout: Duration,
    /// The highest log index an answer reflected. Reads go to one server's copy, and
    /// after a move to a server that is behind, its older answer must not undo what
    /// was seen: a replica placed since would look removed and be deleted.
    freshest: AtomicU64,
}

impl FederationClient {
    /// A client of `servers` (`host:port` each); connects lazily, on first use.
    pub fn new(
        servers: &[String],
        security: &TransportSecurity,
        timeout: Duration,
    ) -> Result<FederationClient, AgentError> {
        if servers.is_empty() {
            return Err(AgentError::Config {
                field: "servers".into(),
                message: "name at least one federation server (host:port)".into(),
            });
        }
        let servers = servers
            .iter()
            .map(|addr| {
                RegistryClient::new(addr, security)
                    .map(|c| (addr.clone(), c))
                    .map_err(|e| AgentError::Config {
                        field: "servers".into(),
                        message: format!("{addr:?}: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FederationClient {
            servers,
            current: AtomicUsize::new(0),
            freshest: AtomicU64::new(0),
            timeout,
        })
    }

    /// The server the next call goes to.
    pub fn current_server(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.servers.len();
        self.servers.get(i).map_or("", |(a, _)| a.as_str())
    }

    fn pick(&self) -> Result<(usize, String, RegistryClient), AgentError> {
        let i = self.current.load(Ordering::Relaxed) % self.servers.len().max(1);
        // `new` refuses an empty list, so there is always a server.
        let (addr, client) = self.servers.get(i).ok_or_else(|| AgentError::Config {
            field: "servers".into(),
            message: "no federation server to call".into(),
        })?;
        Ok((i, addr.clone(), client.clone()))
    }

    /// The server at `i` failed: the next call tries the next one, unless another
    /// call has moved on already.
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.servers.len().max(1);
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn error(&self, i: usize, server: String, e: flotilla_registry::Error) -> AgentError {
        let retryable = e.is_retryable();
        if retryable {
            self.failed(i);
        }
        AgentError::Registry {
            server,
            message: e.to_string(),
            retryable,
        }
    }

    /// Accepts an answer reflecting log index `index` unless an answer already seen
    /// was newer; then moves to another server and says so.
    fn not_older(&self, i: usize, server: &str, index: u64) -> Result<(), AgentError> {
        let seen = self.freshest.fetch_max(index, Ordering::AcqRel);
        if index < seen {
            self.failed(i);
            return Err(AgentError::Registry {
                server: server.to_owned(),
                message: format!(
                    "this server is behind (its answer reflects log index {index}, an earlier one {seen}); trying another"
                ),
                retryable: true,
            });
        }
        Ok(())
    }

    fn timed_out(&self, i: usize, server: String) -> AgentError {
        self.failed(i);
        AgentError::Registry {
            server,
            message: format!("no answer within {:?}", self.timeout),
            retryable: true,
        }
    }
}

impl RegistryLink for FederationClient {
    async fn propose(&self, command: &Command) -> Result<(), AgentError> {
        let (i, server, mut client) = self.pick()?;
        let reply = match tokio::time::timeout(self.timeout, client.propose(command)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(self.error(i, server, e)),
            Err(_) => return Err(self.timed_out(i, server)),
        };
        if reply.applied {
            return Ok(());
        }
        let not_found = matches!(
            serde_json::from_str::<Rejection>(&reply.rejection_json),
            Ok(Rejection::NotFound { .. })
        );
        Err(AgentError::Rejected {
            command: command.kind(),
            message: reply.rejection_message,
            not_found,
        })
    }

    async fn read_state(&self) -> Result<State, AgentError> {
        let (i, server, mut client) = self.pick()?;
        match tokio::time::timeout(self.timeout, client.read_state(false)).await {
            Ok(Ok((index, state))) => {
                self.not_older(i, &server, index)?;
                Ok(state)
            }
            Ok(Err(e)) => Err(self.error(i, server, e)),
            Err(_) => Err(self.timed_out(i, server)),
        }
    }

    async fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> Result<(u64, Vec<PlacedReplica>), AgentError> {
        let (i, server, mut client) = self.pick()?;
        // The server holds the call for up to `wait`; only beyond that is it silent.
        let limit = wait + self.timeout;
        match tokio::time::timeout(
            limit,
            client.watch_replicas_at(cluster, known_version, wait),
        )
        .await
        {
            Ok(Ok((index, version, replicas))) => {
                self.not_older(i, &server, index)?;
                Ok((version, replicas))
            }
            Ok(Err(e)) => Err(self.error(i, server, e)),
            Err(_) => Err(self.timed_out(i, server)),
        }
    }
}

impl<L: RegistryLink> RegistryLink for std::sync::Arc<L> {
    fn propose(&self, command: &Command) -> impl Future<Output = Result<(), AgentError>> + Send {
        (**self).propose(command)
    }

    fn read_state(&self) -> impl Future<Output = Result<State, AgentError>> + Send {
        (**self).read_state()
    }

    fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<(u64, Vec<PlacedReplica>), AgentError>> + Send {
        (**self).watch_replicas(cluster, known_version, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_older_than_one_already_seen_is_refused_and_the_next_server_tried() {
        let servers = ["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        let link = FederationClient::new(
            &servers,
            &TransportSecurity::Plaintext,
            Duration::from_secs(1),
        )
        .expect("a client");
        assert!(link.not_older(0, "127.0.0.1:1", 40).is_ok());
        assert!(
            link.not_older(0, "127.0.0.1:1", 40).is_ok(),
            "the same index is fine"
        );
        // The next server is behind: its list would bring back what was removed.
        let err = link
            .not_older(0, "127.0.0.1:1", 35)
            .expect_err("an older answer was taken");
        assert!(err.to_string().contains("behind"), "{err}");
        assert_eq!(
            link.pick().expect("a server").0,
            1,
            "moved on to another server"
        );
        assert!(link.not_older(1, "127.0.0.1:2", 41).is_ok());
    }
}
