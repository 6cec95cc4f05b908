//! Security end to end: a process holding a certificate from another CA — even one
//! that names the same federation — cannot join the federation, report for a
//! cluster, or route through a gateway. Real `flotilla` processes on 127.0.0.1; the
//! two CAs are made here with `flotilla-pki`.

#![allow(clippy::unwrap_used)]

use flotilla_pki::{
    CertificateAuthority, Identity, Role, RotatingCert, TrustBundle, Validity, layout,
};
use flotilla_testkit::free_addr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FEDERATION: &str = "local";

fn issue(ca: &CertificateAuthority, dir: &Path, cluster: &str, role: Role) {
    let id = Identity::new(FEDERATION, cluster, role).unwrap();
    let issued = ca
        .issue(
            &id,
            Validity::from_now(Duration::from_secs(3600)),
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
        )
        .unwrap();
    layout::save_new(dir, role.as_str(), &issued.chain, &issued.key).unwrap();
}

/// A child killed on drop, its output in a file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(admin: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["ctl", "--config-dir"])
        .arg(admin)
        .args(["--server", server, "--output", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TLS client with `cert` (trusting `trust`) talks to an east-west listener at
/// `addr`; true when the server refused it (an alert or a closed connection), false
/// when it was let in.
fn refused_at(addr: &str, trust: &TrustBundle, cert: Arc<RotatingCert>) -> bool {
    let config = flotilla_pki::client_config(trust, Some(cert), &[Role::Gateway]).unwrap();
    let config = Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    // HTTP/2's preface: a gateway that accepted the certificate waits for more.
    if tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").is_err() {
        return true;
    }
    let mut buf = [0u8; 64];
    match tls.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_certificate_from_another_ca_cannot_join_report_or_route() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ours = CertificateAuthority::create(FEDERATION).unwrap();
    let forged = CertificateAuthority::create(FEDERATION).unwrap();

    // Our federation: one server, and an admin for ctl.
    let (data, admin) = (root.join("a/server"), root.join("admin"));
    ours.save(&data.join("pki")).unwrap();
    issue(&ours, &data.join("pki"), "a", Role::Server);
    issue(&ours, &admin, "admin", Role::Admin);
    let server_addr = free_addr().unwrap().to_string();
    let server = Proc::start(
        &[
            "server",
            "--init",
            "--federation",
            FEDERATION,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &server_addr,
        ],
        root.join("server.log"),
    );
    assert!(
        server.wait_for("flotilla server running", Duration::from_secs(30)),
        "{}",
        server.log()
    );

    // Join: a server with the other CA's certificate is never let in.
    let joiner_data = root.join("x/server");
    issue(&forged, &joiner_data.join("pki"), "x", Role::Server);
    let joiner = Proc::start(
        &[
            "server",
            "--data-dir",
            joiner_data.to_str().unwrap(),
            "--join",
            &server_addr,
            "--listen",
            &free_addr().unwrap().to_string(),
        ],
        root.join("joiner.log"),
    );
    // Report: an agent with the other CA's certificate claims cluster "x".
    let agent_dir = root.join("x/agent");
    issue(&forged, &agent_dir.join("pki"), "x", Role::Agent);
    let fleet = root.join("fleet.toml");
    std::fs::write(
        &fleet,
        "[[nodes]]\nname = \"n\"\n[[nodes.devices]]\nmodel = \"H100\"\nmemory_mib = 81920\n",
    )
    .unwrap();
    let agent = Proc::start(
        &[
            "agent",
            "--cluster",
            "x",
            "--region",
            "r",
            "--servers",
            &server_addr,
            "--state-dir",
            agent_dir.to_str().unwrap(),
            "--gpu-source",
            "simulated",
            "--fleet",
            fleet.to_str().unwrap(),
            "--admin-listen",
            &free_addr().unwrap().to_string(),
            "--heartbeat-interval",
            "500ms",
        ],
        root.join("agent.log"),
    );
    // Route: our own gateway of cluster "a", with an east-west listener.
    let gw_dir = root.join("a/gateway");
    issue(&ours, &gw_dir.join("pki"), "a", Role::Gateway);
    let east_west = free_addr().unwrap().to_string();
    let gateway = Proc::start(
        &[
            "gateway",
            "--cluster",
            "a",
            "--servers",
            &server_addr,
            "--state-dir",
            gw_dir.to_str().unwrap(),
            "--listen",
            &free_addr().unwrap().to_string(),
            "--east-west-listen",
            &east_west,
            "--admin-listen",
            &free_addr().unwrap().to_string(),
        ],
        root.join("gateway.log"),
    );
    assert!(
        gateway.wait_for("serving on", Duration::from_secs(30)),
        "{}",
        gateway.log()
    );

    // Give the intruders time to try (the agent reports every half second).
    std::thread::sleep(Duration::from_secs(5));
    let federation = ctl(&admin, &server_addr, &["get", "clusters"]);
    assert!(
        !federation.contains("\"x\""),
        "a forged agent registered its cluster: {federation}"
    );
    assert!(
        agent.log().contains("certificate") || agent.log().contains("handshake"),
        "the agent says why it is refused: {}",
        agent.log()
    );
    assert!(
        !joiner.log().contains("flotilla server running"),
        "the forged server joined: {}",
        joiner.log()
    );
    // The server logged the refusals, naming the handshake.
    assert!(
        server.log().to_lowercase().contains("certificate")
            || server.log().to_lowercase().contains("handshake"),
        "{}",
        server.log()
    );

    // A forged gateway certificate is refused at the east-west listener; one from our
    // CA is let in (so the refusal is about the CA, not the test).
    let trust = TrustBundle::new(ours.cert().clone()).unwrap();
    let forged_gw = root.join("b/forged");
    issue(&forged, &forged_gw, "b", Role::Gateway);
    let honest_gw = root.join("b/honest");
    issue(&ours, &honest_gw, "b", Role::Gateway);
    assert!(refused_at(
        &east_west,
        &trust,
        RotatingCert::load(&forged_gw, "gateway").unwrap()
    ));
    assert!(!refused_at(
        &east_west,
        &trust,
        RotatingCert::load(&honest_gw, "gateway").unwrap()
    ));
}
