//! The federation CA: an ECDSA P-256 key and a self-signed certificate naming the
//! federation (`spiffe://<federation>` URI SAN). It signs every identity's certificate.

use crate::error::{Error, Result};
use crate::files;
use crate::identity::{CertInfo, Identity, validate_name};
use crate::tls::TrustBundle;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The CA's certificate file in a PKI directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key file (0600; only on the server that ran `federation init`).
pub const CA_KEY: &str = "ca-key.pem";

/// How long the CA certificate lasts.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an identity certificate lasts by default; rotation renews it at 2/3.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Allowed clock skew: certificates start this long before they are issued.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a little before now (clock skew) for `ttl`.
    pub fn from_now(ttl: Duration) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now.checked_sub(BACKDATE).unwrap_or(now),
            not_after: now + ttl,
        }
    }
}

/// A key generated on this machine with a certificate for it: what an identity holds.
#[derive(Debug)]
pub struct IssuedIdentity {
    pub identity: Identity,
    /// Leaf first, then the CA certificate (servers send both, so a joining client can
    /// pin the CA by its fingerprint).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl IssuedIdentity {
    pub fn chain_pem(&self) -> String {
        files::certs_pem(&self.chain)
    }

    pub fn key_pem(&self) -> Result<String> {
        key_pem(&self.key)
    }
}

pub(crate) fn key_pem(key: &PrivateKeyDer<'_>) -> Result<String> {
    let kp = KeyPair::try_from(key).map_err(|e| Error::malformed("private key", e))?;
    Ok(kp.serialize_pem())
}

pub struct CertificateAuthority {
    federation: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("federation", &self.federation)
            .finish_non_exhaustive()
    }
}

fn leaf_params(
    identity: &Identity,
    validity: Validity,
    extra_sans: &[String],
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    let common_name = match &identity.node {
        Some(node) => format!("{} node {node}", identity.cluster),
        None => format!("{} {}", identity.cluster, identity.role),
    };
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, identity.federation.clone());
    params.distinguished_name = dn;
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e| Error::generate(identity.uri(), format!("URI SAN: {e}")))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for san in extra_sans {
        let entry =
            match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(san.clone().try_into().map_err(|e| {
                    Error::generate(identity.uri(), format!("DNS SAN {san:?}: {e}"))
                })?),
            };
        params.subject_alt_names.push(entry);
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every identity is both: servers dial each other, agents and gateways serve too.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.serial_number = Some(random_serial()?.into());
    Ok(params)
}

fn random_serial() -> Result<Vec<u8>> {
    let mut s = crate::token::random_bytes::<16>()?.to_vec();
    s[0] &= 0x7f; // positive
    Ok(s)
}

/// A new ECDSA P-256 key and a CSR asking for `identity`: what a joining machine
/// sends. The key stays with the caller.
pub fn new_key_and_csr(identity: &Identity) -> Result<(PrivateKeyDer<'static>, Vec<u8>)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| Error::generate(format!("key for {identity}"), e))?;
    let mut params = CertificateParams::default();
    let uri = identity
        .uri()
        .try_into()
        .map_err(|e| Error::generate(identity.uri(), format!("URI SAN: {e}")))?;
    params.subject_alt_names.push(SanType::URI(uri));
    let csr = params
        .serialize_request(&key)
        .map_err(|e| Error::generate(format!("CSR for {identity}"), e))?;
    let der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| Error::generate(format!("key for {identity}"), e))?;
    Ok((der, csr.der().to_vec()))
}

