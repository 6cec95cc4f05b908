//! `flotilla up`: a whole federation on one machine, a steady load through its
//! gateways, a scenario played against it, a live view, and a summary at the end.
//!
//! Per cluster of the scenario it starts a `flotilla server` (one Raft member), a
//! `flotilla agent` with a simulated GPU fleet (which runs the model replicas placed
//! there as local `flotilla model` processes) and a `flotilla gateway` — all over
//! mTLS, with a CA made fresh in the state directory. Then it applies the scenario's
//! workloads, waits until every model answers, and plays the scenario's capacity
//! events at `--speed` times real time while requests flow.
//!
//! The parts:
//! - [`topology`]: the plan, checked before anything starts (pure);
//! - [`layout`], [`identities`]: the state directory and the PKI;
//! - [`supervisor`]: the child processes (process groups, logs, kill, restart);
//! - [`registry`], [`observe`]: reading the federation, noticing moves;
//! - [`load`]: the request load and its records; [`play`]: the scenario's events;
//! - [`view`], [`summary`]: what people see.

pub mod chaos;
mod chaos_play;
pub mod history;
pub mod identities;
pub mod layout;
pub mod load;
pub mod observe;
pub mod play;
pub mod registry;
pub mod restart;
pub mod summary;
pub mod supervisor;
pub mod topology;
pub mod view;

use flotilla_client::{Mtls, TransportSecurity};
use flotilla_core::Command;
use flotilla_pki::{RotatingCert, TrustBundle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use supervisor::{Role, Supervisor};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use summary::Summary;
pub use topology::{Topology, TopologyOptions};

/// The federation's name in every certificate of a local run.
pub const FEDERATION: &str = "local";

/// Raft's election timeout range for `up`'s servers, in milliseconds. On one
/// machine the network adds nothing, so elections can be faster than a real
/// federation's defaults: a lost leader is replaced in about a second, which the
/// follow-time target for losing the leader's cluster needs.
const ELECTION_TIMEOUT_MS: (u64, u64) = (300, 600);

/// The tenant `up`'s own load calls as when the gateways enforce governance.
pub const LOAD_TENANT: &str = "flotilla-up";

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{flag}: {message}")]
    Option { flag: &'static str, message: String },
    #[error("scenario {}: {message}", path.display())]
    Scenario { path: PathBuf, message: String },
    #[error(transparent)]
    Sim(#[from] flotilla_sim::SimError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PKI: {0}")]
    Pki(String),
    #[error("cannot start the {what} ({}): {source}", binary.display())]
    Spawn {
        what: String,
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("registry: {0}")]
    Registry(String),
    #[error("agent admin endpoint {agent}: {message}")]
    Agent { agent: SocketAddr, message: String },
    #[error("{what} did not come up within {after:?}{detail}")]
    NotReady {
        what: String,
        after: Duration,
        detail: String,
    },
    #[error("the {what} exited ({status}) while starting; its log is {}", log.display())]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
    },
}

/// Everything `flotilla up` can be told.
pub struct UpOptions {
    /// The `flotilla` executable every process runs.
    pub binary: PathBuf,
    pub scenario: PathBuf,
    pub state_dir: PathBuf,
    pub clusters: Option<usize>,
    pub speed: f64,
    /// Stop after this long (default: the scenario's length at `speed`).
    pub duration: Option<Duration>,
    /// Requests per second through all gateways together.
    pub rate: f64,
    pub lease: Duration,
    /// Faults injected on top of the scenario's events.
    pub injections: Vec<topology::Injection>,
    /// Random faults throughout the run, and the checks that they did no harm.
    pub chaos: Option<chaos::ChaosOptions>,
    /// Gateways enforce the registry's tenants, keys and policies (as
    /// `flotilla install` sets them up); `up`'s own load calls as tenant
    /// [`LOAD_TENANT`] with a key kept in `STATE/admin/api-key`.
    pub governance: bool,
    /// Draw the live view (when stdout is a terminal); otherwise print events.
    pub live_view: bool,
    /// Progress lines for people while things start and stop.
    pub progress: Box<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for UpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpOptions")
            .field("binary", &self.binary)
            .field("scenario", &self.scenario)
            .field("state_dir", &self.state_dir)
            .field("clusters", &self.clusters)
            .field("speed", &self.speed)
            .field("duration", &self.duration)
            .field("rate", &self.rate)
            .field("lease", &self.lease)
            .field("injections", &self.injections)
            .field("chaos", &self.chaos)
            .field("governance", &self.governance)
            .field("live_view", &self.live_view)
            .finish_non_exhaustive()
    }
}

