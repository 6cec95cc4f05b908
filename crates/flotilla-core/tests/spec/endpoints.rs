//! Replica endpoints: where a replica serves, as its materializer reports it.

use flotilla_core::fixtures::{Federation, workload};
use flotilla_core::{Command, Phase, Rejection, ReplicaId, State};

/// One cluster, one workload with one replica placed and still Starting.
fn starting_replica() -> (Federation, ReplicaId) {
    let mut f = Federation::new();
    f.add_cluster("east", "us-east", "H100", 2);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.plan_and_apply();
    let id = *f
        .state
        .placement("w")
        .unwrap()
        .replicas
        .keys()
        .next()
        .unwrap();
    (f, id)
}

fn ready(id: ReplicaId, endpoint: Option<&str>) -> Command {
    Command::SetReplicaPhase {
        workload: "w".into(),
        replica: id,
        phase: Phase::Ready,
        endpoint: endpoint.map(str::to_owned),
    }
}

fn endpoint_of(state: &State, id: ReplicaId) -> Option<String> {
    state.placement("w").unwrap().replicas[&id].endpoint.clone()
}

#[test]
fn a_ready_report_publishes_where_the_replica_serves() {
    let (mut f, id) = starting_replica();
    assert_eq!(endpoint_of(&f.state, id), None, "unknown until reported");
    f.apply(ready(id, Some("10.0.0.7:8000"))).unwrap();
    let r = &f.state.placement("w").unwrap().replicas[&id];
    assert_eq!(r.phase, Phase::Ready);
    assert_eq!(r.endpoint.as_deref(), Some("10.0.0.7:8000"));
}

#[test]
fn a_replica_restarted_on_another_port_updates_its_endpoint() {
    let (mut f, id) = starting_replica();
    f.apply(ready(id, Some("127.0.0.1:41000"))).unwrap();
    f.apply(ready(id, Some("127.0.0.1:41001"))).unwrap();
    assert_eq!(
        endpoint_of(&f.state, id).as_deref(),
        Some("127.0.0.1:41001")
    );
    // A report without an endpoint keeps the known one.
    f.apply(ready(id, None)).unwrap();
    assert_eq!(
        endpoint_of(&f.state, id).as_deref(),
        Some("127.0.0.1:41001")
    );
}

#[test]
fn an_endpoint_that_is_not_host_port_is_refused_and_changes_nothing() {
    let (mut f, id) = starting_replica();
    let before = f.state.clone();
    for bad in [
        "no-port",
        "host:0",
        "host:70000",
        ":8000",
        "a b:80",
        "[not-v6]:80",
    ] {
        let err = f.apply(ready(id, Some(bad))).unwrap_err();
        let Rejection::Invalid(v) = &err else {
            panic!("{bad:?}: expected Invalid, got {err:?}");
        };
        assert_eq!(v.field, "endpoint", "{bad:?}");
        assert_eq!(
            f.state, before,
            "{bad:?}: a rejected report changed the state"
        );
    }
    for good in ["gpu-7.example.com:443", "[::1]:8080", "10.1.2.3:1"] {
        f.apply(ready(id, Some(good))).unwrap();
        assert_eq!(endpoint_of(&f.state, id).as_deref(), Some(good));
    }
}

#[test]
fn commands_and_snapshots_without_endpoints_still_read() {
    // A command as an older agent encodes it.
    let old: Command = serde_json::from_str(
        r#"{"type":"set_replica_phase","workload":"w","replica":3,"phase":"Ready"}"#,
    )
    .unwrap();
    assert_eq!(
        old,
        Command::SetReplicaPhase {
            workload: "w".into(),
            replica: ReplicaId(3),
            phase: Phase::Ready,
            endpoint: None,
        }
    );
    // A snapshot written before replicas had endpoints: no "endpoint" key at all.
    let (mut f, id) = starting_replica();
    f.apply(ready(id, None)).unwrap();
    let snapshot = String::from_utf8(f.state.to_snapshot()).unwrap();
    assert!(
        !snapshot.contains("\"endpoint\":"),
        "nothing written when absent"
    );
    let restored = State::from_snapshot(snapshot.as_bytes()).unwrap();
    assert_eq!(restored, f.state);
    // And one with an endpoint round-trips.
    f.apply(ready(id, Some("127.0.0.1:9000"))).unwrap();
    let restored = State::from_snapshot(&f.state.to_snapshot()).unwrap();
    assert_eq!(
        endpoint_of(&restored, id).as_deref(),
        Some("127.0.0.1:9000")
    );
}
