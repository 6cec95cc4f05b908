//! `flotilla.v1.PkiService`: joining with a token, renewing with a certificate. Only
//! the server that holds the federation CA key ([`CaHolder`]) can sign; the others
//! answer `FAILED_PRECONDITION` naming that limitation.

use super::ApiCore;
use crate::authz::{Action, Caller};
use flotilla_pki::{CertificateAuthority, JoinToken, TokenStore, Validity};
use flotilla_proto::v1::{self as pb, pki_service_server::PkiService};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::{Request, Response, Status};

/// The federation CA as the server that holds it uses it.
#[derive(Debug)]
pub struct CaHolder {
    pub ca: CertificateAuthority,
    pub tokens: TokenStore,
    /// How long issued certificates last.
    pub validity: Duration,
}

#[derive(Debug, Clone)]
pub(crate) struct PkiApi {
    pub(crate) core: ApiCore,
    pub(crate) ca: Option<Arc<CaHolder>>,
}

impl PkiApi {
    fn holder(&self) -> Result<Arc<CaHolder>, Status> {
        self.ca.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "node {} does not hold the federation CA key; call the server where `flotilla federation init` ran (the address in the join token)",
                self.core.api.node_id
            ))
        })
    }
}

fn pem(chain: &[rustls_pki_types::CertificateDer<'_>]) -> String {
    flotilla_pki::files::certs_pem(chain)
}

#[tonic::async_trait]
impl PkiService for PkiApi {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let body = request.into_inner();
        let token = JoinToken::decode(&body.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        if body.csr_der.is_empty() {
            return Err(Status::invalid_argument("csr_der: required (empty)"));
        }
        let holder = self.holder()?;
        let chain = tokio::task::spawn_blocking(move || {
            let identity = token
                .identity()
                .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
            // Sign first (a bad CSR does not burn the token), then redeem.
            let chain = holder
                .ca
                .sign_csr(
                    &body.csr_der,
                    &identity,
                    Validity::from_now(holder.validity),
                )
                .map_err(|e| Status::invalid_argument(format!("csr_der: {e}")))?;
            holder
                .tokens
                .redeem(&token, SystemTime::now())
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            tracing::info!(identity = %identity, "joined with a token");
            Ok::<_, Status>(chain)
        })
        .await
        .map_err(|e| Status::internal(format!("signing failed: {e}")))??;
        Ok(Response::new(pb::JoinResponse {
            chain_pem: pem(&chain),
            ca_pem: pem(&chain[1..]),
        }))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let caller = self.core.check(&request, Action::Read, "Renew")?;
        let Caller::Member(identity) = caller else {
            return Err(Status::failed_precondition(
                "Renew needs mTLS: the certificate renewed is the caller's own",
            ));
        };
        let csr = request.into_inner().csr_der;
        let holder = self.holder()?;
        let chain = tokio::task::spawn_blocking(move || {
            holder
                .ca
                .sign_csr(&csr, &identity, Validity::from_now(holder.validity))
                .map_err(|e| Status::invalid_argument(format!("csr_der: {e}")))
        })
        .await
        .map_err(|e| Status::internal(format!("signing failed: {e}")))??;
        Ok(Response::new(pb::RenewResponse {
            chain_pem: pem(&chain),
        }))
    }
}