/// The addresses of one cluster's processes.
#[derive(Debug, Clone)]
pub struct ClusterAddrs {
    pub server: SocketAddr,
    pub gateway: SocketAddr,
    pub east_west: SocketAddr,
    pub gateway_admin: SocketAddr,
    pub agent_admin: SocketAddr,
}

/// Free loopback ports, found by binding port 0 (released just before the children
/// bind them; a clash would show as a child failing to start, named in the error).
fn free_addrs(n: usize) -> Result<Vec<SocketAddr>, UpError> {
    let io = |source| UpError::Io {
        path: PathBuf::from("127.0.0.1:0"),
        source,
    };
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").map_err(io))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map_err(io))
        .collect()
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

/// Runs the whole thing until the scenario ends, `duration` passes or `stop` is
/// cancelled; every process is stopped before it returns.
pub async fn run(o: UpOptions, stop: CancellationToken) -> Result<Summary, UpError> {
    let scenario = flotilla_sim::Scenario::load(&o.scenario)?;
    let mut topo = Topology::from_scenario(
        &scenario,
        &TopologyOptions {
            clusters: o.clusters,
            speed: o.speed,
            lease: o.lease,
        },
    )?;
    topo.inject(&o.injections);
    let mut sup = Supervisor::new(o.binary.clone());
    let result = run_with(&o, &topo, &mut sup, stop).await;
    (o.progress)("stopping every process…");
    sup.shutdown(Duration::from_secs(15)).await;
    result
}

async fn run_with(
    o: &UpOptions,
    topo: &Topology,
    sup: &mut Supervisor,
    stop: CancellationToken,
) -> Result<Summary, UpError> {
    let leftovers = supervisor::stop_leftovers(&o.state_dir, Duration::from_secs(10)).await;
    if !leftovers.is_empty() {
        (o.progress)(&format!(
            "stopped {} processes an earlier run on {} left running",
            leftovers.len(),
            o.state_dir.display()
        ));
    }
    let mut local = Local::prepare(o, topo)?;
    let mut reg = start_servers(o, topo, sup, &local).await?;
    start_agents_and_gateways(o, topo, sup, &local)?;
    wait_for_agents(topo, sup, &local).await?;
    let models = apply_workloads(o, topo, &mut reg).await?;
    if o.governance {
        local.api_key = Some(create_load_tenant(o, &local, &mut reg).await?);
    }
    wait_for_models(o, topo, sup, &local, &models).await?;
    play_scenario(o, topo, sup, &local, &mut reg, models, stop).await
}

/// What the first phase sets up on this machine and every later phase uses.
struct Local {
    state: layout::StateDir,
    /// One per cluster, in the topology's order.
    addrs: Vec<ClusterAddrs>,
    /// Every server's address, in the same order.
    servers: Vec<String>,
    /// The admin's mTLS, for `up`'s own registry clients.
    security: TransportSecurity,
    /// With `--governance`: the API key of `up`'s own load.
    api_key: Option<String>,
}

impl Local {
    /// The state directory, a fresh CA with every identity, each cluster's fleet
    /// file, and free ports for every process.
    fn prepare(o: &UpOptions, topo: &Topology) -> Result<Local, UpError> {
        let state = layout::StateDir::prepare(&o.state_dir)?;
        let names: Vec<String> = topo.clusters.iter().map(|c| c.name.clone()).collect();
        let fingerprint = identities::create(&state, FEDERATION, &names)?;
        (o.progress)(&format!(
            "federation {FEDERATION:?}: CA sha256:{} in {}",
            &fingerprint[..16.min(fingerprint.len())],
            state.root().display()
        ));
        for c in &topo.clusters {
            let path = state.fleet(&c.name);
            std::fs::write(&path, &c.fleet_toml).map_err(|source| UpError::Io { path, source })?;
        }
        let addrs = cluster_addrs(topo.clusters.len())?;
        let servers: Vec<String> = addrs.iter().map(|a| a.server.to_string()).collect();
        let security = admin_security(&state.admin_dir())?;
        let local = Local {
            state,
            addrs,
            servers,
            security,
            api_key: None,
        };
        local.write_endpoints(topo, o.governance)?;
        Ok(local)
    }

    /// `STATE/endpoints.json`: every process's address, for scripts and tests
    /// that drive a running `up`.
    fn write_endpoints(&self, topo: &Topology, governance: bool) -> Result<(), UpError> {
        let clusters: Vec<serde_json::Value> = self
            .clusters(topo)
            .map(|(c, a)| {
                serde_json::json!({
                    "name": c.name,
                    "server": a.server.to_string(),
                    "gateway": a.gateway.to_string(),
                    "gateway_admin": a.gateway_admin.to_string(),
                    "east_west": a.east_west.to_string(),
                })
            })
            .collect();
        let endpoints = serde_json::json!({
            "federation": FEDERATION,
            "admin_dir": self.state.admin_dir(),
            "governance": governance,
            "api_key_file": governance.then(|| self.state.api_key_file()),
            "clusters": clusters,
        });
        let path = self.state.root().join("endpoints.json");
        std::fs::write(&path, format!("{endpoints:#}\n"))
            .map_err(|source| UpError::Io { path, source })
    }

    /// How `up`'s requests are sent, with the load's key when there is one.
    fn sender(&self) -> load::Sender {
        load::Sender::new(self.api_key.as_deref())
    }

    /// Each cluster of the topology with its addresses.
    fn clusters<'a>(
        &'a self,
        topo: &'a Topology,
    ) -> impl Iterator<Item = (&'a topology::ClusterPlan, &'a ClusterAddrs)> {
        topo.clusters.iter().zip(&self.addrs)
    }

    fn agent_admin(&self, topo: &Topology, cluster: &str) -> Option<SocketAddr> {
        self.clusters(topo)
            .find(|(c, _)| c.name == cluster)
            .map(|(_, a)| a.agent_admin)
    }

    /// Server `i` starts the federation if it is the first, or joins the first.
    fn server_args(&self, i: usize, c: &topology::ClusterPlan, a: &ClusterAddrs) -> Vec<String> {
        let dir = self.state.server_dir(&c.name);
        let mut args = vec![s("server"), s("--data-dir"), s(dir.display())];
        args.extend([s("--listen"), s(a.server), s("--housekeeping-ms"), s(200)]);
        let (min, max) = ELECTION_TIMEOUT_MS;
        args.extend([
            s("--election-min-ms"),
            s(min),
            s("--election-max-ms"),
            s(max),
        ]);
        match self.servers.first() {
            Some(first) if i > 0 => args.extend([s("--join"), first.clone()]),
            _ => args.extend([s("--init"), s("--federation"), s(FEDERATION)]),
        }
        args
    }

    /// An agent with a simulated fleet, reporting on `lease`'s rhythm.
    fn agent_args(
        &self,
        c: &topology::ClusterPlan,
        a: &ClusterAddrs,
        lease: Duration,
    ) -> Vec<String> {
        let fleet = self.state.fleet(&c.name);
        let mut args = vec![s("agent"), s("--cluster"), c.name.clone()];
        args.extend([s("--region"), c.region.clone()]);
        if !c.zone.is_empty() {
            args.extend([s("--zone"), c.zone.clone()]);
        }
        args.extend([s("--gateway-address"), s(a.east_west)]);
        args.extend([s("--servers"), self.servers.join(",")]);
        args.extend([s("--state-dir"), s(self.state.agent_dir(&c.name).display())]);
        args.extend([
            s("--gpu-source"),
            s("simulated"),
            s("--fleet"),
            s(fleet.display()),
        ]);
        args.extend([s("--admin-listen"), s(a.agent_admin)]);
        args.extend([s("--sample-interval"), s("500ms")]);
        args.extend([s("--heartbeat-interval"), heartbeat(lease)]);
        args.extend([s("--poll-interval"), s("200ms")]);
        args
    }

    fn gateway_args(
        &self,
        c: &topology::ClusterPlan,
        a: &ClusterAddrs,
        governance: bool,
    ) -> Vec<String> {
        let mut args = vec![s("gateway"), s("--cluster"), c.name.clone()];
        if governance {
            args.push(s("--registry-governance"));
        }
        args.extend([s("--federation"), s(FEDERATION)]);
        args.extend([s("--servers"), self.servers.join(",")]);
        args.extend([
            s("--state-dir"),
            s(self.state.gateway_dir(&c.name).display()),
        ]);
        args.extend([
            s("--listen"),
            s(a.gateway),
            s("--east-west-listen"),
            s(a.east_west),
        ]);
        args.extend([s("--admin-listen"), s(a.gateway_admin)]);
        args.extend([s("--shutdown-grace"), s("5s")]);
        args
    }

    /// What to try once everything answers: `ctl` and `curl` against the first
    /// cluster.
    fn ctl_hint(&self) -> String {
        let key = match self.api_key {
            Some(_) => format!(
                " -H \"Authorization: Bearer $(cat {})\"",
                self.state.api_key_file().display()
            ),
            None => String::new(),
        };
        format!(
            "flotilla ctl --config-dir {} --server {} get placements   ·   curl{key} http://{}/v1/models   ·   Ctrl-C stops",
            self.state.admin_dir().display(),
            self.servers.first().map_or("", String::as_str),
            self.addrs
                .first()
                .map_or_else(String::new, |a| a.gateway.to_string())
        )
    }
}

