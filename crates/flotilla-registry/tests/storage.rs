//! The on-disk store: openraft's conformance suite, crash-and-reopen, bad data dirs.

use flotilla_core::{Command, Entry as CoreEntry, Timestamp};
use flotilla_registry::Error;
use flotilla_registry::store::{self, DB_FILE, LogStore, StateMachineStore, StoreConfig};
use flotilla_registry::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        let opened = store::open(&StoreConfig::new(dir.path().join("data"), "suite"))
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, opened.log, opened.state_machine))
    }
}

#[test]
fn openraft_storage_conformance_suite() -> anyhow_free::Result {
    Suite::test_all(RedbBuilder).map_err(|e| e.to_string())?;
    Ok(())
}

fn normal(term: u64, index: u64, cluster: &str) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(
            CoreEntry::new(
                Timestamp(index),
                Command::Heartbeat {
                    cluster: cluster.to_owned(),
                },
            )
            .into(),
        ),
    }
}

fn config(dir: &std::path::Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir, "fed-a");
    c.node_id = Some(7);
    c
}

#[tokio::test]
async fn reopen_after_drop_keeps_everything_acknowledged() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    let data = dir.path().join("data");
    {
        let mut opened = store::open(&config(&data))?;
        let vote = openraft::Vote::new(3, 7);
        opened.log.save_vote(&vote).await?;
        for i in 1..=20 {
            opened.log.blocking_append([normal(3, i, "eu-1")]).await?;
        }
        // Dropped here without any shutdown: whatever append acknowledged must be on disk.
    }
    let mut reopened = store::open(&config(&data))?;
    assert_eq!(reopened.node_id, 7);
    assert_eq!(
        reopened.log.read_vote().await?,
        Some(openraft::Vote::new(3, 7))
    );
    let state = reopened.log.get_log_state().await?;
    assert_eq!(state.last_log_id.map(|l| l.index), Some(20));
    let entries = reopened.log.try_get_log_entries(1..=20).await?;
    assert_eq!(entries.len(), 20);
    assert_eq!(
        entries,
        (1..=20).map(|i| normal(3, i, "eu-1")).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_survives_reopen_and_restores_core_state() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    let data = dir.path().join("data");
    let register = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(
            CoreEntry::new(
                Timestamp(1_000),
                Command::RegisterCluster {
                    spec: flotilla_core::ClusterSpec {
                        name: "eu-1".into(),
                        region: "europe".into(),
                        zone: String::new(),
                        labels: Default::default(),
                        gateway_address: String::new(),
                        endpoint_ranges: Vec::new(),
                    },
                },
            )
            .into(),
        ),
    };
    let before;
    {
        let mut opened = store::open(&config(&data))?;
        let out = opened.state_machine.apply([register]).await?;
        assert!(matches!(
            out[0].0[..],
            [flotilla_registry::types::Outcome::Applied(_)]
        ));
        before = opened.state_machine.current().state;
        assert!(before.cluster("eu-1").is_some());
        let mut builder = opened.state_machine.get_snapshot_builder().await;
        builder.build_snapshot().await?;
    }
    let mut reopened = store::open(&config(&data))?;
    let (applied, _) = reopened.state_machine.applied_state().await?;
    assert_eq!(applied.map(|l| l.index), Some(1));
    assert_eq!(*reopened.state_machine.current().state, *before);
    Ok(())
}

#[test]
fn a_corrupt_database_file_is_a_clear_error() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024])?;
    match store::open(&config(dir.path())) {
        Err(Error::CorruptDataDir { path, message }) => {
            assert_eq!(path, dir.path());
            assert!(!message.is_empty());
        }
        other => panic!("expected CorruptDataDir, got {other:?}"),
    }
    Ok(())
}

#[test]
fn another_programs_directory_is_refused() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    std::fs::write(dir.path().join("member.wal"), b"etcd")?;
    let err = store::open(&config(dir.path())).err();
    assert!(matches!(err, Some(Error::DataDir { .. })), "{err:?}");
    Ok(())
}

