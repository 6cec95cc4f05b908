//! The child processes of a run: each in its own process group (so a cluster's agent
//! and the model replicas it started can be stopped or killed together), its output
//! in a log file, its command line kept so that a lost cluster can be started again.
//!
//! Stopping is SIGTERM to the group, then SIGKILL to whatever is left after the
//! grace period; `kill_on_drop` is the last line if `up` itself fails.

use crate::UpError;
use rustix::process::{Pid, Signal, kill_process_group};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Which part of a cluster a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Server,
    Agent,
    Gateway,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
        }
    }
}

#[derive(Debug)]
struct Proc {
    cluster: String,
    role: Role,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Also its process group's id; kept after the child is reaped.
    pid: Option<Pid>,
}

impl Proc {
    fn name(&self) -> String {
        format!("{} {}", self.cluster, self.role.as_str())
    }
}

/// A process that ended without being asked to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub cluster: String,
    pub role: Role,
    pub status: String,
    pub log: PathBuf,
}

#[derive(Debug)]
pub struct Supervisor {
    binary: PathBuf,
    procs: Vec<Proc>,
}

impl Supervisor {
    pub fn new(binary: PathBuf) -> Supervisor {
        Supervisor {
            binary,
            procs: Vec::new(),
        }
    }

    /// Starts `BINARY args…` as `cluster`'s `role`, writing its output to `log`.
    pub fn spawn(
        &mut self,
        cluster: &str,
        role: Role,
        args: Vec<String>,
        log: PathBuf,
    ) -> Result<(), UpError> {
        let mut p = Proc {
            cluster: cluster.to_owned(),
            role,
            args,
            log,
            child: None,
            pid: None,
        };
        let child = self.start(&p)?;
        p.pid = pid_of(&child);
        p.child = Some(child);
        self.procs
            .retain(|q| !(q.cluster == cluster && q.role == role));
        self.procs.push(p);
        Ok(())
    }

    fn start(&self, p: &Proc) -> Result<Child, UpError> {
        let io = |source| UpError::Io {
            path: p.log.clone(),
            source,
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p.log)
            .map_err(io)?;
        let err = out.try_clone().map_err(io)?;
        Command::new(&self.binary)
            .args(&p.args)
            // It stops by itself if `up` is killed outright (no chance to stop it).
            .arg("--exit-with-parent")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_COLOR", "1")
            // Its own group: a terminal's Ctrl-C reaches `up` alone, which then stops
            // every group in order, and a cluster can be killed whole.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| UpError::Spawn {
                what: p.name(),
                binary: self.binary.clone(),
                source,
            })
    }

    pub fn pid(&self, cluster: &str, role: Role) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.cluster == cluster && p.role == role)
            .and_then(|p| p.child.as_ref())
            .and_then(Child::id)
    }

    /// The resident memory of every process `up` runs now, in bytes, by name
    /// (`use-a server`). Processes that do not run, and platforms without `/proc`,
    /// are left out. Replicas are the agents' children and are not counted here.
    pub fn resident_memory(&self) -> BTreeMap<String, u64> {
        self.procs
            .iter()
            .filter_map(|p| {
                let pid = p.child.as_ref()?.id()?;
                Some((p.name(), resident_bytes(pid)?))
            })
            .collect()
    }

    /// Processes that ended since the last call (each reported once).
    pub fn exited(&mut self) -> Vec<Exited> {
        let mut out = Vec::new();
        for p in &mut self.procs {
            let Some(child) = p.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                out.push(Exited {
                    cluster: p.cluster.clone(),
                    role: p.role,
                    status: status.to_string(),
                    log: p.log.clone(),
                });
                p.child = None;
            }
        }
        out
    }

    /// Kills every process of `cluster` at once (SIGKILL to each group): a cluster
    /// lost without warning.
    pub async fn kill_cluster(&mut self, cluster: &str) {
        for p in self.procs.iter_mut().filter(|p| p.cluster == cluster) {
            if let Some(mut child) = p.child.take() {
                signal_group(p.pid, Signal::KILL);
                let _ = child.wait().await;
            }
        }
    }

    /// Kills one process (SIGKILL to its group).
    pub async fn kill(&mut self, cluster: &str, role: Role) {
        for p in self
            .procs
            .iter_mut()
            .filter(|p| p.cluster == cluster && p.role == role)
        {
            if let Some(mut child) = p.child.take() {
                signal_group(p.pid, Signal::KILL);
                let _ = child.wait().await;
            }
        }
    }

    /// Sends `signal` to every running process of `role` (SIGSTOP/SIGCONT to freeze
    /// and thaw the servers).
    pub fn signal_role(&self, role: Role, signal: Signal) {
        for p in self
            .procs
            .iter()
            .filter(|p| p.role == role && p.child.is_some())
        {
            signal_group(p.pid, signal);
        }
    }

    /// Clusters with a process of `role` that is not running.
    pub fn stopped(&self, role: Role) -> Vec<String> {
        self.procs
            .iter()
            .filter(|p| p.role == role && p.child.is_none())
            .map(|p| p.cluster.clone())
            .collect()
    }

    /// Starts again every process of `cluster` that is not running, servers first.
    pub fn restart_cluster(&mut self, cluster: &str) -> Result<(), UpError> {
        let mut roles: Vec<Role> = self
            .procs
            .iter()
            .filter(|p| p.cluster == cluster && p.child.is_none())
            .map(|p| p.role)
            .collect();
        roles.sort();
        for role in roles {
            self.restart(cluster, role)?;
        }
        Ok(())
    }

    /// Starts again the process of `role` in `cluster`, with the same command line,
    /// unless it runs; whether it started one.
    pub fn restart(&mut self, cluster: &str, role: Role) -> Result<bool, UpError> {
        let Some(i) = self
            .procs
            .iter()
            .position(|p| p.cluster == cluster && p.role == role && p.child.is_none())
        else {
            return Ok(false);
        };
        let child = self.procs.get(i).map(|p| self.start(p)).transpose()?;
        if let Some(p) = self.procs.get_mut(i) {
            p.pid = child.as_ref().and_then(pid_of);
            p.child = child;
        }
        Ok(true)
    }

    /// Stops everything: gateways and agents first (agents drain their replicas),
    /// servers last; SIGKILL for whatever outlives `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        for roles in [&[Role::Gateway, Role::Agent][..], &[Role::Server][..]] {
            let mut stopping: Vec<(Option<Pid>, Child)> = Vec::new();
            for p in self.procs.iter_mut().filter(|p| roles.contains(&p.role)) {
                if let Some(child) = p.child.take() {
                    // A frozen process cannot stop by itself.
                    signal_group(p.pid, Signal::CONT);
                    signal_group(p.pid, Signal::TERM);
                    stopping.push((p.pid, child));
                }
            }
            let deadline = Instant::now() + grace;
            for (pid, mut child) in stopping {
                if tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
                {
                    signal_group(pid, Signal::KILL);
                    let _ = child.wait().await;
                }
                // Replicas the agent started share its group; none may outlive it.
                signal_group(pid, Signal::KILL);
            }
        }
    }
}

