//! Registry servers for tests: one alone, or a federation of N, on 127.0.0.1 with
//! Raft timeouts short enough that elections take a fraction of a second.

use crate::wait::{TestResult, eventually};
use flotilla_client::RegistryClient;
use flotilla_core::State;
use flotilla_registry::clock::WallClock;
use flotilla_registry::network::FaultInjector;
use flotilla_registry::store::StorageFaults;
use flotilla_registry::types::NodeId;
use flotilla_registry::{Bootstrap, CaHolder, RegistryServer, ServerConfig, TransportSecurity};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;

/// The federation every test server belongs to unless a test names another.
pub const FEDERATION: &str = "test-fed";

/// A federation member's heartbeat: elections follow a lost leader within a second.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
/// The shortest election timeout of a federation member.
pub const ELECTION_MIN: Duration = Duration::from_millis(400);
/// The longest election timeout of a federation member.
pub const ELECTION_MAX: Duration = Duration::from_millis(800);

/// How long a lone server may take to elect itself, or a federation its first leader.
const FIRST_LEADER: Duration = Duration::from_secs(10);
/// How long joining members may take to become voters.
const JOINED: Duration = Duration::from_secs(20);
/// The most voters a federation has; members beyond are learners.
const MAX_VOTERS: u64 = 5;

// ---------------------------------------------------------------- one server

/// The configuration of a lone test server (node 1) in `data_dir`: short Raft
/// timeouts, housekeeping every 200 ms, and no fsync (a test's data dies with it).
pub fn one_member_config(data_dir: impl Into<PathBuf>, federation: &str) -> ServerConfig {
    let mut c = ServerConfig::new(data_dir, federation);
    c.node_id = Some(1);
    c.heartbeat_interval = HEARTBEAT;
    c.election_timeout_min = Duration::from_millis(300);
    c.election_timeout_max = Duration::from_millis(600);
    c.housekeeping_interval = Some(Duration::from_millis(200));
    c.fsync = false;
    c
}

/// Starts (or, with the same `dir`, restarts) a plaintext one-member federation on
/// `addr` (port 0 for any), and returns it once it takes writes, with its address.
pub async fn start_server(
    dir: &Path,
    addr: SocketAddr,
    bootstrap: Bootstrap,
) -> TestResult<(RegistryServer, SocketAddr)> {
    let config = one_member_config(dir.join("node-1"), FEDERATION);
    start_server_with(config, addr, bootstrap).await
}

/// [`start_server`] with a configuration of the test's own (start from
/// [`one_member_config`]): mTLS, a CA, other timings.
pub async fn start_server_with(
    config: ServerConfig,
    addr: SocketAddr,
    bootstrap: Bootstrap,
) -> TestResult<(RegistryServer, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let server = RegistryServer::start(config, listener, bootstrap).await?;
    // A one-member federation elects itself; writes fail until it has.
    eventually("a leader", FIRST_LEADER, || async {
        server.raft().metrics().borrow().current_leader.map(|_| ())
    })
    .await?;
    Ok((server, addr))
}

// ---------------------------------------------------------------- federation

