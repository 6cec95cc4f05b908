//! Revisions (etags) and conditional writes: a write based on a stale read is
//! refused, never applied over a change it did not see.

use flotilla_core::fixtures::{Federation, cluster, workload};
use flotilla_core::{Command, ObjectKind, Rejection, SETTINGS_NAME, TenantPolicy};

fn policy(tenant: &str, models: &[&str]) -> Command {
    Command::SetPolicy {
        policy: TenantPolicy {
            tenant: tenant.into(),
            approved_models: models.iter().map(|m| (*m).to_owned()).collect(),
            requests_per_minute: 0,
            tokens_per_minute: 0,
            external_endpoints: Vec::new(),
        },
    }
}

/// A federation with a workload serving each of `models`, so that policies may
/// approve them.
fn serving(models: &[&str]) -> Federation {
    let mut f = Federation::new();
    for m in models {
        let workload = workload(&format!("serves-{m}"), m, 1, 1);
        f.apply(Command::ApplyWorkload { workload }).unwrap();
    }
    f
}

fn approved(f: &Federation, tenant: &str) -> Vec<String> {
    f.state
        .policies()
        .get(tenant)
        .map(|p| p.approved_models.clone())
        .unwrap_or_default()
}

#[test]
fn two_admins_racing_on_one_policy_get_one_success_and_one_conflict() {
    let mut f = serving(&["x", "y", "z"]);
    f.apply(policy("acme", &["x", "y"])).unwrap();
    let read_by_both = f.state.revision(ObjectKind::Policy, "acme");

    // The first removes x; the second, from the same read, adds z.
    f.apply(policy("acme", &["y"]).expecting(ObjectKind::Policy, "acme", read_by_both))
        .unwrap();
    let err = f
        .apply(policy("acme", &["x", "y", "z"]).expecting(ObjectKind::Policy, "acme", read_by_both))
        .unwrap_err();

    assert!(
        matches!(&err, Rejection::Conflict { expected, actual, .. } if expected == &read_by_both && actual > &read_by_both),
        "{err:?}"
    );
    assert_eq!(approved(&f, "acme"), ["y"], "x was not approved again");
    assert!(
        err.to_string()
            .starts_with("policy \"acme\" changed since it was read"),
        "{err}"
    );
}

#[test]
fn a_revision_moves_on_every_change_and_only_then() {
    let mut f = Federation::new();
    assert_eq!(f.state.revision(ObjectKind::Workload, "w"), 0, "absent");
    let w = workload("w", "m", 1, 2);
    f.apply(Command::ApplyWorkload {
        workload: w.clone(),
    })
    .unwrap();
    let first = f.state.revision(ObjectKind::Workload, "w");
    assert!(first > 0);

    f.apply(Command::ApplyWorkload {
        workload: w.clone(),
    })
    .unwrap();
    assert_eq!(
        f.state.revision(ObjectKind::Workload, "w"),
        first,
        "applying the same spec again changes nothing"
    );

    let mut bigger = w;
    bigger.replicas.max = 3;
    f.apply(Command::ApplyWorkload { workload: bigger })
        .unwrap();
    assert!(f.state.revision(ObjectKind::Workload, "w") > first);

    f.apply(Command::DeleteWorkload {
        workload: "w".into(),
    })
    .unwrap();
    assert_eq!(f.state.revision(ObjectKind::Workload, "w"), 0, "gone");
}

#[test]
fn a_cluster_revision_follows_its_spec_and_cordon_not_its_heartbeats() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 2);
    let registered = f.state.revision(ObjectKind::Cluster, "a");
    f.heartbeat_all();
    assert_eq!(f.state.revision(ObjectKind::Cluster, "a"), registered);
    f.apply(Command::Cordon {
        cluster: "a".into(),
    })
    .unwrap();
    assert!(f.state.revision(ObjectKind::Cluster, "a") > registered);
}

