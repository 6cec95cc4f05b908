//! The PKI over real TLS on 127.0.0.1: foreign CAs and expired certificates are
//! refused, rotation keeps open connections, tokens are single-use.

use flotilla_pki::ca::{CertificateAuthority, Validity};
use flotilla_pki::identity::{CertInfo, Identity, Role};
use flotilla_pki::tls::{self, RotatingCert};
use flotilla_pki::token::TokenStore;
use flotilla_testkit::{TestResult, bounded, rotating_cert};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);
/// Every TLS test finishes within this, or fails.
const LIMIT: Duration = Duration::from_secs(10);
/// What a registry client accepts at the far end.
const SERVER: &[Role] = &[Role::Server];

fn id(fed: &str, cluster: &str, role: Role) -> Identity {
    Identity {
        federation: fed.into(),
        cluster: cluster.into(),
        role,
        node: None,
    }
}

/// An echo server: answers each line with `<client identity> <line>`.
async fn echo_server(config: rustls::ServerConfig) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let who = flotilla_pki::peer_identity(tls.get_ref().1.peer_certificates())
                    .and_then(Result::ok)
                    .map(|i| i.uri())
                    .unwrap_or_else(|| "anonymous".into());
                let (r, mut w) = tokio::io::split(tls);
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{who} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("flotilla.invalid")
        .map_err(std::io::Error::other)?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One round trip; TLS 1.3 reports a refused client certificate on first read.
async fn ask(conn: &mut Conn, line: &str) -> std::io::Result<String> {
    conn.write_all(format!("{line}\n").as_bytes()).await?;
    let mut buf = String::new();
    let mut reader = BufReader::new(conn);
    reader.read_line(&mut buf).await?;
    if buf.is_empty() {
        return Err(std::io::Error::other("connection closed"));
    }
    Ok(buf.trim_end().to_owned())
}

struct Fed {
    ca: CertificateAuthority,
    trust: tls::TrustBundle,
    server: Arc<RotatingCert>,
    addr: std::net::SocketAddr,
}

async fn federation(name: &str) -> TestResult<Fed> {
    let ca = CertificateAuthority::create(name)?;
    let trust = ca.trust()?;
    let server = rotating_cert(
        &ca,
        &id(name, "eu-1", Role::Server),
        Validity::from_now(HOUR),
    )?;
    let addr = echo_server(tls::server_config(&trust, server.clone(), true)?).await?;
    Ok(Fed {
        ca,
        trust,
        server,
        addr,
    })
}

