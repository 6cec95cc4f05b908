//! Getting an identity with a join token, for every role.
//!
//! `flotilla server --join`, `flotilla agent --join` and `flotilla gateway --join` all
//! do the same thing before anything else: make a key on this machine, send a CSR for
//! the token's identity to the CA server named in the token (checked against the
//! token's CA fingerprint, since the joiner has no CA certificate yet), and store the
//! signed certificate in their PKI directory (`flotilla_pki::layout`, files named after
//! the role: `server.pem`, `agent.pem`, `gateway.pem`). [`join_with_token`] is that
//! one step; [`load_identity`] then reads the stored identity back as
//! [`TransportSecurity::Mtls`].
//!
//! Joining is idempotent from the caller's point of view: a directory that already
//! holds the identity is left alone and the token is not redeemed again, so a process
//! restarted with the same `--join TOKEN` (a single-use token, now spent) still starts.

use crate::error::{Error, Result};
use crate::transport::{Mtls, TransportSecurity};
use flotilla_pki::{Identity, JoinToken, Role, RotatingCert, TrustBundle, layout};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What [`join_with_token`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The token was redeemed; a new certificate for this identity is stored.
    Issued(Identity),
    /// The directory already held a certificate for the token's identity; nothing
    /// was sent and the token was not used.
    AlreadyHeld(Identity),
}

impl Joined {
    pub fn identity(&self) -> &Identity {
        match self {
            Joined::Issued(i) | Joined::AlreadyHeld(i) => i,
        }
    }
}

/// Joins the federation as `role` with `token`, storing the identity in `pki_dir`
/// (`<pki_dir>/<role>.pem`, `<role>-key.pem` (0600), and `ca.pem`). A node agent
/// ([`Role::Node`]) names its `node`; every other role passes `None`.
///
/// Refuses a token for another role (`--join` of a server with an agent token is a
/// mistake worth naming) and a directory holding a certificate for another identity.
/// The key is generated here and never leaves this process.
pub async fn join_with_token(
    token: &JoinToken,
    role: Role,
    node: Option<&str>,
    pki_dir: &Path,
) -> Result<Joined> {
    if token.role != role {
        return Err(Error::Config(format!(
            "this join token is for a {} of cluster {:?}; a {role} needs a {role} token (`flotilla federation token --role {role} ...`)",
            token.role, token.cluster
        )));
    }
    let identity = token.identity(node)?;
    let cert_file = layout::cert_path(pki_dir, role.as_str());
    if cert_file.exists() {
        let held = RotatingCert::load(pki_dir, role.as_str())?.identity();
        if held != identity {
            return Err(Error::Config(format!(
                "{} holds the identity {held}, but the join token is for {identity}; use another directory or remove it",
                cert_file.display()
            )));
        }
        return Ok(Joined::AlreadyHeld(held));
    }
    let (chain, key) = redeem_token(token, node).await?;
    layout::save_new(pki_dir, role.as_str(), &chain, &key)?;
    tracing::info!(identity = %identity, dir = %pki_dir.display(), "joined the federation: certificate stored");
    Ok(Joined::Issued(identity))
}

/// The identity `role` holds in `pki_dir` as mTLS transport security, or `None` when
/// the directory holds no certificate for that role.
pub fn load_identity(pki_dir: &Path, role: Role) -> Result<Option<Arc<Mtls>>> {
    if !layout::cert_path(pki_dir, role.as_str()).exists() {
        return Ok(None);
    }
    let trust = TrustBundle::from_pem_file(&layout::ca_path(pki_dir))?;
    let cert = RotatingCert::load(pki_dir, role.as_str())?;
    let held = cert.identity();
    if held.role != role || held.federation != trust.federation() {
        return Err(Error::Config(format!(
            "{} holds {held}, which is not a {role} of federation {:?} (the CA in {})",
            layout::cert_path(pki_dir, role.as_str()).display(),
            trust.federation(),
            layout::ca_path(pki_dir).display()
        )));
    }
    Ok(Some(Mtls::new(trust, cert)?))
}

/// [`load_identity`] as [`TransportSecurity`].
pub fn load_security(pki_dir: &Path, role: Role) -> Result<Option<TransportSecurity>> {
    Ok(load_identity(pki_dir, role)?.map(TransportSecurity::Mtls))
}

/// Redeems a join token without touching any file: makes a key here, sends a CSR for
/// the token's identity (for a node token, `node`'s) to the server named in the
/// token (checked against the token's CA fingerprint), and returns the certificate
/// chain (leaf, CA) with the key. [`join_with_token`] is this plus storing the
/// result.
pub async fn redeem_token(
    token: &JoinToken,
    node: Option<&str>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    use flotilla_proto::v1::{JoinRequest, pki_service_client::PkiServiceClient};
    use rustls_pki_types::pem::PemObject;
    let identity = token.identity(node)?;
    let (key, csr_der) = flotilla_pki::new_key_and_csr(&identity)?;
    let config = flotilla_pki::bootstrap_client_config(&token.ca_fingerprint)?;
    let channel =
        crate::transport::tls_channel(Arc::new(config), &token.server, Duration::from_secs(5))?;
    let reply = PkiServiceClient::new(channel)
        .join(JoinRequest {
            token: token.encode()?,
            csr_der,
        })
        .await
        .map_err(|s| Error::Rpc {
            peer: token.server.clone(),
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();
    let chain = CertificateDer::pem_slice_iter(reply.chain_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Rpc {
            peer: token.server.clone(),
            code: tonic::Code::DataLoss,
            message: format!("the signed chain is not PEM: {e}"),
        })?;
    Ok((chain, key))
}
