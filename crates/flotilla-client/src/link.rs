//! What agents and controllers need of the registry: [`RegistryLink`], and its
//! implementation over a list of federation servers, [`FederationClient`].
//!
//! Three things: propose a command and learn whether core applied or refused it,
//! read the workloads, routes and clusters, and follow one cluster's replicas, all
//! through the typed `flotilla.v1` API, a page or a watch at a time. Keeping them behind
//! a small trait lets the link move to the typed `flotilla.v1` API without touching
//! the reporter or the materializers, and lets tests count proposals by wrapping a
//! real link.
//!
//! [`FederationClient`] speaks the registry's service on any of its servers: any
//! one will do, since followers forward writes to the leader. A server that fails,
//! stays silent past the call's bound, or answers from a copy older than one already
//! seen ([`crate::freshness`]) is left for the next one in the list; the caller
//! decides how long to wait before trying again (see [`crate::backoff`]).

use crate::client::RegistryClient;
use crate::error::{Error, Result};
use crate::freshness::Freshness;
use crate::transport::TransportSecurity;
use flotilla_core::{ClusterSpec, Command, PlacedReplica, RouteTable, Workload};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// What an agent or a controller needs from the registry.
///
/// `propose` answers `Ok(())` when core applied the command, and
/// [`Error::Rejected`] when core refused it (nothing changed); any other error
/// means the outcome is unknown and [`Error::is_retryable`] says whether to try
/// again. Commands agents send are idempotent (a registration, a whole inventory, a
/// lease renewal, a phase), so trying again is always safe.
pub trait RegistryLink: Send + Sync + 'static {
    fn propose(&self, command: &Command) -> impl Future<Output = Result<()>> + Send;

    /// The workloads, the route table and the clusters, as one server holds them
    /// now, each listed a page at a time (may be a little behind the leader; the
    /// route table never behind one already seen).
    fn read_federation(&self) -> impl Future<Output = Result<FederationLists>> + Send;

    /// The replicas placed on `cluster`, as a blocking query: once they differ from
    /// `known_version` (0: at once), or after `wait` without a change. Answers
    /// `(version, replicas)` from one server's copy (may be a little behind the
    /// leader; a materializer acts on differences and converges either way).
    fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<(u64, Vec<PlacedReplica>)>> + Send;
}

/// What a controller reads besides its replicas: the workloads' specs (replicas
/// carry only names), the route table and the clusters (for Istio).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FederationLists {
    pub workloads: BTreeMap<String, Workload>,
    pub routes: RouteTable,
    pub clusters: Vec<ClusterSpec>,
}

/// Which of a list of servers to call next: the same one while it works, the next
/// one after a failure.
#[derive(Debug)]
pub struct ServerRotation {
    count: usize,
    current: AtomicUsize,
}

impl ServerRotation {
    /// A rotation over `count` servers, starting at the first.
    pub fn new(count: usize) -> ServerRotation {
        ServerRotation {
            count: count.max(1),
            current: AtomicUsize::new(0),
        }
    }

