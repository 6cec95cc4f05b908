//! `flotilla up` end to end: real processes (servers, agents, gateways, model
//! replicas) over mTLS on 127.0.0.1, a steady load, and a scenario event. Each test
//! runs `flotilla up --headless` with a bounded duration and reads its JSON summary.

#![allow(clippy::unwrap_used)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../simulations/scenarios/e2e")
        .join(name)
}

/// Runs `flotilla up` to its end and returns the summary; kills it (and fails) if
/// it overruns `limit`.
fn up(state: &Path, scenario: &Path, duration: &str, limit: Duration) -> Value {
    up_with(state, scenario, duration, limit, &[])
}

fn up_with(
    state: &Path,
    scenario: &Path,
    duration: &str,
    limit: Duration,
    extra: &[&str],
) -> Value {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "up",
            "--headless",
            "--output",
            "json",
            "--speed",
            "1",
            "--rate",
            "10",
        ])
        .arg("--scenario")
        .arg(scenario)
        .arg("--state-dir")
        .arg(state)
        .args(["--duration", duration])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("flotilla up did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "flotilla up failed: {}", out.status);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Processes whose command line names `state`: none may outlive `up`.
fn leftovers(state: &Path) -> Vec<String> {
    let needle = state.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && !cmdline.contains(" up ") {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn a_planned_move_under_load_fails_no_request_and_traffic_follows_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("up");
    let s = up(
        &state,
        &scenario("planned-move.toml"),
        "28s",
        Duration::from_secs(150),
    );
    assert_eq!(
        s["failed"], 0,
        "no request may fail during a planned move: {s:#}"
    );
    assert_eq!(s["streams_failed"], 0, "{s:#}");
    assert!(s["requests"].as_u64().unwrap() > 100, "{s:#}");
    let moves = s["moves"].as_array().unwrap();
    let done = moves
        .iter()
        .find(|m| m["from"] == "a" && m["to"] == "b" && m["outcome"] == "done")
        .unwrap_or_else(|| panic!("the model did not move from a to b: {s:#}"));
    assert!(done["traffic_followed_after_s"].is_number(), "{s:#}");
    assert!(s["served_by_cluster"]["b"].as_u64().unwrap() > 0, "{s:#}");
    assert!(leftovers(&state).is_empty(), "{:?}", leftovers(&state));
}

#[test]
fn a_lost_cluster_is_routed_around_and_its_model_comes_back_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("up");
    let s = up(
        &state,
        &scenario("cluster-loss.toml"),
        "35s",
        Duration::from_secs(170),
    );
    let outage = &s["outages"][0];
    assert_eq!(outage["cluster"], "a", "{s:#}");
    // The lease is 2 s; a replica then starts elsewhere and must take requests
    // well before the run ends.
    assert!(
        outage["rerouted_after_s"].as_f64().unwrap() < 20.0,
        "requests kept failing after the loss: {s:#}"
    );
    let elsewhere = ["b", "c"]
        .iter()
        .filter_map(|c| s["served_by_cluster"][c].as_u64())
        .sum::<u64>();
    assert!(
        elsewhere > 0,
        "nothing was served outside the lost cluster: {s:#}"
    );
    assert!(leftovers(&state).is_empty(), "{:?}", leftovers(&state));
}

/// Shared by the two registry-fault tests: nothing failed, and the move that the
/// scenario's reclaim (after the fault) asks for was made.
fn assert_unaffected_and_still_scheduling(s: &Value) {
    assert_eq!(
        s["failed"], 0,
        "the data plane noticed the registry fault: {s:#}"
    );
    assert!(s["requests"].as_u64().unwrap() > 100, "{s:#}");
    let moved = s["moves"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["from"] == "a" && m["outcome"] == "done");
    assert!(
        moved,
        "the federation did not schedule the move after the fault: {s:#}"
    );
}

/// Runs the three-cluster scenario with a registry fault injected before its
/// reclaim: nothing may fail, and the move the reclaim asks for must be made.
fn a_registry_fault_leaves_the_data_plane_alone(inject: &str) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("up");
    let s = up_with(
        &state,
        &scenario("three-clusters.toml"),
        "28s",
        Duration::from_secs(170),
        &["--inject", inject],
    );
    assert_unaffected_and_still_scheduling(&s);
    assert!(leftovers(&state).is_empty(), "{:?}", leftovers(&state));
}

