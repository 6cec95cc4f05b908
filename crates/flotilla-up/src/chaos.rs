//! `flotilla up --chaos`: faults at random on top of the scenario, and the checks
//! that say whether the federation took them.
//!
//! Every `--chaos-every` on average, one fault: SIGKILL of a server (the Raft
//! leader half of the time), an agent, a gateway or a model replica, or a freeze
//! (SIGSTOP, SIGCONT after 0.5–3 s) of one of them. `up` restarts what was killed
//! as it restarts any process that exits on its own (with back-off); agents
//! restart their replicas. Only one server is down or frozen at a time, so the
//! registry keeps its majority.
//!
//! While it runs:
//! - a probe writes distinct keys and reads them back linearizably
//!   ([`crate::history`]): no acknowledged write may be lost, and the history must
//!   stay linearizable;
//! - every registry read is checked for a GPU booked by two replicas
//!   ([`flotilla_core::State::overcommitted`]), and every second the model
//!   processes themselves: no two may be given one GPU (`CUDA_VISIBLE_DEVICES`),
//!   and none may run long without a live agent;
//! - after each kill, every model is probed through every gateway until all
//!   answer: the time to recover.
//!
//! At the end, each failed request is put down to a fault ([`classify`]), or
//! counted as unexplained. The plan and the classification are pure; the rest is
//! thin IO.

use crate::history::{History, Read, Verdict, Write};
use crate::load::Record;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `--chaos` and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosOptions {
    pub seed: u64,
    /// The mean time between faults.
    pub every: Duration,
}

/// What a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Server,
    /// The server that is the Raft leader when the fault comes due.
    Leader,
    Agent,
    Gateway,
    Replica,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Server => "server",
            Target::Leader => "leader",
            Target::Agent => "agent",
            Target::Gateway => "gateway",
            Target::Replica => "replica",
        }
    }

    /// Whether requests pass through it: only these explain a failed request.
    fn carries_requests(self) -> bool {
        matches!(self, Target::Gateway | Target::Replica)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Kill,
    /// SIGSTOP now, SIGCONT after this long.
    Freeze(#[serde(serialize_with = "as_secs")] Duration),
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One fault of the plan, before it is known what it will hit exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedFault {
    pub at: Duration,
    pub target: Target,
    /// Which cluster (modulo their number) and which replica (modulo theirs).
    pub pick: u64,
    pub kind: FaultKind,
}

/// Targets and their weights: replicas and gateways carry the traffic, servers
/// and agents the control plane.
const TARGETS: [(Target, u32); 5] = [
    (Target::Server, 2),
    (Target::Leader, 2),
    (Target::Agent, 3),
    (Target::Gateway, 3),
    (Target::Replica, 4),
];

/// The faults of a run from `start` to `end`, about `every` apart: the same seed
/// gives the same plan.
pub fn plan(seed: u64, start: Duration, end: Duration, every: Duration) -> Vec<PlannedFault> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let total: u32 = TARGETS.iter().map(|(_, w)| w).sum();
    let mut faults = Vec::new();
    let mut at = start;
    loop {
        // Uniform in [every/2, 3·every/2): the mean is `every`, and no two coincide.
        at += every.mul_f64(0.5 + rng.random::<f64>());
        if at >= end {
            return faults;
        }
        let mut roll = rng.random_range(0..total);
        let target = TARGETS
            .iter()
            .find(|(_, w)| {
                let hit = roll < *w;
                roll = roll.saturating_sub(*w);
                hit
            })
            .map_or(Target::Replica, |(t, _)| *t);
        let kind = if rng.random_range(0..5) == 0 {
            FaultKind::Freeze(Duration::from_millis(rng.random_range(500..3000)))
        } else {
            FaultKind::Kill
        };
        faults.push(PlannedFault {
            at,
            target,
            pick: rng.random::<u64>(),
            kind,
        });
    }
}

/// `--chaos-seed` when none is given: different on every run, and printed, so a
/// run can be played again.
pub fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (u64::from(nanos) << 20) ^ u64::from(std::process::id())
}

