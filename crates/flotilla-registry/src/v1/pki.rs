//! `flotilla.v1.PkiService`: joining with a token, renewing with a certificate. Only
//! the server that holds the federation CA key ([`CaHolder`]) can sign; the others
//! answer `FAILED_PRECONDITION` naming that limitation.
//!
//! `Join` is the one call anyone may make, so it must cost a stranger little and
//! the federation nothing: the token is checked first (a read of the ledger, no
//! lock, no signature), and only then is the CSR signed, the certificate recorded
//! in the registry (`flotilla_core::certificates`: it stands until it expires or
//! its cluster leaves) and the token redeemed. `Renew` records the same way, and a
//! certificate revoked when its cluster left renews nothing.
//! All of it runs on a thread of its own ([`JoinDesk`]), never on the blocking pool
//! that the store's disk writes use, with a short queue: past it, a join is
//! refused at once with `RESOURCE_EXHAUSTED`, so a flood of forged joins can
//! neither slow an append nor pile up. Before all that, each source address has a
//! rate bound of its own ([`super::join_rate`]: a burst of 10, then 2 a second),
//! so one host cannot fill the queue for everyone else.

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
    pub(crate) desk: JoinDesk,
    /// Joins per source address (module `join_rate`).
    pub(crate) join_rate: Arc<super::join_rate::JoinRate>,
}

/// Joins (and renewals) waiting for the desk's thread, at most.
const JOIN_QUEUE: usize = 16;

type DeskJob = Box<dyn FnOnce() + Send>;

/// One thread that checks tokens, signs and redeems, fed through a short queue.
#[derive(Debug, Clone)]
pub(crate) struct JoinDesk {
    jobs: std::sync::mpsc::SyncSender<DeskJob>,
}

impl JoinDesk {
    /// Starts the thread; it ends once the last handle is dropped.
    pub(crate) fn start() -> crate::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::sync_channel::<DeskJob>(JOIN_QUEUE);
        std::thread::Builder::new()
            .name("flotilla-join".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .map_err(|e| crate::Error::Config(format!("starting the join thread: {e}")))?;
        Ok(JoinDesk { jobs })
    }

    /// Runs `work` on the desk's thread, or refuses at once when the queue is full.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: DeskJob = Box::new(move || {
            let _ = reply.send(work());
        });
        self.jobs.try_send(job).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => Status::resource_exhausted(format!(
                "{JOIN_QUEUE} joins are already waiting on this server; retry in a second"
            )),
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                Status::unavailable("this server is shutting down; retry another")
            }
        })?;
        answer
            .await
            .map_err(|_| Status::internal("the join thread dropped the request"))
    }
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

impl PkiApi {
    /// Records a certificate just signed for a member of a cluster, so that it
    /// stands until it expires or the cluster leaves (`flotilla_core::certificates`).
    /// Admins' certificates are not judged by cluster, so not recorded.
    async fn record(
        &self,
        identity: &flotilla_pki::Identity,
        chain: &[rustls_pki_types::CertificateDer<'static>],
    ) -> Result<(), Status> {
        if identity.role == flotilla_pki::Role::Admin {
            return Ok(());
        }
        let leaf = chain
            .first()
            .ok_or_else(|| Status::internal("the CA signed an empty chain"))?;
        let info = flotilla_pki::CertInfo::parse(leaf)
            .map_err(|e| Status::internal(format!("the certificate just signed: {e}")))?;
        let certificate = flotilla_core::IssuedCertificate {
            identity: identity.uri(),
            cluster: identity.cluster.clone(),
            not_after: flotilla_client::convert::timestamp_of(info.not_after),
        };
        self.core
            .propose(flotilla_core::Command::RecordCertificate {
                serial: info.serial_hex(),
                certificate,
            })
            .await
            .map(|_| ())
    }
}

/// Whom a join with `token` makes: the token's identity, or for a node token, the
/// node the CSR names (the token's cluster is checked by the ledger and the CSR by
/// the signature).
fn joining_identity(token: &JoinToken, csr_der: &[u8]) -> Result<flotilla_pki::Identity, Status> {
    let node = match token.role {
        flotilla_pki::Role::Node => {
            flotilla_pki::csr_identity(csr_der)
                .map_err(|e| Status::invalid_argument(format!("csr_der: {e}")))?
                .node
        }
        _ => None,
    };
    token
        .identity(node.as_deref())
        .map_err(|e| Status::invalid_argument(format!("token: {e}")))
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
        let source = request
            .remote_addr()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        if let Err(wait) = self.join_rate.admit(source, std::time::Instant::now()) {
            return Err(flotilla_client::errors::rate_limited(
                "JOIN_RATE",
                wait,
                format!(
                    "too many joins from {source}: {} at once, then {} a second; retry in {} ms",
                    super::join_rate::BURST,
                    super::join_rate::PER_SECOND,
                    wait.as_millis().max(1)
                ),
            ));
        }
        let body = request.into_inner();
        let token = JoinToken::decode(&body.token)
            .map_err(|e| Status::invalid_argument(format!("token: {e}")))?;
        if body.csr_der.is_empty() {
            return Err(Status::invalid_argument("csr_der: required (empty)"));
        }
        let holder = self.holder()?;
        let (signer, redeemer) = (holder.clone(), holder);
        let checked = token.clone();
        let (identity, chain) = self
            .desk
            .run(move || {
                let identity = joining_identity(&checked, &body.csr_der)?;
                // The token first: a forged or spent one costs no signature and
                // no lock.
                signer
                    .tokens
                    .check(&checked, &identity, SystemTime::now())
                    .map_err(|e| Status::unauthenticated(e.to_string()))?;
                // Then the CSR (a bad one does not burn the token).
                let chain = signer
                    .ca
                    .sign_csr(
                        &body.csr_der,
                        &identity,
                        Validity::from_now(signer.validity),
                    )
                    .map_err(|e| Status::invalid_argument(format!("csr_der: {e}")))?;
                Ok::<_, Status>((identity, chain))
            })
            .await??;
        // Recorded before the token is spent: a join the registry cannot record
        // (no leader) is refused whole, and the token admits a retry.
        self.record(&identity, &chain).await?;
        let joiner = identity.clone();
        self.desk
            .run(move || {
                redeemer
                    .tokens
                    .redeem(&token, &joiner, SystemTime::now())
                    .map_err(|e| Status::unauthenticated(e.to_string()))
            })
            .await??;
        tracing::info!(identity = %identity, "joined with a token");
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
        let renewing = identity.clone();
        let chain = self
            .desk
            .run(move || {
                holder
                    .ca
                    .sign_csr(&csr, &renewing, Validity::from_now(holder.validity))
                    .map_err(|e| Status::invalid_argument(format!("csr_der: {e}")))
            })
            .await??;
        self.record(&identity, &chain).await?;
        Ok(Response::new(pb::RenewResponse {
            chain_pem: pem(&chain),
        }))
    }
}
