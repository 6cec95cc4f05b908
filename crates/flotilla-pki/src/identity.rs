//! Who a certificate speaks for: `spiffe://<federation>/cluster/<name>/<role>`.

use crate::error::{Error, Result};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::extensions::GeneralName;

/// What a holder of a certificate may do (see the authorization matrix in
/// `ARCHITECTURE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A flotilla server: a Raft member; trusted with everything.
    Server,
    /// A node agent: reports capacity and signals for its own cluster only.
    Agent,
    /// An east-west gateway: reads and watches routes; writes nothing.
    Gateway,
    /// An operator or program that manages workloads, policies and clusters.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Server, Role::Agent, Role::Gateway, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::Identity {
                value: s.to_owned(),
                message: "role must be one of server, agent, gateway, admin".into(),
            })
    }
}

/// A Flotilla identity: a role acting for one cluster of one federation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub federation: String,
    /// The cluster it acts for (for an admin: the admin's name).
    pub cluster: String,
    pub role: Role,
}

/// Checks a federation or cluster name: 1 to 63 of `a-z 0-9 -`, not starting or
/// ending with `-` (so it is a DNS label and a SPIFFE path segment).
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let bad = |message: String| {
        Err(Error::Identity {
            value: name.to_owned(),
            message: format!("{what} {message}"),
        })
    };
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return bad(format!("contains {c:?}; use a-z, 0-9 and -"));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'".into());
    }
    Ok(())
}

impl Identity {
    pub fn new(federation: &str, cluster: &str, role: Role) -> Result<Self> {
        validate_name("federation", federation)?;
        validate_name("cluster", cluster)?;
        Ok(Identity {
            federation: federation.to_owned(),
            cluster: cluster.to_owned(),
            role,
        })
    }

    /// `spiffe://<federation>/cluster/<name>/<role>`.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/cluster/{}/{}",
            self.federation, self.cluster, self.role
        )
    }

    /// Parses a SPIFFE id of the form [`Identity::uri`] writes.
    pub fn parse_uri(uri: &str) -> Result<Self> {
        let bad = |message: &str| Error::Identity {
            value: uri.to_owned(),
            message: message.to_owned(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("not a spiffe:// URI"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [federation, "cluster", cluster, role] => {
                let role: Role = role.parse()?;
                Identity::new(federation, cluster, role)
            }
            _ => Err(bad("expected spiffe://<federation>/cluster/<name>/<role>")),
        }
    }

    /// The identity in a certificate's URI SAN. A certificate must carry exactly one
    /// Flotilla SPIFFE id.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Result<Self> {
        let info = CertInfo::parse(cert)?;
        let mut ids = info.uris.iter().filter(|u| u.starts_with("spiffe://"));
        match (ids.next(), ids.next()) {
            (Some(uri), None) => Identity::parse_uri(uri),
            (None, _) => Err(Error::Identity {
                value: info.subject,
                message: "certificate carries no spiffe:// URI SAN".into(),
            }),
            (Some(_), Some(_)) => Err(Error::Identity {
                value: info.subject,
                message: "certificate carries more than one spiffe:// URI SAN".into(),
            }),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The identity of the peer that presented `chain` (leaf first), as a TLS handshake
/// left it: `None` when it presented no certificate.
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<Result<Identity>> {
    chain
        .and_then(|c| c.first())
        .map(|leaf| Identity::from_cert(leaf))
}

/// What Flotilla reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub uris: Vec<String>,
    pub serial: Vec<u8>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn parse(cert: &CertificateDer<'_>) -> Result<Self> {
        let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|e| Error::malformed("certificate", e))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::URI(u) = name {
                    uris.push((*u).to_owned());
                }
            }
        }
        let at = |ts: i64| UNIX_EPOCH + Duration::from_secs(ts.max(0) as u64);
        Ok(CertInfo {
            subject: x509.subject().to_string(),
            uris,
            serial: x509.raw_serial().to_vec(),
            not_before: at(x509.validity().not_before.timestamp()),
            not_after: at(x509.validity().not_after.timestamp()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_say_why() -> Result<()> {
        let id = Identity::new("acme", "eu-1", Role::Agent)?;
        assert_eq!(id.uri(), "spiffe://acme/cluster/eu-1/agent");
        assert_eq!(Identity::parse_uri(&id.uri())?, id);
        let err = Identity::parse_uri("spiffe://acme/cluster/eu-1/root")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("role must be one of"), "{err}");
        assert!(Identity::parse_uri("https://acme/cluster/eu-1/agent").is_err());
        assert!(Identity::new("Acme", "eu-1", Role::Admin).is_err());
        Ok(())
    }
}
