//! `flotilla gateway`: runs this cluster's east-west gateway.
//!
//! Two ways to get routes:
//! - **registry mode** (`--servers ADDR,...`): follows the registry's `WatchRoutes`
//!   over mTLS with the gateway identity in `--state-dir DIR/pki/` (from
//!   `flotilla federation token` and `--join TOKEN`), and reads other clusters' gateway
//!   addresses and this cluster's replicas (endpoints as the agent reported them,
//!   DNS names included) from the registry too, so the gateway needs no agent beside
//!   it and can run as its own Deployment. The one certificate serves the registry client and
//!   the east-west hop both ways; peers are checked by their SPIFFE identity
//!   `spiffe://<federation>/cluster/<cluster>/gateway`, not by DNS name. If the
//!   registry is lost the last table keeps serving (fail-static).
//! - **static mode** (`--routes FILE`): a routes file read once, with east-west TLS
//!   from `--cert/--key/--ca`. The status page reports `"registry": "static"`.

use anyhow::{Context, Result, bail};
use clap::Args;
use flotilla_client::{Mtls, TransportSecurity};
use flotilla_core::{Millis, TenantPolicy};
use flotilla_gateway::{
    Connector, Gateway, GatewayConfig, GatewayError, Governance, Listeners, PeerCheck,
    RegistryRouteSource, RegistrySourceConfig, RegistryStatus, RouteEvent, RouteState,
    StaticRoutes,
};
use flotilla_pki::{JoinToken, Role, RotatingCert, TrustBundle, layout};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("route_source").required(true).args(["routes", "servers"]))]
pub(crate) struct GatewayArgs {
    /// This cluster's name, as the routes name it.
    #[arg(long, env = "FLOTILLA_CLUSTER")]
    cluster: String,
    /// The federation's name, as peers' certificates name it (spiffe://<federation>/…).
    /// In registry mode it is read from the CA in --state-dir; default "flotilla".
    #[arg(long, env = "FLOTILLA_FEDERATION")]
    federation: Option<String>,
    /// Static routes file (TOML; see deploy/examples/gateway-routes.toml), read once.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["servers", "state_dir", "join", "insecure"])]
    routes: Option<PathBuf>,
    /// Registry mode: federation servers to follow routes from (host:port, comma
    /// separated; any one will do).
    #[arg(long, value_name = "ADDR,...", value_delimiter = ',')]
    servers: Vec<String>,
    /// Registry mode: holds this gateway's identity in DIR/pki/ (ca.pem, gateway.pem,
    /// gateway-key.pem), used for the registry and the east-west hop, and its last
    /// routing tables (DIR/routing-tables.json), served after a restart until the
    /// registry answers.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cert", "key", "ca"])]
    state_dir: Option<PathBuf>,
    /// Registry mode: a gateway join token (from `flotilla federation token`); the
    /// certificate it buys is stored in --state-dir (once; a restart reuses it).
    #[arg(long, value_name = "TOKEN", requires = "state_dir")]
    join: Option<String>,
    /// Registry mode: talk to the registry in plaintext (development only; the
    /// registry must serve plaintext too).
    #[arg(long)]
    insecure: bool,
    /// Tenants and policies file (TOML: [api_keys], [identities], [[policies]]).
    /// Without it every caller reaches every model.
    #[arg(long, value_name = "FILE", conflicts_with = "registry_governance")]
    policies: Option<PathBuf>,
    /// Registry mode: follow the registry's tenants, API keys and policies
    /// (`flotilla ctl tenant|key|policy`) and enforce them: a request without a
    /// known key or identity gets 401, a model its tenant's policy does not approve
    /// 403. Until the first read every request is refused.
    #[arg(long, conflicts_with = "routes")]
    registry_governance: bool,
    /// Approved external endpoints (TOML: [[endpoint]] name, url, credential_file,
    /// optional ca_file, models = { federation model = the provider's id }): the
    /// last tier for tenants whose policy names them, used only when no cluster
    /// has a ready replica. This gateway holds the credentials.
    #[arg(long, value_name = "FILE")]
    external_endpoints: Option<PathBuf>,
    /// Where clients send inference requests (HTTP/1.1 and HTTP/2).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where other clusters' gateways connect (mTLS, HTTP/2); needs an identity
    /// (--state-dir, or --cert, --key, --ca).
    #[arg(long)]
    east_west_listen: Option<SocketAddr>,
    /// Status (/flotilla/status) and Prometheus metrics (/metrics).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// Static mode: this gateway's certificate chain (PEM), for the east-west hop both ways.
    #[arg(long, value_name = "PEM", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// The federation CA (PEM) that peers' certificates must chain to.
    #[arg(long, value_name = "PEM", requires = "cert")]
    ca: Option<PathBuf>,
    /// Serve the inference listener over TLS with the gateway's certificate as well.
    #[arg(long)]
    inference_tls: bool,
    /// The most of an OpenAI request body read to find its model.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM or Ctrl-C.
    #[arg(long, default_value = "30s")]
    shutdown_grace: Millis,
    // `flotilla up` passes `--exit-with-parent` with its own id, so that nothing it
    // started runs on when it is killed outright.
    #[command(flatten)]
    pub(crate) parent: crate::signals::ParentWatch,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesFile {
    #[serde(default)]
    api_keys: HashMap<String, String>,
    #[serde(default)]
    identities: HashMap<String, String>,
    #[serde(default)]
    policies: Vec<TenantPolicy>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn load_routes(path: &Path) -> Result<StaticRoutes> {
    toml::from_str(&read(path)?).with_context(|| format!("parsing routes file {}", path.display()))
}

fn load_governance(path: &Path) -> Result<Governance> {
    let file: PoliciesFile = toml::from_str(&read(path)?)
        .with_context(|| format!("parsing policies file {}", path.display()))?;
    let mut policies = std::collections::BTreeMap::new();
    for p in file.policies {
        p.validate()
            .with_context(|| format!("policy of tenant `{}`", p.tenant))?;
        if policies.insert(p.tenant.clone(), p).is_some() {
            bail!("two policies for one tenant in {}", path.display());
        }
    }
    Ok(Governance {
        enforce: true,
        api_keys: file.api_keys,
        identities: file.identities,
        policies,
        ..Governance::default()
    })
}

struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: rustls::ClientConfig,
}

fn load_tls(cert: &Path, key: &Path, ca: &Path) -> Result<Tls> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(c.with_context(|| format!("parsing {}", ca.display()))?)
            .context("adding the federation CA")?;
    }
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder(roots.clone())
        .build()
        .context("building the client-certificate verifier")?;
    let server = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .context("the gateway certificate and key do not form a server identity")?;
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the gateway certificate and key do not form a client identity")?;
    Ok(Tls {
        server: Arc::new(server),
        client,
    })
}