/// Five free ports per cluster: server, gateway, east-west, gateway admin, agent admin.
fn cluster_addrs(clusters: usize) -> Result<Vec<ClusterAddrs>, UpError> {
    let ports = free_addrs(5 * clusters)?;
    Ok(ports
        .chunks(5)
        .map(|p| ClusterAddrs {
            server: p[0],
            gateway: p[1],
            east_west: p[2],
            gateway_admin: p[3],
            agent_admin: p[4],
        })
        .collect())
}

/// The admin identity `identities::create` made, as client mTLS.
fn admin_security(admin: &std::path::Path) -> Result<TransportSecurity, UpError> {
    Ok(TransportSecurity::Mtls(
        Mtls::new(
            TrustBundle::from_pem_file(&flotilla_pki::layout::ca_path(admin))
                .map_err(|e| UpError::Pki(e.to_string()))?,
            RotatingCert::load(admin, "admin").map_err(|e| UpError::Pki(e.to_string()))?,
        )
        .map_err(|e| UpError::Registry(e.to_string()))?,
    ))
}

/// Servers, one at a time: the first starts the federation, the others join it.
/// Returns `up`'s registry client, once the run's settings are in.
async fn start_servers(
    o: &UpOptions,
    topo: &Topology,
    sup: &mut Supervisor,
    local: &Local,
) -> Result<registry::Registry, UpError> {
    for (i, (c, a)) in local.clusters(topo).enumerate() {
        (o.progress)(&format!(
            "starting the server of {} on {}",
            c.name, a.server
        ));
        let args = local.server_args(i, c, a);
        sup.spawn(
            &c.name,
            Role::Server,
            args,
            local.state.log(&c.name, "server"),
        )?;
        let addr = a.server.to_string();
        wait_for(
            sup,
            &format!("server of {}", c.name),
            Duration::from_secs(60),
            || {
                let (addr, security) = (addr.clone(), local.security.clone());
                async move { registry::Registry::member_ready(&addr, &security).await }
            },
        )
        .await?;
    }
    let mut reg = registry::Registry::new(&local.servers, &local.security)?;
    reg.propose(&Command::SetSettings {
        settings: topo.settings.clone(),
    })
    .await?;
    Ok(reg)
}