/// A federation of test servers on 127.0.0.1, each with its own data directory in
/// one temporary directory, and faults that the tests inject between them.
///
/// Servers keep their address across a restart, as a real member's does. Set
/// `tweak`, `security` and `ca` before starting the servers they concern.
pub struct Federation {
    /// Holds every member's data directory.
    pub dir: TempDir,
    /// The federation's name.
    pub name: String,
    /// The running servers.
    pub servers: BTreeMap<NodeId, RegistryServer>,
    /// Every server started so far, running or not.
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    /// Shared by all members: partitions and dropped messages.
    pub faults: FaultInjector,
    /// Changes each member's configuration after the defaults (see [`Federation::config`]).
    pub tweak: fn(&mut ServerConfig),
    /// Per-member transport security; plaintext where absent.
    pub security: BTreeMap<NodeId, TransportSecurity>,
    /// Per-member wall clocks, which tests step (see [`Federation::clock`]).
    clocks: std::sync::Mutex<BTreeMap<NodeId, WallClock>>,
    /// Each member's disk (see [`Federation::disk`]).
    disks: std::sync::Mutex<BTreeMap<NodeId, StorageFaults>>,
    /// The member that holds the federation CA, and the CA.
    pub ca: BTreeMap<NodeId, Arc<CaHolder>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("dir", &self.dir.path())
            .field("name", &self.name)
            .field("running", &self.servers.keys().collect::<Vec<_>>())
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

fn no_tweak(_: &mut ServerConfig) {}

/// A cluster's heartbeats, sent from a task until stopped.
#[derive(Debug)]
pub struct Heartbeats {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeats {
    /// Stops sending; returns once the last heartbeat is done.
    pub async fn stop(self) -> Result<(), tokio::task::JoinError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await
    }
}

impl Federation {
    /// A federation with no servers yet.
    pub fn new() -> Result<Self, std::io::Error> {
        Ok(Federation {
            dir: TempDir::new()?,
            name: FEDERATION.to_owned(),
            servers: BTreeMap::new(),
            addrs: BTreeMap::new(),
            faults: FaultInjector::default(),
            tweak: no_tweak,
            security: BTreeMap::new(),
            clocks: std::sync::Mutex::new(BTreeMap::new()),
            disks: std::sync::Mutex::new(BTreeMap::new()),
            ca: BTreeMap::new(),
        })
    }

    /// A plaintext federation of `n` running servers (see [`Federation::start_members`]).
    pub async fn with_members(n: u64) -> TestResult<Self> {
        let mut f = Federation::new()?;
        f.start_members(n).await?;
        Ok(f)
    }

    /// Starts servers 1 to `n`: 1 initializes, the others join through it. Returns
    /// once up to five of them (an odd number) are voters.
    pub async fn start_members(&mut self, n: u64) -> TestResult {
        self.start(1, Bootstrap::Init).await?;
        self.wait_leader(FIRST_LEADER).await?;
        for id in 2..=n {
            let first = self.addr(1);
            self.start(id, Bootstrap::Join(first)).await?;
        }
        // The registry keeps an odd number of voters: 2 members make 1, 4 make 3.
        let voters =
            flotilla_registry::voter_target(usize::try_from(n)?, usize::try_from(MAX_VOTERS)?);
        self.wait_voters(voters, JOINED).await?;
        Ok(())
    }

    /// Member `id`'s data directory.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Member `id`'s configuration: short Raft timeouts, housekeeping every 200 ms,
    /// this federation's faults, security and CA, then `tweak`.
    pub fn config(&self, id: NodeId) -> ServerConfig {
        let mut c = ServerConfig::new(self.data_dir(id), self.name.clone());
        c.node_id = Some(id);
        c.heartbeat_interval = HEARTBEAT;
        c.election_timeout_min = ELECTION_MIN;
        c.election_timeout_max = ELECTION_MAX;
        c.housekeeping_interval = Some(Duration::from_millis(200));
        c.join_timeout = JOINED;
        c.faults = Some(self.faults.clone());
        if let Some(s) = self.security.get(&id) {
            c.security = s.clone();
        }
        c.ca = self.ca.get(&id).cloned();
        c.wall_clock = self.clock(id);
        c.storage_faults = Some(self.disk(id));
        (self.tweak)(&mut c);
        c
    }

    /// Member `id`'s wall clock, the same across restarts: step it to play a
    /// host whose clock jumps.
    pub fn clock(&self, id: NodeId) -> WallClock {
        let mut clocks = self
            .clocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clocks.entry(id).or_default().clone()
    }

    /// Member `id`'s disk, the same across restarts: fill it to play a host whose
    /// disk is full.
    pub fn disk(&self, id: NodeId) -> StorageFaults {
        let mut disks = self
            .disks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        disks.entry(id).or_default().clone()
    }

