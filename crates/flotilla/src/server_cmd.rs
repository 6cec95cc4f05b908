//! `flotilla server`: one member of the federation's replicated registry.
//!
//! - `flotilla server --init --federation NAME --data-dir DIR` starts a federation.
//! - `flotilla server --join ADDR --data-dir DIR` joins through any existing member
//!   (learner first, promoted to voter so that the federation keeps an odd number of
//!   voters, at most five: a second server waits as a learner for a third).
//! - `flotilla server --data-dir DIR` restarts from what the directory holds.
//! - `flotilla server --join TOKEN --data-dir DIR` (a token from `flotilla federation
//!   token`): makes a key here, gets a certificate from the CA server named in the
//!   token, stores it in `DIR/pki/`, and joins through that server.
//!
//! With an identity in `DIR/pki/` (from `federation init` or a token) the server speaks
//! mTLS only; without one it serves plaintext, for local development (and says so).

use anyhow::{Context, bail};
use flotilla_client::{RegistryClient, TransportSecurity};
use flotilla_pki::{CertificateAuthority, JoinToken, Role, TokenStore};
use flotilla_registry::{Bootstrap, CaHolder, RegistryServer, ServerConfig, store};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// Where the registry's log and snapshots live.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// Address to listen on for Raft, the registry API and health.
    #[arg(long, default_value = "0.0.0.0:7400", env = "FLOTILLA_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Address other servers use to reach this one (host:port); defaults to --listen.
    #[arg(long, env = "FLOTILLA_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// This server's id in the federation; by default the stored one, or a new one.
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    pub(crate) node_id: Option<u64>,
    /// Start a new federation with this server as its first voter.
    #[arg(long, conflicts_with = "join")]
    pub(crate) init: bool,
    /// The federation's name (required with --init; with --join it is asked of ADDR).
    #[arg(long, env = "FLOTILLA_FEDERATION")]
    pub(crate) federation: Option<String>,
    /// Join the federation with a join token (from `flotilla federation token`), or,
    /// in plaintext development setups, through the member at ADDR (host:port).
    #[arg(long, value_name = "TOKEN|ADDR")]
    pub(crate) join: Option<String>,
    /// How often the leader runs the scheduler, in milliseconds (0: never).
    #[arg(long, default_value_t = 500)]
    pub(crate) housekeeping_ms: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub(crate) heartbeat_ms: u64,
    /// Raft election timeout range in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub(crate) election_min_ms: u64,
    #[arg(long, default_value_t = 1000)]
    pub(crate) election_max_ms: u64,
    /// Do not fsync acknowledged writes (unsafe: a power loss can lose them).
    #[arg(long)]
    pub(crate) no_fsync: bool,
    /// Snapshot the state after this many log entries since the last snapshot; the
    /// log before it is then purged.
    #[arg(long, default_value_t = 10_000, value_name = "ENTRIES")]
    pub(crate) snapshot_every: u64,
    /// Log entries kept behind a snapshot, so that a follower slightly behind
    /// catches up from the log rather than a whole snapshot.
    #[arg(long, default_value_t = 1_000, value_name = "ENTRIES")]
    pub(crate) log_entries_kept: u64,
    /// The store's page cache, in MiB.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    pub(crate) store_cache_mib: usize,
    // `flotilla up` passes `--exit-with-parent` with its own id, so that nothing it
    // started runs on when it is killed outright.
    #[command(flatten)]
    pub(crate) parent: crate::signals::ParentWatch,
}