#[tokio::test]
async fn a_member_is_known_by_its_spiffe_id() -> TestResult {
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        let agent = rotating_cert(
            &fed.ca,
            &id("acme", "us-2", Role::Agent),
            Validity::from_now(HOUR),
        )?;
        let mut conn = connect(
            fed.addr,
            tls::client_config(&fed.trust, Some(agent), SERVER)?,
        )
        .await?;
        assert_eq!(
            ask(&mut conn, "hi").await?,
            "spiffe://acme/cluster/us-2/agent hi"
        );
        // Without a certificate the handshake passes (for the bootstrap RPC) but the
        // caller has no identity.
        let mut anon = connect(fed.addr, tls::client_config(&fed.trust, None, SERVER)?).await?;
        assert_eq!(ask(&mut anon, "hi").await?, "anonymous hi");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() -> TestResult {
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        // Same federation name, different CA: an impostor.
        let other = CertificateAuthority::create("acme")?;
        let intruder = rotating_cert(
            &other,
            &id("acme", "eu-1", Role::Admin),
            Validity::from_now(HOUR),
        )?;
        // The intruder trusts the real CA, so only the server's check stops it.
        let refused = match connect(
            fed.addr,
            tls::client_config(&fed.trust, Some(intruder), SERVER)?,
        )
        .await
        {
            Err(_) => true,
            Ok(mut c) => ask(&mut c, "hi").await.is_err(),
        };
        assert!(refused, "a client certificate from another CA was accepted");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused_by_the_client() -> TestResult {
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        let other = CertificateAuthority::create("acme")?;
        let admin = rotating_cert(
            &fed.ca,
            &id("acme", "ops", Role::Admin),
            Validity::from_now(HOUR),
        )?;
        let err = connect(
            fed.addr,
            tls::client_config(&other.trust()?, Some(admin), SERVER)?,
        )
        .await
        .err()
        .ok_or("a server certified by another CA was trusted")?;
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
        // And a joiner pinning the wrong CA fingerprint is refused too.
        let pinned_wrong = tls::bootstrap_client_config(&other.trust()?.fingerprint())?;
        assert!(connect(fed.addr, pinned_wrong).await.is_err());
        let pinned_right = tls::bootstrap_client_config(&fed.trust.fingerprint())?;
        let mut c = connect(fed.addr, pinned_right).await?;
        assert_eq!(ask(&mut c, "join").await?, "anonymous join");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_expired_certificate_is_refused() -> TestResult {
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        let now = SystemTime::now();
        let expired = Validity {
            not_before: now - 2 * HOUR,
            not_after: now - HOUR,
        };
        let client = rotating_cert(&fed.ca, &id("acme", "eu-1", Role::Admin), expired)?;
        let refused = match connect(
            fed.addr,
            tls::client_config(&fed.trust, Some(client), SERVER)?,
        )
        .await
        {
            Err(_) => true,
            Ok(mut c) => ask(&mut c, "hi").await.is_err(),
        };
        assert!(refused, "an expired client certificate was accepted");

        // An expired server certificate is refused by the client.
        let stale = rotating_cert(&fed.ca, &id("acme", "eu-2", Role::Server), expired)?;
        let addr = echo_server(tls::server_config(&fed.trust, stale, true)?).await?;
        let err = connect(addr, tls::client_config(&fed.trust, None, SERVER)?)
            .await
            .err()
            .ok_or("an expired server certificate was trusted")?;
        assert!(err.to_string().contains("expired"), "{err}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn rotation_keeps_open_connections_and_new_handshakes_get_the_new_certificate() -> TestResult
{
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        let me = id("acme", "eu-1", Role::Admin);
        let client = rotating_cert(&fed.ca, &me, Validity::from_now(HOUR))?;
        let config = tls::client_config(&fed.trust, Some(client.clone()), SERVER)?;
        let mut old = connect(fed.addr, config.clone()).await?;
        assert_eq!(ask(&mut old, "one").await?, format!("{} one", me.uri()));
        let old_serial = CertInfo::parse(
            old.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("no server cert")?,
        )?
        .serial;
        assert_eq!(old_serial, fed.server.info().serial);

        // Renew both sides' certificates (new keys, new serials) in place.
        let renewed = fed.ca.issue(
            &id("acme", "eu-1", Role::Server),
            Validity::from_now(HOUR),
            &[],
        )?;
        let new_serial = CertInfo::parse(&renewed.chain[0])?.serial;
        fed.server.rotate(renewed.chain, renewed.key)?;
        let renewed = fed.ca.issue(&me, Validity::from_now(2 * HOUR), &[])?;
        let client_not_after = CertInfo::parse(&renewed.chain[0])?.not_after;
        client.rotate(renewed.chain, renewed.key)?;
        assert_eq!(client.info().not_after, client_not_after);
        // A rotation may not change who a certificate speaks for.
        let other = fed.ca.issue(
            &id("acme", "eu-1", Role::Agent),
            Validity::from_now(HOUR),
            &[],
        )?;
        assert!(client.rotate(other.chain, other.key).is_err());

        // The open connection carries on.
        assert_eq!(ask(&mut old, "two").await?, format!("{} two", me.uri()));
        // A new handshake gets the new server certificate.
        let mut new = connect(fed.addr, config).await?;
        assert_eq!(ask(&mut new, "three").await?, format!("{} three", me.uri()));
        let seen = CertInfo::parse(
            new.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or("no server cert")?,
        )?
        .serial;
        assert_eq!(seen, new_serial);
        assert_ne!(seen, old_serial);
        Ok(())
    })
    .await
}

#[test]
fn tokens_are_single_use_expire_and_bind_the_csr() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    let joiner = id("acme", "us-2", Role::Server);
    let token = store.issue(&joiner, HOUR, "10.0.0.1:7400", ca.cert())?;
    let decoded = flotilla_pki::JoinToken::decode(&token.encode()?)?;
    assert_eq!(decoded, token);
    assert_eq!(decoded.ca_fingerprint, ca.trust()?.fingerprint());

    // The CSR must ask for the token's identity.
    let (_key, csr) = flotilla_pki::new_key_and_csr(&id("acme", "us-2", Role::Admin))?;
    let err = ca
        .sign_csr(
            &csr,
            &{
                store.redeem(&decoded, &joiner, SystemTime::now())?;
                joiner.clone()
            },
            Validity::from_now(HOUR),
        )
        .err()
        .ok_or("a CSR for another role was signed")?;
    assert!(err.to_string().contains("allows only"), "{err}");
    // Used once: refused the second time.
    let err = store
        .redeem(&decoded, &joiner, SystemTime::now())
        .err()
        .ok_or("a token was accepted twice")?;
    assert!(err.to_string().contains("already used"), "{err}");

    let (key, csr) = flotilla_pki::new_key_and_csr(&joiner)?;
    let chain = ca.sign_csr(&csr, &joiner, Validity::from_now(HOUR))?;
    assert_eq!(Identity::from_cert(&chain[0])?, joiner);
    RotatingCert::new(chain, key)?; // the key matches the certificate

    // Expired tokens are refused; a forged token (unknown secret) too.
    let short = store.issue(&joiner, Duration::from_secs(1), "x:1", ca.cert())?;
    let err = store
        .redeem(&short, &joiner, SystemTime::now() + Duration::from_secs(5))
        .err()
        .ok_or("an expired token was accepted")?;
    assert!(err.to_string().contains("expired"), "{err}");
    let other_store = TokenStore::new(&dir.path().join("elsewhere"));
    std::fs::create_dir_all(dir.path().join("elsewhere"))?;
    let forged = other_store.issue(&joiner, HOUR, "x:1", ca.cert())?;
    assert!(store.redeem(&forged, &joiner, SystemTime::now()).is_err());
    Ok(())
}

#[test]
fn ca_key_files_are_private_and_never_overwritten() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    ca.save(dir.path())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = CertificateAuthority::create("acme")?
        .save(dir.path())
        .err()
        .ok_or("a second CA overwrote the first")?;
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    let loaded = CertificateAuthority::load(dir.path())?;
    assert_eq!(loaded.federation(), "acme");
    assert_eq!(loaded.cert(), ca.cert());
    // The loaded CA still issues certificates the original's trust bundle accepts.
    let issued = loaded.issue(&id("acme", "a", Role::Agent), Validity::from_now(HOUR), &[])?;
    flotilla_pki::layout::save_new(dir.path(), "agent", &issued.chain, &issued.key)?;
    let again = RotatingCert::load(dir.path(), "agent")?;
    assert_eq!(again.identity(), id("acme", "a", Role::Agent));
    Ok(())
}

#[test]
fn a_counted_token_admits_exactly_its_number_of_joins() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    let agent = Identity::new("acme", "c1", Role::Agent)?;
    // One token for a DaemonSet on three GPU nodes.
    let token = store.issue_counted(&agent, HOUR, "x:1", ca.cert(), 3)?;
    for node in 1..=3 {
        store
            .redeem(&token, &agent, SystemTime::now())
            .map_err(|e| format!("join {node} of 3: {e}"))?;
    }
    let err = store
        .redeem(&token, &agent, SystemTime::now())
        .err()
        .ok_or("a fourth join was admitted by a three-join token")?;
    assert!(err.to_string().contains("already used 3 times"), "{err}");
    Ok(())
}