    /// Starts (or restarts, on its old address) server `id`.
    pub async fn start(&mut self, id: NodeId, bootstrap: Bootstrap) -> TestResult {
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

    /// Member `id`'s address, or an empty string for one never started.
    pub fn addr(&self, id: NodeId) -> String {
        self.addrs
            .get(&id)
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    /// Heartbeats `cluster` every `every` through whichever running member
    /// answers, as its agent would, until [`Heartbeats::stop`].
    pub fn heartbeats(&self, cluster: &str, every: Duration) -> Heartbeats {
        let addrs: Vec<String> = self.addrs.values().map(ToString::to_string).collect();
        let command = flotilla_core::Command::Heartbeat {
            cluster: cluster.to_owned(),
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut turn = 0usize;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..addrs.len() {
                    turn += 1;
                    let addr = &addrs[turn % addrs.len()];
                    let Ok(mut client) = RegistryClient::new(addr, &TransportSecurity::Plaintext)
                    else {
                        continue;
                    };
                    let sent =
                        tokio::time::timeout(Duration::from_millis(300), client.propose(&command));
                    if matches!(sent.await, Ok(Ok(r)) if r.applied) {
                        break;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Heartbeats { stop, task }
    }

    /// A plaintext client of member `id`.
    pub fn client(&self, id: NodeId) -> Result<RegistryClient, flotilla_client::Error> {
        RegistryClient::new(&self.addr(id), &TransportSecurity::Plaintext)
    }

    /// The leader all running servers agree on (among `among`, or all).
    pub fn agreed_leader(&self, among: &[NodeId]) -> Option<NodeId> {
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

    /// Waits until the running servers agree on a leader, and returns it.
    pub async fn wait_leader(&self, within: Duration) -> Result<NodeId, String> {
        eventually("a leader", within, || async { self.agreed_leader(&[]) }).await
    }

    /// Waits until the leader's membership has exactly `voters` voters and no
    /// change is under way.
    pub async fn wait_voters(&self, voters: usize, within: Duration) -> Result<(), String> {
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
    pub async fn wait_converged(&self, within: Duration) -> Result<u64, String> {
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
    pub fn states(&self) -> BTreeMap<NodeId, State> {
        self.servers
            .iter()
            .map(|(id, s)| (*id, (*s.applied().state).clone()))
            .collect()
    }

    /// Shuts server `id` down (if it runs); its address and data stay for a restart.
    pub async fn stop(&mut self, id: NodeId) -> TestResult {
        if let Some(s) = self.servers.remove(&id) {
            s.shutdown().await?;
        }
        Ok(())
    }

    /// Shuts every server down: a test ends with this, so that none outlives it.
    pub async fn stop_all(mut self) -> TestResult {
        let ids: Vec<NodeId> = self.servers.keys().copied().collect();
        for id in ids {
            self.stop(id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_process::register;
    use crate::wait::bounded;

    const LIMIT: Duration = Duration::from_secs(30);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_server_takes_writes_at_once_and_keeps_them_across_a_restart() -> TestResult {
        bounded(LIMIT, async {
            let dir = tempfile::tempdir()?;
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let (server, addr) = start_server(dir.path(), any, Bootstrap::Init).await?;
            let mut client = RegistryClient::new(&addr.to_string(), &TransportSecurity::Plaintext)?;
            assert!(client.propose(&register("east")).await?.applied);
            server.shutdown().await?;

            let (server, again) = start_server(dir.path(), addr, Bootstrap::Resume).await?;
            assert_eq!(again, addr);
            assert!(server.applied().state.cluster("east").is_some());
            server.shutdown().await?;
            Ok(())
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_federation_of_three_has_three_voters_and_replicates_to_all() -> TestResult {
        bounded(LIMIT, async {
            let f = Federation::with_members(3).await?;
            let leader = f.agreed_leader(&[]).ok_or("no leader")?;
            assert!(f.client(leader)?.propose(&register("east")).await?.applied);
            f.wait_converged(Duration::from_secs(10)).await?;
            for (id, state) in f.states() {
                assert!(state.cluster("east").is_some(), "node {id} lacks east");
            }
            f.stop_all().await
        })
        .await
    }
}
