//! Who is calling: the SPIFFE identity in a peer's certificate.
//!
//! Flotilla certificates name their holder in a SAN URI,
//! `spiffe://<federation>/cluster/<name>/<role>`. Reading one URI out of a
//! certificate needs only a few DER steps, so they are done here rather than
//! pulling in a full X.509 parser; the signature and chain were already checked by
//! rustls before any of this runs.

use std::fmt;

/// A caller's identity, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub federation: String,
    pub cluster: String,
    pub role: String,
}

impl PeerIdentity {
    /// Parses `spiffe://<federation>/cluster/<name>/<role>`.
    pub fn parse(uri: &str) -> Option<PeerIdentity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let federation = parts.next()?;
        if parts.next()? != "cluster" {
            return None;
        }
        let cluster = parts.next()?;
        let role = parts.next()?;
        if parts.next().is_some() || [federation, cluster, role].iter().any(|s| s.is_empty()) {
            return None;
        }
        Some(PeerIdentity {
            federation: federation.to_owned(),
            cluster: cluster.to_owned(),
            role: role.to_owned(),
        })
    }

    /// The first Flotilla identity among a certificate's SAN URIs.
    pub fn from_cert_der(der: &[u8]) -> Option<PeerIdentity> {
        san_uris(der)
            .unwrap_or_default()
            .iter()
            .find_map(|u| PeerIdentity::parse(u))
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/cluster/{}/{}",
            self.federation, self.cluster, self.role
        )
    }
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const EXTENSIONS: u8 = 0xA3;
const URI_NAME: u8 = 0x86;
const SUBJECT_ALT_NAME: [u8; 3] = [0x55, 0x1D, 0x11];

/// One DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The SAN URIs of a DER certificate; `None` if it is not one.
pub fn san_uris(der: &[u8]) -> Option<Vec<String>> {
    let (tag, cert, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // Skip the fields before the extensions; they are optional at either end, so
    // walk until the [3] tag instead of counting.
    let extensions = loop {
        let (tag, body, rest) = element(tbs)?;
        if tag == EXTENSIONS {
            break body;
        }
        tbs = rest;
    };
    let (tag, mut list, _) = element(extensions)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut uris = Vec::new();
    while !list.is_empty() {
        let (_, ext, rest) = element(list)?;
        list = rest;
        let (tag, oid, mut fields) = element(ext)?;
        if tag != OID || oid != SUBJECT_ALT_NAME {
            continue;
        }
        let (mut tag, mut value, after) = element(fields)?;
        if tag == BOOLEAN {
            fields = after;
            (tag, value, _) = element(fields)?;
        }
        if tag != OCTET_STRING {
            return None;
        }
        let (tag, mut names, _) = element(value)?;
        if tag != SEQUENCE {
            return None;
        }
        while !names.is_empty() {
            let (tag, name, rest) = element(names)?;
            names = rest;
            if tag == URI_NAME
                && let Ok(s) = std::str::from_utf8(name)
            {
                uris.push(s.to_owned());
            }
        }
    }
    Some(uris)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flotilla_ids_and_rejects_others() {
        let id = PeerIdentity::parse("spiffe://fed/cluster/b/gateway").unwrap();
        assert_eq!(id.cluster, "b");
        assert_eq!(id.role, "gateway");
        assert_eq!(id.to_string(), "spiffe://fed/cluster/b/gateway");
        for bad in [
            "https://fed/cluster/b/gateway",
            "spiffe://fed/ns/b/gateway",
            "spiffe://fed/cluster/b",
            "spiffe://fed/cluster/b/gateway/x",
            "spiffe:///cluster/b/gateway",
        ] {
            assert_eq!(PeerIdentity::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(san_uris(&[]), None);
        assert_eq!(san_uris(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(PeerIdentity::from_cert_der(&[0x30, 0x00]), None);
    }
}
