//! An agent that starts again takes over the record its predecessor left: replicas
//! that still run but do not answer `/health` are stopped, and a recorded pid that
//! now belongs to another process is left alone. (Adopting a healthy replica needs
//! a real `flotilla model`; that is in the `flotilla` package's agent tests.)

use flotilla_agent::materializer::local::{LocalConfig, LocalProcesses};
use flotilla_agent::materializer::records::{self, Record, ReplicaRecord};
use std::process::{Child, Command};
use std::time::Duration;

/// A process whose command line reads like a replica's (`… model --replica rN`),
/// serving nothing. Returned once `/proc` shows that command line: the kernel sets
/// it a moment after `spawn` returns.
fn unhealthy_replica(replica: &str) -> Child {
    let child = Command::new("sh")
        .args(["-c", "sleep 60", "model", "--replica", replica])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !records::runs_as(child.id(), replica) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never showed its command line"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_new_agent_stops_recorded_replicas_that_do_not_answer_and_leaves_strangers_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replicas.json");
    let mut left = unhealthy_replica("r7");
    let mut stranger = Command::new("sh").args(["-c", "sleep 60"]).spawn().unwrap();
    let recorded = |replica: &str, pid| ReplicaRecord {
        replica: replica.into(),
        pid,
        port: closed_port(),
    };
    records::write(
        &file,
        &Record {
            agent: None,
            // r8's pid was reused by something that is not replica r8.
            replicas: vec![recorded("r7", left.id()), recorded("r8", stranger.id())],
        },
    )
    .unwrap();

    let mut config = LocalConfig::new("/nonexistent/flotilla".into(), "a");
    config.records = Some(file.clone());
    config.stop_grace = Duration::from_secs(2);
    let found = LocalProcesses::new(config)
        .take_over_predecessors()
        .await
        .unwrap();

    assert!(found.adopted.is_empty(), "{found:?}");
    assert_eq!(found.stopped.len(), 1, "{found:?}");
    assert!(left.try_wait().unwrap().is_some(), "replica r7 was stopped");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger runs on"
    );
    assert_eq!(
        records::read(&file).unwrap(),
        Record {
            agent: Some(std::process::id()),
            replicas: Vec::new()
        },
        "the record names the new agent and nothing else"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[tokio::test]
async fn without_a_record_there_is_nothing_to_take_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new("/nonexistent/flotilla".into(), "a");
    config.records = Some(dir.path().join("replicas.json"));
    let found = LocalProcesses::new(config)
        .take_over_predecessors()
        .await
        .unwrap();
    assert!(found.adopted.is_empty() && found.stopped.is_empty());
}

#[test]
fn a_record_from_before_agents_named_themselves_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replicas.json");
    std::fs::write(&file, r#"[{"replica":"r1","pid":4242,"port":8000}]"#).unwrap();
    let record = records::read(&file).unwrap();
    assert_eq!(record.agent, None);
    assert_eq!(record.replicas.len(), 1);
}

#[test]
fn a_damaged_record_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("replicas.json");
    std::fs::write(&file, "{ not json").unwrap();
    let err = records::read(&file).unwrap_err();
    assert!(err.to_string().contains("not a replica record"), "{err}");
}