/// The mTLS identity in `DATA_DIR/pki`, if any, and the CA if this server holds it.
fn load_pki(
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<(TransportSecurity, Option<std::sync::Arc<CaHolder>>)>> {
    let pki = crate::federation_cmd::pki_dir(data_dir);
    let Some(mtls) = flotilla_client::join::load_identity(&pki, Role::Server)? else {
        return Ok(None);
    };
    let security = TransportSecurity::Mtls(mtls);
    let ca = if pki.join(flotilla_pki::ca::CA_KEY).exists() {
        Some(std::sync::Arc::new(CaHolder {
            ca: CertificateAuthority::load(&pki)?,
            tokens: TokenStore::new(&pki),
            validity: flotilla_pki::ca::LEAF_VALIDITY,
        }))
    } else {
        None
    };
    Ok(Some((security, ca)))
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    args.parent.check()?;
    // A join token: get a certificate first (once; a restart reuses it).
    let token = match &args.join {
        Some(j) if j.starts_with("flotilla-join.") => Some(JoinToken::decode(j)?),
        _ => None,
    };
    if let Some(token) = &token {
        // The one join step every role shares; a restart with the same (now spent)
        // token finds the identity stored and does not redeem it again.
        let pki = crate::federation_cmd::pki_dir(&args.data_dir);
        flotilla_client::join::join_with_token(token, Role::Server, None, &pki)
            .await
            .with_context(|| format!("joining with the token at {}", token.server))?;
    }
    let pki = load_pki(&args.data_dir)?;
    let (security, ca) = match pki {
        Some((s, ca)) => (s, ca),
        None => {
            tracing::warn!(
                data_dir = %args.data_dir.display(),
                "no identity in DATA_DIR/pki: serving PLAINTEXT without authorization (development only); run `flotilla federation init` or join with a token"
            );
            eprintln!(
                "warning: no identity in {}/pki: serving plaintext without authorization (development only)",
                args.data_dir.display()
            );
            (TransportSecurity::Plaintext, None)
        }
    };
    let pki_federation = match &security {
        TransportSecurity::Mtls(m) => Some(m.trust.federation().to_owned()),
        _ => None,
    };
    if let (Some(f), Some(given)) = (&pki_federation, &args.federation)
        && f != given
    {
        bail!(
            "--federation {given:?} does not match the federation CA in {}/pki ({f:?})",
            args.data_dir.display()
        );
    }
    let stored = store::stored_identity(&args.data_dir)?;
    let joining = token
        .as_ref()
        .map(|t| (t.federation.clone(), Bootstrap::Join(t.server.clone())));
    let (federation, bootstrap) = match (joining, &args.join, args.init) {
        (Some(joining), _, _) => joining,
        (None, Some(addr), _) => {
            let federation = match args.federation.clone().or(pki_federation.clone()) {
                Some(f) => f,
                None => {
                    let mut client = RegistryClient::new(addr, &security)?;
                    client
                        .status()
                        .await
                        .with_context(|| format!("asking {addr} which federation it serves"))?
                        .federation
                }
            };
            (federation, Bootstrap::Join(addr.clone()))
        }
        (None, None, true) => {
            let Some(f) = args.federation.clone().or(pki_federation.clone()) else {
                bail!("--init needs --federation NAME (or a PKI from `flotilla federation init`)");
            };
            (f, Bootstrap::Init)
        }
        (None, None, false) => match (stored.as_ref(), &args.federation) {
            (Some((f, _)), _) => (f.clone(), Bootstrap::Resume),
            (None, _) => bail!(
                "{} holds no registry: start a federation with --init --federation NAME, or join one with --join TOKEN",
                args.data_dir.display()
            ),
        },
    };
    anyhow::ensure!(
        args.snapshot_every > 0,
        "--snapshot-every must be at least 1"
    );
    anyhow::ensure!(
        args.store_cache_mib > 0,
        "--store-cache-mib must be at least 1"
    );
    let mut config = ServerConfig::new(&args.data_dir, federation);
    config.node_id = args.node_id;
    config.advertise = args.advertise.clone();
    config.security = security.clone();
    config.ca = ca;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout_min = Duration::from_millis(args.election_min_ms);
    config.election_timeout_max = Duration::from_millis(args.election_max_ms);
    config.housekeeping_interval =
        (args.housekeeping_ms > 0).then(|| Duration::from_millis(args.housekeeping_ms));
    config.fsync = !args.no_fsync;
    config.snapshot_after_entries = args.snapshot_every;
    config.entries_kept_after_snapshot = args.log_entries_kept;
    config.store_cache_bytes = args.store_cache_mib.saturating_mul(1024 * 1024);
    // Check everything before binding a port.
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let server = RegistryServer::start(config, listener, bootstrap).await?;
    tracing::info!(
        node_id = server.node_id(),
        federation = server.federation(),
        addr = %server.local_addr(),
        advertise = server.advertise(),
        "flotilla server running"
    );
    // Renew this server's certificate before it expires, in place: through itself
    // (when it holds the CA) or any member it knows.
    let stop_renewal = tokio_util::sync::CancellationToken::new();
    let renewal = match &security {
        TransportSecurity::Mtls(m) => {
            let mut servers = vec![server.advertise().to_owned()];
            let metrics = server.raft().metrics().borrow().clone();
            for (_, node) in metrics.membership_config.membership().nodes() {
                if !servers.contains(&node.addr) {
                    servers.push(node.addr.clone());
                }
            }
            let renewal = flotilla_client::renewal::Renewal::new(
                m.cert.clone(),
                servers,
                security.clone(),
                crate::federation_cmd::pki_dir(&args.data_dir),
                Role::Server.as_str(),
            );
            let stop = stop_renewal.clone();
            Some(tokio::spawn(async move {
                renewal.run(stop.cancelled_owned()).await
            }))
        }
        _ => None,
    };
    args.parent.stop_requested().await;
    tracing::info!("shutting down");
    stop_renewal.cancel();
    if let Some(task) = renewal {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "certificate renewal stopped"),
            Err(e) => tracing::warn!(error = %e, "certificate renewal task failed"),
        }
    }
    server.shutdown().await?;
    Ok(())
}
