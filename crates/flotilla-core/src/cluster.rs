//! Clusters: members of the federation that offer GPUs.

use crate::error::{ObjectKind, ValidationError};
use crate::gpu::Inventory;
use crate::names::{validate_identifier, validate_name};
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a cluster says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where other clusters' gateways reach this cluster's east-west gateway (`host:port`).
    #[serde(default)]
    pub gateway_address: String,
    /// The address ranges (CIDRs) its replicas serve from, if it declares any: a
    /// replica's endpoint must then be an IP address in one of them, so that no
    /// member can point a model's traffic anywhere else. Once declared, only an
    /// admin changes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_ranges: Vec<String>,
}

/// An address range: an IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    network: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for AddressRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix, like 10.0.0.0/8)"))?;
        let network: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix must be a number from 0 to {max}"))?;
        let range = AddressRange { network, prefix };
        if range.masked(network) != bits(network) {
            return Err(format!(
                "{s:?} has host bits set past /{prefix}; write the network address"
            ));
        }
        Ok(range)
    }
}

fn bits(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

impl AddressRange {
    fn masked(&self, ip: std::net::IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        if host_bits >= 128 {
            0
        } else {
            (bits(ip) >> host_bits) << host_bits
        }
    }

    /// Whether `ip` lies in the range (an IPv4 address never lies in an IPv6 range).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && self.masked(ip) == bits(self.network)
    }
}

/// Why `endpoint` (`host:port`) may not serve for a cluster declaring `ranges`, if it
/// may not: with ranges declared, the host must be an IP address in one of them.
pub fn endpoint_outside_ranges(endpoint: &str, ranges: &[String]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(ip) = host.parse::<std::net::IpAddr>() else {
        return Some(format!(
            "endpoint {endpoint:?} names no IP address, and the cluster declares endpoint ranges {}",
            ranges.join(", ")
        ));
    };
    let inside = ranges
        .iter()
        .filter_map(|r| r.parse::<AddressRange>().ok())
        .any(|r| r.contains(ip));
    (!inside).then(|| {
        format!(
            "endpoint {endpoint:?} lies outside the cluster's endpoint ranges {}",
            ranges.join(", ")
        )
    })
}

impl ClusterSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(ObjectKind::Cluster, &self.name, "name")?;
        validate_name(ObjectKind::Cluster, &self.region, "region").map_err(|e| {
            ValidationError::new(ObjectKind::Cluster, &self.name, "region", e.message)
        })?;
        if !self.zone.is_empty() {
            validate_name(ObjectKind::Cluster, &self.zone, "zone").map_err(|e| {
                ValidationError::new(ObjectKind::Cluster, &self.name, "zone", e.message)
            })?;
        }
        for (key, value) in &self.labels {
            validate_identifier(ObjectKind::Cluster, &self.name, "labels", key)?;
            if value.len() > 253 {
                return Err(ValidationError::new(
                    ObjectKind::Cluster,
                    &self.name,
                    format!("labels.{key}"),
                    "value is longer than 253 characters",
                ));
            }
        }
        if !self.gateway_address.is_empty() {
            validate_identifier(
                ObjectKind::Cluster,
                &self.name,
                "gateway_address",
                &self.gateway_address,
            )?;
        }
        if self.endpoint_ranges.len() > 64 {
            return Err(ValidationError::new(
                ObjectKind::Cluster,
                &self.name,
                "endpoint_ranges",
                format!("{} ranges; at most 64", self.endpoint_ranges.len()),
            ));
        }
        for (i, range) in self.endpoint_ranges.iter().enumerate() {
            range.parse::<AddressRange>().map_err(|why| {
                ValidationError::new(
                    ObjectKind::Cluster,
                    &self.name,
                    format!("endpoint_ranges[{i}]"),
                    why,
                )
            })?;
        }
        Ok(())
    }
}

/// Whether the scheduler may use a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClusterState {
    /// Reporting, and open for new replicas.
    Ready,
    /// Reporting, but closed to new replicas; existing ones stay unless it is draining.
    Cordoned,
    /// Its lease expired: its replicas count as lost and its routes are gone.
    Unreachable,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Ready => "Ready",
            ClusterState::Cordoned => "Cordoned",
            ClusterState::Unreachable => "Unreachable",
        }
    }
}

