//! rustls configurations for every Flotilla hop, with certificates that rotate in place.
//!
//! - Servers require a certificate from the federation CA of every client that presents
//!   one ([`WebPkiClientVerifier`]); a client with none is let through the handshake
//!   only so that the one bootstrap RPC (join with a token) can be reached — every other
//!   RPC refuses a caller without an identity (authorization lives in the registry).
//! - Clients check the server's chain against the federation CA and its SPIFFE id's
//!   federation, not a host name (SPIFFE-style: addresses change, identities do not).
//! - [`RotatingCert`] is both the server's and the client's certificate resolver;
//!   [`RotatingCert::rotate`] swaps in a renewed certificate: connections already open
//!   keep theirs, new handshakes present the new one. No restart.

use crate::error::{Error, Result};
use crate::identity::{CertInfo, Identity, Role};
use crate::token::sha256_hex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The crypto provider every Flotilla TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol gRPC speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// What everyone in a federation trusts: the federation CA's certificate.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    federation: String,
    ca: CertificateDer<'static>,
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    pub fn new(ca: CertificateDer<'static>) -> Result<Self> {
        let federation = crate::ca::federation_of_ca(&ca)?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone())
            .map_err(|e| Error::malformed("federation CA certificate", e))?;
        Ok(TrustBundle {
            federation,
            ca,
            roots: Arc::new(roots),
        })
    }

    pub fn from_pem_file(path: &std::path::Path) -> Result<Self> {
        let ca = crate::files::read_certs(path)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::malformed(path.display().to_string(), "no certificate"))?;
        TrustBundle::new(ca)
    }

    pub fn federation(&self) -> &str {
        &self.federation
    }

    /// Checks that `chain`'s leaf was signed by this federation's CA, is valid now
    /// and names a member of this federation; its identity. What a member checks of
    /// a certificate it is handed (a renewal) before it keeps it.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<Identity> {
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| Error::Tls("the certificate chain is empty".into()))?;
        verify_chain(&self.roots, leaf, rest, UnixTime::now(), &provider()).map_err(|e| {
            Error::Tls(format!(
                "the certificate does not chain to federation {:?}'s CA: {e}",
                self.federation
            ))
        })?;
        let id = Identity::from_cert(leaf)?;
        if id.federation != self.federation {
            return Err(Error::Tls(format!(
                "{id} is not of federation {:?}",
                self.federation
            )));
        }
        Ok(id)
    }

    pub fn ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    /// SHA-256 (hex) of the CA certificate, as join tokens carry it.
    pub fn fingerprint(&self) -> String {
        sha256_hex(self.ca.as_ref())
    }
}

/// A certificate and key that can be swapped while in use: the server's and the
/// client's certificate resolver.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<(Arc<CertifiedKey>, Identity, CertInfo)>,
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(Arc<CertifiedKey>, Identity, CertInfo)> {
    let leaf = chain
        .first()
        .ok_or_else(|| Error::malformed("certificate chain", "is empty"))?;
    let identity = Identity::from_cert(leaf)?;
    let info = CertInfo::parse(leaf)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::malformed(format!("private key of {identity}"), e))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| Error::malformed(format!("key and certificate of {identity}"), e))?;
    Ok((Arc::new(ck), identity, info))
}

impl RotatingCert {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>> {
        Ok(Arc::new(RotatingCert {
            current: RwLock::new(certified(chain, key)?),
        }))
    }

    /// Loads `<dir>/<name>.pem` (chain) and `<dir>/<name>-key.pem`, first finishing
    /// a renewal a crash interrupted ([`crate::layout::finish_renewal`]).
    pub fn load(dir: &std::path::Path, name: &str) -> Result<Arc<Self>> {
        crate::layout::finish_renewal(dir, name)?;
        let chain = crate::files::read_certs(&dir.join(format!("{name}.pem")))?;
        let key = crate::files::read_key(&dir.join(format!("{name}-key.pem")))?;
        RotatingCert::new(chain, key)
    }

    /// Swaps in a renewed certificate. It must name the same identity.
    pub fn rotate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<()> {
        let next = certified(chain, key)?;
        let mut cur = match self.current.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if next.1 != cur.1 {
            return Err(Error::Identity {
                value: next.1.uri(),
                message: format!("a rotation must keep the identity {}", cur.1),
            });
        }
        *cur = next;
        Ok(())
    }