impl CertificateAuthority {
    /// A new CA for `federation` (in memory; [`CertificateAuthority::save`] writes it).
    pub fn create(federation: &str) -> Result<Self> {
        validate_name("federation", federation)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::generate("the federation CA key", e))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("flotilla federation {federation} CA"),
        );
        dn.push(DnType::OrganizationName, federation.to_owned());
        params.distinguished_name = dn;
        let uri = format!("spiffe://{federation}")
            .try_into()
            .map_err(|e| Error::generate("the federation CA", format!("URI SAN: {e}")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::from_now(CA_VALIDITY);
        params.not_before = v.not_before.into();
        params.not_after = v.not_after.into();
        params.serial_number = Some(random_serial()?.into());
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::generate("the federation CA certificate", e))?
            .der()
            .clone();
        Ok(CertificateAuthority {
            federation: federation.to_owned(),
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    /// Writes `ca.pem` and `ca-key.pem` (0600) into `dir`; refuses to overwrite either.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let key_path = dir.join(CA_KEY);
        let cert_path = dir.join(CA_CERT);
        for p in [&key_path, &cert_path] {
            if p.exists() {
                return Err(Error::Exists { path: p.clone() });
            }
        }
        files::write_new(
            &key_path,
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )?;
        files::write_new(
            &cert_path,
            files::certs_pem(std::slice::from_ref(&self.cert)).as_bytes(),
            false,
        )
    }

    /// Loads the CA that `save` wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let cert = files::read_certs(&cert_path)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::malformed(cert_path.display().to_string(), "no certificate"))?;
        let key_pem = files::read_to_string(&key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::malformed(key_path.display().to_string(), e))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| Error::malformed(cert_path.display().to_string(), e))?;
        let federation = federation_of_ca(&cert)?;
        Ok(CertificateAuthority {
            federation,
            issuer,
            cert,
        })
    }

    pub fn federation(&self) -> &str {
        &self.federation
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The trust bundle every member uses: this CA's certificate.
    pub fn trust(&self) -> Result<TrustBundle> {
        TrustBundle::new(self.cert.clone())
    }

    /// Generates a key here and issues a certificate for it (for `federation init`,
    /// which makes the first server's and the first admin's identities, and for tests).
    /// `extra_sans` are DNS names or IP addresses (for tools that check host names).
    pub fn issue(
        &self,
        identity: &Identity,
        validity: Validity,
        extra_sans: &[String],
    ) -> Result<IssuedIdentity> {
        self.check_federation(identity)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::generate(format!("key for {identity}"), e))?;
        let cert = leaf_params(identity, validity, extra_sans)?
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::generate(format!("certificate for {identity}"), e))?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| Error::generate(format!("key for {identity}"), e))?;
        Ok(IssuedIdentity {
            identity: identity.clone(),
            chain: vec![cert.der().clone(), self.cert.clone()],
            key,
        })
    }

    fn check_federation(&self, identity: &Identity) -> Result<()> {
        if identity.federation != self.federation {
            return Err(Error::Csr {
                subject: identity.uri(),
                reason: format!("this CA signs for federation {:?} only", self.federation),
            });
        }
        Ok(())
    }

    /// Signs a CSR for `expected`: the CSR's signature must verify (the requester holds
    /// the key) and it must ask for exactly `expected`'s SPIFFE id and nothing else
    /// beyond DNS names and IP addresses. Returns the chain (leaf, CA).
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        expected: &Identity,
        validity: Validity,
    ) -> Result<Vec<CertificateDer<'static>>> {
        self.check_federation(expected)?;
        let refuse = |reason: String| Error::Csr {
            subject: expected.uri(),
            reason,
        };
        let csr = parse_csr(csr_der).map_err(refuse)?;
        let mut uris = Vec::new();
        let mut extra = Vec::new();
        for san in &csr.params.subject_alt_names {
            match san {
                SanType::URI(u) => uris.push(u.as_str().to_owned()),
                SanType::DnsName(d) => extra.push(d.as_str().to_owned()),
                SanType::IpAddress(ip) => extra.push(ip.to_string()),
                other => return Err(refuse(format!("asks for an unsupported SAN {other:?}"))),
            }
        }
        if uris != [expected.uri()] {
            return Err(refuse(format!(
                "asks for {uris:?}, but its token or certificate allows only {:?}",
                expected.uri()
            )));
        }
        let params = leaf_params(expected, validity, &extra)?;
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)
        .map_err(|e| refuse(format!("signing failed: {e}")))?;
        Ok(vec![signed.der().clone(), self.cert.clone()])
    }
}

/// A CSR whose signature verifies; the refusal's reason otherwise.
fn parse_csr(csr_der: &[u8]) -> std::result::Result<CertificateSigningRequestParams, String> {
    CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map_err(|e| format!("does not parse or its signature does not verify: {e}"))
}

/// The identity a CSR asks for (its one `spiffe://` URI SAN), unchecked: a join with
/// a node token reads which node asks before [`CertificateAuthority::sign_csr`]
/// checks the CSR against it.
pub fn csr_identity(csr_der: &[u8]) -> Result<Identity> {
    let refuse = |reason: String| Error::Csr {
        subject: "a CSR".into(),
        reason,
    };
    let csr = parse_csr(csr_der).map_err(refuse)?;
    let mut uris = csr
        .params
        .subject_alt_names
        .iter()
        .filter_map(|san| match san {
            SanType::URI(u) if u.as_str().starts_with("spiffe://") => Some(u.as_str()),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Identity::parse_uri(uri),
        (None, _) => Err(refuse("asks for no spiffe:// identity".into())),
        (Some(_), Some(_)) => Err(refuse("asks for more than one spiffe:// identity".into())),
    }
}

/// The federation a CA certificate names (its `spiffe://<federation>` URI SAN).
pub fn federation_of_ca(cert: &CertificateDer<'_>) -> Result<String> {
    let info = CertInfo::parse(cert)?;
    info.uris
        .iter()
        .find_map(|u| u.strip_prefix("spiffe://").filter(|f| !f.contains('/')))
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::malformed("CA certificate", "carries no spiffe://<federation> URI SAN")
        })
}