/// The gateway identity in `STATE_DIR/pki`, redeeming `--join` first if there is
/// none yet.
async fn registry_identity(
    args: &GatewayArgs,
    state_dir: &Path,
) -> Result<(TrustBundle, Arc<RotatingCert>)> {
    let pki = state_dir.join("pki");
    let cert_file = layout::cert_path(&pki, Role::Gateway.as_str());
    if let Some(j) = &args.join
        && !cert_file.exists()
    {
        let token = JoinToken::decode(j).context("reading the join token")?;
        if token.role != Role::Gateway || token.cluster != args.cluster {
            bail!(
                "this token is for a {} of cluster {:?}; `flotilla gateway --cluster {}` needs a gateway token for that cluster",
                token.role,
                token.cluster,
                args.cluster
            );
        }
        let joined = flotilla_client::join::join_with_token(&token, Role::Gateway, None, &pki)
            .await
            .with_context(|| format!("redeeming the join token at {}", token.server))?;
        tracing::info!(identity = %joined.identity(), "this gateway's identity");
    }
    if !cert_file.exists() {
        bail!(
            "no gateway identity in {}: join with --join TOKEN (from `flotilla federation token --role gateway`)",
            pki.display()
        );
    }
    let trust = TrustBundle::from_pem_file(&layout::ca_path(&pki))?;
    let cert = RotatingCert::load(&pki, Role::Gateway.as_str())?;
    let id = cert.identity();
    if id.role != Role::Gateway || id.cluster != args.cluster {
        bail!(
            "the certificate in {} is {id}, not a gateway of cluster {:?}",
            pki.display(),
            args.cluster
        );
    }
    Ok((trust, cert))
}