/// A fault as it was played.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    #[serde(serialize_with = "as_secs")]
    pub at: Duration,
    pub target: Target,
    pub kind: FaultKind,
    pub cluster: String,
    /// For a replica: which, and the model it serves.
    pub replica: Option<String>,
    pub model: Option<String>,
    /// Why nothing was done (no such process running, a server already down).
    pub skipped: Option<String>,
    /// After a kill: when every model answered through every gateway again.
    #[serde(serialize_with = "opt_secs")]
    pub recovered: Option<Duration>,
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Fault {
    pub fn describe(&self) -> String {
        let what = match (&self.replica, &self.model) {
            (Some(r), Some(m)) => format!("replica {r} ({m}) of {}", self.cluster),
            _ => format!("{} of {}", self.target.as_str(), self.cluster),
        };
        match self.kind {
            FaultKind::Kill => format!("chaos: SIGKILL {what}"),
            FaultKind::Freeze(d) => format!("chaos: freeze {what} for {d:.1?}"),
        }
    }

    /// When the fault's effect is over: its recovery after a kill, its end after a
    /// freeze. A kill that never recovered lasts to the end of the run.
    fn over(&self) -> Duration {
        match self.kind {
            FaultKind::Kill => self.recovered.unwrap_or(Duration::MAX),
            FaultKind::Freeze(d) => self.at + d,
        }
    }
}

/// How many ready replicas each model had, as one registry read showed.
pub type Readiness = (Duration, BTreeMap<String, usize>);

/// What a failed request is put down to.
pub fn classify(r: &Record, faults: &[Fault], readiness: &[Readiness]) -> String {
    let played = faults.iter().filter(|f| f.skipped.is_none());
    let relevant =
        |f: &&Fault| f.target.carries_requests() && f.model.as_ref().is_none_or(|m| *m == r.model);
    for f in played.clone().filter(relevant) {
        if f.kind == FaultKind::Kill && r.started <= f.at && f.at <= r.finished {
            return format!("in flight on a killed {}", f.target.as_str());
        }
    }
    for f in played.clone().filter(relevant) {
        if f.kind == FaultKind::Kill && f.at < r.started && r.started <= f.over() {
            if f.target == Target::Gateway && f.cluster == r.origin {
                return "sent to a killed gateway before it was back".to_owned();
            }
            return format!(
                "routed to a killed {} before the federation recovered",
                f.target.as_str()
            );
        }
    }
    for f in played.filter(relevant) {
        if matches!(f.kind, FaultKind::Freeze(_)) && r.started <= f.over() && f.at <= r.finished {
            return format!("in flight across a frozen {}", f.target.as_str());
        }
    }
    // The last registry read before it began, and any read while it ran.
    let from = readiness
        .iter()
        .rposition(|(at, _)| *at <= r.started)
        .unwrap_or(0);
    let unserved = readiness[from.min(readiness.len())..]
        .iter()
        .take_while(|(at, _)| *at <= r.finished)
        .any(|(_, ready)| ready.get(&r.model).copied().unwrap_or(0) == 0);
    if unserved {
        return "no ready replica anywhere".to_owned();
    }
    "unexplained".to_owned()
}

/// A `flotilla model` process of this run, as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelProcess {
    pub pid: u32,
    pub cluster: String,
    pub replica: String,
    pub model: String,
    /// The record of the agent supervising it (`--supervisor-record`).
    pub record: Option<PathBuf>,
    /// Its `CUDA_VISIBLE_DEVICES`.
    pub devices: Vec<String>,
}

impl ModelProcess {
    /// From a process's arguments and environment; `None` unless it is a replica
    /// (`… model … --replica R`).
    pub fn parse(pid: u32, args: &[String], environ: &[String]) -> Option<ModelProcess> {
        if !args.iter().any(|a| a == "model") {
            return None;
        }
        let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].clone());
        let devices = environ
            .iter()
            .find_map(|e| e.strip_prefix("CUDA_VISIBLE_DEVICES="))
            .map(|v| {
                v.split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Some(ModelProcess {
            pid,
            cluster: flag("--cluster")?,
            replica: flag("--replica")?,
            model: flag("--model").unwrap_or_default(),
            record: flag("--supervisor-record").map(PathBuf::from),
            devices,
        })
    }
}

/// The replicas of this run that run now (those whose record lies in `state_dir`).
pub fn model_processes(state_dir: &Path) -> Vec<ModelProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| crate::supervisor::running(*pid))
        .filter_map(|pid| {
            let args = split(std::fs::read(format!("/proc/{pid}/cmdline")).ok()?);
            let environ = split(std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default());
            ModelProcess::parse(pid, &args, &environ)
                .filter(|m| m.record.as_ref().is_some_and(|r| r.starts_with(state_dir)))
        })
        .collect()
}

