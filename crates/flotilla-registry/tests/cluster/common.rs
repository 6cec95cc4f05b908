//! A test federation: servers on loopback, each with its own data directory.

use flotilla_client::RegistryClient;
use flotilla_core::{ClusterSpec, Command, State};
use flotilla_registry::network::FaultInjector;
use flotilla_registry::types::NodeId;
use flotilla_registry::{Bootstrap, RegistryServer, ServerConfig, TransportSecurity};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub(crate) const HEARTBEAT: Duration = Duration::from_millis(50);
pub(crate) const ELECTION_MIN: Duration = Duration::from_millis(400);
pub(crate) const ELECTION_MAX: Duration = Duration::from_millis(800);

/// Runs a test body under a hard timeout so that no test can hang the suite.
pub(crate) async fn bounded<F: Future<Output = TestResult>>(secs: u64, f: F) -> TestResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
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

pub(crate) fn register(name: &str) -> Command {
    Command::RegisterCluster {
        spec: ClusterSpec {
            name: name.to_owned(),
            region: "europe".to_owned(),
            zone: String::new(),
            labels: Default::default(),
            gateway_address: String::new(),
        },
    }
}

pub(crate) struct Federation {
    pub(crate) dir: TempDir,
    pub(crate) name: String,
    pub(crate) servers: BTreeMap<NodeId, RegistryServer>,
    pub(crate) addrs: BTreeMap<NodeId, SocketAddr>,
    pub(crate) faults: FaultInjector,
    pub(crate) tweak: fn(&mut ServerConfig),
    /// Per-node transport security and CA (mTLS tests); plaintext when absent.
    pub(crate) security: BTreeMap<NodeId, TransportSecurity>,
    pub(crate) ca: BTreeMap<NodeId, std::sync::Arc<flotilla_registry::CaHolder>>,
}

fn no_tweak(_: &mut ServerConfig) {}

impl Federation {
    pub(crate) fn new() -> Result<Self, std::io::Error> {
        Ok(Federation {
            dir: TempDir::new()?,
            name: "test-fed".to_owned(),
            servers: BTreeMap::new(),
            addrs: BTreeMap::new(),
            faults: FaultInjector::default(),
            tweak: no_tweak,
            security: BTreeMap::new(),
            ca: BTreeMap::new(),
        })
    }

    pub(crate) fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub(crate) fn config(&self, id: NodeId) -> ServerConfig {
        let mut c = ServerConfig::new(self.data_dir(id), self.name.clone());
        c.node_id = Some(id);
        c.heartbeat_interval = HEARTBEAT;
        c.election_timeout_min = ELECTION_MIN;
        c.election_timeout_max = ELECTION_MAX;
        c.housekeeping_interval = Some(Duration::from_millis(200));
        c.join_timeout = Duration::from_secs(20);
        c.faults = Some(self.faults.clone());
        if let Some(s) = self.security.get(&id) {
            c.security = s.clone();
        }
        c.ca = self.ca.get(&id).cloned();
        (self.tweak)(&mut c);
        c
    }

    /// Starts (or restarts, on its old address) server `id`.
    pub(crate) async fn start(&mut self, id: NodeId, bootstrap: Bootstrap) -> TestResult {
        let bind = self
            .addrs
            .get(&id)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind).await?;
        self.addrs.insert(id, listener.local_addr()?);
        let server = RegistryServer::start(self.config(id), listener, bootstrap).await?;
        self.servers.insert(id, server);
        Ok(())
    }

    /// Starts `n` servers: 1 initializes, the others join through 1.
    pub(crate) async fn with_members(
        n: u64,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut f = Federation::new()?;
        f.start(1, Bootstrap::Init).await?;
        f.wait_leader(Duration::from_secs(10)).await?;
        for id in 2..=n {
            let first = f.addr(1);
            f.start(id, Bootstrap::Join(first)).await?;
        }
        let voters = n.min(5) as usize;
        f.wait_voters(voters, Duration::from_secs(20)).await?;
        Ok(f)
    }

    pub(crate) fn addr(&self, id: NodeId) -> String {
        self.addrs
            .get(&id)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    pub(crate) fn client(&self, id: NodeId) -> Result<RegistryClient, flotilla_client::Error> {
        RegistryClient::new(&self.addr(id), &TransportSecurity::Plaintext)
    }

    /// The leader all running servers agree on (among `among`, or all).
    pub(crate) fn agreed_leader(&self, among: &[NodeId]) -> Option<NodeId> {
        let mut leader = None;
        for (id, s) in &self.servers {
            if !among.is_empty() && !among.contains(id) {
                continue;
            }
            let l = s.raft().metrics().borrow().current_leader?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader.filter(|l| self.servers.contains_key(l))
    }

    pub(crate) async fn wait_leader(&self, within: Duration) -> Result<NodeId, String> {
        eventually("a leader", within, || async { self.agreed_leader(&[]) }).await
    }

    pub(crate) async fn wait_voters(&self, voters: usize, within: Duration) -> Result<(), String> {
        eventually(&format!("{voters} voters"), within, || async {
            let leader = self.agreed_leader(&[])?;
            let m = self.servers.get(&leader)?.raft().metrics().borrow().clone();
            let n = m.membership_config.membership().voter_ids().count();
            let joint = m.membership_config.membership().get_joint_config().len();
            (n == voters && joint == 1).then_some(())
        })
        .await
    }

    /// Waits until every running server has applied the same index, and returns it.
    pub(crate) async fn wait_converged(&self, within: Duration) -> Result<u64, String> {
        eventually("every member to apply the same log", within, || async {
            let mut index = None;
            for s in self.servers.values() {
                let i = s.applied().last_applied.map(|l| l.index)?;
                if index.is_some_and(|x| x != i) {
                    return None;
                }
                index = Some(i);
            }
            let leader = self.agreed_leader(&[])?;
            let last = self
                .servers
                .get(&leader)?
                .raft()
                .metrics()
                .borrow()
                .last_log_index?;
            (index == Some(last)).then_some(last)
        })
        .await
    }

    /// Every running server's registry.
    pub(crate) fn states(&self) -> BTreeMap<NodeId, State> {
        self.servers
            .iter()
            .map(|(id, s)| (*id, (*s.applied().state).clone()))
            .collect()
    }

    pub(crate) async fn stop(&mut self, id: NodeId) -> TestResult {
        if let Some(s) = self.servers.remove(&id) {
            s.shutdown().await?;
        }
        Ok(())
    }

    pub(crate) async fn stop_all(mut self) -> TestResult {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }
}

/// Asserts that every server holds an identical registry.
pub(crate) fn assert_identical(states: &BTreeMap<NodeId, State>) {
    let mut it = states.iter();
    if let Some((first_id, first)) = it.next() {
        for (id, s) in it {
            assert!(
                s == first,
                "node {id}'s registry differs from node {first_id}'s"
            );
        }
    }
}