/// Static mode: routes file and `--cert/--key/--ca`.
fn static_setup(args: &GatewayArgs, path: &Path, config: &mut GatewayConfig) -> Result<RouteState> {
    let routes = load_routes(path)?;
    let table = routes
        .to_table(&args.cluster)
        .with_context(|| format!("routes file {}", path.display()))?;
    if let (Some(cert), Some(key), Some(ca)) = (&args.cert, &args.key, &args.ca) {
        let tls = load_tls(cert, key, ca)?;
        if args.inference_tls {
            // Clients of the inference listener are not required to show a
            // certificate; one that does is identified by it.
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new({
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)? {
                    roots.add(c?)?;
                }
                roots
            }))
            .allow_unauthenticated()
            .build()?;
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
            let server = rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, PrivateKeyDer::from_pem_file(key)?)?;
            config.inference_tls = Some(Arc::new(server));
        }
        config.east_west_server_tls = Some(tls.server);
        config.east_west_client_tls = Some(tls.client);
    } else if args.east_west_listen.is_some() {
        bail!("--east-west-listen is mTLS only: give --cert, --key and --ca");
    } else if args.inference_tls {
        bail!("--inference-tls needs --cert, --key and --ca");
    }
    eprintln!(
        "gateway {}: {} models from {} (routes revision {})",
        args.cluster,
        table.models.len(),
        path.display(),
        table.revision,
    );
    let state = RouteState::new(RegistryStatus::Static);
    state.apply(RouteEvent::Replace(table));
    Ok(state)
}

/// Registry mode: the identity, TLS both ways, and the route source.
async fn registry_setup(
    args: &GatewayArgs,
    config: &mut GatewayConfig,
) -> Result<RegistryRouteSource> {
    let identity = match &args.state_dir {
        Some(dir) => Some(registry_identity(args, dir).await?),
        None => None,
    };
    let security = match (&identity, args.insecure) {
        (_, true) => {
            tracing::warn!(
                "--insecure: following the registry over PLAINTEXT, unauthenticated (development only)"
            );
            eprintln!(
                "warning: --insecure: the registry is reached in plaintext, unauthenticated (development only)"
            );
            TransportSecurity::Plaintext
        }
        (Some((trust, cert)), false) => {
            let security = TransportSecurity::Mtls(Mtls::new(trust.clone(), cert.clone())?);
            if let Some(dir) = &args.state_dir {
                // Renew the certificate before it expires; the listeners' and the
                // registry client's TLS configs read it from `cert`, so new
                // connections pick the new one up without a restart.
                let renewal = flotilla_client::renewal::Renewal::new(
                    cert.clone(),
                    args.servers.clone(),
                    security.clone(),
                    dir.join("pki"),
                    Role::Gateway.as_str(),
                );
                tokio::spawn(async move {
                    if let Err(e) = renewal.run(std::future::pending()).await {
                        tracing::error!(error = %e, "certificate renewal stopped");
                    }
                });
            }
            security
        }
        (None, false) => bail!(
            "registry mode needs an identity: --state-dir DIR (with --join TOKEN the first time), or --insecure for a plaintext development registry"
        ),
    };
    match &identity {
        Some((trust, cert)) => {
            let federation = trust.federation().to_owned();
            if let Some(given) = &args.federation
                && given != &federation
            {
                bail!(
                    "--federation {given:?} does not match the federation CA in --state-dir ({federation:?})"
                );
            }
            config.federation = federation.clone();
            let server = flotilla_pki::server_config(trust, cert.clone(), false)?;
            config.east_west_server_tls = Some(Arc::new(server));
            config.east_west_client_tls = Some(flotilla_pki::client_config(
                trust,
                Some(cert.clone()),
                &[flotilla_pki::Role::Gateway],
            )?);
            config.east_west_peer_check = PeerCheck::Spiffe { federation };
            if args.inference_tls {
                let mut server = flotilla_pki::server_config(trust, cert.clone(), true)?;
                // The gateway offers h2 and http/1.1 itself; the PKI default is h2 only.
                server.alpn_protocols.clear();
                config.inference_tls = Some(Arc::new(server));
            }
        }
        None => {
            if args.east_west_listen.is_some() || args.inference_tls {
                bail!("--east-west-listen and --inference-tls need an identity: give --state-dir");
            }
            tracing::warn!(
                "no identity: requests for models served only in other clusters will fail (the east-west hop is mTLS only)"
            );
        }
    }
    let timeout = Duration::from_secs(5);
    let connect: Connector = Arc::new(move |addr: &str| {
        security
            .channel(addr, timeout)
            .map_err(|e| GatewayError::Config(e.to_string()))
    });
    let mut source = RegistrySourceConfig::new(args.cluster.clone(), args.servers.clone());
    // Fail-static across restarts: the last tables, served until the registry answers.
    source.tables_file = args
        .state_dir
        .as_ref()
        .map(|d| d.join("routing-tables.json"));
    source.follow_governance = args.registry_governance;
    eprintln!(
        "gateway {}: following routes and this cluster's replicas from {}",
        args.cluster,
        args.servers.join(",")
    );
    Ok(RegistryRouteSource::start(source, connect)?)
}