/// A cluster as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub spec: ClusterSpec,
    pub state: ClusterState,
    /// Set by a drain: Flotilla moves every movable replica away (make-before-break).
    pub draining: bool,
    /// Cordoned by an operator; survives the cluster going unreachable and coming back.
    pub cordoned: bool,
    /// The cluster counts as alive until this time unless it reports again.
    pub lease_expires_at: Timestamp,
    pub inventory: Inventory,
}

impl Cluster {
    /// Open for new replicas.
    pub fn schedulable(&self) -> bool {
        self.state == ClusterState::Ready
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn region(&self) -> &str {
        &self.spec.region
    }

    pub(crate) fn refresh_state(&mut self) {
        if self.state != ClusterState::Unreachable {
            self.state = if self.cordoned || self.draining {
                ClusterState::Cordoned
            } else {
                ClusterState::Ready
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, region: &str) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            region: region.into(),
            zone: String::new(),
            labels: BTreeMap::new(),
            gateway_address: "127.0.0.1:7443".into(),
            endpoint_ranges: Vec::new(),
        }
    }

    #[test]
    fn address_ranges_parse_as_cidrs_and_hold_only_their_own_addresses() {
        let range = |s: &str| s.parse::<AddressRange>();
        let ip = |s: &str| {
            s.parse::<std::net::IpAddr>()
                .unwrap_or(std::net::IpAddr::from([0; 4]))
        };
        let pods = range("10.42.0.0/16").unwrap_or_else(|e| panic!("{e}"));
        assert!(pods.contains(ip("10.42.7.9")));
        assert!(!pods.contains(ip("10.43.0.1")));
        assert!(
            !pods.contains(ip("::ffff:10.42.7.9")),
            "no IPv6 address lies in an IPv4 range"
        );
        let v6 = range("fd00:42::/32").unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains(ip("fd00:42::1")));
        assert!(range("0.0.0.0/0").is_ok_and(|r| r.contains(ip("203.0.113.9"))));
        for (bad, says) in [
            ("10.42.0.0", "not a CIDR"),
            ("10.42.0.0/33", "from 0 to 32"),
            ("10.42.0.1/16", "host bits"),
            ("pods/16", "not an IP address"),
        ] {
            let err = range(bad).err().unwrap_or_default();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn with_ranges_declared_an_endpoint_must_be_an_address_inside_one() {
        let ranges = vec!["10.42.0.0/16".to_owned(), "fd00::/8".to_owned()];
        assert_eq!(endpoint_outside_ranges("10.42.1.2:8000", &ranges), None);
        assert_eq!(endpoint_outside_ranges("[fd00::5]:8000", &ranges), None);
        let outside = endpoint_outside_ranges("203.0.113.9:8000", &ranges).unwrap_or_default();
        assert!(
            outside.contains("outside the cluster's endpoint ranges 10.42.0.0/16, fd00::/8"),
            "{outside}"
        );
        let named = endpoint_outside_ranges("evil.example:8000", &ranges).unwrap_or_default();
        assert!(named.contains("names no IP address"), "{named}");
        assert_eq!(
            endpoint_outside_ranges("evil.example:8000", &[]),
            None,
            "no ranges, no limit"
        );
        let mut bad = spec("east", "us-east");
        bad.endpoint_ranges = vec!["10.42.0.0/16".into(), "10.1.2.3/8".into()];
        let err = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("endpoint_ranges[1]") && err.contains("host bits"),
            "{err}"
        );
    }

    #[test]
    fn a_region_must_be_a_dns_label() {
        let err = spec("east", "us east").validate().unwrap_err();
        assert_eq!(err.field, "region");
        assert!(
            err.to_string()
                .starts_with("cluster \"east\": region contains ' '")
        );
    }

    #[test]
    fn a_plain_cluster_is_valid() {
        assert_eq!(spec("us-east", "us-east-1").validate(), Ok(()));
    }
}
