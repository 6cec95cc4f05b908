//! Which member certificates still stand: the registry's record of what the
//! federation CA issued to clusters' servers, agents, nodes and gateways (through
//! `Join` and `Renew`), and of what it revoked when their cluster left.
//!
//! A cluster that leaves (`RemoveCluster`) takes its certificates with it: every one
//! recorded for it moves to the revocation list, and any certificate of that
//! cluster the registry never recorded (issued before this record existed, or
//! outside it) is refused too. The cluster comes back only through a new join:
//! certificates recorded after it left are the only ones its members may use.
//! That includes its server: a left cluster's server no longer speaks Raft to the
//! others, forwards writes or renews. Admins are not judged here: an admin acts
//! for no cluster.
//!
//! Entries are dropped once their certificate has expired, so the record stays as
//! small as the federation's live certificates.

use crate::error::{ObjectKind, Rejection, ValidationError};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest serial accepted, in hex digits: RFC 5280 allows 20 octets.
const MAX_SERIAL_HEX: usize = 40;

/// A certificate the CA issued to a member of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    /// The SPIFFE ID it names.
    pub identity: String,
    pub cluster: String,
    /// When it expires (ms since the Unix epoch): the record forgets it after that.
    pub not_after: Timestamp,
}

/// Why a certificate no longer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Recorded for its cluster, and revoked when the cluster left.
    Listed {
        serial: String,
        identity: String,
        left_at: Timestamp,
    },
    /// Its cluster left, and the registry never recorded this certificate as
    /// issued since.
    ClusterLeft {
        serial: String,
        cluster: String,
        left_at: Timestamp,
    },
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoked::Listed {
                serial,
                identity,
                left_at,
            } => write!(
                f,
                "certificate {serial} of {identity} was revoked when its cluster left the federation (at {} ms); join again with a new token",
                left_at.0
            ),
            Revoked::ClusterLeft {
                serial,
                cluster,
                left_at,
            } => write!(
                f,
                "certificate {serial} is of cluster {cluster:?}, which left the federation (at {} ms) after it was issued; join again with a new token",
                left_at.0
            ),
        }
    }
}

/// The record itself, part of the replicated registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Certificates {
    /// By serial (lower-case hex): issued and standing, until they expire.
    #[serde(default)]
    issued: BTreeMap<String, IssuedCertificate>,
    /// By serial: revoked when their cluster left, until they expire.
    #[serde(default)]
    revoked: BTreeMap<String, IssuedCertificate>,
    /// Clusters that left, and when (the federation's time) they last did.
    #[serde(default)]
    left: BTreeMap<String, Timestamp>,
}

impl Certificates {
    /// Whether the certificate `serial` of a member of `cluster` still stands.
    pub fn standing(&self, cluster: &str, serial: &str) -> Result<(), Revoked> {
        if let Some(r) = self.revoked.get(serial) {
            return Err(Revoked::Listed {
                serial: serial.to_owned(),
                identity: r.identity.clone(),
                left_at: self.left.get(&r.cluster).copied().unwrap_or_default(),
            });
        }
        match self.left.get(cluster) {
            Some(&left_at) if !self.issued.contains_key(serial) => Err(Revoked::ClusterLeft {
                serial: serial.to_owned(),
                cluster: cluster.to_owned(),
                left_at,
            }),
            _ => Ok(()),
        }
    }

    /// Whether any certificate of `cluster` could be refused (only a cluster that
    /// left has revoked ones): a server skips reading the caller's serial when
    /// none can.
    pub fn judges(&self, cluster: &str) -> bool {
        self.left.contains_key(cluster)
    }

    /// The certificates revoked and not yet expired, by serial.
    pub fn revoked(&self) -> &BTreeMap<String, IssuedCertificate> {
        &self.revoked
    }

    /// The certificates recorded as issued and standing, by serial.
    pub fn issued(&self) -> &BTreeMap<String, IssuedCertificate> {
        &self.issued
    }

    /// Records that the CA issued `serial`; forgets what expired by `now`.
    pub(crate) fn record(
        &mut self,
        serial: &str,
        certificate: IssuedCertificate,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        validate(serial, &certificate)?;
        if self.revoked.contains_key(serial) {
            return Err(Rejection::precondition(
                ObjectKind::Cluster,
                &certificate.cluster,
                format!("certificate {serial} was revoked; a revoked serial is never issued again"),
            ));
        }
        self.forget_expired(now);
        if certificate.not_after > now {
            self.issued.insert(serial.to_owned(), certificate);
        }
        Ok(())
    }