#[test]
fn losing_the_raft_leader_leaves_the_data_plane_alone_and_scheduling_goes_on() {
    a_registry_fault_leaves_the_data_plane_alone("leader-loss@5s");
}

#[test]
fn gateways_cut_off_from_the_registry_serve_on_their_last_routes_and_converge() {
    a_registry_fault_leaves_the_data_plane_alone("registry-partition@4s+6s");
}

/// Every process below `root` now, with its command line.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut parent_of = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.insert(pid, ppid);
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&child, _) in parent_of.iter().filter(|(_, pp)| **pp == p) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            found.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
            frontier.push(child);
        }
    }
    found
}

/// Every process below `up` now.
type Procs = [(u32, String)];

/// `flotilla up` on the planned-move scenario for long enough, in the background.
fn spawn_up(state: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["up", "--headless", "--speed", "1", "--rate", "5"])
        .arg("--scenario")
        .arg(scenario("planned-move.toml"))
        .arg("--state-dir")
        .arg(state)
        .args(["--duration", "120s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls `check` every 200 ms until it answers, failing with `what` after `limit`.
fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match check() {
            Ok(found) => return found,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "{what} within {limit:?}: {seen}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killing_up_outright_stops_every_process_it_started_replicas_included() {
    let state = tempfile::tempdir().unwrap();
    let mut up = spawn_up(state.path());
    let started = poll("a replica starts", Duration::from_secs(90), || {
        let procs = descendants(up.id());
        if procs.iter().any(|(_, c)| c.contains(" model ")) {
            Ok(procs)
        } else {
            Err(format!("{procs:?}"))
        }
    });

    up.kill().unwrap();
    up.wait().unwrap();

    poll("nothing outlives `up`", Duration::from_secs(40), || {
        let survivors: Vec<&(u32, String)> = started
            .iter()
            .filter(|(pid, _)| flotilla_up::supervisor::running(*pid))
            .collect();
        if survivors.is_empty() {
            Ok(())
        } else {
            Err(format!("{survivors:?}"))
        }
    });
}

#[test]
fn an_agent_that_dies_is_restarted_and_adopts_the_replica_that_kept_serving() {
    let state = tempfile::tempdir().unwrap();
    let mut up = spawn_up(state.path());
    let record = state.path().join("b/agent/replicas.json");
    // The scenario moves the model to cluster b: b's agent runs the replica from then on.
    let agent_of_b = |procs: &Procs| {
        procs
            .iter()
            .find(|(_, c)| c.contains(" agent ") && c.contains("--cluster b "))
            .map(|(pid, _)| *pid)
    };
    // The agent the record names, and the replicas it lists, once both run.
    let recorded = || {
        let r = flotilla_agent::materializer::records::read(&record).map_err(|e| e.to_string())?;
        match (r.agent, r.replicas.first()) {
            (Some(agent), Some(replica)) if flotilla_up::supervisor::running(replica.pid) => {
                Ok((agent, replica.pid))
            }
            _ => Err(format!("{r:?}")),
        }
    };
    let (first, replica) = poll(
        "cluster b's agent runs the replica",
        Duration::from_secs(90),
        || {
            let (agent, replica) = recorded()?;
            (agent_of_b(&descendants(up.id())) == Some(agent))
                .then_some((agent, replica))
                .ok_or_else(|| "the recorded agent is not b's".to_owned())
        },
    );

    std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    let (second, adopted) = poll(
        "a new agent of cluster b takes the record over",
        Duration::from_secs(60),
        || {
            recorded().and_then(|(a, r)| {
                if a == first {
                    Err("not yet".into())
                } else {
                    Ok((a, r))
                }
            })
        },
    );
    assert_ne!(first, second);
    assert_eq!(
        adopted, replica,
        "the new agent adopted the running replica"
    );
    // Past the replica's orphan grace (10 s): it is supervised, so it serves on.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        flotilla_up::supervisor::running(replica),
        "the adopted replica stopped"
    );
    assert_eq!(recorded(), Ok((second, replica)));

    up.kill().unwrap();
    up.wait().unwrap();
}

#[test]
fn a_new_run_first_stops_what_an_earlier_run_on_its_state_directory_left_running() {
    let state = tempfile::tempdir().unwrap();
    // A process of an earlier run, frozen: its command line names the directory.
    let mut leftover = std::process::Command::new("sh")
        .arg("-c")
        .arg("while :; do sleep 1; done")
        .arg(state.path().join("a/agent"))
        .spawn()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-STOP", &leftover.id().to_string()])
        .status()
        .unwrap();

    let summary = up(
        state.path(),
        &scenario("planned-move.toml"),
        "3s",
        Duration::from_secs(120),
    );
    assert!(summary["requests"].as_u64().is_some(), "{summary}");
    let status = leftover.try_wait().unwrap();
    assert!(
        status.is_some(),
        "the earlier run's process still runs after a new run started"
    );
}

/// `flotilla up --chaos` on the chaos scenario for `duration`: its summary.
fn chaos_run(state: &Path, duration: &str, limit: Duration) -> Value {
    up_with(
        state,
        &scenario("chaos.toml"),
        duration,
        limit,
        &["--chaos", "--chaos-every", "3s", "--chaos-seed", "1"],
    )
}

/// What a chaos run must show, however long it ran.
fn assert_chaos_did_no_harm(s: &Value) {
    let c = &s["chaos"];
    let played: u64 = c["faults"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(played >= 10, "too few faults were played: {c:#}");
    assert!(c["restarts"].as_u64().unwrap() >= 1, "{c:#}");
    assert!(
        c["failures_by_cause"].get("unexplained").is_none(),
        "failures no fault explains: {c:#}"
    );
    let registry = &c["registry"];
    assert!(
        registry["writes_acknowledged"].as_u64().unwrap() > 50,
        "{registry:#}"
    );
    for empty in [
        &registry["lost"],
        &registry["anomalies"],
        &c["overcommitted"],
        &c["shared_devices"],
        &c["orphans"],
    ] {
        assert_eq!(empty.as_array().map(Vec::len), Some(0), "{c:#}");
    }
    assert!(c["registry_reads_checked"].as_u64().unwrap() > 10, "{c:#}");
    assert!(c["process_scans"].as_u64().unwrap() > 10, "{c:#}");
    assert!(s["requests"].as_u64().unwrap() > 100, "{s:#}");
}

#[test]
fn under_chaos_no_write_is_lost_no_gpu_is_booked_twice_no_replica_is_orphaned_and_every_failure_is_explained()
 {
    let state = tempfile::tempdir().unwrap();
    let s = chaos_run(state.path(), "60s", Duration::from_secs(200));
    assert_chaos_did_no_harm(&s);
    assert!(
        leftovers(state.path()).is_empty(),
        "{:?}",
        leftovers(state.path())
    );
}

/// The long run behind the README's chaos numbers:
/// `FLOTILLA_SOAK=30m cargo test --release -p flotilla --test up_e2e -- --ignored --nocapture chaos_soak`.
#[test]
#[ignore = "a soak of FLOTILLA_SOAK (default 30m); run it by name"]
fn chaos_soak() {
    let duration = std::env::var("FLOTILLA_SOAK").unwrap_or_else(|_| "30m".to_owned());
    let state = tempfile::tempdir().unwrap();
    let s = chaos_run(state.path(), &duration, Duration::from_secs(3 * 3600));
    println!("{}", serde_json::to_string_pretty(&s).unwrap());
    assert_chaos_did_no_harm(&s);
    assert!(leftovers(state.path()).is_empty());
}

/// Forged joins (well-formed tokens from a ledger this federation's CA never
/// kept) at every server, from when the load starts until `for_` has passed: how
/// many were refused as unknown (by the CA's server), by the bound of its join
/// queue, and by servers that hold no CA. Any join that got in, or any other
/// answer, fails the test.
fn forged_join_flood(state: &Path, for_: Duration) -> [usize; 3] {
    use flotilla_proto::v1::pki_service_client::PkiServiceClient;
    let endpoints = state.join("endpoints.json");
    poll("up to lay out its state", Duration::from_secs(60), || {
        std::fs::read(&endpoints).map_err(|e| e.to_string())
    });
    let found: Value = serde_json::from_slice(&std::fs::read(&endpoints).unwrap()).unwrap();
    let servers: Vec<String> = found["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["server"].as_str().unwrap().to_owned())
        .collect();
    // From when the first gateway serves the model, that is, when the load starts.
    let gateway = found["clusters"][0]["gateway"].as_str().unwrap().to_owned();
    poll("the model served", Duration::from_secs(120), || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&gateway).map_err(|e| e.to_string())?;
        tcp.write_all(b"GET /v1/models HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        answer.contains("chat-model").then_some(()).ok_or(answer)
    });
    let ca_path = flotilla_pki::layout::ca_path(&state.join("admin"));
    let ca = flotilla_pki::TrustBundle::from_pem_file(&ca_path).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let ledger = flotilla_pki::TokenStore::new(elsewhere.path());
    let intruder =
        flotilla_pki::Identity::new("local", "intruder", flotilla_pki::Role::Agent).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + for_;
        let mut refused = [0; 3];
        while tokio::time::Instant::now() < deadline {
            let joins = servers.iter().flat_map(|server| {
                let token = ledger
                    .issue(&intruder, Duration::from_secs(3600), server, ca.ca())
                    .unwrap();
                let config = flotilla_pki::bootstrap_client_config(&token.ca_fingerprint).unwrap();
                let channel = flotilla_client::transport::tls_channel(
                    std::sync::Arc::new(config),
                    server,
                    Duration::from_secs(2),
                )
                .unwrap();
                (0..20).map(move |_| {
                    let (channel, token) = (channel.clone(), token.encode().unwrap());
                    async move {
                        let mut client = PkiServiceClient::new(channel);
                        let request = flotilla_proto::v1::JoinRequest {
                            token,
                            csr_der: vec![1, 2, 3],
                        };
                        match client.join(request).await {
                            Ok(_) => Err("a forged join got in".to_owned()),
                            Err(s) => Ok((s.code(), s.message().to_owned())),
                        }
                    }
                })
            });
            for answer in futures::future::join_all(joins).await {
                let Ok((code, message)) = answer else {
                    panic!("{answer:?}");
                };
                let why = match code {
                    tonic::Code::Unauthenticated if message.contains("unknown to this CA") => 0,
                    tonic::Code::ResourceExhausted => 1,
                    tonic::Code::FailedPrecondition
                        if message.contains("does not hold the federation CA key") =>
                    {
                        2
                    }
                    _ => panic!("a forged join was answered {code:?}: {message}"),
                };
                refused[why] += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused
    })
}

#[test]
fn a_flood_of_forged_joins_beside_the_load_fails_no_request_and_scheduling_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("up");
    let flooded = {
        let state = state.clone();
        std::thread::spawn(move || forged_join_flood(&state, Duration::from_secs(20)))
    };
    let s = up_with(
        &state,
        &scenario("three-clusters.toml"),
        "28s",
        Duration::from_secs(170),
        &[],
    );
    let [unknown, bounded, not_the_ca] = flooded.join().unwrap();
    eprintln!(
        "forged joins refused: {unknown} unknown to the CA, {bounded} over the join queue's bound, {not_the_ca} at servers without the CA"
    );
    assert!(
        unknown + bounded > 500 && not_the_ca > 0,
        "forged joins refused: {unknown} unknown, {bounded} over the bound, {not_the_ca} at servers without the CA"
    );
    assert_unaffected_and_still_scheduling(&s);
    assert!(leftovers(&state).is_empty(), "{:?}", leftovers(&state));
}
