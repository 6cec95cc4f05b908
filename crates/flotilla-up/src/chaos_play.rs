//! Plays `--chaos` during the run proper: the faults of [`chaos::plan`] on their
//! times, the freezes' ends, the recovery probes and the process checks. The
//! decisions are in [`chaos`]; this is the IO.

use crate::chaos::{self, ChaosOptions, Checks, Fault, FaultKind, PlannedFault, Target};
use crate::history::History;
use crate::supervisor::Role;
use crate::{Local, Run};
use rustix::process::Signal;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// Faults start this long after the load, and stop this long before the end, so
/// the last ones can recover.
const QUIET_START: Duration = Duration::from_secs(5);
const QUIET_END: Duration = Duration::from_secs(10);
/// The longest a recovery probe waits.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// The state of chaos during a run.
pub(crate) struct ChaosRun {
    options: ChaosOptions,
    plan: Vec<PlannedFault>,
    next: usize,
    pub(crate) faults: Vec<Fault>,
    /// Frozen processes: when to thaw them, and whether each is a server.
    frozen: Vec<(Duration, u32, bool)>,
    recoveries: JoinSet<(usize, Option<Duration>)>,
    pub(crate) checks: Checks,
    last_scan: Duration,
    probe: JoinHandle<History>,
    probe_stop: CancellationToken,
    sender: crate::load::Sender,
    gateways: Vec<SocketAddr>,
    models: Vec<String>,
}

impl ChaosRun {
    pub(crate) fn start(
        options: ChaosOptions,
        local: &Local,
        models: &[String],
        epoch: tokio::time::Instant,
        until: Duration,
    ) -> ChaosRun {
        let probe_stop = CancellationToken::new();
        let probe = tokio::spawn(chaos::probe_registry(
            local.servers.clone(),
            local.security.clone(),
            epoch,
            probe_stop.clone(),
        ));
        ChaosRun {
            options,
            plan: chaos::plan(
                options.seed,
                QUIET_START,
                until.saturating_sub(QUIET_END),
                options.every,
            ),
            next: 0,
            faults: Vec::new(),
            frozen: Vec::new(),
            recoveries: JoinSet::new(),
            checks: Checks::default(),
            last_scan: Duration::ZERO,
            probe,
            probe_stop,
            sender: local.sender(),
            gateways: local.addrs.iter().map(|a| a.gateway).collect(),
            models: models.to_vec(),
        }
    }

    /// Thaws every frozen process: the run is ending.
    pub(crate) fn thaw_all(&mut self) {
        for (_, pid, _) in self.frozen.drain(..) {
            signal(pid, Signal::CONT);
        }
    }

    /// Stops the probe and the recovery probes (giving those in flight a moment),
    /// and sums up.
    pub(crate) async fn finish(
        mut self,
        restarts: u64,
        records: &[crate::load::Record],
    ) -> chaos::ChaosReport {
        self.thaw_all();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(done) = self.recoveries.join_next().await {
                if let Ok((i, at)) = done {
                    self.recovered(i, at);
                }
            }
        })
        .await;
        self.recoveries.abort_all();
        self.probe_stop.cancel();
        let history = match tokio::time::timeout(Duration::from_secs(15), self.probe).await {
            Ok(Ok(h)) => h,
            _ => History::default(),
        };
        chaos::ChaosReport::new(
            self.options,
            &self.faults,
            restarts,
            records,
            &self.checks,
            &history,
        )
    }

    fn recovered(&mut self, i: usize, at: Option<Duration>) {
        if let Some(f) = self.faults.get_mut(i) {
            f.recovered = at;
        }
    }
}