    /// `cluster` left at `now`: its certificates are revoked.
    pub(crate) fn cluster_left(&mut self, cluster: &str, now: Timestamp) {
        self.forget_expired(now);
        let (gone, kept) = std::mem::take(&mut self.issued)
            .into_iter()
            .partition(|(_, c)| c.cluster == cluster);
        self.issued = kept;
        self.revoked.extend(gone);
        self.left.insert(cluster.to_owned(), now);
    }

    fn forget_expired(&mut self, now: Timestamp) {
        self.issued.retain(|_, c| c.not_after > now);
        self.revoked.retain(|_, c| c.not_after > now);
    }
}

fn validate(serial: &str, c: &IssuedCertificate) -> Result<(), Rejection> {
    let bad = |field: &str, message: String| {
        Err(Rejection::Invalid(ValidationError::new(
            ObjectKind::Cluster,
            &c.cluster,
            field,
            message,
        )))
    };
    crate::names::validate_name(ObjectKind::Cluster, &c.cluster, "cluster")
        .map_err(Rejection::Invalid)?;
    if serial.is_empty()
        || serial.len() > MAX_SERIAL_HEX
        || !serial
            .chars()
            .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch))
    {
        return bad(
            "serial",
            format!(
                "{serial:?} is not a certificate serial (1-{MAX_SERIAL_HEX} lower-case hex digits)"
            ),
        );
    }
    if !c.identity.starts_with("spiffe://") {
        return bad(
            "identity",
            format!("{:?} is not a spiffe:// identity", c.identity),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cluster: &str, not_after: u64) -> IssuedCertificate {
        IssuedCertificate {
            identity: format!("spiffe://f/cluster/{cluster}/agent"),
            cluster: cluster.into(),
            not_after: Timestamp(not_after),
        }
    }

    #[test]
    fn a_cluster_that_leaves_takes_every_certificate_of_its_own_with_it() {
        let mut c = Certificates::default();
        c.record("0a", cert("east", 100), Timestamp(1)).unwrap();
        c.record("0b", cert("west", 100), Timestamp(1)).unwrap();
        assert!(!c.judges("east") && c.standing("east", "0a").is_ok());

        c.cluster_left("east", Timestamp(10));
        assert!(matches!(
            c.standing("east", "0a"),
            Err(Revoked::Listed { .. })
        ));
        // One it never recorded (made before the record, or outside it) too.
        assert!(matches!(
            c.standing("east", "ff"),
            Err(Revoked::ClusterLeft { .. })
        ));
        assert!(c.standing("west", "0b").is_ok());
        assert_eq!(c.revoked().keys().collect::<Vec<_>>(), ["0a"]);

        // A new join readmits it; a revoked serial is never recorded again.
        c.record("0c", cert("east", 100), Timestamp(20)).unwrap();
        assert!(c.standing("east", "0c").is_ok());
        assert!(c.record("0a", cert("east", 100), Timestamp(20)).is_err());
    }

    #[test]
    fn expired_certificates_are_forgotten() {
        let mut c = Certificates::default();
        c.record("01", cert("east", 50), Timestamp(1)).unwrap();
        c.cluster_left("east", Timestamp(10));
        c.record("02", cert("west", 500), Timestamp(60)).unwrap();
        assert!(c.revoked().is_empty() && c.issued().len() == 1);
    }

    #[test]
    fn a_record_names_what_is_wrong_with_it() {
        let mut c = Certificates::default();
        for (serial, cert, field) in [
            ("", cert("east", 9), "serial"),
            ("0A", cert("east", 9), "serial"),
            (&"a".repeat(41), cert("east", 9), "serial"),
            (
                "0a",
                IssuedCertificate {
                    identity: "east".into(),
                    ..cert("east", 9)
                },
                "identity",
            ),
            ("0a", cert("East", 9), "cluster"),
        ] {
            match c.record(serial, cert, Timestamp(1)) {
                Err(Rejection::Invalid(v)) => assert_eq!(v.field, field, "{serial:?}"),
                other => panic!("{serial:?}: {other:?}"),
            }
        }
        assert_eq!(c, Certificates::default());
    }
}