    /// The index of the server the next call goes to.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.count
    }

    /// The server at `i` failed: the next call tries the next one, unless another
    /// call has moved on already.
    pub fn failed(&self, i: usize) {
        let next = (i + 1) % self.count;
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The registry's service on any of a list of servers.
#[derive(Debug)]
pub struct FederationClient {
    servers: Vec<(String, RegistryClient)>,
    rotation: ServerRotation,
    /// Bounds every call: a server that accepted the connection but cannot answer
    /// (no quorum) must not hold the caller up.
    timeout: Duration,
    freshness: Freshness,
    /// The same for route table revisions (lists carry no log index).
    route_freshness: Freshness,
}

impl FederationClient {
    /// A client of `servers` (`host:port` each); connects lazily, on first use.
    pub fn new(
        servers: &[String],
        security: &TransportSecurity,
        timeout: Duration,
    ) -> Result<FederationClient> {
        if servers.is_empty() {
            return Err(Error::Config(
                "servers: name at least one federation server (host:port)".into(),
            ));
        }
        let servers = servers
            .iter()
            .map(|addr| {
                RegistryClient::new(addr, security)
                    .map(|c| (addr.clone(), c))
                    .map_err(|e| Error::Config(format!("servers: {addr:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(FederationClient {
            rotation: ServerRotation::new(servers.len()),
            servers,
            freshness: Freshness::default(),
            route_freshness: Freshness::default(),
            timeout,
        })
    }

    /// Moves the next call to the next server, whatever the last call's error was
    /// (a caller that knows a server is no use, beyond what is retryable).
    pub fn next_server(&self) {
        self.rotation.failed(self.rotation.current());
    }

    /// The whole registry as one server holds it now, never behind an answer
    /// already seen. Through the internal service: admins' tools only (`flotilla
    /// up`'s live view); agents and controllers read with [`RegistryLink`].
    pub async fn read_state(&self) -> Result<flotilla_core::State> {
        self.call(self.timeout, |server, mut client| async move {
            let (index, state) = client.read_state(false).await?;
            self.freshness.accept(&server, index)?;
            Ok(state)
        })
        .await
    }

    /// A new API key of `tenant` ([`RegistryClient::create_api_key`]), from the
    /// current server.
    pub async fn create_api_key(&self, tenant: &str) -> Result<String> {
        self.call(self.timeout, |_, mut client| async move {
            client.create_api_key(tenant).await
        })
        .await
    }

    /// The server the next call goes to.
    pub fn current_server(&self) -> &str {
        self.servers
            .get(self.rotation.current())
            .map_or("", |(a, _)| a.as_str())
    }

    fn pick(&self) -> Result<(usize, String, RegistryClient)> {
        let i = self.rotation.current();
        // `new` refuses an empty list, so there is always a server.
        let (addr, client) = self
            .servers
            .get(i)
            .ok_or_else(|| Error::Config("no federation server to call".into()))?;
        Ok((i, addr.clone(), client.clone()))
    }

    /// One call to the current server, bounded by `limit`; a retryable failure
    /// moves the next call to the next server.
    async fn call<T, F, Fut>(&self, limit: Duration, f: F) -> Result<T>
    where
        F: FnOnce(String, RegistryClient) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (i, server, client) = self.pick()?;
        let outcome = match tokio::time::timeout(limit, f(server.clone(), client)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Timeout {
                peer: server,
                after: limit,
            }),
        };
        if outcome.as_ref().is_err_and(Error::is_retryable) {
            self.rotation.failed(i);
        }
        outcome
    }
}

impl RegistryLink for FederationClient {
    async fn propose(&self, command: &Command) -> Result<()> {
        self.call(self.timeout, |_, mut client| async move {
            client.submit(command).await.map(|_| ())
        })
        .await
    }

    async fn read_federation(&self) -> Result<FederationLists> {
        self.call(self.timeout, |server, client| async move {
            let lists = client.read_federation().await?;
            self.route_freshness
                .accept(&server, lists.routes.revision)?;
            Ok(lists)
        })
        .await
    }

    async fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> Result<(u64, Vec<PlacedReplica>)> {
        // The server holds the call for up to `wait`; only beyond that is it silent.
        self.call(wait + self.timeout, |server, mut client| async move {
            let (index, version, replicas) = client
                .watch_replicas_at(cluster, known_version, wait)
                .await?;
            self.freshness.accept(&server, index)?;
            Ok((version, replicas))
        })
        .await
    }
}

impl<L: RegistryLink> RegistryLink for std::sync::Arc<L> {
    fn propose(&self, command: &Command) -> impl Future<Output = Result<()>> + Send {
        (**self).propose(command)
    }

    fn read_federation(&self) -> impl Future<Output = Result<FederationLists>> + Send {
        (**self).read_federation()
    }

    fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: Duration,
    ) -> impl Future<Output = Result<(u64, Vec<PlacedReplica>)>> + Send {
        (**self).watch_replicas(cluster, known_version, wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_server_hands_the_next_call_to_the_next_one_once() {
        let rotation = ServerRotation::new(3);
        assert_eq!(rotation.current(), 0);
        rotation.failed(0);
        assert_eq!(rotation.current(), 1);
        // A second call that failed on server 0 concurrently does not skip server 1.
        rotation.failed(0);
        assert_eq!(rotation.current(), 1);
        rotation.failed(1);
        rotation.failed(2);
        assert_eq!(rotation.current(), 0, "wraps around");
    }

    #[tokio::test]
    async fn an_empty_server_list_is_a_configuration_error_naming_the_flag() {
        let err = FederationClient::new(&[], &TransportSecurity::Plaintext, Duration::from_secs(1))
            .expect_err("no servers");
        assert!(err.to_string().contains("servers"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_does_not_answer_in_time_is_left_for_the_next() {
        // A listener that accepts and never answers: the call times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let link = FederationClient::new(
            &[addr, "127.0.0.1:1".to_owned()],
            &TransportSecurity::Plaintext,
            Duration::from_millis(200),
        )
        .expect("a client");
        let err = link.read_state().await.expect_err("nobody answers");
        assert!(err.is_retryable(), "{err}");
        assert_eq!(link.current_server(), "127.0.0.1:1");
    }
}
