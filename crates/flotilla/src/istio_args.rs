//! The Istio flags that `flotilla controller` and `flotilla install` share.

use flotilla_kube::istio::IstioMode;
use std::collections::BTreeMap;

/// `--istio-mode sidecar|ambient`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IstioModeArg {
    /// With --istio: the Istio data plane, `sidecar` (ServiceEntry, WorkloadEntry and
    /// DestinationRule per model) or `ambient` (a global Service per model through a
    /// waypoint, locality weights from the route; ambient multicluster).
    #[arg(long = "istio-mode", value_name = "MODE", default_value = "sidecar", value_parser = parse_mode, requires = "istio")]
    pub(crate) mode: IstioMode,
}

fn parse_mode(s: &str) -> Result<IstioMode, String> {
    s.parse()
}

/// `--istio-network CLUSTER=NETWORK`, repeated.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct IstioNetworks {
    /// With --istio: a cluster's Istio network (`topology.istio.io/network`), as
    /// CLUSTER=NETWORK; repeat it. A cluster not named is its own network.
    #[arg(
        long = "istio-network",
        value_name = "CLUSTER=NETWORK",
        requires = "istio"
    )]
    pub(crate) networks: Vec<String>,
}

impl IstioNetworks {
    /// The pairs as a map from cluster to network; a pair without both halves is
    /// an error naming the flag.
    pub(crate) fn parse(&self) -> anyhow::Result<BTreeMap<String, String>> {
        self.networks
            .iter()
            .map(|p| match p.split_once('=') {
                Some((c, n)) if !c.is_empty() && !n.is_empty() => Ok((c.to_owned(), n.to_owned())),
                _ => anyhow::bail!("--istio-network {p:?}: expected CLUSTER=NETWORK"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_networks_are_cluster_equals_network_pairs() {
        let pairs = |v: &[&str]| IstioNetworks {
            networks: v.iter().map(|s| (*s).to_owned()).collect(),
        };
        let n = pairs(&["c1=net-a", "c2=net-b"]).parse().expect("valid");
        assert_eq!(n.get("c2").map(String::as_str), Some("net-b"));
        let e = pairs(&["c1"]).parse().expect_err("no network");
        assert!(e.to_string().contains("CLUSTER=NETWORK"), "{e}");
    }
}
