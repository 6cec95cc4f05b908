//! Renewing this member's certificate before it expires, without a restart.
//!
//! A [`Renewal`] sleeps until the certificate is due ([`RotatingCert::renew_at`]: two
//! thirds into its life), makes a new key and a CSR for the same identity here, calls
//! `flotilla.v1.PkiService/Renew` on any of the federation's servers under the
//! identity it is renewing (so only the holder of a still-valid certificate can renew
//! it), writes the new files (`flotilla_pki::layout::save_renewed`: both written,
//! then renamed into place, then the directory fsynced) and swaps the certificate in memory ([`RotatingCert::rotate`]): open
//! connections keep theirs, new handshakes on every listener and dialer sharing the
//! `RotatingCert` present the new one.
//!
//! Failures are retried with a doubling delay (capped) on the next server; each is
//! logged with the time left before the certificate expires. Only the server holding
//! the federation CA key signs (the others answer `FAILED_PRECONDITION`), which is why
//! every server of the list is tried.

use crate::error::{Error, Result};
use crate::transport::TransportSecurity;
use flotilla_pki::{RotatingCert, layout};
use flotilla_proto::v1::{RenewRequest, pki_service_client::PkiServiceClient};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One identity's renewal: what to renew, where, and how patiently.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// The certificate in use (shared with the listeners and dialers that present it).
    pub cert: Arc<RotatingCert>,
    /// Federation servers (`host:port`) to ask, in order; any that holds the CA will do.
    pub servers: Vec<String>,
    /// The mTLS identity to call them with: the one being renewed.
    pub security: TransportSecurity,
    /// The PKI directory holding `<name>.pem` and `<name>-key.pem`.
    pub pki_dir: PathBuf,
    /// The identity's file name (its role: `server`, `agent`, `gateway`).
    pub name: String,
    /// First delay after a failed round; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Bounds each call, so that one silent server does not stall the round.
    pub call_timeout: Duration,
}

impl Renewal {
    pub fn new(
        cert: Arc<RotatingCert>,
        servers: Vec<String>,
        security: TransportSecurity,
        pki_dir: impl Into<PathBuf>,
        name: impl Into<String>,
    ) -> Self {
        Renewal {
            cert,
            servers,
            security,
            pki_dir: pki_dir.into(),
            name: name.into(),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
        }
    }

    /// Renews now: one attempt on each server in turn until one signs. Returns the new
    /// certificate's serial. Files are written before the in-memory swap, so a crash
    /// in between restarts with the new certificate.
    pub async fn renew_once(&self) -> Result<Vec<u8>> {
        if !self.security.authenticates() {
            return Err(Error::Config(
                "renewing a certificate needs mTLS transport security".into(),
            ));
        }
        if self.servers.is_empty() {
            return Err(Error::Config(
                "no federation server to renew the certificate with".into(),
            ));
        }
        let identity = self.cert.identity();
        let (key, csr_der) = flotilla_pki::new_key_and_csr(&identity)?;
        let mut last = None;
        for server in &self.servers {
            let channel = self.security.channel(server, self.call_timeout)?;
            let mut client = PkiServiceClient::new(channel);
            let call = client.renew(RenewRequest {
                csr_der: csr_der.clone(),
            });
            let reply = match tokio::time::timeout(self.call_timeout, call).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    tracing::debug!(%server, code = ?s.code(), message = s.message(), "renewal refused");
                    last = Some(Error::Rpc {
                        peer: server.clone(),
                        code: s.code(),
                        message: s.message().to_owned(),
                    });
                    continue;
                }
                Err(_) => {
                    last = Some(Error::Rpc {
                        peer: server.clone(),
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no answer within {:?}", self.call_timeout),
                    });
                    continue;
                }
            };
            let chain = CertificateDer::pem_slice_iter(reply.chain_pem.as_bytes())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Rpc {
                    peer: server.clone(),
                    code: tonic::Code::DataLoss,
                    message: format!("the renewed chain is not PEM: {e}"),
                })?;
            // Kept only if the federation's CA signed it, for this same identity: a
            // server that answers with anything else is not trusted with it.
            if let Err(why) = self.check_renewed(&chain, &identity) {
                tracing::warn!(%server, error = %why, "renewal answered with a certificate that is refused");
                last = Some(Error::Rpc {
                    peer: server.clone(),
                    code: tonic::Code::DataLoss,
                    message: format!("the renewed certificate is refused: {why}"),
                });
                continue;
            }
            layout::save_renewed(&self.pki_dir, &self.name, &chain, &key)?;
            self.cert.rotate(chain, key)?;
            let info = self.cert.info();
            tracing::info!(
                identity = %identity,
                %server,
                serial = %hex(&info.serial),
                not_after = ?info.not_after,
                "certificate renewed and rotated in place"
            );
            return Ok(info.serial);
        }
        Err(last.unwrap_or_else(|| Error::Config("no server answered".into())))
    }

    /// A renewed chain is the federation CA's, valid now, and names `identity`.
    fn check_renewed(
        &self,
        chain: &[CertificateDer<'static>],
        identity: &flotilla_pki::Identity,
    ) -> std::result::Result<(), String> {
        let TransportSecurity::Mtls(mtls) = &self.security else {
            return Err("renewal needs mTLS".into());
        };
        let renewed = mtls.trust.verify(chain).map_err(|e| e.to_string())?;
        if &renewed != identity {
            return Err(format!("it names {renewed}, not {identity}"));
        }
        Ok(())
    }

    /// Keeps the certificate renewed until `shutdown` completes: sleeps until it is
    /// due, renews, retries failed rounds with a doubling delay. Returns `Ok` on
    /// shutdown; errors only for a configuration that can never renew (no mTLS, no
    /// servers).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        if !self.security.authenticates() || self.servers.is_empty() {
            return Err(Error::Config(
                "certificate renewal needs mTLS and at least one federation server".into(),
            ));
        }
        tokio::pin!(shutdown);
        let mut delay = self.retry_min;
        loop {
            let due = self.cert.renew_at();
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tracing::info!(
                identity = %self.cert.identity(),
                in_secs = wait.as_secs(),
                "next certificate renewal"
            );
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(wait) => {}
            }
            loop {
                let attempt = tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    r = self.renew_once() => r,
                };
                match attempt {
                    Ok(_) => {
                        delay = self.retry_min;
                        break;
                    }
                    Err(e) => {
                        let expires = self.cert.info().not_after;
                        let left = expires
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        if left.is_zero() {
                            tracing::error!(identity = %self.cert.identity(), error = %e,
                                "certificate EXPIRED and renewal failed: peers will refuse this member; get a new join token (`flotilla federation token`) and join again");
                        } else {
                            tracing::warn!(identity = %self.cert.identity(), error = %e,
                                retry_in_ms = delay.as_millis() as u64, expires_in_secs = left.as_secs(),
                                "certificate renewal failed; retrying");
                        }
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(self.retry_max);
                    }
                }
            }
        }
    }
}

/// Keeps `cert` (stored as `<pki_dir>/<name>.pem`) renewed through any of `servers`
/// until `shutdown`, with default retry delays (1 s doubling to 60 s). See [`Renewal`].
pub async fn keep_renewed(
    cert: Arc<RotatingCert>,
    servers: Vec<String>,
    security: TransportSecurity,
    pki_dir: PathBuf,
    name: &str,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    Renewal::new(cert, servers, security, pki_dir, name)
        .run(shutdown)
        .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
