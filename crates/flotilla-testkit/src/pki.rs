//! A test PKI: a federation CA made in memory, and the identities it issues, ready
//! for a server (with the CA, to sign joins and renewals) or a client.

use crate::wait::TestResult;
use flotilla_client::{Mtls, TransportSecurity};
use flotilla_pki::{
    CertificateAuthority, Identity, Role, RotatingCert, TokenStore, TrustBundle, Validity,
};
use flotilla_registry::CaHolder;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// How long the certificates a test asks for without saying last.
const HOUR: Duration = Duration::from_secs(3600);

/// A federation CA for tests, held as a registry server holds it.
#[derive(Debug)]
pub struct TestPki {
    /// The CA with its token store, for a server's `ServerConfig::ca`.
    pub ca: Arc<CaHolder>,
    /// The CA certificate every member trusts.
    pub trust: TrustBundle,
}

impl TestPki {
    /// A new CA for `federation`, keeping join tokens in `tokens_dir`; the server
    /// that holds it issues certificates for an hour.
    pub fn new(federation: &str, tokens_dir: &Path) -> flotilla_pki::Result<Self> {
        TestPki::issuing_for(federation, tokens_dir, HOUR)
    }

    /// Like [`TestPki::new`], but the certificates the server issues (Join, Renew)
    /// last `validity`: for tests of expiry and renewal.
    pub fn issuing_for(
        federation: &str,
        tokens_dir: &Path,
        validity: Duration,
    ) -> flotilla_pki::Result<Self> {
        let ca = CertificateAuthority::create(federation)?;
        let trust = ca.trust()?;
        Ok(TestPki {
            ca: Arc::new(CaHolder {
                ca,
                tokens: TokenStore::new(tokens_dir),
                validity,
            }),
            trust,
        })
    }

    /// The federation's name.
    pub fn federation(&self) -> &str {
        self.trust.federation()
    }

    /// A certificate for `cluster`'s `role`, valid for `validity`.
    pub fn cert(
        &self,
        cluster: &str,
        role: Role,
        validity: Validity,
    ) -> flotilla_pki::Result<Arc<RotatingCert>> {
        let who = Identity::new(self.federation(), cluster, role)?;
        rotating_cert(&self.ca.ca, &who, validity)
    }

    /// mTLS as `cluster`'s `role`, with a certificate valid for an hour.
    pub fn security(&self, cluster: &str, role: Role) -> TestResult<TransportSecurity> {
        self.security_as(&Identity::new(self.federation(), cluster, role)?)
    }

    /// mTLS as `who` (a node agent's identity, say), with a certificate valid for
    /// an hour.
    pub fn security_as(&self, who: &Identity) -> TestResult<TransportSecurity> {
        let cert = rotating_cert(&self.ca.ca, who, Validity::from_now(HOUR))?;
        Ok(TransportSecurity::Mtls(Mtls::new(
            self.trust.clone(),
            cert,
        )?))
    }

    /// A channel to `addr` over mTLS as `cluster`'s `role`.
    pub fn channel(&self, addr: &str, cluster: &str, role: Role) -> TestResult<Channel> {
        self.channel_as(addr, &Identity::new(self.federation(), cluster, role)?)
    }

    /// A channel to `addr` over mTLS as the node agent of `cluster`'s `node`.
    pub fn node_channel(&self, addr: &str, cluster: &str, node: &str) -> TestResult<Channel> {
        self.channel_as(addr, &Identity::for_node(self.federation(), cluster, node)?)
    }

    /// A channel to `addr` over mTLS as `who`.
    pub fn channel_as(&self, addr: &str, who: &Identity) -> TestResult<Channel> {
        Ok(self
            .security_as(who)?
            .channel(addr, Duration::from_secs(2))?)
    }
}

/// Issues `who` a certificate from `ca`, valid for `validity`, ready to present and
/// to rotate in place.
pub fn rotating_cert(
    ca: &CertificateAuthority,
    who: &Identity,
    validity: Validity,
) -> flotilla_pki::Result<Arc<RotatingCert>> {
    let issued = ca.issue(who, validity, &[])?;
    RotatingCert::new(issued.chain, issued.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_pki_issues_identities_of_its_own_federation() -> TestResult {
        let dir = tempfile::tempdir()?;
        let pki = TestPki::new("fed", dir.path())?;
        assert_eq!(pki.federation(), "fed");
        let cert = pki.cert("east", Role::Agent, Validity::from_now(HOUR))?;
        assert_eq!(cert.identity(), Identity::new("fed", "east", Role::Agent)?);
        Ok(())
    }
}