fn start_agents_and_gateways(
    o: &UpOptions,
    topo: &Topology,
    sup: &mut Supervisor,
    local: &Local,
) -> Result<(), UpError> {
    for (c, a) in local.clusters(topo) {
        (o.progress)(&format!(
            "starting the agent and gateway of {} (gateway http://{})",
            c.name, a.gateway
        ));
        let args = local.agent_args(c, a, o.lease);
        sup.spawn(
            &c.name,
            Role::Agent,
            args,
            local.state.log(&c.name, "agent"),
        )?;
        let args = local.gateway_args(c, a, o.governance);
        sup.spawn(
            &c.name,
            Role::Gateway,
            args,
            local.state.log(&c.name, "gateway"),
        )?;
    }
    Ok(())
}

/// Until every cluster is Ready with GPUs in its inventory: placements need both.
async fn wait_for_agents(
    topo: &Topology,
    sup: &mut Supervisor,
    local: &Local,
) -> Result<(), UpError> {
    let expected = topo.clusters.len();
    let reg_ready =
        tokio::sync::Mutex::new(registry::Registry::new(&local.servers, &local.security)?);
    wait_for(
        sup,
        "every cluster's agent",
        Duration::from_secs(60),
        || async {
            let mut r = reg_ready.lock().await;
            r.read().await.is_ok_and(|st| {
                st.clusters()
                    .values()
                    .filter(|c| {
                        c.state == flotilla_core::ClusterState::Ready
                            && !c.inventory.nodes.is_empty()
                    })
                    .count()
                    == expected
            })
        },
    )
    .await
}

