//! The replicas an agent runs, recorded in its state directory (`replicas.json`:
//! replica, pid, port), so that an agent that starts again first stops whatever its
//! predecessor left running. Replicas watch their agent and stop when it dies, but
//! a draining one may still be finishing when the next agent starts; without this,
//! one replica could briefly run twice, on the same GPUs.

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// One replica process, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// As the replica was started: `--replica r7`.
    pub replica: String,
    pub pid: u32,
    pub port: u16,
}

/// Replaces the record with `records`, whole (a temporary file, then a rename).
pub fn write(file: &Path, records: &[ReplicaRecord]) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, file)
}

/// The recorded replicas; none when there is no record.
pub fn read(file: &Path) -> std::io::Result<Vec<ReplicaRecord>> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Stops every recorded replica that still runs: SIGTERM (it drains), SIGKILL after
/// `grace`. A recorded pid now used by another process is left alone: only a
/// process started as that replica (`model … --replica rN`) is stopped. Returns the
/// replicas it stopped.
pub async fn stop_recorded(file: &Path, grace: Duration) -> std::io::Result<Vec<ReplicaRecord>> {
    let left: Vec<ReplicaRecord> = read(file)?
        .into_iter()
        .filter(|r| runs_as(r.pid, &r.replica))
        .collect();
    for r in &left {
        signal(r.pid, rustix::process::Signal::TERM);
    }
    let deadline = tokio::time::Instant::now() + grace;
    while left.iter().any(|r| runs_as(r.pid, &r.replica)) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in left.iter().filter(|r| runs_as(r.pid, &r.replica)) {
        signal(r.pid, rustix::process::Signal::KILL);
    }
    write(file, &[])?;
    Ok(left)
}

/// Whether `pid` runs (not a zombie) as replica `replica` of a `model` command.
fn runs_as(pid: u32, replica: &str) -> bool {
    let running = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    });
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let names_replica = args
        .windows(2)
        .any(|w| w[0] == b"--replica" && w[1] == replica.as_bytes());
    running && names_replica && args.iter().any(|a| *a == b"model")
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        // Fails only if it is gone already.
        let _ = rustix::process::kill_process(pid, signal);
    }
}