    fn read(&self) -> (Arc<CertifiedKey>, Identity, CertInfo) {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn identity(&self) -> Identity {
        self.read().1
    }

    /// The current leaf certificate's details (expiry, serial).
    pub fn info(&self) -> CertInfo {
        self.read().2
    }

    /// When a renewal is due: two thirds into the current certificate's life,
    /// counted from when it was issued. Certificates start [`crate::ca::BACKDATE`]
    /// before they are issued (clock skew); counting from `not_before` would make a
    /// short-lived certificate due for renewal the moment it arrives, and a renewal
    /// task renew in a loop.
    pub fn renew_at(&self) -> SystemTime {
        let info = self.info();
        let issued = (info.not_before + crate::ca::BACKDATE).min(info.not_after);
        let life = info.not_after.duration_since(issued).unwrap_or_default();
        issued + life * 2 / 3
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().0)
    }
}

impl ResolvesClientCert for RotatingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.read().0)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server's configuration: its rotating certificate, and client certificates checked
/// against the federation CA. With `allow_anonymous`, a client may present none (for
/// the bootstrap RPC); a client presenting a bad one is always refused.
pub fn server_config(
    trust: &TrustBundle,
    cert: Arc<RotatingCert>,
    allow_anonymous: bool,
) -> Result<ServerConfig> {
    let mut verifier = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider());
    if allow_anonymous {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No session resumption: every connection is a full handshake, so it sees the
    // current certificates and checks the peer's expiry (gRPC connections are
    // long-lived; the cost is negligible).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Checks a server's chain against the federation CA and its SPIFFE id: one of
/// this federation's members in a role the client expects at the far end (a
/// registry client talks to servers only, an east-west hop to gateways only).
/// Host names are not checked (see the module docs).
#[derive(Debug)]
struct FederationServerVerifier {
    roots: Arc<RootCertStore>,
    federation: String,
    accept: Vec<Role>,
    provider: Arc<CryptoProvider>,
}

fn verify_chain(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
) -> std::result::Result<(), rustls::Error> {
    let cert = ParsedCertificate::try_from(end_entity)?;
    verify_server_cert_signed_by_trust_anchor(
        &cert,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )
}

impl ServerCertVerifier for FederationServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        verify_chain(&self.roots, end_entity, intermediates, now, &self.provider)?;
        let id = Identity::from_cert(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if id.federation != self.federation {
            return Err(refused(format!(
                "{id} is not of federation {:?}",
                self.federation
            )));
        }
        if !self.accept.contains(&id.role) {
            return Err(refused(format!(
                "{id} answered where a {} was expected",
                self.accept
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The far end's certificate is valid but not what this client may talk to.
fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        Error::Tls(why),
    ))))
}

/// A client's configuration: the far end checked against the federation CA and
/// required to hold one of the roles in `accept` (`[Role::Server]` for the
/// registry, `[Role::Gateway]` for an east-west hop); `cert` (if any) presented as
/// the client's identity, rotating in place.
pub fn client_config(
    trust: &TrustBundle,
    cert: Option<Arc<RotatingCert>>,
    accept: &[Role],
) -> Result<ClientConfig> {
    let verifier = Arc::new(FederationServerVerifier {
        roots: trust.roots.clone(),
        federation: trust.federation.clone(),
        accept: accept.to_vec(),
        provider: provider(),
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Accepts a server whose chain ends in the CA certificate with this fingerprint and
/// whose leaf that CA signed: how a joining machine, which has no CA certificate yet,
/// checks it reached the right federation (the fingerprint comes in the join token).
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.fingerprint)
            .ok_or(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        verify_chain(&roots, end_entity, &[], now, &self.provider)?;
        // The token goes only to a server: any member holds a certificate from
        // this CA, and a gateway or an agent must not collect tokens.
        match Identity::from_cert(end_entity) {
            Ok(id) if id.role == Role::Server => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(refused(format!(
                "{id} answered where a server was expected; the join token is not sent"
            ))),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration for the bootstrap call: no client certificate, the server
/// checked against the CA fingerprint in the join token.
pub fn bootstrap_client_config(ca_fingerprint: &str) -> Result<ClientConfig> {
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
