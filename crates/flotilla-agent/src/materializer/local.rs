//! The local-process materializer: each replica placed on this cluster is a
//! `flotilla model` child process on this machine (the inference stand-in, or any
//! binary that takes the same arguments and serves `/health`).
//!
//! A replica's life here:
//! - **start**: `BINARY model --listen 127.0.0.1:PORT --model MODEL --replica rID
//!   --cluster CLUSTER --exit-with-parent AGENT_PID` with `CUDA_VISIBLE_DEVICES` set
//!   to the replica's device UUIDs. The replica watches that the agent is still its
//!   parent and drains and exits when it is not, so an agent killed outright (no
//!   chance to stop its children) leaves no replica running unsupervised. PORT is
//!   a free port found by binding port 0 and letting it go; if another
//!   process takes it first, the child fails to bind, exits, and is restarted on
//!   another port like any crash.
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
//! - **shutdown**: every child gets SIGTERM, then SIGKILL after `stop_grace`;
//!   children are also spawned with `kill_on_drop`. An agent killed outright gets
//!   neither: its replicas notice (`--exit-with-parent`) and drain, and the next
//!   agent first stops any it finds still running in its record
//!   ([`super::records`]).

use crate::AgentError;
use flotilla_client::Backoff;
use flotilla_client::materialize::{DesiredReplica, Materializer, PhaseReport, ReplicaView};
use flotilla_core::{Phase, ReplicaId, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
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

#[derive(Debug)]
struct Proc {
    desired: DesiredReplica,
    child: Option<Child>,
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
    child: Child,
    kill_at: Instant,
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
}

impl LocalProcesses {
    pub fn new(config: LocalConfig) -> LocalProcesses {
        LocalProcesses {
            config,
            procs: BTreeMap::new(),
            stopping: Vec::new(),
            recorded: Vec::new(),
        }
    }

    /// Stops the replicas a previous agent recorded and left running, before this
    /// one starts any; returns how many. Without a record configured, none.
    pub async fn stop_predecessors(&mut self) -> Result<usize, AgentError> {
        let Some(file) = self.config.records.clone() else {
            return Ok(0);
        };
        let stopped = super::records::stop_recorded(&file, self.config.stop_grace)
            .await
            .map_err(|e| AgentError::Config {
                field: "state-dir".into(),
                message: format!("{}: {e}", file.display()),
            })?;
        for r in &stopped {
            tracing::info!(replica = %r.replica, pid = r.pid, "stopped a replica the previous agent left running");
        }
        Ok(stopped.len())
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
        match super::records::write(file, &running) {
            Ok(()) => self.recorded = running,
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot record the running replicas")
            }
        }
    }

    fn spawn(&self, d: &DesiredReplica) -> Result<(Child, SocketAddr), AgentError> {
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
            // The replica stops by itself if this agent dies, even by SIGKILL.
            .arg("--exit-with-parent")
            .arg(std::process::id().to_string())
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
        Ok((child, addr))
    }

    /// Starting or Ready in the registry: keep a healthy process running.
    async fn keep_running(&self, p: &mut Proc, now: Instant, reports: &mut Vec<PhaseReport>) {
        if p.state == Local::Failed {
            reports.push(report(&p.desired, Phase::Gone));
            return;
        }
        if let Some(child) = &mut p.child {
            let exited = match child.try_wait() {
                Ok(Some(status)) => Some(describe(status)),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            };
            if let Some(exit) = exited {
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
            terminate(child);
            let deadline = p
                .desired
                .drain_deadline
                .map_or(now + self.config.stop_grace, |t| instant_at(t, now));
            tracing::info!(workload = %p.desired.workload, replica = %p.desired.id, "draining replica");
            deadline
        });
        p.state = Local::Draining;
        let exit = match child.try_wait() {
            Ok(Some(status)) => describe(status),
            Ok(None) if now < kill_at => return,
            Ok(None) => {
                tracing::warn!(workload = %p.desired.workload, replica = %p.desired.id, "drain deadline passed; killing replica");
                let _ = child.kill().await;
                "killed at the drain deadline".to_owned()
            }
            Err(e) => format!("cannot wait for it: {e}"),
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
                && let Some(mut child) = p.child.take()
            {
                tracing::info!(workload = %p.desired.workload, replica = %id, "replica no longer placed here; stopping it");
                terminate(&mut child);
                self.stopping.push(Stopping {
                    child,
                    kill_at: now + self.config.stop_grace,
                });
            }
        }
        self.stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(None) => {
                if now >= s.kill_at {
                    let _ = s.child.start_kill();
                }
                true
            }
            Ok(Some(_)) | Err(_) => false,
        });

        let mut procs = std::mem::take(&mut self.procs);
        for d in desired {
            let p = procs.entry(d.id).or_insert_with(|| Proc {
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
            });
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
                pid: p.child.as_ref().and_then(Child::id),
                restarts: p.restarts,
                last_exit: p.last_exit.clone(),
            })
            .collect()
    }

    async fn shutdown(&mut self) {
        let deadline = Instant::now() + self.config.stop_grace;
        let mut children: Vec<Child> = self.stopping.drain(..).map(|s| s.child).collect();
        for p in self.procs.values_mut() {
            p.addr = None;
            p.state = Local::Exited;
            if let Some(child) = p.child.take() {
                children.push(child);
            }
        }
        for child in &mut children {
            terminate(child);
        }
        for mut child in children {
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
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

/// SIGTERM: the stand-in drains on it.
fn terminate(child: &mut Child) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        // Fails only if the process is already gone, which is what we want.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

fn describe(status: ExitStatus) -> String {
    status.to_string()
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
