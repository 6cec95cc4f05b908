//! An agent that starts again first stops the replicas its predecessor recorded and
//! left running, and only those: a recorded pid that now belongs to another process
//! is left alone.

use flotilla_agent::materializer::local::{LocalConfig, LocalProcesses};
use flotilla_agent::materializer::records::{self, ReplicaRecord};
use std::process::{Child, Command};
use std::time::Duration;

/// A process whose command line reads like a replica's (`… model --replica rN`).
fn fake_replica(replica: &str) -> Child {
    Command::new("sh")
        .args(["-c", "sleep 60", "model", "--replica", replica])
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_new_agent_stops_the_recorded_replicas_of_the_last_one_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replicas.json");
    let mut left = fake_replica("r7");
    let mut stranger = Command::new("sh").args(["-c", "sleep 60"]).spawn().unwrap();
    records::write(
        &file,
        &[
            ReplicaRecord {
                replica: "r7".into(),
                pid: left.id(),
                port: 8000,
            },
            // The pid was reused by something that is not replica r8.
            ReplicaRecord {
                replica: "r8".into(),
                pid: stranger.id(),
                port: 8001,
            },
        ],
    )
    .unwrap();

    let mut config = LocalConfig::new("/nonexistent/flotilla".into(), "a");
    config.records = Some(file.clone());
    config.stop_grace = Duration::from_secs(2);
    let stopped = LocalProcesses::new(config)
        .stop_predecessors()
        .await
        .unwrap();

    assert_eq!(stopped, 1);
    assert!(left.try_wait().unwrap().is_some(), "replica r7 was stopped");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger runs on"
    );
    assert_eq!(
        records::read(&file).unwrap(),
        Vec::new(),
        "the record is cleared"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[tokio::test]
async fn without_a_record_there_is_nothing_to_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("/nonexistent/flotilla".into(), "a");
    config.records = Some(dir.path().join("replicas.json"));
    let stopped = LocalProcesses::new(config)
        .stop_predecessors()
        .await
        .unwrap();
    assert_eq!(stopped, 0);
}
