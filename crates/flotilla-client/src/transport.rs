//! How servers and clients reach each other: plaintext for loopback tests and local
//! development, TLS with tonic's own configuration, or federation mTLS
//! ([`TransportSecurity::Mtls`]).
//!
//! **Why mTLS does not use tonic's `ServerTlsConfig`/`ClientTlsConfig`:** they take a
//! fixed identity, so a renewed certificate would need a restart. With mTLS the server
//! runs its own rustls acceptor (handshakes off the accept loop, bounded by a timeout)
//! and hands tonic `tokio_rustls` streams, and clients dial through a rustls connector;
//! both use [`flotilla_pki::RotatingCert`], which swaps certificates in place. Tonic
//! still exposes the peer's certificates to handlers (`Request::peer_certs`), which is
//! where the registry takes the caller's identity from. The accepting side (the
//! server's acceptor loop) is the registry's; this crate only dials.

use crate::error::{Error, Result};
use flotilla_pki::{Role, RotatingCert, TrustBundle};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, ServerTlsConfig};

/// Federation mTLS: the trust bundle, this member's rotating certificate, and the
/// rustls configurations built from them.
#[derive(Debug)]
pub struct Mtls {
    pub trust: TrustBundle,
    pub cert: Arc<RotatingCert>,
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Mtls {
    pub fn new(trust: TrustBundle, cert: Arc<RotatingCert>) -> Result<Arc<Self>> {
        let server = flotilla_pki::server_config(&trust, cert.clone(), true)
            .map_err(|e| Error::Config(e.to_string()))?;
        // Every client of this configuration calls the registry: servers only.
        let client = flotilla_pki::client_config(&trust, Some(cert.clone()), &[Role::Server])
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Arc::new(Mtls {
            trust,
            cert,
            server: Arc::new(server),
            client: Arc::new(client),
        }))
    }
}

impl Mtls {
    /// The rustls server configuration (this member's identity, client
    /// certificates required), for servers that accept federation mTLS.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The rustls client configuration (this member's identity, the federation CA).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// Transport security for the gRPC server and the peer clients of one server.
#[derive(Debug, Clone, Default)]
pub enum TransportSecurity {
    /// No TLS and no authorization. For loopback tests and local development only.
    #[default]
    Plaintext,
    /// TLS on both sides with tonic's configuration (no rotation, no identities).
    Tls {
        server: Box<ServerTlsConfig>,
        client: Box<ClientTlsConfig>,
    },
    /// Federation mTLS with rotating certificates and identity-based authorization.
    Mtls(Arc<Mtls>),
}

impl TransportSecurity {
    pub fn scheme(&self) -> &'static str {
        match self {
            TransportSecurity::Plaintext | TransportSecurity::Mtls(_) => "http",
            TransportSecurity::Tls { .. } => "https",
        }
    }

    /// Whether callers are authenticated (and so authorized by identity).
    pub fn authenticates(&self) -> bool {
        matches!(self, TransportSecurity::Mtls(_))
    }

    /// A lazily connecting channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str, connect_timeout: Duration) -> Result<Channel> {
        self.judged_channel(addr, connect_timeout, None)
    }

    /// As [`Self::channel`], and with mTLS every new connection's far end is also
    /// judged by `judge` before any request goes over it (the registry's Raft
    /// clients refuse a peer whose certificate was revoked). Without mTLS there is
    /// no identity to judge, and `judge` is not called.
    pub fn judged_channel(
        &self,
        addr: &str,
        connect_timeout: Duration,
        judge: Option<PeerJudge>,
    ) -> Result<Channel> {
        let uri = format!("{}://{addr}", self.scheme());
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::Config(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        match self {
            TransportSecurity::Plaintext => Ok(endpoint.connect_lazy()),
            TransportSecurity::Tls { client, .. } => {
                endpoint = endpoint
                    .tls_config((**client).clone())
                    .map_err(|e| Error::Config(format!("TLS for peer {addr:?}: {e}")))?;
                Ok(endpoint.connect_lazy())
            }
            TransportSecurity::Mtls(m) => Ok(endpoint.connect_with_connector_lazy(connector(
                m.client.clone(),
                connect_timeout,
                judge,
            ))),
        }
    }
}

/// A lazily connecting channel to `addr` over TLS with any rustls client
/// configuration (e.g. [`flotilla_pki::bootstrap_client_config`] for a join).
pub fn tls_channel(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    connect_timeout: Duration,
) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Config(format!("address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_with_connector_lazy(connector(config, connect_timeout, None)))
}

/// Judges the far end's end-entity certificate after a handshake that verified it;
/// an `Err` (saying why) ends the connection before any request is sent on it.
pub type PeerJudge = Arc<
    dyn Fn(&rustls_pki_types::CertificateDer<'_>) -> std::result::Result<(), String> + Send + Sync,
>;

/// Dials TCP, then a rustls handshake, for tonic's `connect_with_connector`; with
/// a `judge`, the far end's certificate is judged after each handshake.
pub fn connector(
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
    judge: Option<PeerJudge>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let tls = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        let judge = judge.clone();
        async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                // Identities are checked by SPIFFE id, not host name; SNI is a hint.
                let name = rustls_pki_types::ServerName::try_from(host.clone())
                    .or_else(|_| {
                        rustls_pki_types::ServerName::try_from("flotilla.invalid".to_owned())
                    })
                    .map_err(std::io::Error::other)?;
                tls.connect(name, tcp).await
            };
            let stream = tokio::time::timeout(timeout, dial).await.map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("TLS connection to {host}:{port} timed out"),
                )
            })??;
            if let Some(judge) = judge {
                let (_, session) = stream.get_ref();
                let far_end = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("{host}:{port} presented no certificate"),
                        )
                    })?;
                judge(far_end).map_err(|why| {
                    std::io::Error::new(std::io::ErrorKind::PermissionDenied, why)
                })?;
            }
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}
