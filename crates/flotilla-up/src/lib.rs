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

pub mod identities;
pub mod layout;
pub mod load;
pub mod observe;
pub mod play;
pub mod registry;
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
    let say = |m: &str| (o.progress)(m);
    let state = layout::StateDir::prepare(&o.state_dir)?;
    let names: Vec<String> = topo.clusters.iter().map(|c| c.name.clone()).collect();
    let fingerprint = identities::create(&state, FEDERATION, &names)?;
    say(&format!(
        "federation {FEDERATION:?}: CA sha256:{} in {}",
        &fingerprint[..16.min(fingerprint.len())],
        state.root().display()
    ));
    for c in &topo.clusters {
        let path = state.fleet(&c.name);
        std::fs::write(&path, &c.fleet_toml).map_err(|source| UpError::Io { path, source })?;
    }
    let ports = free_addrs(5 * topo.clusters.len())?;
    let addrs: Vec<ClusterAddrs> = ports
        .chunks(5)
        .map(|p| ClusterAddrs {
            server: p[0],
            gateway: p[1],
            east_west: p[2],
            gateway_admin: p[3],
            agent_admin: p[4],
        })
        .collect();
    let servers: Vec<String> = addrs.iter().map(|a| a.server.to_string()).collect();
    let admin = state.admin_dir();
    let security = TransportSecurity::Mtls(
        Mtls::new(
            TrustBundle::from_pem_file(&flotilla_pki::layout::ca_path(&admin))
                .map_err(|e| UpError::Pki(e.to_string()))?,
            RotatingCert::load(&admin, "admin").map_err(|e| UpError::Pki(e.to_string()))?,
        )
        .map_err(|e| UpError::Registry(e.to_string()))?,
    );

    // Servers, one at a time: the first starts the federation, the others join it.
    for (i, (c, a)) in topo.clusters.iter().zip(&addrs).enumerate() {
        say(&format!(
            "starting the server of {} on {}",
            c.name, a.server
        ));
        let dir = state.server_dir(&c.name);
        let mut args = vec![s("server"), s("--data-dir"), s(dir.display())];
        args.extend([s("--listen"), s(a.server), s("--housekeeping-ms"), s(200)]);
        match servers.first() {
            Some(first) if i > 0 => args.extend([s("--join"), first.clone()]),
            _ => args.extend([s("--init"), s("--federation"), s(FEDERATION)]),
        }
        sup.spawn(&c.name, Role::Server, args, state.log(&c.name, "server"))?;
        let addr = a.server.to_string();
        wait_for(
            sup,
            &format!("server of {}", c.name),
            Duration::from_secs(60),
            || {
                let (addr, security) = (addr.clone(), security.clone());
                async move { registry::Registry::member_ready(&addr, &security).await }
            },
        )
        .await?;
    }
    let mut reg = registry::Registry::new(&servers, &security)?;
    reg.propose(&Command::SetSettings {
        settings: topo.settings.clone(),
    })
    .await?;

    for (c, a) in topo.clusters.iter().zip(&addrs) {
        say(&format!(
            "starting the agent and gateway of {} (gateway http://{})",
            c.name, a.gateway
        ));
        let fleet = state.fleet(&c.name);
        let mut args = vec![s("agent"), s("--cluster"), c.name.clone()];
        args.extend([s("--region"), c.region.clone()]);
        if !c.zone.is_empty() {
            args.extend([s("--zone"), c.zone.clone()]);
        }
        args.extend([s("--gateway-address"), s(a.east_west)]);
        args.extend([s("--servers"), servers.join(",")]);
        args.extend([s("--state-dir"), s(state.agent_dir(&c.name).display())]);
        args.extend([
            s("--gpu-source"),
            s("simulated"),
            s("--fleet"),
            s(fleet.display()),
        ]);
        args.extend([s("--admin-listen"), s(a.agent_admin)]);
        args.extend([s("--sample-interval"), s("500ms")]);
        args.extend([s("--heartbeat-interval"), heartbeat(o.lease)]);
        args.extend([s("--poll-interval"), s("200ms")]);
        sup.spawn(&c.name, Role::Agent, args, state.log(&c.name, "agent"))?;

        let mut args = vec![s("gateway"), s("--cluster"), c.name.clone()];
        args.extend([s("--federation"), s(FEDERATION)]);
        args.extend([s("--servers"), servers.join(",")]);
        args.extend([s("--state-dir"), s(state.gateway_dir(&c.name).display())]);
        args.extend([
            s("--listen"),
            s(a.gateway),
            s("--east-west-listen"),
            s(a.east_west),
        ]);
        args.extend([s("--admin-listen"), s(a.gateway_admin)]);
        args.extend([s("--shutdown-grace"), s("5s")]);
        sup.spawn(&c.name, Role::Gateway, args, state.log(&c.name, "gateway"))?;
    }
    let expected = topo.clusters.len();
    let reg_ready = tokio::sync::Mutex::new(registry::Registry::new(&servers, &security)?);
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
    .await?;

    say(&format!("applying {} workloads", topo.workloads.len()));
    for w in &topo.workloads {
        reg.propose(&Command::ApplyWorkload {
            workload: w.clone(),
        })
        .await?;
    }
    let models: Vec<String> = {
        let mut m: Vec<String> = topo.workloads.iter().map(|w| w.model.clone()).collect();
        m.dedup();
        m
    };
    let first_gateway = addrs.first().map(|a| a.gateway);
    // Every model through every gateway: the load starts only once each path works.
    for model in &models {
        say(&format!(
            "waiting for {model} to answer through every gateway"
        ));
        for (c, a) in topo.clusters.iter().zip(&addrs) {
            let gw = a.gateway;
            wait_for(
                sup,
                &format!("{model} through the gateway of {}", c.name),
                Duration::from_secs(120),
                || load::probe(gw, model, Duration::from_secs(3)),
            )
            .await?;
        }
    }

    let ctl_hint = format!(
        "flotilla ctl --config-dir {} --server {} get placements   ·   curl http://{}/v1/models   ·   Ctrl-C stops",
        admin.display(),
        servers.first().map_or("", String::as_str),
        first_gateway.map_or_else(String::new, |g| g.to_string())
    );
    say(&format!("ready. Try: {ctl_hint}"));

    // The run proper.
    let epoch = Instant::now();
    let until = o.duration.unwrap_or(topo.duration);
    let log = load::LoadLog::default();
    let load_stop = CancellationToken::new();
    let paused = load::Paused::default();
    let load_task = tokio::spawn(load::run(
        load::LoadConfig {
            gateways: topo
                .clusters
                .iter()
                .zip(&addrs)
                .map(|(c, a)| (c.name.clone(), a.gateway))
                .collect(),
            models,
            rate: o.rate,
            max_tokens: 16,
            timeout: Duration::from_secs(30),
            paused: paused.clone(),
        },
        log.clone(),
        epoch,
        load_stop.clone(),
    ));
    let screen =
        view::Screen::new(o.live_view && std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let mut observer = observe::Observer::default();
    let mut player = play::Player::default();
    let mut next_event = 0usize;
    let mut printed_events = 0usize;
    let mut lost: Vec<String> = Vec::new();
    // Registry reads run apart from the loop: a frozen or lost server must not hold
    // up the view, the load or the scenario's clock.
    let (reads_tx, mut reads) = tokio::sync::mpsc::channel(4);
    let reader = tokio::spawn({
        let mut reg = registry::Registry::new(&servers, &security)?;
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
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = epoch.elapsed();
        if now >= until {
            break;
        }
        while let Ok((at, st)) = reads.try_recv() {
            observer.update(at, st);
        }
        for e in sup.exited() {
            if !lost.contains(&e.cluster) {
                observer.note(
                    now,
                    format!(
                        "{} {} exited ({}); log: {}",
                        e.cluster,
                        e.role.as_str(),
                        e.status,
                        e.log.display()
                    ),
                );
            }
        }
        while let Some(e) = topo.events.get(next_event).filter(|e| e.at <= now) {
            next_event += 1;
            let agent = topo
                .clusters
                .iter()
                .zip(&addrs)
                .find(|(c, _)| c.name == e.cluster)
                .map(|(_, a)| a.agent_admin);
            let text = match e.action {
                topology::Action::Lose => {
                    paused.set(&e.cluster, true);
                    sup.kill_cluster(&e.cluster).await;
                    lost.push(e.cluster.clone());
                    Ok(format!("{}: {}", e.cluster, e.action.describe()))
                }
                topology::Action::Recover => {
                    lost.retain(|c| c != &e.cluster);
                    paused.set(&e.cluster, false);
                    sup.restart_cluster(&e.cluster)
                        .map(|()| format!("{}: {}", e.cluster, e.action.describe()))
                }
                topology::Action::KillLeader => {
                    match leader_cluster(&topo.clusters, &addrs, &security).await {
                        Some(c) => {
                            sup.kill(&c, Role::Server).await;
                            Ok(format!("{} (the server of {c})", e.action.describe()))
                        }
                        None => Ok("no leader is known; no server killed".to_owned()),
                    }
                }
                topology::Action::RestartServers => {
                    let mut restarted = Vec::new();
                    for c in sup.stopped(Role::Server) {
                        if !lost.contains(&c) {
                            sup.restart_cluster(&c)?;
                            restarted.push(c);
                        }
                    }
                    Ok(format!("{}: {}", e.action.describe(), restarted.join(", ")))
                }
                topology::Action::PauseRegistry => {
                    sup.signal_role(Role::Server, rustix::process::Signal::STOP);
                    Ok(e.action.describe())
                }
                topology::Action::ResumeRegistry => {
                    sup.signal_role(Role::Server, rustix::process::Signal::CONT);
                    Ok(e.action.describe())
                }
                _ => match (agent, observer.state()) {
                    (Some(agent), Some(st)) => player.apply(&e.cluster, e.action, agent, st).await,
                    _ => Ok(format!("{}: skipped, registry not read yet", e.cluster)),
                },
            };
            match text {
                Ok(t) => observer.note(now, format!("scenario: {t}")),
                Err(err) => observer.note(now, format!("scenario event failed: {err}")),
            }
        }
        if screen.is_tty() {
            let records = log.snapshot();
            let frame = view::render(&view::Frame {
                elapsed: now,
                until,
                scenario: &topo.scenario,
                next_event: topo.events.get(next_event),
                state: observer.state(),
                records: &records,
                events: observer.recent_events(10).collect(),
                hint: &ctl_hint,
            });
            screen.draw(&frame);
        } else {
            let all: Vec<_> = observer.recent_events(usize::MAX).collect();
            // The observer keeps a bounded window; print what is new in it.
            let total = all.len();
            let new = total.saturating_sub(printed_events.min(total));
            for (at, text) in all.iter().skip(total - new) {
                say(&format!("[{:>6.1}s] {text}", at.as_secs_f64()));
            }
            printed_events = total;
        }
    }
    screen.finish();
    let ran_for = epoch.elapsed();
    say("stopping the load; waiting for requests in flight");
    load_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(35), load_task).await;
    // Thaw the servers if the run ended inside a partition, for the last read.
    sup.signal_role(Role::Server, rustix::process::Signal::CONT);
    reader.abort();
    if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(5), reg.read()).await {
        observer.update(epoch.elapsed(), st);
    }
    let moves: Vec<_> = observer.moves().cloned().collect();
    Ok(summary::summarize(
        &topo.scenario,
        ran_for,
        &log.snapshot(),
        &moves,
        &topo.events,
    ))
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