/// GPUs that two running replica processes were both given.
pub fn shared_devices(procs: &[ModelProcess]) -> Vec<String> {
    let mut holders: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for p in procs {
        for d in &p.devices {
            holders
                .entry((p.cluster.as_str(), d.as_str()))
                .or_default()
                .push(p.replica.as_str());
        }
    }
    holders
        .into_iter()
        .filter(|(_, r)| r.len() > 1)
        .map(|((c, d), r)| {
            format!(
                "GPU {d} of cluster {c} given to processes of {}",
                r.join(" and ")
            )
        })
        .collect()
}

/// How long a replica may run without a live agent before it counts as orphaned:
/// its own grace (10 s), and time to drain.
pub const ORPHAN_LIMIT: Duration = Duration::from_secs(25);

/// What the checks saw during the run.
#[derive(Debug, Default)]
pub struct Checks {
    pub registry_reads: u64,
    pub overcommitted: Vec<String>,
    pub process_scans: u64,
    pub shared_devices: Vec<String>,
    /// Replicas without a live agent, by pid: since when.
    unsupervised: BTreeMap<u32, Duration>,
    pub orphans: BTreeSet<String>,
    pub readiness: Vec<Readiness>,
}

/// At most this many findings of one kind are kept: one fails a run.
const MAX_FINDINGS: usize = 20;

impl Checks {
    /// One registry read: no device held twice; the readiness of each model.
    pub fn registry_read(&mut self, at: Duration, st: &flotilla_core::State) {
        self.registry_reads += 1;
        for o in st.overcommitted() {
            if self.overcommitted.len() < MAX_FINDINGS {
                self.overcommitted.push(format!("at {at:.1?}: {o}"));
            }
        }
        let mut ready: BTreeMap<String, usize> = BTreeMap::new();
        for p in st.placements().values() {
            let n = p
                .replicas
                .values()
                .filter(|r| r.phase == flotilla_core::Phase::Ready)
                .count();
            *ready.entry(p.model.clone()).or_default() += n;
        }
        self.readiness.push((at, ready));
    }

    /// One look at the replica processes.
    pub fn processes(&mut self, at: Duration, procs: &[ModelProcess]) {
        self.process_scans += 1;
        for s in shared_devices(procs) {
            if self.shared_devices.len() < MAX_FINDINGS {
                self.shared_devices.push(format!("at {at:.1?}: {s}"));
            }
        }
        let running: BTreeSet<u32> = procs.iter().map(|p| p.pid).collect();
        self.unsupervised.retain(|pid, _| running.contains(pid));
        for p in procs {
            let supervised = p
                .record
                .as_deref()
                .is_some_and(flotilla_agent::materializer::records::supervised);
            if supervised {
                self.unsupervised.remove(&p.pid);
                continue;
            }
            let since = *self.unsupervised.entry(p.pid).or_insert(at);
            if at.saturating_sub(since) > ORPHAN_LIMIT && self.orphans.len() < MAX_FINDINGS {
                self.orphans.insert(format!(
                    "replica {} of {} (pid {}) has run without an agent since {since:.1?}",
                    p.replica, p.cluster, p.pid
                ));
            }
        }
    }
}

/// The chaos part of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub every_s: f64,
    /// Faults played, by kind and target (`kill replica`, `freeze server`).
    pub faults: BTreeMap<String, u64>,
    /// Faults that found nothing to hit.
    pub skipped: u64,
    /// Processes `up` started again after they exited.
    pub restarts: u64,
    /// From a kill to every model answering through every gateway again.
    pub recovery_median_s: Option<f64>,
    pub recovery_max_s: Option<f64>,
    /// Kills after which not every model answered again before the run ended.
    pub unrecovered: u64,
    /// Failed requests by cause; `unexplained` must be absent.
    pub failures_by_cause: BTreeMap<String, u64>,
    /// The first unexplained failures, described.
    pub unexplained: Vec<String>,
    pub registry: Verdict,
    pub registry_reads_checked: u64,
    pub overcommitted: Vec<String>,
    pub process_scans: u64,
    pub shared_devices: Vec<String>,
    pub orphans: Vec<String>,
    /// Every fault, in order.
    pub played: Vec<Fault>,
}

