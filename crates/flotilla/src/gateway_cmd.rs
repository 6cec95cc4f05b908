//! `flotilla gateway`: runs this cluster's east-west gateway.
//!
//! Routes come from a static routes file for now. The registry's `WatchRoutes`
//! stream takes its place when the API lands; the gateway already runs on the
//! `RouteSource` seam it will use, and reports `"registry": "static"` on its status
//! page until then.

use anyhow::{Context, Result, bail};
use clap::Args;
use flotilla_core::{Millis, TenantPolicy};
use flotilla_gateway::{
    Gateway, GatewayConfig, Governance, Listeners, RegistryLink, RouteEvent, RouteState,
    StaticRoutes,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// This cluster's name, as the routes name it.
    #[arg(long, env = "FLOTILLA_CLUSTER")]
    cluster: String,
    /// The federation's name, as peers' certificates name it (spiffe://<federation>/…).
    #[arg(long, env = "FLOTILLA_FEDERATION", default_value = "flotilla")]
    federation: String,
    /// Static routes file (TOML; see deploy/examples/gateway-routes.toml). For now the
    /// only route source: following the registry's route watch comes with the API.
    #[arg(long, value_name = "FILE")]
    routes: PathBuf,
    /// Tenants and policies file (TOML: [api_keys], [identities], [[policies]]).
    /// Without it every caller reaches every model.
    #[arg(long, value_name = "FILE")]
    policies: Option<PathBuf>,
    /// Where clients send inference requests (HTTP/1.1 and HTTP/2).
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Where other clusters' gateways connect (mTLS, HTTP/2); needs --cert, --key, --ca.
    #[arg(long)]
    east_west_listen: Option<SocketAddr>,
    /// Status (/flotilla/status) and Prometheus metrics (/metrics).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
    /// This gateway's certificate chain (PEM), for the east-west hop both ways.
    #[arg(long, value_name = "PEM", requires_all = ["key", "ca"])]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// The federation CA (PEM) that peers' certificates must chain to.
    #[arg(long, value_name = "PEM", requires = "cert")]
    ca: Option<PathBuf>,
    /// Serve the inference listener over TLS with --cert as well.
    #[arg(long, requires = "cert")]
    inference_tls: bool,
    /// The most of an OpenAI request body read to find its model.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM or Ctrl-C.
    #[arg(long, default_value = "30s")]
    shutdown_grace: Millis,
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

pub(crate) async fn run(args: GatewayArgs) -> Result<()> {
    // Check everything before binding a port.
    let routes = load_routes(&args.routes)?;
    let table = routes
        .to_table(&args.cluster)
        .with_context(|| format!("routes file {}", args.routes.display()))?;
    let mut config = GatewayConfig::new(args.cluster.clone(), args.federation.clone());
    config.max_body_bytes = args.max_body_bytes;
    config.shutdown_grace = Duration::from_millis(args.shutdown_grace.0);
    if let Some(p) = &args.policies {
        config.governance = load_governance(p)?;
    }
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
    }

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
        "gateway {} serving {} models (routes revision {}) on {}; admin on {}",
        args.cluster,
        table.models.len(),
        table.revision,
        args.listen,
        args.admin_listen
    );
    let state = RouteState::new(RegistryLink::Static);
    state.apply(RouteEvent::Replace(table));
    // The file is read once; the sender stays open so the source does not end.
    let (_routes_tx, source) = tokio::sync::mpsc::channel::<RouteEvent>(1);
    Gateway::new(config, state)
        .serve(listeners, source, crate::signals::shutdown_signal())
        .await
        .context("gateway")?;
    Ok(())
}