#[test]
fn a_directory_of_another_federation_or_node_is_refused() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    drop(store::open(&config(dir.path()))?);
    let mut other = config(dir.path());
    other.federation = "fed-b".into();
    match store::open(&other) {
        Err(e @ Error::ForeignDataDir { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("fed-a") && msg.contains("fed-b"), "{msg}");
        }
        other => panic!("expected ForeignDataDir, got {other:?}"),
    }
    let mut other = config(dir.path());
    other.node_id = Some(8);
    assert!(matches!(
        store::open(&other),
        Err(Error::NodeIdMismatch {
            found: 7,
            expected: 8,
            ..
        })
    ));
    // The right identity still opens, and a stored id is reused when none is given.
    let mut same = config(dir.path());
    same.node_id = None;
    assert_eq!(store::open(&same)?.node_id, 7 as NodeId);
    Ok(())
}

#[test]
fn a_directory_once_served_over_mtls_is_never_served_in_plaintext_again() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    let plaintext = config(dir.path());
    let mtls = StoreConfig {
        mtls: true,
        ..config(dir.path())
    };
    // Plaintext first (development), then mTLS: an upgrade is fine.
    drop(store::open(&plaintext)?);
    drop(store::open(&mtls)?);
    // pki/ is gone: the server would start without an identity.
    match store::open(&plaintext) {
        Err(e @ Error::PlaintextDowngrade { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("was served over mTLS") && msg.contains("restore pki/"),
                "{msg}"
            );
        }
        other => panic!("expected PlaintextDowngrade, got {other:?}"),
    }
    // With its identity back, it opens.
    drop(store::open(&mtls)?);
    Ok(())
}

#[test]
fn a_store_in_use_is_refused() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    let _held = store::open(&config(dir.path()))?;
    let err = store::open(&config(dir.path())).err();
    assert!(
        matches!(&err, Some(Error::DataDir { message, .. }) if message.contains("in use")),
        "{err:?}"
    );
    Ok(())
}

/// Tests return a boxed error so that `?` works on every error type involved.
mod anyhow_free {
    pub(crate) type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}

#[test]
fn stored_identity_reads_what_open_wrote() -> anyhow_free::Result {
    let dir = TempDir::new()?;
    assert_eq!(store::stored_identity(dir.path())?, None);
    drop(store::open(&config(dir.path()))?);
    assert_eq!(
        store::stored_identity(dir.path())?,
        Some(("fed-a".to_owned(), 7))
    );
    Ok(())
}

/// The child half of the crash test: appends forever, printing each acknowledged index.
/// Does nothing unless run by `reopen_after_kill_keeps_every_acknowledged_entry`.
#[test]
fn crash_writer_child() -> anyhow_free::Result {
    let Some(dir) = std::env::var_os("FLOTILLA_CRASH_DIR") else {
        return Ok(());
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut opened = store::open(&config(std::path::Path::new(&dir)))?;
        for i in 1..=100_000u64 {
            opened.log.blocking_append([normal(1, i, "eu-1")]).await?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "acked {i}")?;
            out.flush()?;
        }
        Ok(())
    })
}

/// Write, kill -9 mid-stream, reopen: every append that was acknowledged is there.
#[test]
fn reopen_after_kill_keeps_every_acknowledged_entry() -> anyhow_free::Result {
    use std::io::BufRead;
    let dir = TempDir::new()?;
    let data = dir.path().join("data");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "crash_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLOTILLA_CRASH_DIR", &data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut acked = 0u64;
    let started = std::time::Instant::now();
    for line in std::io::BufReader::new(stdout).lines() {
        if let Some(n) = line?.strip_prefix("acked ") {
            acked = n.trim().parse()?;
        }
        if acked >= 40 || started.elapsed() > std::time::Duration::from_secs(30) {
            break;
        }
    }
    child.kill()?; // SIGKILL: no destructor, no shutdown.
    child.wait()?;
    assert!(acked > 0, "the child acknowledged nothing");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut reopened = store::open(&config(&data))?;
        let last = reopened
            .log
            .get_log_state()
            .await?
            .last_log_id
            .map(|l| l.index);
        assert!(
            last >= Some(acked),
            "acknowledged {acked}, reopened log ends at {last:?}"
        );
        let entries = reopened.log.try_get_log_entries(1..=acked).await?;
        assert_eq!(entries.len() as u64, acked);
        Ok(())
    })
}
