//! The client side of the east-west hop: one multiplexed HTTP/2 connection over
//! mTLS per remote gateway, opened on first use and replaced when it closes.
//!
//! Connecting (TCP, TLS, the HTTP/2 handshake, waiting for stream capacity) is kept
//! apart from sending, so that a failure in the first part is known not to have
//! sent anything and may be retried elsewhere.

use crate::body::ProxyBody;
use crate::error::GatewayError;
use crate::identity::PeerIdentity;
use crate::table::RemoteGateway;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

type PoolKey = (String, SocketAddr);

/// How the gateway knows it reached the right peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PeerCheck {
    /// The client TLS configuration checks the certificate against the peer's
    /// `server_name` (a DNS name or IP in its SANs), as static routes files name them.
    #[default]
    ServerName,
    /// The peer's certificate must name `spiffe://<federation>/cluster/<cluster>/gateway`
    /// for the cluster the route names. No DNS name is needed: the client TLS
    /// configuration checks the chain and the gateway role (`flotilla_pki::client_config`
    /// with `[Role::Gateway]`),
    /// and `server_name` is sent as SNI when it is a valid name.
    Spiffe { federation: String },
}

pub(crate) struct EastWestClient {
    tls: TlsConnector,
    check: PeerCheck,
    connect_timeout: Duration,
    conns: Mutex<HashMap<PoolKey, http2::SendRequest<ProxyBody>>>,
}

impl std::fmt::Debug for EastWestClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EastWestClient")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl EastWestClient {
    pub(crate) fn new(
        mut config: ClientConfig,
        check: PeerCheck,
        connect_timeout: Duration,
    ) -> EastWestClient {
        config.alpn_protocols = vec![b"h2".to_vec()];
        EastWestClient {
            tls: TlsConnector::from(Arc::new(config)),
            check,
            connect_timeout,
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn connect_error(gw: &RemoteGateway, reason: impl std::fmt::Display) -> GatewayError {
        GatewayError::Connect {
            target: format!("gateway of cluster {} at {}", gw.cluster, gw.address),
            reason: reason.to_string(),
        }
    }

    async fn dial(
        &self,
        gw: &RemoteGateway,
    ) -> Result<http2::SendRequest<ProxyBody>, GatewayError> {
        let server_name = match (&self.check, ServerName::try_from(gw.server_name.clone())) {
            (_, Ok(n)) => n,
            // Identities are checked by SPIFFE id; SNI is only a hint.
            (PeerCheck::Spiffe { .. }, Err(_)) => ServerName::from(
                rustls_pki_types::DnsName::try_from("flotilla.invalid")
                    .map_err(|e| Self::connect_error(gw, e))?,
            ),
            (PeerCheck::ServerName, Err(e)) => {
                return Err(Self::connect_error(gw, format!("bad server name: {e}")));
            }
        };
        let handshake = async {
            let tcp = TcpStream::connect(gw.address)
                .await
                .map_err(|e| Self::connect_error(gw, e))?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .tls
                .connect(server_name, tcp)
                .await
                .map_err(|e| Self::connect_error(gw, format!("TLS: {e}")))?;
            if let PeerCheck::Spiffe { federation } = &self.check {
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| PeerIdentity::from_cert_der(c.as_ref()));
                let expected = |p: &PeerIdentity| {
                    &p.federation == federation && p.cluster == gw.cluster && p.role == "gateway"
                };
                if !peer.as_ref().is_some_and(expected) {
                    let found = peer.map_or_else(
                        || "no SPIFFE identity".to_owned(),
                        |p| format!("spiffe://{}/cluster/{}/{}", p.federation, p.cluster, p.role),
                    );
                    return Err(Self::connect_error(
                        gw,
                        format!(
                            "peer is {found}, not spiffe://{federation}/cluster/{}/gateway",
                            gw.cluster
                        ),
                    ));
                }
            }
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(20))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| Self::connect_error(gw, format!("HTTP/2: {e}")))?;
            Ok::<_, GatewayError>((send, conn))
        };
        let (send, conn) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| Self::connect_error(gw, "timed out"))??;
        let cluster = gw.cluster.clone();
        // The connection task ends when the peer closes or the last sender is
        // dropped (pool entry replaced, gateway shut down).
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%cluster, error = %e, "east-west connection ended");
            }
        });
        Ok(send)
    }

    /// A sender ready for one more stream to `gw`.
    pub(crate) async fn checkout(
        &self,
        gw: &RemoteGateway,
    ) -> Result<http2::SendRequest<ProxyBody>, GatewayError> {
        let key = (gw.cluster.clone(), gw.address);
        let pooled = {
            let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            conns.get(&key).filter(|s| !s.is_closed()).cloned()
        };
        let mut send = match pooled {
            Some(s) => s,
            None => {
                let s = self.dial(gw).await?;
                self.conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, s.clone());
                s
            }
        };
        tokio::time::timeout(self.connect_timeout, send.ready())
            .await
            .map_err(|_| Self::connect_error(gw, "no stream capacity in time"))?
            .map_err(|e| Self::connect_error(gw, e))?;
        Ok(send)
    }

    pub(crate) async fn send(
        mut send: http2::SendRequest<ProxyBody>,
        gw: &RemoteGateway,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, GatewayError> {
        send.send_request(req)
            .await
            .map_err(|e| GatewayError::AfterSend {
                target: format!("gateway of cluster {}", gw.cluster),
                reason: e.to_string(),
            })
    }
}
