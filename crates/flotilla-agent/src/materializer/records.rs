//! The replicas an agent runs, recorded in its state directory (`replicas.json`:
//! the agent's pid, and each replica's id, pid and port).
//!
//! The record is what lets a replica outlive its agent briefly and safely:
//! - a replica started with `--supervisor-record FILE` runs while the agent the
//!   record names is alive; once it is gone, the replica waits `--orphan-grace` for
//!   another agent to take the record over, and drains and exits if none does;
//! - an agent that starts again takes the record over before it starts anything
//!   ([`take_over`]): it **adopts** each recorded replica that still runs and
//!   answers `/health`, and stops the others. So an agent killed outright and
//!   restarted within the grace costs no request, one replica never runs twice,
//!   and its GPUs are never booked twice.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
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

/// The whole record: which agent supervises which replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The supervising agent's pid; none before any agent wrote the record.
    pub agent: Option<u32>,
    pub replicas: Vec<ReplicaRecord>,
}

/// The shapes a record file has had: a bare list before agents named themselves.
#[derive(Deserialize)]
#[serde(untagged)]
enum OnDisk {
    Record(Record),
    Replicas(Vec<ReplicaRecord>),
}

/// Replaces the record, whole (a temporary file, then a rename), so a replica
/// reading it never sees half of one.
pub fn write(file: &Path, record: &Record) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, file)
}

/// The record; an empty one when there is none.
pub fn read(file: &Path) -> std::io::Result<Record> {
    match std::fs::read(file) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(OnDisk::Record(r)) => Ok(r),
            Ok(OnDisk::Replicas(replicas)) => Ok(Record {
                agent: None,
                replicas,
            }),
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a replica record: {e}"),
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(e) => Err(e),
    }
}

/// What an agent found when it took the record over.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakeOver {
    /// Still running and healthy: now this agent's.
    pub adopted: Vec<ReplicaRecord>,
    /// Running but not healthy: stopped.
    pub stopped: Vec<ReplicaRecord>,
}

/// Makes this process the record's agent: adopts every recorded replica that runs
/// and answers `GET /health` within `health_timeout`, stops (SIGTERM, SIGKILL after
/// `grace`) those that run but do not, and forgets the rest. A recorded pid now
/// used by another process is left alone: only a process started as that replica
/// (`model … --replica rN`) counts.
pub async fn take_over(
    file: &Path,
    health_timeout: Duration,
    grace: Duration,
) -> std::io::Result<TakeOver> {
    let mut found = TakeOver::default();
    for r in read(file)?.replicas {
        if !runs_as(r.pid, &r.replica) {
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], r.port));
        let healthy = crate::http::get_status(addr, "/health", health_timeout)
            .await
            .is_ok_and(|s| s.is_success());
        if healthy {
            found.adopted.push(r);
        } else {
            found.stopped.push(r);
        }
    }
    write(
        file,
        &Record {
            agent: Some(std::process::id()),
            replicas: found.adopted.clone(),
        },
    )?;
    stop(&found.stopped, grace).await;
    Ok(found)
}

/// SIGTERM to each (they drain), SIGKILL to those still running after `grace`.
pub async fn stop(replicas: &[ReplicaRecord], grace: Duration) {
    for r in replicas {
        signal(r.pid, rustix::process::Signal::TERM);
    }
    // Until each has exited, not merely stopped looking like a replica: a process
    // on its way out has no command line any more, but may still hold its GPUs.
    let deadline = tokio::time::Instant::now() + grace;
    while !replicas.iter().all(|r| gone(r.pid, &r.replica))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for r in replicas.iter().filter(|r| runs_as(r.pid, &r.replica)) {
        signal(r.pid, rustix::process::Signal::KILL);
    }
}

/// Whether the agent that `file` names runs now (a live `flotilla … agent`
/// process, so a reused pid does not count). A replica asks this to know whether
/// it is still supervised.
pub fn supervised(file: &Path) -> bool {
    read(file)
        .ok()
        .and_then(|r| r.agent)
        .is_some_and(|pid| runs_with(pid, |args| args.contains(&&b"agent"[..])))
}

/// Whether `pid` runs (not a zombie) as replica `replica` of a `model` command.
pub fn runs_as(pid: u32, replica: &str) -> bool {
    runs_with(pid, |args| {
        let names_replica = args
            .windows(2)
            .any(|w| w[0] == b"--replica" && w[1] == replica.as_bytes());
        names_replica && args.contains(&&b"model"[..])
    })
}

/// Whether `pid` runs (not a zombie) with arguments that pass `check`.
fn runs_with(pid: u32, check: impl Fn(&[&[u8]]) -> bool) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    alive(pid) && check(&args)
}

/// Whether replica `replica`, which ran as `pid`, has exited: `pid` is gone (or a
/// zombie), or is another program now. A process on its way out, which has lost
/// its command line but not yet exited, is not gone: it may still hold its GPUs.
pub fn gone(pid: u32, replica: &str) -> bool {
    if !alive(pid) {
        return true;
    }
    let exiting = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty());
    !exiting && !runs_as(pid, replica)
}

/// Whether `pid` exists and is not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Sends `signal` to `pid`; a process that is gone already is no error.
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
