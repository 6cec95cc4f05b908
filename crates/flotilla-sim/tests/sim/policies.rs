//! What each policy does when capacity moves: the definitions in the crate docs,
//! checked on a small fleet that loses spot GPUs and then a whole cluster.

use super::run;
use flotilla_sim::{Outcome, PolicyKind, Summary};

/// Two regions, three clusters; spot GPUs of `a` go at 5 m (2 m notice), cluster `c`
/// is lost from 10 m to 15 m, `a`'s GPUs return at 20 m.
pub(crate) const CHAOS: &str = r#"
name = "chaos"
seed = 11
duration = "25m"
sample_interval = "30s"
settings = { placement_policy = "spread" }

[network]
rtt = [{ between = ["r1", "r2"], rtt = "80ms" }]

[[clusters]]
name = "a"
region = "r1"
gpus = { H100 = 4 }

[[clusters]]
name = "b"
region = "r1"
gpus = { H100 = 4 }

[[clusters]]
name = "c"
region = "r2"
gpus = { H100 = 4 }

[[models]]
id = "m"
startup = "40s"
perf.H100 = { prefill_tps = 8000, decode_tps = 50, max_batch = 8 }

[[workloads]]
name = "w"
model = "m"
replicas = 6
slo = { ttft = "1s", e2e = "10s" }

[[load]]
model = "m"
origins = { r1 = 2, r2 = 1 }
start = "1m"
[load.synthetic]
rate = 8.0
prompt = { median = 800, sigma = 0.8, max = 8000 }
output = { median = 120, sigma = 0.6, max = 1000 }

[[events]]
at = "5m"
cluster = "a"
kind = "spot-preemption"
grace = "2m"

[[events]]
at = "10m"
cluster = "c"
kind = "cluster-lost"

[[events]]
at = "15m"
cluster = "c"
kind = "cluster-recovered"

[[events]]
at = "20m"
cluster = "a"
kind = "return"
"#;

fn by_kind(o: &Outcome, kind: PolicyKind) -> &Summary {
    &o.runs
        .iter()
        .find(|r| r.summary.kind == kind)
        .expect("policy present")
        .summary
}

#[test]
fn static_never_moves_and_never_replaces() {
    let o = run(CHAOS);
    let s = by_kind(&o, PolicyKind::Static);
    assert_eq!((s.moves, s.replacements), (0, 0));
    assert_eq!(s.commands_withheld, 0, "it never even asks the scheduler");
    assert!(
        s.replicas_lost >= 2,
        "spot GPUs and cluster c take replicas: {s:?}"
    );
}

#[test]
fn failover_only_replaces_what_a_cluster_loss_took_and_nothing_else() {
    let o = run(CHAOS);
    let f = by_kind(&o, PolicyKind::FailoverOnly);
    assert_eq!(f.moves, 0, "no planned moves");
    assert!(
        f.replacements >= 1,
        "replicas of the lost cluster come back: {f:?}"
    );
    assert!(
        f.commands_withheld > 0,
        "the spot moves were proposed and withheld"
    );
    let s = by_kind(&o, PolicyKind::Static);
    assert!(f.slo_attainment >= s.slo_attainment, "{f:?}\n{s:?}");
}

#[test]
fn flotilla_moves_ahead_of_the_spot_reclaim_and_wins() {
    let o = run(CHAOS);
    let fl = by_kind(&o, PolicyKind::Flotilla);
    assert!(
        fl.moves >= 1,
        "make-before-break moves off the spot GPUs: {fl:?}"
    );
    assert_eq!(
        fl.commands_rejected, 0,
        "core accepts every command of a full plan"
    );
    for other in [PolicyKind::Static, PolicyKind::FailoverOnly] {
        let s = by_kind(&o, other);
        assert!(
            fl.slo_attainment > s.slo_attainment,
            "flotilla {} vs {} {}",
            fl.slo_attainment,
            s.policy,
            s.slo_attainment
        );
        assert!(fl.failed < s.failed, "{fl:?}\n{s:?}");
    }
}
