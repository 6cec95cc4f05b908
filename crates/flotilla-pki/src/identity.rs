//! Who a certificate speaks for: `spiffe://<federation>/cluster/<name>/<role>`, or
//! `spiffe://<federation>/cluster/<name>/node/<node>` for one GPU node's agent.

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
    /// The cluster's agent (its controller, or the one agent of a cluster that
    /// reports its whole inventory): reports and sets replica phases for its own
    /// cluster only.
    Agent,
    /// One GPU node's agent: reports its own node only, and sets the phase only of
    /// replicas on that node. Its identity names the node.
    Node,
    /// An east-west gateway: reads and watches routes; writes nothing.
    Gateway,
    /// An operator or program that manages workloads, policies and clusters.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Server,
        Role::Agent,
        Role::Node,
        Role::Gateway,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
            Role::Node => "node",
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
                message: "role must be one of server, agent, node, gateway, admin".into(),
            })
    }
}

/// A Flotilla identity: a role acting for one cluster of one federation (and, for a
/// [`Role::Node`], one node of it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub federation: String,
    /// The cluster it acts for (for an admin: the admin's name).
    pub cluster: String,
    pub role: Role,
    /// The node, for [`Role::Node`] and only for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Checks a node name as Kubernetes names nodes (a DNS subdomain): 1 to 253 of
/// `a-z 0-9 - .`, starting and ending with a letter or digit.
pub fn validate_node_name(node: &str) -> Result<()> {
    let bad = |message: String| {
        Err(Error::Identity {
            value: node.to_owned(),
            message: format!("node name {message}"),
        })
    };
    if node.is_empty() || node.len() > 253 {
        return bad("must be 1 to 253 characters".into());
    }
    if let Some(c) = node
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return bad(format!("contains {c:?}; use a-z, 0-9, - and ."));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(node.chars().next()) || !alnum(node.chars().last()) {
        return bad("must start and end with a letter or digit".into());
    }
    Ok(())
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
    /// An identity of any role but [`Role::Node`] (see [`Identity::for_node`]).
    pub fn new(federation: &str, cluster: &str, role: Role) -> Result<Self> {
        validate_name("federation", federation)?;
        validate_name("cluster", cluster)?;
        if role == Role::Node {
            return Err(Error::Identity {
                value: format!("spiffe://{federation}/cluster/{cluster}/node"),
                message: "a node identity names its node: spiffe://<federation>/cluster/<name>/node/<node>".into(),
            });
        }
        Ok(Identity {
            federation: federation.to_owned(),
            cluster: cluster.to_owned(),
            role,
            node: None,
        })
    }

    /// The identity of the agent of node `node` in `cluster`.
    pub fn for_node(federation: &str, cluster: &str, node: &str) -> Result<Self> {
        validate_name("federation", federation)?;
        validate_name("cluster", cluster)?;
        validate_node_name(node)?;
        Ok(Identity {
            federation: federation.to_owned(),
            cluster: cluster.to_owned(),
            role: Role::Node,
            node: Some(node.to_owned()),
        })
    }

    /// `spiffe://<federation>/cluster/<name>/<role>`, or
    /// `spiffe://<federation>/cluster/<name>/node/<node>`.
    pub fn uri(&self) -> String {
        match &self.node {
            Some(node) => format!(
                "spiffe://{}/cluster/{}/node/{node}",
                self.federation, self.cluster
            ),
            None => format!(
                "spiffe://{}/cluster/{}/{}",
                self.federation, self.cluster, self.role
            ),
        }
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
            [federation, "cluster", cluster, "node", node] => {
                Identity::for_node(federation, cluster, node)
            }
            [federation, "cluster", cluster, role] => {
                let role: Role = role.parse()?;
                Identity::new(federation, cluster, role)
            }
            _ => Err(bad(
                "expected spiffe://<federation>/cluster/<name>/<role> or spiffe://<federation>/cluster/<name>/node/<node>",
            )),
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

    /// The serial as lower-case hex, as the registry records and revokes it.
    pub fn serial_hex(&self) -> String {
        self.serial.iter().map(|b| format!("{b:02x}")).collect()
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

    #[test]
    fn a_node_identity_names_its_node_and_only_a_node_identity_does() -> Result<()> {
        let id = Identity::for_node("acme", "eu-1", "gpu-7.eu-1.internal")?;
        assert_eq!(
            id.uri(),
            "spiffe://acme/cluster/eu-1/node/gpu-7.eu-1.internal"
        );
        assert_eq!(Identity::parse_uri(&id.uri())?, id);
        assert_eq!(id.role, Role::Node);
        let err = |r: Result<Identity>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err(Identity::parse_uri("spiffe://acme/cluster/eu-1/node")).contains("names its node")
        );
        assert!(err(Identity::new("acme", "eu-1", Role::Node)).contains("names its node"));
        assert!(err(Identity::for_node("acme", "eu-1", "-gpu")).contains("start and end"));
        assert!(err(Identity::for_node("acme", "eu-1", "gpu/7")).contains("contains '/'"));
        assert!(Identity::parse_uri("spiffe://acme/cluster/eu-1/node/a/b").is_err());
        Ok(())
    }
}