fn pid_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
}

fn signal_group(pid: Option<Pid>, signal: Signal) {
    if let Some(pid) = pid {
        // ESRCH (the group is gone already) is what we want anyway.
        let _ = kill_process_group(pid, signal);
    }
}

/// Stops what an earlier run on `state_dir` left running (`up` killed outright
/// before its children noticed, or children frozen with SIGSTOP): every process but
/// this one whose command line names the directory gets SIGCONT and SIGTERM to its
/// group, then SIGKILL after `grace`. Returns their command lines, for the log.
pub async fn stop_leftovers(state_dir: &Path, grace: Duration) -> Vec<String> {
    let leftovers = processes_naming(state_dir);
    for (pid, _) in &leftovers {
        signal_leftover(*pid, Signal::CONT);
        signal_leftover(*pid, Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while leftovers.iter().any(|(pid, _)| running(*pid)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (pid, _) in leftovers.iter().filter(|(pid, _)| running(*pid)) {
        signal_leftover(*pid, Signal::KILL);
    }
    leftovers.into_iter().map(|(_, cmdline)| cmdline).collect()
}

/// `signal` to the process and to the group it leads, if it leads one (`up`'s
/// children do, and an agent's replicas are in its group).
fn signal_leftover(pid: u32, signal: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = rustix::process::kill_process(pid, signal);
    signal_group(Some(pid), signal);
}

/// Running processes other than this one with an argument that is `dir` or a path
/// inside it.
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && running(*pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).into_owned();
            let names_dir = cmdline
                .split('\0')
                .any(|arg| Path::new(arg).starts_with(dir));
            names_dir.then(|| (pid, cmdline.replace('\0', " ")))
        })
        .collect()
}

/// Whether process `pid` runs: present in `/proc` and not a zombie waiting to be
/// reaped.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// A process's resident set (`VmRSS` in `/proc/PID/status`), in bytes; `None` where
/// there is no `/proc` or the process is gone.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_the_status_file_in_bytes() {
        let status = "Name:\tflotilla\nVmPeak:\t  900 kB\nVmRSS:\t   24312 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(24312 * 1024));
        assert_eq!(parse_vm_rss("Name:\tzombie\n"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let own = resident_bytes(std::process::id());
        if cfg!(target_os = "linux") {
            assert!(own.is_some_and(|b| b > 0), "{own:?}");
        }
    }
}
