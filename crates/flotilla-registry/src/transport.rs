//! How servers reach each other: plaintext for loopback tests, TLS (mTLS once the PKI
//! issue supplies certificates) in production. This is the seam the PKI wiring plugs
//! into: it builds the rustls configs and hands them here.

use crate::error::{Error, Result};
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, ServerTlsConfig};

/// Transport security for the gRPC server and the peer clients of one server.
#[derive(Debug, Clone, Default)]
pub enum TransportSecurity {
    /// No TLS. For loopback tests and local development only.
    #[default]
    Plaintext,
    /// TLS on both sides; with a client CA in `server` and an identity in `client`,
    /// mutual TLS.
    Tls {
        server: Box<ServerTlsConfig>,
        client: Box<ClientTlsConfig>,
    },
}

impl TransportSecurity {
    pub fn scheme(&self) -> &'static str {
        match self {
            TransportSecurity::Plaintext => "http",
            TransportSecurity::Tls { .. } => "https",
        }
    }

    /// A lazily connecting channel to `addr` (`host:port`).
    pub fn channel(&self, addr: &str, connect_timeout: Duration) -> Result<Channel> {
        let uri = format!("{}://{addr}", self.scheme());
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::Config(format!("peer address {addr:?}: {e}")))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        if let TransportSecurity::Tls { client, .. } = self {
            endpoint = endpoint
                .tls_config((**client).clone())
                .map_err(|e| Error::Config(format!("TLS for peer {addr:?}: {e}")))?;
        }
        Ok(endpoint.connect_lazy())
    }
}
