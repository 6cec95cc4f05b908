//! The local-process materializer: each replica placed on this cluster is a
//! `flotilla model` child process on this machine (the inference stand-in, or any
//! binary that takes the same arguments and serves `/health`).
//!
//! A replica's life here:
//! - **start**: `BINARY model --listen 127.0.0.1:PORT --model MODEL --replica rID
//!   --cluster CLUSTER` with `CUDA_VISIBLE_DEVICES` set to the replica's device
//!   UUIDs, and a supervisor to watch: with a record (a state directory),
//!   `--supervisor-record FILE --orphan-grace G`, so the replica survives an agent
//!   restart within G and is adopted ([`super::records`]); without one,
//!   `--exit-with-parent AGENT_PID`. Either way an agent killed outright leaves no
//!   replica running unsupervised for long. PORT is a free port found by binding
//!   port 0 and letting it go; if another process takes it first, the child fails
//!   to bind, exits, and is restarted on another port like any crash.
//! - **ready**: `GET /health` answers 200 → `Ready` is reported (while the registry
//!   still says Starting).
//! - **drain**: the registry says Draining → SIGTERM; the stand-in refuses new work,
//!   finishes what is in flight and exits → `Gone`. If it is still running at the
//!   replica's drain deadline → SIGKILL → `Gone`.
//! - **crash**: a child that exits while it should run is started again after a
//!   jittered, doubling delay; its restarts and last exit show in `GET /replicas`
//!   and the log. Core has no "restarting" phase (a Ready replica can only become
//!   Gone), so the registry is not told of each crash; after `max_restarts` crashes
//!   in a row without becoming healthy in between, the replica is reported `Gone` and
//!   the scheduler places a replacement, possibly elsewhere.
//! - **removed**: a replica no longer placed here gets SIGTERM, then SIGKILL after
//!   `stop_grace`.
//! - **shutdown**: every replica gets SIGTERM, then SIGKILL after `stop_grace`;
//!   children are also spawned with `kill_on_drop`. An agent killed outright gets
//!   neither: the next agent adopts the healthy replicas it finds in the record and
//!   stops the rest; with no next agent, the replicas drain by themselves.
//! - **adopted**: a replica taken over from an earlier agent is not this agent's
//!   child. It is watched through `/proc` and signalled by pid, and its exit status
//!   is not known; otherwise it lives as any other.

use super::records::TakeOver;
use crate::AgentError;
use flotilla_client::Backoff;
use flotilla_client::materialize::{DesiredReplica, Materializer, PhaseReport, ReplicaView};
use flotilla_core::{Phase, ReplicaId, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How replicas are run.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `flotilla` binary (its `model` subcommand is run).
    pub binary: PathBuf,
    /// This cluster's name, passed to each replica.
    pub cluster: String,
    /// More arguments after the standard ones (e.g. `--ttft 50ms`).
    pub extra_args: Vec<String>,
    /// How long one `/health` check may take.
    pub health_timeout: Duration,
    /// First and largest delay before restarting a crashed replica.
    pub restart_initial: Duration,
    pub restart_max: Duration,
    /// Crashes in a row (without becoming healthy in between) before giving up.
    pub max_restarts: u32,
    /// How long a replica that is removed, or stopped at shutdown, gets between
    /// SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Let children write to the agent's stdout and stderr (otherwise discarded).
    pub inherit_output: bool,
    /// Where the running replicas are recorded (see [`super::records`]); none by
    /// default.
    pub records: Option<PathBuf>,
    /// How long a recorded replica outlives its agent, waiting to be adopted.
    pub orphan_grace: Duration,
}