pub(crate) async fn run(args: GatewayArgs) -> Result<()> {
    args.parent.check()?;
    // Check everything before binding a port.
    let federation = args
        .federation
        .clone()
        .unwrap_or_else(|| "flotilla".to_owned());
    let mut config = GatewayConfig::new(args.cluster.clone(), federation);
    config.max_body_bytes = args.max_body_bytes;
    config.shutdown_grace = Duration::from_millis(args.shutdown_grace.0);
    if let Some(p) = &args.policies {
        config.governance = load_governance(p)?;
    }
    if args.registry_governance {
        config.governance = Governance {
            enforce: true,
            ..Governance::default()
        };
    }
    if let Some(p) = &args.external_endpoints {
        let endpoints = flotilla_gateway::load_external_endpoints(p)?;
        for e in &endpoints {
            tracing::info!(endpoint = %e.name, models = e.models.len(), "approved external endpoint loaded");
        }
        config.external_endpoints = endpoints.into_iter().map(Arc::new).collect();
    }
    if !config.governance.enforce {
        tracing::warn!(
            "enforcing no governance: every caller reaches every model (give --registry-governance or --policies to enforce)"
        );
    }
    let (state, registry) = match &args.routes {
        Some(path) => (static_setup(&args, path, &mut config)?, None),
        None => (
            RouteState::new(RegistryStatus::Connecting),
            Some(registry_setup(&args, &mut config).await?),
        ),
    };

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let listeners = Listeners {
        inference: bind(args.listen).await?,
        east_west: match args.east_west_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        },
        admin: Some(bind(args.admin_listen).await?),
    };
    eprintln!(
        "gateway {} serving on {}; east-west on {}; admin on {}",
        args.cluster,
        args.listen,
        args.east_west_listen
            .map_or_else(|| "(none)".to_owned(), |a| a.to_string()),
        args.admin_listen
    );
    let gateway = Gateway::new(config, state);
    let shutdown = args.parent.stop_requested();
    match registry {
        Some(source) => gateway.serve(listeners, source, shutdown).await,
        None => {
            // The file is read once; the sender stays open so the source does not end.
            let (_routes_tx, source) = tokio::sync::mpsc::channel::<RouteEvent>(1);
            gateway.serve(listeners, source, shutdown).await
        }
    }
    .context("gateway")?;
    Ok(())
}