/// Applies the scenario's workloads; returns the models they serve.
async fn apply_workloads(
    o: &UpOptions,
    topo: &Topology,
    reg: &mut registry::Registry,
) -> Result<Vec<String>, UpError> {
    (o.progress)(&format!("applying {} workloads", topo.workloads.len()));
    for w in &topo.workloads {
        reg.propose(&Command::ApplyWorkload {
            workload: w.clone(),
        })
        .await?;
    }
    let mut models: Vec<String> = topo.workloads.iter().map(|w| w.model.clone()).collect();
    models.dedup();
    Ok(models)
}

/// With `--governance`: tenant [`LOAD_TENANT`], approved for every model, and an
/// API key for `up`'s own load, kept (0600) in `STATE/admin/api-key` so that people
/// and scripts can call the gateways too.
async fn create_load_tenant(
    o: &UpOptions,
    local: &Local,
    reg: &mut registry::Registry,
) -> Result<String, UpError> {
    (o.progress)(&format!(
        "governance on: tenant {LOAD_TENANT} (every model) and its key in {}",
        local.state.api_key_file().display()
    ));
    let tenant = flotilla_core::Tenant {
        name: LOAD_TENANT.to_owned(),
        identities: Vec::new(),
    };
    reg.propose(&Command::SetTenant { tenant }).await?;
    let policy = flotilla_core::TenantPolicy {
        tenant: LOAD_TENANT.to_owned(),
        approved_models: vec!["*".to_owned()],
        requests_per_minute: 0,
        tokens_per_minute: 0,
        external_endpoints: Vec::new(),
    };
    reg.propose(&Command::SetPolicy { policy }).await?;
    // The key is made by the server that answers; only its hash is replicated.
    let key = reg.create_api_key(LOAD_TENANT).await?;
    let path = local.state.api_key_file();
    flotilla_pki::files::write_new(&path, key.as_bytes(), true)
        .map_err(|e| UpError::Pki(e.to_string()))?;
    Ok(key)
}

/// Every model through every gateway: the load starts only once each path works.
async fn wait_for_models(
    o: &UpOptions,
    topo: &Topology,
    sup: &mut Supervisor,
    local: &Local,
    models: &[String],
) -> Result<(), UpError> {
    for model in models {
        (o.progress)(&format!(
            "waiting for {model} to answer through every gateway"
        ));
        let sender = local.sender();
        for (c, a) in local.clusters(topo) {
            let gw = a.gateway;
            wait_for(
                sup,
                &format!("{model} through the gateway of {}", c.name),
                Duration::from_secs(120),
                || load::probe(&sender, gw, model, Duration::from_secs(3)),
            )
            .await?;
        }
    }
    Ok(())
}

/// The run proper: the load through every gateway and the scenario's events on
/// their times, with the view, until the end; then the summary.
async fn play_scenario(
    o: &UpOptions,
    topo: &Topology,
    sup: &mut Supervisor,
    local: &Local,
    reg: &mut registry::Registry,
    models: Vec<String>,
    stop: CancellationToken,
) -> Result<Summary, UpError> {
    let hint = local.ctl_hint();
    (o.progress)(&format!("ready. Try: {hint}"));
    let memory_at_start = sup.resident_memory();
    let epoch = Instant::now();
    let until = o.duration.unwrap_or(topo.duration);
    let chaos = o
        .chaos
        .map(|c| chaos_play::ChaosRun::start(c, local, &models, epoch, until));
    let load = Load::start(o, topo, local, models, epoch);
    let mut run = Run {
        o,
        topo,
        local,
        sup,
        epoch,
        until,
        hint,
        log: load.log.clone(),
        paused: load.paused.clone(),
        screen: view::Screen::new(
            o.live_view && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        ),
        observer: observe::Observer::default(),
        player: play::Player::default(),
        lost: Vec::new(),
        next_event: 0,
        printed_events: 0,
        memory_at_start,
        restarts: restart::Restarts::default(),
        restarted: 0,
        chaos,
    };
    let (reader, mut reads) = spawn_registry_reader(local, epoch)?;
    run.tick_until_end(&stop, &mut reads).await?;
    Ok(run.finish(load, reader, reg).await)
}