#[test]
fn an_etag_of_zero_creates_only_and_a_conflict_changes_nothing() {
    let mut f = Federation::new();
    let create = || {
        Command::RegisterCluster {
            spec: cluster("a", "r1"),
        }
        .expecting(ObjectKind::Cluster, "a", 0)
    };
    f.apply(create()).unwrap();
    let before = f.state.clone();
    let err = f.apply(create()).unwrap_err();
    assert!(
        matches!(err, Rejection::Conflict { actual, .. } if actual > 0),
        "{err:?}"
    );
    assert_eq!(
        f.state, before,
        "a refused write leaves the state as it was"
    );

    let gone = f
        .apply(Command::DeletePolicy { tenant: "t".into() }.expecting(ObjectKind::Policy, "t", 5))
        .unwrap_err();
    assert!(
        matches!(gone, Rejection::Conflict { actual: 0, .. }),
        "{gone:?}"
    );
    assert!(gone.to_string().contains("now gone"), "{gone}");
}

#[test]
fn a_policy_approves_only_models_a_workload_serves() {
    let mut f = serving(&["x"]);
    f.apply(policy("acme", &["x"])).unwrap();
    let before = f.state.clone();
    let err = f.apply(policy("acme", &["x", "x-typo"])).unwrap_err();
    assert!(
        matches!(&err, Rejection::Precondition { kind: ObjectKind::Policy, name, .. } if name == "acme"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no workload serves model \"x-typo\""),
        "{err}"
    );
    assert_eq!(f.state, before, "nothing changed");
    // `*` approves every model, served now or later.
    f.apply(policy("beta", &["*"])).unwrap();
}

#[test]
fn conditions_cannot_nest_or_name_objects_without_revisions() {
    let mut f = Federation::new();
    let nested = policy("t", &["m"])
        .expecting(ObjectKind::Policy, "t", 0)
        .expecting(ObjectKind::Policy, "t", 0);
    assert!(matches!(f.apply(nested), Err(Rejection::Invalid(_))));
    let replica = policy("t", &["m"]).expecting(ObjectKind::Replica, "r1", 0);
    let err = f.apply(replica).unwrap_err();
    assert!(err.to_string().contains("carries no etag"), "{err}");
}

#[test]
fn revisions_survive_a_snapshot_and_replaying_the_log() {
    let mut f = serving(&["x", "y"]);
    f.apply(policy("acme", &["x"])).unwrap();
    f.apply(policy("acme", &["x", "y"])).unwrap();
    let restored = flotilla_core::State::from_snapshot(&f.state.to_snapshot()).unwrap();
    assert_eq!(
        restored.revision(ObjectKind::Policy, "acme"),
        f.state.revision(ObjectKind::Policy, "acme")
    );
    let mut replayed = flotilla_core::State::new();
    for e in &f.log {
        flotilla_core::apply(&mut replayed, e).unwrap();
    }
    assert_eq!(replayed, f.state);
}

#[test]
fn the_settings_carry_a_revision_too_and_a_stale_change_is_refused() {
    let mut f = Federation::new();
    let read = f.state.revision(ObjectKind::Settings, SETTINGS_NAME);
    assert_eq!(read, 1, "the settings always exist");
    let mut changed = f.state.settings().clone();
    changed.hysteresis += 1;
    f.apply(
        Command::SetSettings {
            settings: changed.clone(),
        }
        .expecting(ObjectKind::Settings, SETTINGS_NAME, read),
    )
    .unwrap();
    let now = f.state.revision(ObjectKind::Settings, SETTINGS_NAME);
    assert!(now > read);

    let mut stale = f.state.settings().clone();
    stale.max_concurrent_moves += 1;
    let err = f
        .apply(Command::SetSettings { settings: stale }.expecting(
            ObjectKind::Settings,
            SETTINGS_NAME,
            read,
        ))
        .unwrap_err();
    assert!(matches!(err, Rejection::Conflict { .. }), "{err:?}");
    assert_eq!(f.state.settings(), &changed, "nothing changed");

    // Setting what is already there is no change.
    f.apply(Command::SetSettings { settings: changed }).unwrap();
    assert_eq!(f.state.revision(ObjectKind::Settings, SETTINGS_NAME), now);
}
