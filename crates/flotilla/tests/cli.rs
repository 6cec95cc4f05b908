//! The `flotilla` binary as people and scripts use it.

mod support;

use std::io::Write;
use std::process::{Command, Output};
use support::{Child, flotilla};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn federation_file(text: &str) -> tempfile_lite::TempFile {
    tempfile_lite::TempFile::with(text)
}

/// A scratch file removed on drop, without another dependency.
mod tempfile_lite {
    use std::path::PathBuf;

    pub(crate) struct TempFile(pub(crate) PathBuf);

    impl TempFile {
        pub(crate) fn with(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "flotilla-cli-{}-{}.toml",
                std::process::id(),
                text.len()
            ));
            let mut f = std::fs::File::create(&path).expect("temp file");
            super::Write::write_all(&mut f, text.as_bytes()).expect("write temp file");
            TempFile(path)
        }

        pub(crate) fn path(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn plan_places_the_sample_federation_and_prints_tables() {
    let out = flotilla(&["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("WORKLOAD    MODEL"), "{text}");
    assert!(text.contains("llama-70b"));
    assert!(text.contains("Routes"));
}

#[test]
fn plan_drain_shows_make_before_break_moves_as_json() {
    let out = flotilla(&["plan", "--drain", "us-east", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stages: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let after = &stages[1];
    let moves = after["moves"].as_array().expect("moves");
    assert!(!moves.is_empty());
    assert!(
        moves
            .iter()
            .all(|m| m["from"] == "us-east" && m["reason"] == "cluster-drain")
    );
    // eu-west has 8 GPUs for the 13 that us-east ran: what cannot leave is reported.
    let notes = after["notes"].as_array().expect("notes");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0]
            .as_str()
            .unwrap()
            .contains("must leave us-east but no other cluster has room")
    );
}

#[test]
fn a_typo_in_a_federation_file_names_the_field_and_line() {
    let file = federation_file("[[clusters]]\nname = \"a\"\nregion = \"r\"\nregoin = \"x\"\n");
    let out = flotilla(&["plan", "-f", file.path()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("regoin"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn an_invalid_workload_names_the_object_and_field() {
    let file = federation_file(
        "[[workloads]]\nname = \"llama-70b\"\nmodel = \"m\"\nreplicas = { min = 3, max = 2 }\ngpu = { count = 1 }\n",
    );
    let out = flotilla(&["plan", "-f", file.path()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("workload \"llama-70b\": replicas.min (3) > replicas.max (2)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn draining_an_unknown_cluster_is_an_error_not_a_no_op() {
    let out = flotilla(&["plan", "--drain", "atlantis"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cluster \"atlantis\" is not in the federation file"));
}

#[test]
fn a_missing_file_says_which() {
    let out = flotilla(&["plan", "-f", "/nonexistent/federation.toml"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reading federation file /nonexistent/federation.toml"));
}

#[test]
fn federation_init_makes_private_keys_refuses_to_overwrite_and_issues_tokens() {
    let dir = std::env::temp_dir().join(format!("flotilla-cli-pki-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let config = dir.join("config");
    let (data_s, config_s) = (
        data.to_str().expect("utf-8"),
        config.to_str().expect("utf-8"),
    );
    let init = [
        "federation",
        "init",
        "--federation",
        "acme",
        "--cluster",
        "eu-1",
        "--data-dir",
        data_s,
        "--config-dir",
        config_s,
    ];
    let out = flotilla(&init);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("spiffe://acme/cluster/eu-1/server"));
    #[cfg(unix)]
    for key in [
        data.join("pki/ca-key.pem"),
        data.join("pki/server-key.pem"),
        config.join("admin-key.pem"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    }
    let again = flotilla(&init);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("refusing to overwrite"),
        "{}",
        stderr(&again)
    );
    let token = flotilla(&[
        "federation",
        "token",
        "--cluster",
        "us-2",
        "--role",
        "agent",
        "--ttl",
        "30m",
        "--server",
        "127.0.0.1:7400",
        "--data-dir",
        data_s,
    ]);
    assert!(token.status.success(), "{}", stderr(&token));
    assert!(stdout(&token).starts_with("flotilla-join."));
    // ctl against a server that is not there: exit code 7 (unavailable), naming the call.
    let ctl = flotilla(&[
        "ctl",
        "--server",
        "127.0.0.1:9",
        "--config-dir",
        config_s,
        "get",
        "clusters",
    ]);
    assert_eq!(ctl.status.code(), Some(7), "{}", stderr(&ctl));
    assert!(stderr(&ctl).contains("list clusters"), "{}", stderr(&ctl));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_gateway_joins_with_a_token_and_follows_the_registry_over_mtls() {
    let dir = std::env::temp_dir().join(format!("flotilla-cli-gw-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, config, state) = (dir.join("data"), dir.join("config"), dir.join("gw"));
    let (data_s, config_s, state_s) = (
        data.to_str().expect("utf-8"),
        config.to_str().expect("utf-8"),
        state.to_str().expect("utf-8"),
    );
    let init = flotilla(&[
        "federation",
        "init",
        "--federation",
        "acme",
        "--cluster",
        "eu-1",
        "--data-dir",
        data_s,
        "--config-dir",
        config_s,
    ]);
    assert!(init.status.success(), "{}", stderr(&init));
    let server = Child::spawn(&[
        "server",
        "--init",
        "--data-dir",
        data_s,
        "--listen",
        "127.0.0.1:0",
        "--housekeeping-ms",
        "0",
    ]);
    let running = server.wait_for("flotilla server running");
    let addr = running
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the server logs its address")
        .to_owned();
    let token = |role: &str| {
        let out = flotilla(&[
            "federation",
            "token",
            "--cluster",
            "us-2",
            "--role",
            role,
            "--ttl",
            "30m",
            "--server",
            &addr,
            "--data-dir",
            data_s,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let gateway_args = |token: &str| -> Vec<String> {
        [
            "gateway",
            "--cluster",
            "us-2",
            "--servers",
            &addr,
            "--state-dir",
            state_s,
            "--join",
            token,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--east-west-listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec()
    };

    // An agent's token does not make a gateway.
    let args = gateway_args(&token("agent"));
    let wrong = flotilla(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("needs a gateway token"),
        "{}",
        stderr(&wrong)
    );

    // A gateway token buys the certificate, kept in --state-dir, and the gateway
    // follows the registry's routes over mTLS with it.
    let args = gateway_args(&token("gateway"));
    let gateway = Child::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    gateway.wait_for("following the registry's routes");
    assert!(state.join("pki/gateway.pem").exists());
    assert!(state.join("pki/ca.pem").exists());
    drop(gateway);

    // Registry mode without an identity is refused before anything is bound.
    let bare = flotilla(&["gateway", "--cluster", "us-2", "--servers", &addr]);
    assert!(!bare.status.success());
    assert!(
        stderr(&bare).contains("needs an identity"),
        "{}",
        stderr(&bare)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_agent_without_an_identity_or_insecure_says_how_to_get_one() {
    let out = flotilla(&[
        "agent",
        "--cluster",
        "east",
        "--region",
        "europe",
        "--servers",
        "127.0.0.1:9",
        "--gpu-source",
        "simulated",
        "--fleet",
        "does-not-matter.toml",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("no identity")
            && err.contains("flotilla federation token --role agent --cluster east")
            && err.contains("--insecure"),
        "{err}"
    );
}

#[test]
fn a_node_agent_reports_only_and_its_admin_endpoint_says_it_runs_no_replicas() {
    let fleet = federation_file(
        "[[nodes]]\nname = \"gpu-node-7\"\n\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mib = 23034\n",
    );
    // No server answers: the reporter retries while the rest of the agent runs.
    let agent = Child::spawn(&[
        "agent",
        "--cluster",
        "east",
        "--region",
        "europe",
        "--servers",
        "127.0.0.1:9",
        "--insecure",
        "--gpu-source",
        "simulated",
        "--fleet",
        fleet.path(),
        "--admin-listen",
        "127.0.0.1:0",
        "--report-scope",
        "node",
        "--node",
        "gpu-node-7",
        "--materializer",
        "none",
    ]);
    agent.wait_for("this agent runs no replicas");
    let running = agent.wait_for("agent running");
    assert!(running.contains("report_scope=Node"), "{running}");
    let admin = running
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin=http://"))
        .expect("the agent logs its admin address")
        .to_owned();
    let mut s = std::net::TcpStream::connect(&admin).expect("the admin endpoint listens");
    write!(
        s,
        "GET /replicas HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .expect("request sent");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).expect("answer read");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("--materializer none"), "{answer}");
}

#[test]
fn a_node_agent_refuses_a_fleet_of_other_nodes() {
    let fleet = federation_file(
        "[[nodes]]\nname = \"gpu-node-7\"\n\n[[nodes.devices]]\nmodel = \"NVIDIA L4\"\nmemory_mib = 23034\n",
    );
    let out = flotilla(&[
        "agent",
        "--cluster",
        "east",
        "--region",
        "europe",
        "--servers",
        "127.0.0.1:9",
        "--insecure",
        "--gpu-source",
        "simulated",
        "--fleet",
        fleet.path(),
        "--admin-listen",
        "127.0.0.1:0",
        "--report-scope",
        "node",
        "--node",
        "gpu-node-8",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("gpu-node-7") && err.contains("--node \"gpu-node-8\""),
        "{err}"
    );
}

#[test]
fn an_unknown_report_scope_is_a_usage_error() {
    let out = flotilla(&[
        "agent",
        "--cluster",
        "east",
        "--region",
        "europe",
        "--servers",
        "127.0.0.1:9",
        "--report-scope",
        "rack",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("--report-scope") && err.contains("cluster") && err.contains("node"),
        "{err}"
    );
}

/// A replica started by an agent stops by itself when that agent dies, even by
/// SIGKILL: here a shell plays the agent, starts `flotilla model --exit-with-parent`
/// with its own pid, and is killed outright.
#[test]
fn a_replica_stops_when_the_agent_that_started_it_is_killed() {
    use std::io::{BufRead, BufReader};
    let mut agent = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" model --listen 127.0.0.1:0 --model m --exit-with-parent $$ 2>/dev/null & echo $!; wait"#)
        .arg(env!("CARGO_BIN_EXE_flotilla"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut line = String::new();
    BufReader::new(agent.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the replica's pid");
    let replica: u32 = line.trim().parse().expect("a pid");
    // A zombie that nobody has reaped yet (some container inits do not) is gone.
    let alive = || flotilla_up::supervisor::running(replica);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(alive(), "the replica serves while its agent lives");

    agent.kill().expect("SIGKILL the agent");
    agent.wait().expect("the agent is reaped");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!alive(), "replica {replica} outlived its agent");
}

#[test]
fn a_replica_whose_agent_is_gone_before_it_starts_says_so() {
    // The replica's parent is this test process, never pid 1.
    let out = flotilla(&[
        "model",
        "--listen",
        "127.0.0.1:0",
        "--model",
        "m",
        "--exit-with-parent",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--exit-with-parent 1"),
        "{}",
        stderr(&out)
    );
}