impl ChaosReport {
    pub fn new(
        o: ChaosOptions,
        faults: &[Fault],
        restarts: u64,
        records: &[Record],
        checks: &Checks,
        history: &History,
    ) -> ChaosReport {
        let mut by_kind = BTreeMap::new();
        for f in faults.iter().filter(|f| f.skipped.is_none()) {
            let kind = match f.kind {
                FaultKind::Kill => "kill",
                FaultKind::Freeze(_) => "freeze",
            };
            *by_kind
                .entry(format!("{kind} {}", f.target.as_str()))
                .or_insert(0) += 1;
        }
        let kills: Vec<&Fault> = faults
            .iter()
            .filter(|f| f.skipped.is_none() && f.kind == FaultKind::Kill)
            .collect();
        let mut recovery: Vec<f64> = kills
            .iter()
            .filter_map(|f| Some(f.recovered?.saturating_sub(f.at).as_secs_f64()))
            .collect();
        recovery.sort_by(f64::total_cmp);
        let mut causes = BTreeMap::new();
        let mut unexplained = Vec::new();
        for r in records.iter().filter(|r| !r.ok) {
            let cause = classify(r, faults, &checks.readiness);
            if cause == "unexplained" && unexplained.len() < MAX_FINDINGS {
                unexplained.push(format!(
                    "{} via {} at {:.1?}–{:.1?}: {}",
                    r.model,
                    r.origin,
                    r.started,
                    r.finished,
                    r.error.as_deref().unwrap_or("failed")
                ));
            }
            *causes.entry(cause).or_insert(0) += 1;
        }
        ChaosReport {
            seed: o.seed,
            every_s: o.every.as_secs_f64(),
            faults: by_kind,
            skipped: faults.iter().filter(|f| f.skipped.is_some()).count() as u64,
            restarts,
            recovery_median_s: recovery.get(recovery.len() / 2).copied(),
            recovery_max_s: recovery.last().copied(),
            unrecovered: kills.iter().filter(|f| f.recovered.is_none()).count() as u64,
            failures_by_cause: causes,
            unexplained,
            registry: history.check(),
            registry_reads_checked: checks.registry_reads,
            overcommitted: checks.overcommitted.clone(),
            process_scans: checks.process_scans,
            shared_devices: checks.shared_devices.clone(),
            orphans: checks.orphans.iter().cloned().collect(),
            played: faults.to_vec(),
        }
    }

    /// For people: the faults, the recoveries, the failures by cause, and each
    /// check with what it found.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{n} × {k}"))
            .collect();
        let _ = writeln!(
            out,
            "\nChaos (seed {}, a fault every {:.1}s on average): {}; {} skipped; {} restarts by up.",
            self.seed,
            self.every_s,
            faults.join(", "),
            self.skipped,
            self.restarts
        );
        let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}s"));
        let _ = writeln!(
            out,
            "  recovery after a kill: median {}, max {}, {} never recovered",
            secs(self.recovery_median_s),
            secs(self.recovery_max_s),
            self.unrecovered
        );
        for (cause, n) in &self.failures_by_cause {
            let _ = writeln!(out, "  {n:>6} failed: {cause}");
        }
        for u in &self.unexplained {
            let _ = writeln!(out, "         unexplained: {u}");
        }
        let verdict = |found: &[String]| {
            if found.is_empty() {
                "ok".to_owned()
            } else {
                format!("FAILED: {}", found.join("; "))
            }
        };
        let r = &self.registry;
        let _ = writeln!(
            out,
            "  registry: {} writes acknowledged, {} indeterminate, {} reads; lost: {}; linearizable: {}",
            r.writes_acknowledged,
            r.writes_indeterminate,
            r.reads,
            if r.lost.is_empty() {
                "none".to_owned()
            } else {
                format!("{:?}", r.lost)
            },
            verdict(&r.anomalies)
        );
        let _ = writeln!(
            out,
            "  GPUs booked twice in {} registry reads: {}",
            self.registry_reads_checked,
            verdict(&self.overcommitted)
        );
        let _ = writeln!(
            out,
            "  GPUs given to two processes in {} scans: {}; replicas without an agent: {}",
            self.process_scans,
            verdict(&self.shared_devices),
            verdict(&self.orphans)
        );
        out
    }

    /// Whether every check passed.
    pub fn clean(&self) -> bool {
        !self.failures_by_cause.contains_key("unexplained")
            && self.registry.lost.is_empty()
            && self.registry.anomalies.is_empty()
            && self.overcommitted.is_empty()
            && self.shared_devices.is_empty()
            && self.orphans.is_empty()
    }
}