/// The request load, running on its own task.
struct Load {
    log: load::LoadLog,
    paused: load::Paused,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Requests for `models` through every cluster's gateway, from `epoch` on.
    fn start(
        o: &UpOptions,
        topo: &Topology,
        local: &Local,
        models: Vec<String>,
        epoch: Instant,
    ) -> Load {
        let log = load::LoadLog::default();
        let stop = CancellationToken::new();
        let paused = load::Paused::default();
        let task = tokio::spawn(load::run(
            load::LoadConfig {
                gateways: local
                    .clusters(topo)
                    .map(|(c, a)| (c.name.clone(), a.gateway))
                    .collect(),
                models,
                rate: o.rate,
                max_tokens: 16,
                timeout: Duration::from_secs(30),
                paused: paused.clone(),
                sender: local.sender(),
            },
            log.clone(),
            epoch,
            stop.clone(),
        ));
        Load {
            log,
            paused,
            stop,
            task,
        }
    }
}

/// A registry state read at a time since the start.
type Read = (Duration, flotilla_core::State);

/// Registry reads run apart from the loop: a frozen or lost server must not hold
/// up the view, the load or the scenario's clock.
fn spawn_registry_reader(
    local: &Local,
    epoch: Instant,
) -> Result<
    (
        tokio::task::JoinHandle<()>,
        tokio::sync::mpsc::Receiver<Read>,
    ),
    UpError,