/// Joins racing each other through the ledger's lock (each its own open of the
/// file, as separate processes would) never admit more than the count; a lock file
/// left behind by an older version, or by a process that died, is no obstacle.
#[test]
fn racing_joins_never_redeem_a_token_more_than_its_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    std::fs::write(dir.path().join("tokens.lock"), b"left behind")?;
    let agent = Identity::new("acme", "c1", Role::Agent)?;
    let token = store.issue_counted(&agent, HOUR, "x:1", ca.cert(), 3)?;
    let admitted = std::thread::scope(|scope| {
        let joins: Vec<_> = (0..12)
            .map(|_| scope.spawn(|| store.redeem(&token, &agent, SystemTime::now()).is_ok()))
            .collect();
        joins
            .into_iter()
            .map(|j| j.join().unwrap_or(false))
            .filter(|admitted| *admitted)
            .count()
    });
    assert_eq!(
        admitted, 3,
        "a three-join token admitted {admitted} of 12 racing joins"
    );
    Ok(())
}

#[test]
fn server_tokens_and_zero_use_tokens_are_refused_at_issue() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    let server = Identity::new("acme", "c1", Role::Server)?;
    let err = store
        .issue_counted(&server, HOUR, "x:1", ca.cert(), 2)
        .err()
        .ok_or("a two-join server token was issued")?;
    assert!(
        err.to_string().contains("single-use, one per server"),
        "{err}"
    );
    let agent = Identity::new("acme", "c1", Role::Agent)?;
    let err = store
        .issue_counted(&agent, HOUR, "x:1", ca.cert(), 0)
        .err()
        .ok_or("a zero-join token was issued")?;
    assert!(err.to_string().contains("at least 1"), "{err}");
    Ok(())
}

