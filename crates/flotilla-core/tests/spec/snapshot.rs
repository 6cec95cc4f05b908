//! The versioned snapshot format.

use flotilla_core::fixtures::{Federation, workload};
use flotilla_core::{Command, Millis, SnapshotError, State};

#[test]
fn a_snapshot_restores_an_equal_state() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 4);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 2),
    })
    .unwrap();
    f.settle(Millis(1000), 5);

    let restored = State::from_snapshot(&f.state.to_snapshot()).unwrap();
    assert_eq!(restored, f.state);
    assert_eq!(
        restored.to_snapshot(),
        f.state.to_snapshot(),
        "byte-identical"
    );
}

#[test]
fn garbage_and_foreign_snapshots_are_refused() {
    assert!(matches!(
        State::from_snapshot(b"not json"),
        Err(SnapshotError::Malformed(_))
    ));
    let foreign = br#"{"magic":"etcd","format":1,"state":{}}"#;
    let err = State::from_snapshot(foreign).unwrap_err();
    assert_eq!(
        err.to_string(),
        "not a Flotilla registry snapshot: magic is \"etcd\""
    );
}

#[test]
fn a_snapshot_from_a_newer_flotilla_is_refused_with_advice() {
    let newer = br#"{"magic":"flotilla-registry-snapshot","format":99,"state":{}}"#;
    let err = State::from_snapshot(newer).unwrap_err();
    assert!(err.to_string().contains("format 99 is newer"), "{err}");
}

#[test]
fn a_snapshot_that_contradicts_itself_is_refused() {
    let mut f = Federation::new();
    f.add_cluster("a", "r1", "H100", 1);
    f.apply(Command::ApplyWorkload {
        workload: workload("w", "m", 1, 1),
    })
    .unwrap();
    f.settle(Millis(1000), 5);
    // Free the device behind the replica's back.
    let text = String::from_utf8(f.state.to_snapshot()).unwrap();
    let tampered = text.replacen("\"allocated_to\":0", "\"allocated_to\":null", 1);
    assert_ne!(text, tampered);
    let err = State::from_snapshot(tampered.as_bytes()).unwrap_err();
    assert!(matches!(err, SnapshotError::Inconsistent(_)), "{err}");
}
