//! A real registry for the agent to talk to: `RegistryServer`s on 127.0.0.1:0 with
//! short Raft timeouts, and a link wrapper that counts what the agent proposes.

use flotilla_client::{FederationClient, RegistryLink};
use flotilla_core::{Command, State};
use flotilla_registry::{Bootstrap, RegistryServer, ServerConfig, TransportSecurity};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs a test body under a hard timeout so that no test can hang the suite.
pub(crate) async fn bounded<F: Future<Output = TestResult>>(secs: u64, f: F) -> TestResult {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .map_err(|_| format!("test did not finish within {secs}s"))?
}

/// Polls `check` until it returns `Some`, or fails after `within`.
pub(crate) async fn eventually<T, F, Fut>(
    what: &str,
    within: Duration,
    mut check: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts (or, with the same `dir`, restarts) a one-member federation on `addr`.
pub(crate) async fn start_server(
    dir: &Path,
    addr: SocketAddr,
    bootstrap: Bootstrap,
) -> Result<(RegistryServer, SocketAddr), Box<dyn std::error::Error + Send + Sync>> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let mut c = ServerConfig::new(dir.join("node-1"), "agent-test");
    c.node_id = Some(1);
    c.heartbeat_interval = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(300);
    c.election_timeout_max = Duration::from_millis(600);
    c.housekeeping_interval = Some(Duration::from_millis(200));
    c.fsync = false;
    let server = RegistryServer::start(c, listener, bootstrap).await?;
    // A one-member federation elects itself; wait until it can take writes.
    eventually("a leader", Duration::from_secs(10), || async {
        server.raft().metrics().borrow().current_leader.map(|_| ())
    })
    .await?;
    Ok((server, addr))
}

pub(crate) fn link(addrs: &[SocketAddr]) -> Result<FederationClient, flotilla_client::Error> {
    let servers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    FederationClient::new(
        &servers,
        &TransportSecurity::Plaintext,
        Duration::from_secs(2),
    )
}

/// A real link that counts what was proposed and applied, by command kind.
#[derive(Debug)]
pub(crate) struct Counting<L> {
    inner: Arc<L>,
    applied: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl<L> Clone for Counting<L> {
    fn clone(&self) -> Self {
        Counting {
            inner: self.inner.clone(),
            applied: self.applied.clone(),
        }
    }
}

impl<L: RegistryLink> Counting<L> {
    pub(crate) fn new(inner: L) -> Self {
        Counting {
            inner: Arc::new(inner),
            applied: Arc::default(),
        }
    }

    pub(crate) fn applied(&self, kind: &str) -> u64 {
        self.applied.lock().unwrap().get(kind).copied().unwrap_or(0)
    }
}

impl<L: RegistryLink> RegistryLink for Counting<L> {
    async fn propose(&self, command: &Command) -> Result<(), flotilla_client::Error> {
        let r = self.inner.propose(command).await;
        if r.is_ok() {
            *self
                .applied
                .lock()
                .unwrap()
                .entry(command.kind())
                .or_default() += 1;
        }
        r
    }

    async fn read_state(&self) -> Result<State, flotilla_client::Error> {
        self.inner.read_state().await
    }

    async fn watch_replicas(
        &self,
        cluster: &str,
        known_version: u64,
        wait: std::time::Duration,
    ) -> Result<(u64, Vec<flotilla_core::PlacedReplica>), flotilla_client::Error> {
        self.inner
            .watch_replicas(cluster, known_version, wait)
            .await
    }
}

/// The registry as the server applied it.
pub(crate) fn state(server: &RegistryServer) -> State {
    (*server.applied().state).clone()
}