impl LocalConfig {
    pub fn new(binary: PathBuf, cluster: impl Into<String>) -> LocalConfig {
        LocalConfig {
            binary,
            cluster: cluster.into(),
            extra_args: Vec::new(),
            health_timeout: Duration::from_millis(500),
            restart_initial: Duration::from_millis(500),
            restart_max: Duration::from_secs(30),
            max_restarts: 5,
            stop_grace: Duration::from_secs(10),
            inherit_output: true,
            records: None,
            orphan_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Starting,
    Ready,
    Draining,
    Restarting,
    Exited,
    Failed,
}

impl Local {
    fn as_str(self) -> &'static str {
        match self {
            Local::Starting => "starting",
            Local::Ready => "ready",
            Local::Draining => "draining",
            Local::Restarting => "restarting",
            Local::Exited => "exited",
            Local::Failed => "failed",
        }
    }
}

/// A running replica: this agent's child, or one adopted from an earlier agent.
#[derive(Debug)]
enum Handle {
    Child(Child),
    Adopted { pid: u32, replica: String },
}

impl Handle {
    fn id(&self) -> Option<u32> {
        match self {
            Handle::Child(c) => c.id(),
            Handle::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// How it ended, once it has.
    fn exit(&mut self) -> Option<String> {
        match self {
            Handle::Child(c) => match c.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
            Handle::Adopted { pid, replica } => super::records::gone(*pid, replica)
                .then(|| "exited (adopted, so its exit status is not known)".to_owned()),
        }
    }

    /// SIGTERM: the stand-in drains on it.
    fn terminate(&self) {
        if let Some(pid) = self.id() {
            super::records::signal(pid, rustix::process::Signal::TERM);
        }
    }

    fn kill(&mut self) {
        match self {
            Handle::Child(c) => {
                let _ = c.start_kill();
            }
            Handle::Adopted { pid, .. } => {
                super::records::signal(*pid, rustix::process::Signal::KILL);
            }
        }
    }

    /// Waits for the exit until `deadline`; SIGKILL after it.
    async fn stop_by(mut self, deadline: Instant) {
        while self.exit().is_none() {
            if Instant::now() >= deadline {
                self.kill();
                if let Handle::Child(mut c) = self {
                    let _ = c.wait().await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[derive(Debug)]
struct Proc {
    desired: DesiredReplica,
    child: Option<Handle>,
    addr: Option<SocketAddr>,
    state: Local,
    restarts: u32,
    /// Crashes since it was last healthy.
    failures: u32,
    backoff: Backoff,
    restart_at: Option<Instant>,
    /// Set when the drain began: SIGKILL after this.
    kill_at: Option<Instant>,
    last_exit: Option<String>,
}

#[derive(Debug)]
struct Stopping {
    child: Handle,
    kill_at: Instant,
    /// The device UUIDs it was given; `None` when unknown (an adopted replica's
    /// record does not say), which holds back every start until it has exited.
    devices: Option<BTreeSet<String>>,
}

impl Stopping {
    /// Whether this process may still be using one of `d`'s devices.
    fn holds_any_of(&self, d: &DesiredReplica) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|held| d.devices.iter().any(|x| held.contains(&x.uuid)))
    }
}

/// Replicas as child processes of the agent.
#[derive(Debug)]
pub struct LocalProcesses {
    config: LocalConfig,
    procs: BTreeMap<ReplicaId, Proc>,
    /// Children of replicas no longer placed here, on their way out.
    stopping: Vec<Stopping>,
    /// What was last written to the record of running replicas.
    recorded: Vec<super::records::ReplicaRecord>,
    /// Replicas taken over from an earlier agent, until the first placements say
    /// whether they are still wanted here.
    adopted: BTreeMap<String, super::records::ReplicaRecord>,
}

impl LocalProcesses {
    pub fn new(config: LocalConfig) -> LocalProcesses {
        LocalProcesses {
            config,
            procs: BTreeMap::new(),
            stopping: Vec::new(),
            recorded: Vec::new(),
            adopted: BTreeMap::new(),
        }
    }

    /// Takes the record over from a previous agent before this one starts any
    /// replica: adopts those that still run healthy, stops the others. Without a
    /// record configured, finds nothing.
    pub async fn take_over_predecessors(&mut self) -> Result<TakeOver, AgentError> {
        let Some(file) = self.config.records.clone() else {
            return Ok(TakeOver::default());
        };
        let found =
            super::records::take_over(&file, self.config.health_timeout, self.config.stop_grace)
                .await
                .map_err(|e| AgentError::Config {
                    field: "state-dir".into(),
                    message: format!("{}: {e}", file.display()),
                })?;
        for r in &found.adopted {
            tracing::info!(replica = %r.replica, pid = r.pid, port = r.port, "adopted a healthy replica the previous agent left running");
        }
        for r in &found.stopped {
            tracing::info!(replica = %r.replica, pid = r.pid, "stopped an unhealthy replica the previous agent left running");
        }
        self.recorded = found.adopted.clone();
        self.adopted = found
            .adopted
            .iter()
            .map(|r| (r.replica.clone(), r.clone()))
            .collect();
        Ok(found)
    }

    /// An adopted replica becomes the process of `d`, or is stopped when no longer
    /// placed here; only until the first placements are known.
    fn settle_adopted(&mut self, desired: &[DesiredReplica], now: Instant) {
        let mut adopted = std::mem::take(&mut self.adopted);
        for d in desired {
            let Some(r) = adopted.remove(&d.id.to_string()) else {
                continue;
            };
            let mut p = self.new_proc(d);
            p.child = Some(Handle::Adopted {
                pid: r.pid,
                replica: r.replica,
            });
            p.addr = Some(SocketAddr::from(([127, 0, 0, 1], r.port)));
            p.state = Local::Starting;
            self.procs.insert(d.id, p);
        }
        for (_, r) in adopted {
            tracing::info!(replica = %r.replica, pid = r.pid, "adopted replica no longer placed here; stopping it");
            let child = Handle::Adopted {
                pid: r.pid,
                replica: r.replica,
            };
            child.terminate();
            self.stopping.push(Stopping {
                child,
                kill_at: now + self.config.stop_grace,
                devices: None,
            });
        }
    }

    fn new_proc(&self, d: &DesiredReplica) -> Proc {
        Proc {
            desired: d.clone(),
            child: None,
            addr: None,
            state: Local::Restarting,
            restarts: 0,
            failures: 0,
            backoff: Backoff::new(
                self.config.restart_initial,
                self.config.restart_max,
                Backoff::seed_from(&d.id.to_string()),
            ),
            restart_at: None,
            kill_at: None,
            last_exit: None,
        }
    }

    /// Records the running replicas, when that changed.
    fn record(&mut self) {
        let Some(file) = &self.config.records else {
            return;
        };
        let running: Vec<super::records::ReplicaRecord> = self
            .procs
            .values()
            .filter_map(|p| {
                Some(super::records::ReplicaRecord {
                    replica: p.desired.id.to_string(),
                    pid: p.child.as_ref()?.id()?,
                    port: p.addr?.port(),
                })
            })
            .collect();
        if running == self.recorded {
            return;
        }
        let record = super::records::Record {
            agent: Some(std::process::id()),
            replicas: running.clone(),
        };
        match super::records::write(file, &record) {
            Ok(()) => self.recorded = running,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot record the running replicas")
            }
        }
    }

    fn spawn(&self, d: &DesiredReplica) -> Result<(Handle, SocketAddr), AgentError> {
        let addr = free_port().map_err(|source| AgentError::Spawn {
            binary: self.config.binary.clone(),
            source,
        })?;
        let devices: Vec<&str> = d.devices.iter().map(|r| r.uuid.as_str()).collect();
        let mut command = Command::new(&self.config.binary);
        command
            .arg("model")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--model")
            .arg(&d.model)
            .arg("--replica")
            .arg(d.id.to_string())
            .arg("--cluster")
            .arg(&self.config.cluster)
            .args(self.supervision())
            .args(&self.config.extra_args)
            .env("CUDA_VISIBLE_DEVICES", devices.join(","))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !self.config.inherit_output {
            command.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = command.spawn().map_err(|source| AgentError::Spawn {
            binary: self.config.binary.clone(),
            source,
        })?;
        tracing::info!(workload = %d.workload, replica = %d.id, %addr, pid = child.id(), "replica started");
        Ok((Handle::Child(child), addr))
    }

    /// How a replica watches this agent, so that it stops by itself once no agent
    /// supervises it, even after a SIGKILL: through the record when there is one
    /// (a restarted agent may adopt it), through its parent otherwise.
    fn supervision(&self) -> Vec<String> {
        match &self.config.records {
            Some(file) => vec![
                "--supervisor-record".to_owned(),
                file.display().to_string(),
                "--orphan-grace".to_owned(),
                format!("{}ms", self.config.orphan_grace.as_millis()),
            ],
            None => vec![
                "--exit-with-parent".to_owned(),
                std::process::id().to_string(),
            ],
        }
    }

    /// Starting or Ready in the registry: keep a healthy process running.
    async fn keep_running(&self, p: &mut Proc, now: Instant, reports: &mut Vec<PhaseReport>) {
        if p.state == Local::Failed {
            reports.push(report(&p.desired, Phase::Gone));
            return;
        }
        if let Some(child) = &mut p.child {
            if let Some(exit) = child.exit() {
                self.crashed(p, now, exit, reports);
                return;
            }
            if p.state == Local::Starting
                && let Some(addr) = p.addr
                && let Ok(status) =
                    crate::http::get_status(addr, "/health", self.config.health_timeout).await
                && status.is_success()
            {
                p.state = Local::Ready;
                p.failures = 0;
                p.backoff.reset();
            }
            if p.state == Local::Ready {
                let endpoint = p.addr.map(|a| a.to_string());
                // Ready is reported once, and again when the replica serves somewhere
                // the registry does not know (restarted on another port).
                if p.desired.phase == Phase::Starting
                    || (p.desired.phase == Phase::Ready && p.desired.endpoint != endpoint)
                {
                    let mut r = report(&p.desired, Phase::Ready);
                    r.endpoint = endpoint;
                    reports.push(r);
                }
            }
            return;
        }
        if p.restart_at.is_some_and(|at| now < at) {
            return;
        }
        // A replica no longer placed here may still hold one of these GPUs while
        // it finishes: a GPU is never given to two processes, so wait for it.
        if self.stopping.iter().any(|s| s.holds_any_of(&p.desired)) {
            tracing::debug!(workload = %p.desired.workload, replica = %p.desired.id, "waiting for a stopping replica to release its GPUs");
            return;
        }
        let again = p.restart_at.take().is_some();
        match self.spawn(&p.desired) {
            Ok((child, addr)) => {
                p.child = Some(child);
                p.addr = Some(addr);
                p.state = Local::Starting;
                if again {
                    p.restarts += 1;
                }
            }
            Err(e) => self.crashed(p, now, e.to_string(), reports),
        }
    }

    fn crashed(&self, p: &mut Proc, now: Instant, exit: String, reports: &mut Vec<PhaseReport>) {
        p.child = None;
        p.addr = None;
        p.failures += 1;
        p.last_exit = Some(exit.clone());
        if p.failures > self.config.max_restarts {
            tracing::error!(workload = %p.desired.workload, replica = %p.desired.id, %exit, failures = p.failures, "replica keeps failing; reporting it gone");
            p.state = Local::Failed;
            reports.push(report(&p.desired, Phase::Gone));
            return;
        }
        let delay = p.backoff.next_delay();
        tracing::warn!(workload = %p.desired.workload, replica = %p.desired.id, %exit, restart_in = ?delay, "replica exited; restarting");
        p.state = Local::Restarting;
        p.restart_at = Some(now + delay);
    }

    /// Draining in the registry: SIGTERM once, wait for the exit or the deadline.
    async fn drain(&self, p: &mut Proc, now: Instant, reports: &mut Vec<PhaseReport>) {
        let Some(child) = &mut p.child else {
            // Nothing runs (never started, between restarts, failed): nothing to wait
            // for.
            if p.state != Local::Failed {
                p.state = Local::Exited;
            }
            p.addr = None;
            reports.push(report(&p.desired, Phase::Gone));
            return;
        };
        let kill_at = *p.kill_at.get_or_insert_with(|| {
            child.terminate();
            let deadline = p
                .desired
                .drain_deadline
                .map_or(now + self.config.stop_grace, |t| instant_at(t, now));
            tracing::info!(workload = %p.desired.workload, replica = %p.desired.id, "draining replica");
            deadline
        });
        p.state = Local::Draining;
        let exit = match child.exit() {
            Some(exit) => exit,
            None if now < kill_at => return,
            None => {
                tracing::warn!(workload = %p.desired.workload, replica = %p.desired.id, "drain deadline passed; killing replica");
                child.kill();
                "killed at the drain deadline".to_owned()
            }
        };
        p.child = None;
        p.addr = None;
        p.state = Local::Exited;
        p.last_exit = Some(exit);
        reports.push(report(&p.desired, Phase::Gone));
    }
}

impl Materializer for LocalProcesses {
    async fn reconcile(&mut self, desired: &[DesiredReplica]) -> Vec<PhaseReport> {
        let now = Instant::now();
        let mut reports = Vec::new();
        if !self.adopted.is_empty() {
            self.settle_adopted(desired, now);
        }

        // Replicas no longer placed here: stop them.
        let wanted: BTreeSet<ReplicaId> = desired.iter().map(|d| d.id).collect();
        let gone: Vec<ReplicaId> = self
            .procs
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(mut p) = self.procs.remove(&id)
                && let Some(child) = p.child.take()
            {
                tracing::info!(workload = %p.desired.workload, replica = %id, "replica no longer placed here; stopping it");
                child.terminate();
                let devices = p.desired.devices.iter().map(|d| d.uuid.clone()).collect();
                self.stopping.push(Stopping {
                    child,
                    kill_at: now + self.config.stop_grace,
                    devices: Some(devices),
                });
            }
        }
        self.stopping.retain_mut(|s| {
            let running = s.child.exit().is_none();
            if running && now >= s.kill_at {
                s.child.kill();
            }
            running
        });

        let mut procs = std::mem::take(&mut self.procs);
        for d in desired {
            let p = procs.entry(d.id).or_insert_with(|| self.new_proc(d));
            p.desired = d.clone();
            match d.phase {
                Phase::Starting | Phase::Ready => self.keep_running(p, now, &mut reports).await,
                Phase::Draining => self.drain(p, now, &mut reports).await,
                // Never stored by the registry; nothing to do.
                Phase::Gone => {}
            }
        }
        self.procs = procs;
        self.record();
        reports
    }

    fn replicas(&self) -> Vec<ReplicaView> {
        self.procs
            .values()
            .map(|p| ReplicaView {
                workload: p.desired.workload.clone(),
                model: p.desired.model.clone(),
                replica: p.desired.id.to_string(),
                id: p.desired.id.0,
                address: p.addr.map(|a| a.to_string()),
                registry_phase: p.desired.phase.as_str(),
                local_state: p.state.as_str(),
                devices: p.desired.devices.iter().map(|d| d.uuid.clone()).collect(),
                pid: p.child.as_ref().and_then(Handle::id),
                restarts: p.restarts,
                last_exit: p.last_exit.clone(),
            })
            .collect()
    }

    async fn shutdown(&mut self) {
        let deadline = Instant::now() + self.config.stop_grace;
        let mut children: Vec<Handle> = self.stopping.drain(..).map(|s| s.child).collect();
        for p in self.procs.values_mut() {
            p.addr = None;
            p.state = Local::Exited;
            if let Some(child) = p.child.take() {
                children.push(child);
            }
        }
        // Adopted but never placed again: the registry was not reached before the
        // agent stopped, and this agent supervises them all the same.
        children.extend(
            std::mem::take(&mut self.adopted)
                .into_values()
                .map(|r| Handle::Adopted {
                    pid: r.pid,
                    replica: r.replica,
                }),
        );
        for child in &children {
            child.terminate();
        }
        for child in children {
            child.stop_by(deadline).await;
        }
        self.record();
    }
}

fn report(d: &DesiredReplica, phase: Phase) -> PhaseReport {
    PhaseReport {
        workload: d.workload.clone(),
        replica: d.id,
        phase,
        endpoint: None,
    }
}

/// A free port on loopback now; see the module documentation for the race.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The monotonic instant of a wall-clock timestamp (the registry's drain deadline).
fn instant_at(at: Timestamp, now: Instant) -> Instant {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now + Duration::from_millis(at.0.saturating_sub(wall))
}