#[test]
fn a_ledger_written_before_counts_still_treats_used_tokens_as_spent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    let agent = Identity::new("acme", "c1", Role::Agent)?;
    let token = store.issue(&agent, HOUR, "x:1", ca.cert())?;
    store.redeem(&token, &agent, SystemTime::now())?;
    // Rewrite the ledger as the previous version wrote it: no uses, no redeemed.
    let path = dir.path().join(flotilla_pki::TOKENS_FILE);
    let mut ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    for record in ledger["tokens"].as_array_mut().ok_or("no tokens array")? {
        let record = record.as_object_mut().ok_or("a record is not an object")?;
        record.remove("uses");
        record.remove("redeemed");
    }
    std::fs::write(&path, serde_json::to_vec(&ledger)?)?;
    let err = store
        .redeem(&token, &agent, SystemTime::now())
        .err()
        .ok_or("a spent token from an old ledger was accepted again")?;
    assert!(err.to_string().contains("single-use"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_client_talks_only_to_the_role_it_expects_and_a_token_goes_only_to_a_server() -> TestResult
{
    bounded(LIMIT, async {
        let fed = federation("acme").await?;
        // A gateway of the same federation answers where a server was expected.
        let gateway = rotating_cert(
            &fed.ca,
            &id("acme", "eu-1", Role::Gateway),
            Validity::from_now(HOUR),
        )?;
        let at_gateway = echo_server(tls::server_config(&fed.trust, gateway, true)?).await?;
        let admin = rotating_cert(
            &fed.ca,
            &id("acme", "ops", Role::Admin),
            Validity::from_now(HOUR),
        )?;
        let err = connect(
            at_gateway,
            tls::client_config(&fed.trust, Some(admin.clone()), SERVER)?,
        )
        .await
        .err()
        .ok_or("a registry client accepted a gateway as a server")?;
        assert!(
            err.to_string().contains(
                "spiffe://acme/cluster/eu-1/gateway answered where a server was expected"
            ),
            "{err}"
        );
        // An east-west client expects a gateway, and accepts it.
        let mut c = connect(
            at_gateway,
            tls::client_config(&fed.trust, Some(admin), &[Role::Gateway])?,
        )
        .await?;
        assert_eq!(
            ask(&mut c, "hi").await?,
            "spiffe://acme/cluster/ops/admin hi"
        );
        // A joiner's token goes to servers only.
        let pinned = tls::bootstrap_client_config(&fed.trust.fingerprint())?;
        let err = connect(at_gateway, pinned)
            .await
            .err()
            .ok_or("a joiner would have sent its token to a gateway")?;
        assert!(
            err.to_string().contains("the join token is not sent"),
            "{err}"
        );
        Ok(())
    })
    .await
}

#[test]
fn a_certificate_handed_over_is_kept_only_if_the_federation_ca_signed_it() -> TestResult {
    let fed_ca = CertificateAuthority::create("acme")?;
    let trust = fed_ca.trust()?;
    let mine = id("acme", "eu-1", Role::Agent);
    let signed = fed_ca.issue(&mine, Validity::from_now(HOUR), &[])?;
    assert_eq!(trust.verify(&signed.chain)?, mine);
    let other = CertificateAuthority::create("acme")?;
    let forged = other.issue(&mine, Validity::from_now(HOUR), &[])?;
    let err = trust
        .verify(&forged.chain)
        .err()
        .ok_or("a certificate from another CA was accepted")?;
    assert!(err.to_string().contains("does not chain"), "{err}");
    assert!(trust.verify(&[]).is_err());
    Ok(())
}

/// A renewal writes both files, then renames them into place, then fsyncs the
/// directory; a crash between the renames is finished by the next load, and a
/// crash before them leaves the old pair.
#[test]
fn a_renewal_cut_short_by_a_crash_is_finished_or_abandoned_by_the_next_load() -> TestResult {
    use flotilla_pki::{files, layout};
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let ca = CertificateAuthority::create("acme")?;
    let me = id("acme", "eu-1", Role::Agent);
    let serial_of = |chain: &[rustls_pki_types::CertificateDer<'_>]| -> TestResult<Vec<u8>> {
        Ok(CertInfo::parse(&chain[0])?.serial)
    };
    let loaded = || -> TestResult<Vec<u8>> { Ok(RotatingCert::load(dir, "agent")?.info().serial) };
    let waiting = || {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".renewing"))
            .count()
    };
    let first = ca.issue(&me, Validity::from_now(HOUR), &[])?;
    layout::save_new(dir, "agent", &first.chain, &first.key)?;

    let renewed = ca.issue(&me, Validity::from_now(2 * HOUR), &[])?;
    layout::save_renewed(dir, "agent", &renewed.chain, &renewed.key)?;
    assert_eq!(loaded()?, serial_of(&renewed.chain)?);
    assert_eq!(waiting(), 0, "nothing is left waiting");

    // Cut after the key's rename: the new key is in place, its certificate waits.
    let next = ca.issue(&me, Validity::from_now(3 * HOUR), &[])?;
    std::fs::write(layout::key_path(dir, "agent"), next.key_pem()?)?;
    let cert_waiting = dir.join("agent.pem.renewing");
    std::fs::write(&cert_waiting, files::certs_pem(&next.chain))?;
    assert_eq!(
        loaded()?,
        serial_of(&next.chain)?,
        "the load finishes the renewal"
    );
    assert_eq!(waiting(), 0);

    // Cut before any rename: both wait; the pair in place stands.
    let abandoned = ca.issue(&me, Validity::from_now(4 * HOUR), &[])?;
    std::fs::write(dir.join("agent-key.pem.renewing"), abandoned.key_pem()?)?;
    std::fs::write(&cert_waiting, files::certs_pem(&abandoned.chain))?;
    assert_eq!(
        loaded()?,
        serial_of(&next.chain)?,
        "the load keeps the pair in place"
    );
    assert_eq!(waiting(), 0, "and drops what waited");
    Ok(())
}

