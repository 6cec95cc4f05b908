//! The agent end to end: a real registry server, the reporter over a simulated fleet,
//! and the local-process materializer running real `flotilla model` children (this
//! package's binary), all on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use flotilla_agent::change::ReportPolicy;
use flotilla_agent::gpu::GpuSource;
use flotilla_agent::gpu::simulated::SimulatedFleet;
use flotilla_agent::materializer::local::{LocalConfig, LocalProcesses};
use flotilla_agent::materializer::records::{self, Record, ReplicaRecord};
use flotilla_agent::report::{self, ReportConfig, StatusHandle};
use flotilla_client::materialize::{self, DesiredReplica, Materializer, ReplicaTable, ReplicaView};
use flotilla_client::{FederationClient, RegistryLink};
use flotilla_core::{Command, DeviceRef, Millis, Phase, ReplicaId, State, fixtures};
use flotilla_registry::{Bootstrap, TransportSecurity};
use flotilla_testkit::{
    Reaped, TestResult, bounded, eventually, one_member_config, start_server_with,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const FLEET: &str = r#"
[[nodes]]
name = "gpu-0"

[[nodes.devices]]
model = "NVIDIA H100 80GB HBM3"
memory_mib = 81920
count = 2
"#;

/// One HTTP/1.1 exchange on a fresh connection; the whole raw response.
async fn http(addr: &str, method: &str, path: &str, body: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn alive(pid: u32) -> bool {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    pid.is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

fn kill(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

fn replica_on(state: &State, workload: &str, cluster: &str) -> Option<(ReplicaId, Phase)> {
    state
        .placement(workload)?
        .replicas
        .values()
        .find(|r| r.cluster == cluster)
        .map(|r| (r.id, r.phase))
}

fn view(table: &ReplicaTable, id: ReplicaId) -> Option<ReplicaView> {
    table.get().into_iter().find(|v| v.id == id.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_become_processes_that_serve_restart_and_drain() -> TestResult {
    bounded(Duration::from_secs(45), scenario()).await
}

async fn scenario() -> TestResult {
    // A one-member federation whose scheduler runs often.
    let dir = tempfile::tempdir()?;
    let mut c = one_member_config(dir.path().join("node-1"), "e2e");
    c.housekeeping_interval = Some(Duration::from_millis(100));
    let (server, addr) = start_server_with(c, "127.0.0.1:0".parse()?, Bootstrap::Init).await?;
    let state = || (*server.applied().state).clone();
    let link = Arc::new(FederationClient::new(
        &[addr.to_string()],
        &TransportSecurity::Plaintext,
        Duration::from_secs(2),
    )?);
    let stop = CancellationToken::new();

    // The agent: reporter over a simulated fleet, and the materializer.
    let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET)?;
    let mut rc = ReportConfig::new(fixtures::cluster("east", "europe"));
    rc.sample_interval = Duration::from_millis(100);
    rc.policy = ReportPolicy {
        heartbeat_interval: Millis(500),
        ..ReportPolicy::default()
    };
    rc.retry_initial = Duration::from_millis(50);
    let source: Arc<dyn GpuSource> = Arc::new(fleet);
    let reporter = tokio::spawn(report::run(
        source,
        link.clone(),
        rc,
        StatusHandle::default(),
        stop.clone(),
    ));
    let mut lc = LocalConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_flotilla")), "east");
    lc.extra_args = ["--ttft", "50ms", "--token-delay", "25ms"]
        .map(String::from)
        .to_vec();
    lc.inherit_output = false;
    lc.restart_initial = Duration::from_millis(100);
    lc.health_timeout = Duration::from_millis(300);
    let table = ReplicaTable::default();
    let materializer = tokio::spawn(materialize::run(
        link.clone(),
        LocalProcesses::new(lc),
        "east".to_owned(),
        Duration::from_millis(100),
        table.clone(),
        stop.clone(),
    ));

    // A workload: the leader's scheduler places it on east once capacity is known.
    eventually("east's capacity", Duration::from_secs(10), || async {
        (state().cluster("east")?.inventory.device_count() == 2).then_some(())
    })
    .await?;
    link.propose(&Command::ApplyWorkload {
        workload: fixtures::workload("chat", "llama-8b", 1, 1),
    })
    .await?;

    // Placed → a child starts → Ready reported.
    let id = eventually(
        "the replica to be Ready",
        Duration::from_secs(15),
        || async {
            match replica_on(&state(), "chat", "east")? {
                (id, Phase::Ready) => Some(id),
                _ => None,
            }
        },
    )
    .await?;
    let first = view(&table, id).ok_or("the replica is in the table")?;
    assert_eq!(first.local_state, "ready");
    assert_eq!(first.devices.len(), 1);
    let address = first
        .address
        .clone()
        .ok_or("a Ready replica has an address")?;
    let pid = first.pid.ok_or("a running replica has a pid")?;
    // The registry learned where it serves, with Ready.
    let published = state()
        .placement("chat")
        .and_then(|p| p.replicas.get(&id).cloned());
    assert_eq!(
        published.and_then(|r| r.endpoint),
        Some(address.clone()),
        "the Ready report carries the endpoint"
    );

    // It serves and names itself.
    let chat = r#"{"model":"llama-8b","messages":[{"role":"user","content":"hi"}],"max_tokens":4}"#;
    let answer = http(&address, "POST", "/v1/chat/completions", chat).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("x-flotilla-replica: {id}")),
        "{answer}"
    );
    assert!(answer.contains("x-flotilla-cluster: east"), "{answer}");

    // A crash: the child is started again (new process, restart counted) and serves.
    kill(pid);
    let again = eventually(
        "the replica to be restarted",
        Duration::from_secs(10),
        || async {
            let v = view(&table, id)?;
            (v.restarts == 1 && v.local_state == "ready" && v.pid.is_some_and(|p| p != pid))
                .then_some(v)
        },
    )
    .await?;
    assert!(again.last_exit.is_some_and(|e| e.contains("signal")));
    assert!(!alive(pid));
    assert_eq!(
        replica_on(&state(), "chat", "east"),
        Some((id, Phase::Ready))
    );
    let address = again
        .address
        .clone()
        .ok_or("a restarted replica has an address")?;
    let pid = again.pid.ok_or("a running replica has a pid")?;

    // Drain while a stream is in flight: the stream completes, then Gone is reported
    // and the process is gone.
    let stream_body = r#"{"model":"llama-8b","messages":[{"role":"user","content":"hi"}],"max_tokens":40,"stream":true}"#;
    let stream = tokio::spawn({
        let address = address.clone();
        async move { http(&address, "POST", "/v1/chat/completions", stream_body).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    link.propose(&Command::DrainReplica {
        workload: "chat".into(),
        replica: id,
    })
    .await?;
    let streamed = stream.await??;
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(
        streamed.contains("[DONE]"),
        "the stream finished: {streamed}"
    );
    eventually(
        "the drained replica to be Gone",
        Duration::from_secs(10),
        || async {
            let s = state();
            let p = s.placement("chat")?;
            (!p.replicas.contains_key(&id)).then_some(())
        },
    )
    .await?;
    assert!(!alive(pid), "the drained process exited");

    // The scheduler replaces it (min 1): a new replica comes up on the other GPU.
    let replacement = eventually(
        "a replacement to be Ready",
        Duration::from_secs(15),
        || async {
            match replica_on(&state(), "chat", "east")? {
                (r, Phase::Ready) if r != id => view(&table, r)?.pid,
                _ => None,
            }
        },
    )
    .await?;

    // Shutdown: no child outlives the agent.
    stop.cancel();
    materializer.await??;
    reporter.await??;
    assert!(!alive(replacement), "the replica stopped with the agent");
    server.shutdown().await?;
    Ok(())
}

/// `flotilla model` serving `llama-8b` as replica r7 of east on `addr`, with `extra`
/// arguments.
fn model_process(addr: std::net::SocketAddr, extra: &[&str]) -> std::io::Result<Reaped> {
    let replica = [
        "--model",
        "llama-8b",
        "--replica",
        "r7",
        "--cluster",
        "east",
    ];
    Reaped::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("model")
            .args(replica)
            .args(["--listen", &addr.to_string(), "--ttft", "10ms"])
            .args(extra)
            .stderr(std::process::Stdio::null()),
    )
}

fn desired_r7(addr: std::net::SocketAddr) -> DesiredReplica {
    DesiredReplica {
        workload: "chat".into(),
        model: "llama-8b".into(),
        id: ReplicaId(7),
        devices: vec![DeviceRef {
            node: "gpu-0".into(),
            uuid: "GPU-0".into(),
        }],
        phase: Phase::Ready,
        drain_deadline: None,
        endpoint: Some(addr.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_the_healthy_replica_its_predecessor_left_and_starts_no_copy()
-> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("replicas.json");
        let addr = flotilla_testkit::free_addr()?;
        let mut replica = model_process(addr, &[])?;
        let pid = replica.id();
        records::write(
            &file,
            &Record {
                agent: None,
                replicas: vec![ReplicaRecord {
                    replica: "r7".into(),
                    pid,
                    port: addr.port(),
                }],
            },
        )?;
        eventually("the replica to answer", Duration::from_secs(10), || async {
            http(&addr.to_string(), "GET", "/health", "")
                .await
                .ok()
                .filter(|a| a.starts_with("HTTP/1.1 200"))
        })
        .await?;

        let mut lc = LocalConfig::new(PathBuf::from(env!("CARGO_BIN_EXE_flotilla")), "east");
        lc.records = Some(file.clone());
        lc.stop_grace = Duration::from_secs(5);
        let mut agent = LocalProcesses::new(lc);
        let found = agent.take_over_predecessors().await?;
        assert_eq!(found.adopted.len(), 1, "{found:?}");
        assert_eq!(
            records::read(&file)?.agent,
            Some(std::process::id()),
            "the record names the new agent"
        );

        // Placed here still: the adopted process is the replica, and nothing new starts.
        let mut views = Vec::new();
        for _ in 0..3 {
            let reports = agent.reconcile(&[desired_r7(addr)]).await;
            assert!(
                reports.is_empty(),
                "nothing to tell the registry: {reports:?}"
            );
            views = agent.replicas();
        }
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].pid, Some(pid), "{views:?}");
        assert_eq!(views[0].local_state, "ready", "{views:?}");
        assert_eq!(views[0].restarts, 0, "{views:?}");

        // No longer placed here: the adopted replica is stopped like any other.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while !replica.exited() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the adopted replica did not stop"
            );
            let _ = agent.reconcile(&[]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_outlives_its_agent_only_by_the_orphan_grace_unless_another_takes_it_over()
-> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("replicas.json");
        // Stand-ins for agents: what the replica checks is a live `… agent` process.
        let agent =
            || Reaped::spawn(std::process::Command::new("sh").args(["-c", "sleep 60", "agent"]));
        let name = |agent: &Reaped| {
            records::write(
                &file,
                &Record {
                    agent: Some(agent.id()),
                    replicas: Vec::new(),
                },
            )
        };
        let first = agent()?;
        name(&first)?;
        // The kernel shows a new process's command line a moment after spawn.
        eventually(
            "the stand-in agent to show",
            Duration::from_secs(5),
            || async { records::supervised(&file).then_some(()) },
        )
        .await?;
        let addr = flotilla_testkit::free_addr()?;
        let record = file.display().to_string();
        let mut replica = model_process(
            addr,
            &["--supervisor-record", &record, "--orphan-grace", "2s"],
        )?;

        // The first agent dies; a second takes the record over within the grace.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let second = agent()?;
        name(&second)?;
        eventually(
            "the second stand-in agent to show",
            Duration::from_secs(5),
            || async { records::supervised(&file).then_some(()) },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !replica.exited(),
            "the replica stopped although an agent took it over"
        );

        // The second dies and nobody comes: the replica stops after the grace.
        drop(second);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        while !replica.exited() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the orphaned replica is still running"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_is_not_given_to_a_new_replica_while_the_one_that_left_it_still_runs() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        // A replica that ignores SIGTERM, so it holds its GPU until the agent's
        // SIGKILL at the stop grace.
        let stubborn = dir.path().join("stubborn-replica");
        std::fs::write(&stubborn, "#!/bin/sh\ntrap '' TERM\nexec sleep 60\n")?;
        std::fs::set_permissions(
            &stubborn,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut lc = LocalConfig::new(stubborn, "east");
        lc.stop_grace = Duration::from_secs(2);
        lc.inherit_output = false;
        let mut agent = LocalProcesses::new(lc);
        let placed = |id: u64| DesiredReplica {
            id: ReplicaId(id),
            phase: Phase::Starting,
            endpoint: None,
            ..desired_r7(flotilla_testkit::free_addr().unwrap_or(([127, 0, 0, 1], 9).into()))
        };
        agent.reconcile(&[placed(1)]).await;
        let first = agent.replicas();
        let r1 = first[0].pid.ok_or("r1 did not start")?;
        // Once it runs `sleep`, its SIGTERM is ignored (set before the exec).
        eventually("r1 to ignore SIGTERM", Duration::from_secs(5), || async {
            std::fs::read_to_string(format!("/proc/{r1}/comm"))
                .ok()
                .filter(|c| c.trim() == "sleep")
        })
        .await?;

        // r1 leaves GPU-0 and r2 is placed on it (the registry freed it at once):
        // r2 starts only once r1, which ignores SIGTERM, is gone (SIGKILL at the
        // stop grace).
        let mut passes = 0;
        loop {
            agent.reconcile(&[placed(2)]).await;
            passes += 1;
            let r1_runs = std::path::Path::new(&format!("/proc/{r1}")).exists();
            let r2_runs = agent
                .replicas()
                .iter()
                .any(|v| v.id == 2 && v.pid.is_some());
            assert!(!(r1_runs && r2_runs), "r1 and r2 ran at once on GPU-0");
            if r2_runs {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            passes > 5,
            "r2 waited for r1 over several passes ({passes})"
        );
        agent.shutdown().await;
        Ok(())
    })
    .await
}