> {
    let (reads_tx, reads) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn({
        let mut reg = registry::Registry::new(&local.servers, &local.security)?;
        async move {
            loop {
                if let Ok(st) = reg.read().await
                    && reads_tx.send((epoch.elapsed(), st)).await.is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    Ok((reader, reads))
}

/// The state of the run proper.
struct Run<'a> {
    o: &'a UpOptions,
    topo: &'a Topology,
    local: &'a Local,
    sup: &'a mut Supervisor,
    epoch: Instant,
    until: Duration,
    hint: String,
    log: load::LoadLog,
    /// Clusters the load leaves alone (lost ones).
    paused: load::Paused,
    screen: view::Screen,
    observer: observe::Observer,
    player: play::Player,
    /// Clusters a scenario event took down: their processes' exits are expected.
    lost: Vec<String>,
    /// The first scenario event not played yet.
    next_event: usize,
    /// How many of the observer's events were printed (without a live view).
    printed_events: u64,
    /// Resident memory of each process when the load started.
    memory_at_start: std::collections::BTreeMap<String, u64>,
    /// Processes that exited on their own, waiting to be started again.
    restarts: restart::Restarts,
    /// How many processes were started again.
    restarted: u64,
    /// `--chaos`: its faults and checks.
    chaos: Option<chaos_play::ChaosRun>,
}

impl Run<'_> {
    fn say(&self, m: &str) {
        (self.o.progress)(m);
    }

    /// Four times a second: take in registry reads, note exits, play due events,
    /// show. Returns at the end, on `stop`, or with an error that ends the run.
    async fn tick_until_end(
        &mut self,
        stop: &CancellationToken,
        reads: &mut tokio::sync::mpsc::Receiver<Read>,
    ) -> Result<(), UpError> {
        let mut ticks = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let now = self.epoch.elapsed();
            if now >= self.until {
                return Ok(());
            }
            while let Ok((at, st)) = reads.try_recv() {
                if let Some(c) = &mut self.chaos {
                    c.checks.registry_read(at, &st);
                }
                self.observer.update(at, st);
            }
            self.note_exits(now);
            self.restart_due(now);
            self.play_due_events(now).await?;
            self.chaos_tick(now).await;
            self.show(now);
        }
    }

    /// Notes processes that exited on their own; a lost cluster's were killed.
    fn note_exits(&mut self, now: Duration) {
        for e in self.sup.exited() {
            if !self.lost.contains(&e.cluster) {
                let delay = self.restarts.exited(&e.cluster, e.role, now);
                self.observer.note(
                    now,
                    format!(
                        "{} {} exited ({}); restarting in {:.0?}; log: {}",
                        e.cluster,
                        e.role.as_str(),
                        e.status,
                        delay,
                        e.log.display()
                    ),
                );
            }
        }
    }

    /// Starts again the processes whose back-off after exiting on their own is over.
    fn restart_due(&mut self, now: Duration) {
        for (cluster, role, attempt) in self.restarts.due(now) {
            let what = format!("{cluster} {}", role.as_str());
            let note = match self.sup.restart(&cluster, role) {
                Ok(true) => {
                    self.restarted += 1;
                    format!("{what} restarted (restart {attempt} in a row)")
                }
                // A scenario event started it again meanwhile.
                Ok(false) => continue,
                Err(e) => {
                    // Counted as another exit: it is tried again after a longer wait.
                    let delay = self.restarts.exited(&cluster, role, now);
                    format!("{what} could not be restarted ({e}); trying again in {delay:.0?}")
                }
            };
            self.observer.note(now, note);
        }
    }

    async fn play_due_events(&mut self, now: Duration) -> Result<(), UpError> {
        let events = &self.topo.events;
        while let Some(e) = events.get(self.next_event).filter(|e| e.at <= now) {
            self.next_event += 1;
            match self.play_event(e).await? {
                Ok(t) => self.observer.note(now, format!("scenario: {t}")),
                Err(err) => self
                    .observer
                    .note(now, format!("scenario event failed: {err}")),
            }
        }
        Ok(())
    }

    /// Plays one event and describes what it did. The inner error is only noted;
    /// the outer one (a stopped server that cannot be restarted) ends the run.
    async fn play_event(
        &mut self,
        e: &topology::TimedEvent,
    ) -> Result<Result<String, UpError>, UpError> {
        Ok(match e.action {
            topology::Action::Lose => {
                self.paused.set(&e.cluster, true);
                self.sup.kill_cluster(&e.cluster).await;
                self.lost.push(e.cluster.clone());
                Ok(format!("{}: {}", e.cluster, e.action.describe()))
            }
            topology::Action::Recover => {
                self.lost.retain(|c| c != &e.cluster);
                self.paused.set(&e.cluster, false);
                self.sup
                    .restart_cluster(&e.cluster)
                    .map(|()| format!("{}: {}", e.cluster, e.action.describe()))
            }
            topology::Action::KillLeader => Ok(self.kill_leader(e).await),
            topology::Action::RestartServers => {
                let restarted = self.restart_stopped_servers()?;
                Ok(format!("{}: {}", e.action.describe(), restarted.join(", ")))
            }
            topology::Action::PauseRegistry => {
                self.sup
                    .signal_role(Role::Server, rustix::process::Signal::STOP);
                Ok(e.action.describe())
            }
            topology::Action::ResumeRegistry => {
                self.sup
                    .signal_role(Role::Server, rustix::process::Signal::CONT);
                Ok(e.action.describe())
            }
            _ => self.gpu_event(e).await,
        })
    }

    async fn kill_leader(&mut self, e: &topology::TimedEvent) -> String {
        match leader_cluster(&self.topo.clusters, &self.local.addrs, &self.local.security).await {
            Some(c) => {
                self.sup.kill(&c, Role::Server).await;
                format!("{} (the server of {c})", e.action.describe())
            }
            None => "no leader is known; no server killed".to_owned(),
        }
    }

    /// Restarts stopped servers, except those of lost clusters (they come back
    /// with their cluster).
    fn restart_stopped_servers(&mut self) -> Result<Vec<String>, UpError> {
        let mut restarted = Vec::new();
        for c in self.sup.stopped(Role::Server) {
            if !self.lost.contains(&c) {
                self.sup.restart_cluster(&c)?;
                restarted.push(c);
            }
        }
        Ok(restarted)
    }

    /// A GPU event, played through the cluster's agent on the GPUs the registry
    /// last showed.
    async fn gpu_event(&mut self, e: &topology::TimedEvent) -> Result<String, UpError> {
        let agent = self.local.agent_admin(self.topo, &e.cluster);
        match (agent, self.observer.state()) {
            (Some(agent), Some(st)) => self.player.apply(&e.cluster, e.action, agent, st).await,
            _ => Ok(format!("{}: skipped, registry not read yet", e.cluster)),
        }
    }

    /// Draws the live view, or prints what is new without a terminal.
    fn show(&mut self, now: Duration) {
        if self.screen.is_tty() {
            self.draw(now);
        } else {
            self.print_new_events();
        }
    }

    fn draw(&self, now: Duration) {
        let records = self.log.snapshot();
        let frame = view::render(&view::Frame {
            elapsed: now,
            until: self.until,
            scenario: &self.topo.scenario,
            next_event: self.topo.events.get(self.next_event),
            state: self.observer.state(),
            records: &records,
            events: self.observer.recent_events(10).collect(),
            hint: &self.hint,
        });
        self.screen.draw(&frame);
    }

    fn print_new_events(&mut self) {
        let (noted, new) = self.observer.events_after(self.printed_events);
        for (at, text) in new {
            (self.o.progress)(&format!("[{:>6.1}s] {text}", at.as_secs_f64()));
        }
        self.printed_events = noted;
    }

    /// Stops the load (requests in flight finish), takes a last registry read,
    /// and sums up.
    async fn finish(
        mut self,
        load: Load,
        reader: tokio::task::JoinHandle<()>,
        reg: &mut registry::Registry,
    ) -> Summary {
        self.screen.finish();
        let ran_for = self.epoch.elapsed();
        let mut chaos = self.chaos.take();
        if let Some(c) = &mut chaos {
            c.thaw_all();
        }
        let memory_at_end = self.sup.resident_memory();
        self.say("stopping the load; waiting for requests in flight");
        load.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(35), load.task).await;
        // Thaw the servers if the run ended inside a partition, for the last read.
        self.sup
            .signal_role(Role::Server, rustix::process::Signal::CONT);
        reader.abort();
        if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(5), reg.read()).await {
            self.observer.update(self.epoch.elapsed(), st);
        }
        let mut summary = self.summary(ran_for);
        summary.memory = summary::process_memory(&self.memory_at_start, &memory_at_end);
        if let Some(c) = chaos {
            self.say("checking the chaos run's history");
            summary.chaos = Some(c.finish(self.restarted, &self.log.snapshot()).await);
        }
        summary
    }

    fn summary(&self, ran_for: Duration) -> Summary {
        let moves: Vec<_> = self.observer.moves().cloned().collect();
        summary::summarize(
            &self.topo.scenario,
            ran_for,
            &self.log.snapshot(),
            &moves,
            &self.topo.events,
        )
    }
}