#[test]
fn a_node_token_admits_each_node_of_its_cluster_once_and_nothing_else() -> TestResult {
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::create("acme")?;
    let store = TokenStore::new(dir.path());
    let subject = flotilla_pki::TokenSubject::new("acme", "c1", Role::Node)?;
    let token = store.issue_counted(subject, HOUR, "x:1", ca.cert(), 3)?;
    let gpu1 = token.identity(Some("gpu-1"))?;
    assert_eq!(gpu1.uri(), "spiffe://acme/cluster/c1/node/gpu-1");
    store.redeem(&token, &gpu1, SystemTime::now())?;

    let err = store
        .redeem(&token, &gpu1, SystemTime::now())
        .err()
        .ok_or("one node joined twice on one token")?;
    assert!(err.to_string().contains("already admitted node"), "{err}");
    let err = token
        .identity(None)
        .err()
        .ok_or("a node token yielded an identity without a node")?;
    assert!(err.to_string().contains("names the node"), "{err}");
    for (who, what) in [
        (
            Identity::new("acme", "c1", Role::Agent)?,
            "the cluster's agent",
        ),
        (
            Identity::for_node("acme", "c2", "gpu-2")?,
            "another cluster's node",
        ),
    ] {
        let err = store
            .redeem(&token, &who, SystemTime::now())
            .err()
            .ok_or(format!("a node token admitted {what}"))?;
        assert!(
            err.to_string().contains("another identity"),
            "{what}: {err}"
        );
    }
    store.redeem(&token, &token.identity(Some("gpu-2"))?, SystemTime::now())?;

    // A node certificate names its node, and a CSR for another node is not signed.
    let (key, csr) = flotilla_pki::new_key_and_csr(&gpu1)?;
    assert_eq!(flotilla_pki::csr_identity(&csr)?, gpu1);
    let chain = ca.sign_csr(&csr, &gpu1, Validity::from_now(HOUR))?;
    assert_eq!(Identity::from_cert(&chain[0])?, gpu1);
    RotatingCert::new(chain, key)?;
    let gpu3 = token.identity(Some("gpu-3"))?;
    assert!(ca.sign_csr(&csr, &gpu3, Validity::from_now(HOUR)).is_err());
    Ok(())
}
