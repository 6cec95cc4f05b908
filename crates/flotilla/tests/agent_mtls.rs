//! `flotilla agent` with an identity: a real registry server over mTLS (in this
//! process, with the PKI `flotilla federation init` made), the agent binary joining
//! with a token from `flotilla federation token`, reporting over mTLS, `flotilla
//! ctl gpus set` changing one of its simulated GPUs through its admin endpoint, and
//! `flotilla ctl leave` taking its cluster out for good.

mod support;

use flotilla_pki::{CertificateAuthority, Role, TokenStore};
use flotilla_registry::{Bootstrap, CaHolder, RegistryServer, TransportSecurity};
use flotilla_testkit::{TestResult, bounded, eventually, one_member_config, start_server_with};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::{flotilla, text};

const FLEET: &str = r#"
[[nodes]]
name = "gpu-0"

[[nodes.devices]]
model = "NVIDIA H100 80GB HBM3"
memory_mib = 81920
count = 2
"#;

/// Stops the agent child however the test ends (SIGTERM, then SIGKILL).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(p) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The federation's first server, serving mTLS with the identity and CA in `data`.
async fn mtls_server(data: &Path) -> TestResult<RegistryServer> {
    let pki = data.join("pki");
    let mtls = flotilla_client::join::load_identity(&pki, Role::Server)?
        .ok_or("federation init made no server identity")?;
    let mut c = one_member_config(data, "acme");
    c.security = TransportSecurity::Mtls(mtls);
    c.ca = Some(Arc::new(CaHolder {
        ca: CertificateAuthority::load(&pki)?,
        tokens: TokenStore::new(&pki),
        validity: flotilla_pki::ca::LEAF_VALIDITY,
    }));
    let (server, _) = start_server_with(c, "127.0.0.1:0".parse()?, Bootstrap::Init).await?;
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_joins_with_a_token_reports_over_mtls_and_ctl_changes_its_gpus() -> TestResult {
    bounded(Duration::from_secs(60), scenario()).await
}

async fn scenario() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (data, config, state) = (
        dir.path().join("data"),
        dir.path().join("config"),
        dir.path().join("agent"),
    );
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(&fleet, FLEET)?;
    let s = |p: &Path| p.to_str().map(str::to_owned).ok_or("non-UTF-8 temp path");
    let (data_s, config_s, state_s, fleet_s) = (s(&data)?, s(&config)?, s(&state)?, s(&fleet)?);

    let out = flotilla(&[
        "federation",
        "init",
        "--federation",
        "acme",
        "--cluster",
        "hub",
        "--data-dir",
        &data_s,
        "--config-dir",
        &config_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let server = mtls_server(&data).await?;
    let addr = server.local_addr().to_string();
    let out = flotilla(&[
        "federation",
        "token",
        "--cluster",
        "east",
        "--role",
        "agent",
        "--server",
        &addr,
        "--data-dir",
        &data_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();

    // A token for another cluster is refused before anything is sent.
    let wrong = flotilla(&[
        "agent",
        "--cluster",
        "west",
        "--region",
        "europe",
        "--servers",
        &addr,
        "--gpu-source",
        "simulated",
        "--fleet",
        &fleet_s,
        "--admin-listen",
        "127.0.0.1:0",
        "--state-dir",
        &state_s,
        "--join",
        &token,
    ]);
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("admits cluster \"east\""),
        "{}",
        text(&wrong.stderr)
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "agent",
            "--cluster",
            "east",
            "--region",
            "europe",
            "--servers",
            &addr,
            "--gpu-source",
            "simulated",
            "--fleet",
            &fleet_s,
            "--admin-listen",
            "127.0.0.1:0",
            "--sample-interval",
            "100ms",
            "--heartbeat-interval",
            "500ms",
            "--state-dir",
            &state_s,
            "--join",
            &token,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The admin endpoint's address, from the agent's log line ("admin=http://…").
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let agent = Agent(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("admin=http://").nth(1) {
                let admin: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = tx.send(admin);
            }
        }
    });
    let admin = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await?
        .map_err(|_| "the agent never logged its admin address")?;

    // It joined: its identity is stored, the key private.
    let pki = state.join("pki");
    assert!(pki.join("agent.pem").exists() && pki.join("ca.pem").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("agent-key.pem"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // It registers and reports over mTLS.
    let applied = || (*server.applied().state).clone();
    eventually("east's capacity", Duration::from_secs(20), || async {
        (applied().cluster("east")?.inventory.device_count() == 2).then_some(())
    })
    .await?;

    // `ctl gpus set`: another tenant claims GPU 0; the registry hears of it.
    let out = flotilla(&[
        "ctl",
        "gpus",
        "set",
        "--agent",
        &admin,
        "gpu-0",
        "0",
        "--claimed-by-other",
        "true",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claimed = || {
        applied().cluster("east").map(|c| {
            c.inventory
                .devices()
                .filter(|(_, d)| d.report.claimed_by_other)
                .count()
        })
    };
    eventually("the claim reported", Duration::from_secs(10), || async {
        (claimed()? == 1).then_some(())
    })
    .await?;
    let out = flotilla(&[
        "ctl",
        "gpus",
        "set",
        "--agent",
        &admin,
        "gpu-0",
        "0",
        "--claimed-by-other",
        "false",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let node: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(node["name"], "gpu-0", "{node}");
    eventually("the release reported", Duration::from_secs(10), || async {
        (claimed()? == 0).then_some(())
    })
    .await?;
    // An unknown device: exit 3 (not found), naming what exists.
    let out = flotilla(&[
        "ctl",
        "gpus",
        "set",
        "--agent",
        &admin,
        "gpu-0",
        "7",
        "--healthy",
        "false",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // `ctl leave`: the cluster goes, and its agent's heartbeats (every 500 ms) do not
    // bring it back: its certificate went with it.
    let leave = || {
        flotilla(&[
            "ctl",
            "--server",
            &addr,
            "--config-dir",
            &config_s,
            "leave",
            "east",
        ])
    };
    let out = leave();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("cluster/east left"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(applied().cluster("east").is_none(), "east came back");
    let out = leave();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("`flotilla ctl get clusters`"));

    drop(agent);
    server.shutdown().await?;
    Ok(())
}