impl Run<'_> {
    /// Every tick with `--chaos`: thaw, collect recoveries, check the processes
    /// each second, and play the faults that are due.
    pub(crate) async fn chaos_tick(&mut self, now: Duration) {
        let Some(mut c) = self.chaos.take() else {
            return;
        };
        c.frozen.retain(|(at, pid, _)| {
            let due = *at <= now;
            if due {
                signal(*pid, Signal::CONT);
            }
            !due
        });
        while let Some(Ok((i, at))) = c.recoveries.try_join_next() {
            c.recovered(i, at);
        }
        if now.saturating_sub(c.last_scan) >= Duration::from_secs(1) {
            c.last_scan = now;
            let procs = chaos::model_processes(self.local.state.root());
            c.checks.processes(now, &procs);
        }
        while let Some(p) = c.plan.get(c.next).copied().filter(|p| p.at <= now) {
            c.next += 1;
            let (fault, pid) = self.play_fault(&c, p).await;
            self.observer.note(
                now,
                match &fault.skipped {
                    Some(why) => format!("{} skipped: {why}", fault.describe()),
                    None => fault.describe(),
                },
            );
            if fault.skipped.is_none() {
                match fault.kind {
                    FaultKind::Kill => {
                        let i = c.faults.len();
                        let (sender, gateways, models, epoch) = (
                            c.sender.clone(),
                            c.gateways.clone(),
                            c.models.clone(),
                            self.epoch,
                        );
                        c.recoveries.spawn(async move {
                            let at = chaos::wait_for_recovery(
                                sender,
                                gateways,
                                models,
                                epoch,
                                RECOVERY_LIMIT,
                            )
                            .await;
                            (i, at)
                        });
                    }
                    FaultKind::Freeze(d) => {
                        let server = matches!(fault.target, Target::Server | Target::Leader);
                        c.frozen.extend(pid.map(|pid| (now + d, pid, server)));
                    }
                }
            }
            c.faults.push(fault);
        }
        self.chaos = Some(c);
    }

    /// Plays one planned fault, or says why it hit nothing; the process it hit.
    async fn play_fault(&mut self, c: &ChaosRun, p: PlannedFault) -> (Fault, Option<u32>) {
        let clusters = &self.topo.clusters;
        let pick = usize::try_from(p.pick).unwrap_or(usize::MAX);
        let mut fault = Fault {
            at: self.epoch.elapsed(),
            target: p.target,
            kind: p.kind,
            cluster: clusters
                .get(pick % clusters.len().max(1))
                .map(|c| c.name.clone())
                .unwrap_or_default(),
            replica: None,
            model: None,
            skipped: None,
            recovered: None,
        };
        let pid = match p.target {
            Target::Server | Target::Leader => self.server_to_hit(c, &mut fault).await,
            Target::Agent => self.running(&fault.cluster, Role::Agent),
            Target::Gateway => self.running(&fault.cluster, Role::Gateway),
            Target::Replica => self.replica_to_hit(pick, &mut fault),
        };
        let pid = match pid {
            Ok(pid) if c.frozen.iter().any(|(_, f, _)| *f == pid) => {
                Err("it is frozen already".to_owned())
            }
            other => other,
        };
        match pid {
            Ok(pid) => {
                let sig = match p.kind {
                    FaultKind::Kill => Signal::KILL,
                    FaultKind::Freeze(_) => Signal::STOP,
                };
                signal(pid, sig);
                (fault, Some(pid))
            }
            Err(why) => {
                fault.skipped = Some(why);
                (fault, None)
            }
        }
    }

    fn running(&self, cluster: &str, role: Role) -> Result<u32, String> {
        self.sup
            .pid(cluster, role)
            .ok_or_else(|| format!("the {} of {cluster} is not running", role.as_str()))
    }

    /// A server to kill or freeze (the leader's, for `Leader`), unless one is down or
    /// frozen already: the registry keeps its majority.
    async fn server_to_hit(&mut self, c: &ChaosRun, fault: &mut Fault) -> Result<u32, String> {
        if !self.sup.stopped(Role::Server).is_empty() || c.frozen.iter().any(|(_, _, s)| *s) {
            return Err("a server is down or frozen already".to_owned());
        }
        if fault.target == Target::Leader {
            fault.cluster =
                crate::leader_cluster(&self.topo.clusters, &self.local.addrs, &self.local.security)
                    .await
                    .ok_or_else(|| "no leader is known".to_owned())?;
        }
        self.running(&fault.cluster, Role::Server)
    }

    /// The `n`th replica process of the run (modulo their number), whichever
    /// cluster runs it.
    fn replica_to_hit(&self, n: usize, fault: &mut Fault) -> Result<u32, String> {
        let mut procs = chaos::model_processes(self.local.state.root());
        procs.sort_by(|a, b| (&a.cluster, &a.replica).cmp(&(&b.cluster, &b.replica)));
        let p = procs
            .get(n % procs.len().max(1))
            .ok_or_else(|| "no replica runs".to_owned())?;
        fault.cluster = p.cluster.clone();
        fault.replica = Some(p.replica.clone());
        fault.model = Some(p.model.clone());
        Ok(p.pid)
    }
}

/// `signal` to one process (not its group: an agent's replicas are in its group,
/// and a killed agent must leave them to be adopted).
fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