/// The cluster whose server is the Raft leader now, as any server answers.
async fn leader_cluster(
    clusters: &[topology::ClusterPlan],
    addrs: &[ClusterAddrs],
    security: &TransportSecurity,
) -> Option<String> {
    for a in addrs {
        let Ok(mut client) = flotilla_client::RegistryClient::new(&a.server.to_string(), security)
        else {
            continue;
        };
        let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), client.status()).await
        else {
            continue;
        };
        if status.leader_address.is_empty() {
            continue;
        }
        return clusters
            .iter()
            .zip(addrs)
            .find(|(_, a)| a.server.to_string() == status.leader_address)
            .map(|(c, _)| c.name.clone());
    }
    None
}

/// A third of the lease, so one missed heartbeat does not lose the cluster.
fn heartbeat(lease: Duration) -> String {
    format!("{}ms", (lease.as_millis() / 3).max(100))
}

/// Polls `ready` every 200 ms until it says yes, a child dies, or `within` passes.
async fn wait_for<F, Fut>(
    sup: &mut Supervisor,
    what: &str,
    within: Duration,
    mut ready: F,
) -> Result<(), UpError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(e) = sup.exited().into_iter().next() {
            return Err(UpError::Exited {
                what: format!("{} {}", e.cluster, e.role.as_str()),
                status: e.status,
                log: e.log,
            });
        }
        if Instant::now() >= deadline {
            return Err(UpError::NotReady {
                what: what.to_owned(),
                after: within,
                detail: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// For the binary: shared ownership of the options' progress printer.
pub fn stderr_progress() -> Box<dyn Fn(&str) + Send + Sync> {
    let lock = Arc::new(std::sync::Mutex::new(()));
    Box::new(move |m: &str| {
        let _g = lock.lock();
        eprintln!("{m}");
    })
}