/// Writes key after key and reads the registry linearizably in between, through
/// the servers in turn, until `stop`; the history it took.
pub async fn probe_registry(
    servers: Vec<String>,
    security: flotilla_client::TransportSecurity,
    epoch: tokio::time::Instant,
    stop: tokio_util::sync::CancellationToken,
) -> History {
    const CALL: Duration = Duration::from_secs(3);
    let mut history = History::default();
    let mut key = 0u64;
    let mut turn = 0usize;
    while !stop.is_cancelled() {
        turn += 1;
        let Some(addr) = servers.get(turn % servers.len().max(1)) else {
            return history;
        };
        let Ok(mut client) = flotilla_client::RegistryClient::new(addr, &security) else {
            continue;
        };
        key += 1;
        let command = flotilla_core::Command::SetPolicy {
            policy: flotilla_core::TenantPolicy {
                tenant: probe_tenant(key),
                approved_models: vec!["*".to_owned()],
                requests_per_minute: 0,
                tokens_per_minute: 0,
                external_endpoints: Vec::new(),
            },
        };
        let began = epoch.elapsed();
        let written = tokio::time::timeout(CALL, client.submit(&command)).await;
        history.writes.push(Write {
            key,
            began,
            acknowledged: matches!(written, Ok(Ok(_))).then(|| epoch.elapsed()),
        });
        if let Some(read) = read_keys(&mut client, epoch, CALL).await {
            history.reads.push(read);
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    // The last read, after everything: nothing acknowledged may be missing.
    for addr in &servers {
        if let Ok(mut client) = flotilla_client::RegistryClient::new(addr, &security)
            && let Some(read) = read_keys(&mut client, epoch, CALL).await
        {
            history.reads.push(read);
            break;
        }
    }
    history
}

fn probe_tenant(key: u64) -> String {
    format!("chaos-probe-{key}")
}

/// A linearizable read of the whole registry: the probe's keys in it.
async fn read_keys(
    client: &mut flotilla_client::RegistryClient,
    epoch: tokio::time::Instant,
    timeout: Duration,
) -> Option<Read> {
    let began = epoch.elapsed();
    let (_, st) = tokio::time::timeout(timeout, client.read_state(true))
        .await
        .ok()?
        .ok()?;
    let seen = st
        .policies()
        .keys()
        .filter_map(|t| t.strip_prefix("chaos-probe-")?.parse().ok())
        .collect();
    Some(Read {
        began,
        ended: epoch.elapsed(),
        seen,
    })
}

/// Probes every model through every gateway until all answer (or `limit`
/// passes); when they did.
pub async fn wait_for_recovery(
    sender: crate::load::Sender,
    gateways: Vec<SocketAddr>,
    models: Vec<String>,
    epoch: tokio::time::Instant,
    limit: Duration,
) -> Option<Duration> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut all = true;
        for gw in &gateways {
            for m in &models {
                all &= crate::load::probe(&sender, *gw, m, Duration::from_secs(2)).await;
            }
        }
        if all {
            return Some(epoch.elapsed());
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: f64) -> Duration {
        Duration::from_secs_f64(n)
    }

    #[test]
    fn the_same_seed_plays_the_same_faults_about_every_interval_apart() {
        let a = plan(7, s(5.0), s(600.0), s(4.0));
        assert_eq!(a, plan(7, s(5.0), s(600.0), s(4.0)));
        assert_ne!(a, plan(8, s(5.0), s(600.0), s(4.0)));
        let mean = (a.last().unwrap().at - s(5.0)).as_secs_f64() / a.len() as f64;
        assert!((3.0..5.0).contains(&mean), "mean gap {mean}");
        assert!(a.windows(2).all(|w| w[1].at - w[0].at >= s(2.0)));
        assert!(a.iter().all(|f| f.at > s(5.0) && f.at < s(600.0)));
        let targets: BTreeSet<Target> = a.iter().map(|f| f.target).collect();
        assert_eq!(targets.len(), 5, "every kind of target is hit: {targets:?}");
        assert!(a.iter().any(|f| matches!(f.kind, FaultKind::Freeze(_))));
    }

    fn record(model: &str, started: f64, finished: f64) -> Record {
        Record {
            started: s(started),
            finished: s(finished),
            origin: "a".into(),
            model: model.into(),
            streamed: false,
            status: 0,
            served_by: None,
            replica: None,
            ok: false,
            error: Some("connection reset".into()),
        }
    }

    fn fault(target: Target, kind: FaultKind, at: f64, recovered: Option<f64>) -> Fault {
        Fault {
            at: s(at),
            target,
            kind,
            cluster: "a".into(),
            replica: (target == Target::Replica).then(|| "r1".into()),
            model: (target == Target::Replica).then(|| "chat".into()),
            skipped: None,
            recovered: recovered.map(s),
        }
    }

    fn ready(at: f64, n: usize) -> Readiness {
        (
            s(at),
            [("chat".to_owned(), n), ("other".to_owned(), 1)].into(),
        )
    }

    #[test]
    fn failures_are_put_down_to_the_fault_they_overlapped_or_called_unexplained() {
        let faults = [
            fault(Target::Replica, FaultKind::Kill, 10.0, Some(12.0)),
            fault(Target::Gateway, FaultKind::Freeze(s(2.0)), 20.0, None),
            fault(Target::Agent, FaultKind::Kill, 30.0, Some(31.0)),
            fault(Target::Leader, FaultKind::Kill, 40.0, Some(41.0)),
            fault(Target::Gateway, FaultKind::Kill, 60.0, Some(62.0)),
        ];
        let readiness = [ready(0.0, 1), ready(49.0, 0), ready(51.0, 1)];
        let cause = |r: Record| classify(&r, &faults, &readiness);
        assert_eq!(
            cause(record("chat", 9.5, 10.5)),
            "in flight on a killed replica"
        );
        assert_eq!(
            cause(record("chat", 11.0, 11.1)),
            "routed to a killed replica before the federation recovered"
        );
        assert_eq!(
            cause(record("chat", 19.0, 21.0)),
            "in flight across a frozen gateway"
        );
        assert_eq!(
            cause(record("other", 9.5, 10.5)),
            "unexplained",
            "a killed replica of another model explains nothing"
        );
        assert_eq!(
            cause(record("chat", 29.5, 30.5)),
            "unexplained",
            "no request passes through an agent"
        );
        assert_eq!(cause(record("chat", 40.0, 40.5)), "unexplained");
        assert_eq!(
            cause(record("chat", 48.0, 50.0)),
            "no ready replica anywhere"
        );
        assert_eq!(
            cause(record("chat", 61.0, 61.0)),
            "sent to a killed gateway before it was back",
            "the request entered through the killed gateway's cluster"
        );
        let mut elsewhere = record("chat", 61.0, 61.0);
        elsewhere.origin = "b".into();
        assert_eq!(
            cause(elsewhere),
            "routed to a killed gateway before the federation recovered"
        );
    }

    #[test]
    fn a_replica_process_is_read_from_its_arguments_and_environment() {
        let args: Vec<String> = [
            "flotilla",
            "model",
            "--listen",
            "127.0.0.1:1",
            "--model",
            "chat",
            "--replica",
            "r3",
            "--cluster",
            "b",
            "--supervisor-record",
            "/s/b/agent/replicas.json",
        ]
        .map(String::from)
        .to_vec();
        let env = vec!["CUDA_VISIBLE_DEVICES=GPU-1,GPU-2".to_owned()];
        let p = ModelProcess::parse(9, &args, &env).unwrap();
        assert_eq!(p.replica, "r3");
        assert_eq!(p.devices, vec!["GPU-1", "GPU-2"]);
        assert_eq!(
            p.record.as_deref(),
            Some(Path::new("/s/b/agent/replicas.json"))
        );
        assert_eq!(ModelProcess::parse(9, &args[..1], &env), None);

        let mut other = p.clone();
        other.replica = "r4".into();
        other.devices = vec!["GPU-2".into()];
        assert_eq!(
            shared_devices(&[p.clone(), other.clone()]),
            vec!["GPU GPU-2 of cluster b given to processes of r3 and r4"]
        );
        other.cluster = "c".into();
        assert!(shared_devices(&[p, other]).is_empty());
    }

    #[test]
    fn a_replica_without_a_live_agent_counts_as_orphaned_only_after_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("replicas.json");
        std::fs::write(&file, r#"{"agent": 4000000000, "replicas": []}"#).unwrap();
        let p = ModelProcess {
            pid: 1,
            cluster: "a".into(),
            replica: "r1".into(),
            model: "chat".into(),
            record: Some(file),
            devices: Vec::new(),
        };
        let mut c = Checks::default();
        c.processes(s(10.0), std::slice::from_ref(&p));
        c.processes(s(30.0), std::slice::from_ref(&p));
        assert!(c.orphans.is_empty());
        c.processes(s(36.0), std::slice::from_ref(&p));
        assert_eq!(c.orphans.len(), 1, "{:?}", c.orphans);
    }
}
