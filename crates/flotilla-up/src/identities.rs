//! The federation's PKI for a local run: one CA, made fresh in the state directory,
//! and a certificate for every process, written where that process looks for it.
//!
//! `up` holds the CA key itself (it is the operator here), so it issues identities
//! directly instead of going through join tokens; the CA key is also left with the
//! first server so that renewals and `flotilla federation token` work as in a real
//! federation.

use crate::UpError;
use crate::layout::StateDir;
use flotilla_pki::{CertificateAuthority, Identity, Role, Validity, layout};
use std::path::Path;

/// Creates the CA and every identity the run needs. Returns the CA's fingerprint.
pub fn create(state: &StateDir, federation: &str, clusters: &[String]) -> Result<String, UpError> {
    let pki = |e: flotilla_pki::Error| UpError::Pki(e.to_string());
    let first = clusters.first().ok_or_else(|| UpError::Option {
        flag: "--clusters",
        message: "a federation needs at least one cluster".into(),
    })?;
    let ca = CertificateAuthority::create(federation).map_err(pki)?;
    ca.save(&state.server_pki(first)).map_err(pki)?;
    let validity = Validity::from_now(flotilla_pki::ca::LEAF_VALIDITY);
    let issue = |dir: &Path, cluster: &str, role: Role, sans: &[String]| -> Result<(), UpError> {
        let identity = Identity::new(federation, cluster, role).map_err(pki)?;
        let issued = ca.issue(&identity, validity, sans).map_err(pki)?;
        layout::save_new(dir, role.as_str(), &issued.chain, &issued.key).map_err(pki)
    };
    let loopback = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    for cluster in clusters {
        issue(&state.server_pki(cluster), cluster, Role::Server, &loopback)?;
        issue(&state.agent_pki(cluster), cluster, Role::Agent, &[])?;
        issue(
            &state.gateway_pki(cluster),
            cluster,
            Role::Gateway,
            &loopback,
        )?;
    }
    issue(&state.admin_dir(), "admin", Role::Admin, &[])?;
    Ok(ca.trust().map_err(pki)?.fingerprint())
}
