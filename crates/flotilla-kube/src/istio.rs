//! Istio as the data plane: the objects that make Istio's east-west gateway carry
//! the traffic that core's route table describes.
//!
//! For each model with a non-empty route, rendered into one namespace:
//!
//! | Flotilla | Istio |
//! |---|---|
//! | the model (`meta-llama/Llama-3.1-8B`) | a `ServiceEntry` `flotilla-<label>` for the host `<label>.<host_suffix>` (`MESH_INTERNAL`, resolution `STATIC`, one HTTP port) whose `workloadSelector` picks `flotilla.dev/model: <label>` |
//! | the replicas in this cluster (`local_cluster`) | pods labelled `flotilla.dev/model: <label>` in the namespace, picked by the selector (the Kubernetes materializer labels them) |
//! | a remote cluster's route endpoint | a `WorkloadEntry` `flotilla-<label>-<cluster>` with the same labels, no address, `network` = that cluster's network (so Istio sends the traffic through that network's east-west gateway), `locality` = `region/zone`, `weight` = the route's weight |
//! | the gateway's passive health (eject after 3 consecutive failures, 5 s doubling back-off), local-first choice | a `DestinationRule` with `outlierDetection` (3 consecutive gateway errors or 5xx, 5 s base ejection, all endpoints ejectable) and locality load balancing on, `ISTIO_MUTUAL` TLS, least-request balancing |
//!
//! How close this is to Flotilla's own gateway: Istio's locality load balancing keeps
//! traffic in the caller's region/zone while any endpoint there is healthy (which is
//! Flotilla's local-first rule when localities match clusters), and weights split
//! traffic among endpoints of equal locality priority. Across regions Istio fails
//! over to the nearest healthy locality rather than splitting by weight, so a
//! migration between two remote regions moves traffic at the point the old side has
//! no weight left, not step by step. Endpoints of weight 0 (a migration's source
//! after the shift) are left out, because Istio reads weight 0 as "unset" (1).
//!
//! Routes that are tombstones (served nowhere) render nothing: applying the output
//! with pruning by the managed-by label removes their objects.
//!
//! **Ambient mode** ([`IstioMode::Ambient`], Istio's ambient multicluster): per
//! model a `Service` `flotilla-<label>` selecting the model's pods, labelled
//! `istio.io/global: "true"` (Istio merges a global Service's endpoints across the
//! clusters that have it, reaching remote ones through each network's ambient
//! east-west gateway, so every cluster renders it, with or without replicas) and
//! `istio.io/use-waypoint: flotilla-waypoint` (the waypoint `flotilla install
//! --istio-mode ambient` makes, itself global); and a `DestinationRule` for its
//! host, which the waypoint enforces: the same outlier detection, and the route's
//! weights as `localityLbSetting.distribute` shares of each serving cluster's
//! locality (whole percentages summing to 100; clusters sharing a locality share
//! its share). No ServiceEntry or WorkloadEntry: ambient discovers remote
//! endpoints from the other clusters' API servers.

use crate::MANAGED_BY;
use crate::names::{dns_label, is_dns_label, is_dns_subdomain};
use flotilla_core::{ClusterSpec, RouteTable};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The API version rendered: the CRDs' storage version.
pub const API_VERSION: &str = "networking.istio.io/v1";
/// The label that ties a model's ServiceEntry, WorkloadEntries and pods together.
pub const MODEL_LABEL: &str = "flotilla.dev/model";
/// The label naming the cluster a WorkloadEntry stands for.
pub const CLUSTER_LABEL: &str = "flotilla.dev/cluster";
/// The annotation keeping the model id as written (labels cannot hold `/`).
pub const MODEL_ID_ANNOTATION: &str = "flotilla.dev/model-id";

/// Which Istio data plane the objects are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IstioMode {
    /// Sidecars: a `ServiceEntry` per model, a `WorkloadEntry` per remote serving
    /// cluster (through that network's east-west gateway), a `DestinationRule`.
    #[default]
    Sidecar,
    /// Ambient multicluster: a global `Service` per model (`istio.io/global`, its
    /// endpoints merged across clusters by Istio, through the ambient east-west
    /// gateways), served through the namespace's waypoint, and a `DestinationRule`
    /// whose locality weights follow the route.
    Ambient,
}

impl IstioMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IstioMode::Sidecar => "sidecar",
            IstioMode::Ambient => "ambient",
        }
    }
}

impl std::str::FromStr for IstioMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sidecar" => Ok(IstioMode::Sidecar),
            "ambient" => Ok(IstioMode::Ambient),
            other => Err(format!(
                "{other:?} is not an Istio mode: sidecar or ambient"
            )),
        }
    }
}

/// The label that makes a Service global in ambient multicluster.
pub const GLOBAL_LABEL: &str = "istio.io/global";
/// The label that sends a Service's traffic through a waypoint.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The waypoint `flotilla install --istio-mode ambient` makes in the namespace.
pub const WAYPOINT: &str = "flotilla-waypoint";

/// What the rendering needs beyond the routes and clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IstioOptions {
    /// The namespace the objects go into (the ServiceEntry selects pods there).
    pub namespace: String,
    /// Hosts are `<model label>.<host_suffix>`.
    pub host_suffix: String,
    /// The port the model servers listen on (vLLM's 8000 by default).
    pub port: u16,
    /// The cluster these objects are applied in: its replicas are local pods, not
    /// WorkloadEntries. `None` renders every serving cluster as remote (a cluster that
    /// only sends traffic).
    pub local_cluster: Option<String>,
    /// Istio network names by cluster (the `topology.istio.io/network` of each
    /// cluster's mesh); a cluster not listed is its own network, named after it.
    pub networks: BTreeMap<String, String>,
    /// Sidecar or ambient objects.
    pub mode: IstioMode,
}

impl Default for IstioOptions {
    fn default() -> Self {
        IstioOptions {
            namespace: "flotilla".into(),
            host_suffix: "flotilla.global".into(),
            port: 8000,
            local_cluster: None,
            networks: BTreeMap::new(),
            mode: IstioMode::Sidecar,
        }
    }
}

/// Why the objects could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IstioError {
    #[error(
        "route of model {model:?} names cluster {cluster:?}, which is not among the clusters given"
    )]
    UnknownCluster { model: String, cluster: String },
    #[error("{option}: {value:?} {problem}")]
    InvalidOption {
        option: &'static str,
        value: String,
        problem: &'static str,
    },
}

fn invalid(option: &'static str, value: &str, problem: &'static str) -> IstioError {
    IstioError::InvalidOption {
        option,
        value: value.to_owned(),
        problem,
    }
}

/// The Istio objects for `routes`, in a stable order: per model (sorted by id) its
/// ServiceEntry, DestinationRule, then its WorkloadEntries sorted by cluster.
pub fn render(
    routes: &RouteTable,
    clusters: &[ClusterSpec],
    options: &IstioOptions,
) -> Result<Vec<Value>, IstioError> {
    if !is_dns_label(&options.namespace) {
        return Err(invalid(
            "namespace",
            &options.namespace,
            "is not a DNS label",
        ));
    }
    if !is_dns_subdomain(&options.host_suffix) {
        return Err(invalid(
            "host suffix",
            &options.host_suffix,
            "is not a DNS name",
        ));
    }
    if options.port == 0 {
        return Err(invalid("port", "0", "must be between 1 and 65535"));
    }
    for network in options.networks.values() {
        if network.is_empty() || network.len() > 2048 {
            return Err(invalid("network", network, "must be 1 to 2048 characters"));
        }
    }
    let by_name: BTreeMap<&str, &ClusterSpec> =
        clusters.iter().map(|c| (c.name.as_str(), c)).collect();

    let mut objects = Vec::new();
    for route in routes.routes.values() {
        if route.endpoints.is_empty() {
            continue;
        }
        // Room for "flotilla-" and "-<cluster>" in names that must stay ≤ 253, and
        // the label itself must stay a label value (≤ 63).
        let label = dns_label(&route.model, 40);
        let host = format!("{label}.{}", options.host_suffix);
        let name = format!("flotilla-{label}");
        let meta = |name: &str, extra: &[(&str, &str)]| {
            let mut labels = serde_json::Map::new();
            labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
            labels.insert(MODEL_LABEL.into(), label.clone().into());
            for (k, v) in extra {
                labels.insert((*k).into(), (*v).into());
            }
            json!({
                "name": name,
                "namespace": options.namespace,
                "labels": labels,
                "annotations": {
                    MODEL_ID_ANNOTATION: route.model,
                    "flotilla.dev/route-revision": route.revision.to_string(),
                },
            })
        };
        if options.mode == IstioMode::Ambient {
            objects.extend(ambient(route, &label, &name, &meta, &by_name, options)?);
            continue;
        }
        objects.push(json!({
            "apiVersion": API_VERSION,
            "kind": "ServiceEntry",
            "metadata": meta(&name, &[]),
            "spec": {
                "hosts": [host],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{ "number": options.port, "name": "http", "protocol": "HTTP" }],
                "workloadSelector": { "labels": { MODEL_LABEL: label } },
            },
        }));
        objects.push(json!({
            "apiVersion": API_VERSION,
            "kind": "DestinationRule",
            "metadata": meta(&name, &[]),
            "spec": {
                "host": host,
                "trafficPolicy": {
                    "tls": { "mode": "ISTIO_MUTUAL" },
                    "loadBalancer": {
                        "simple": "LEAST_REQUEST",
                        "localityLbSetting": { "enabled": true },
                    },
                    "outlierDetection": outlier_detection(),
                },
            },
        }));
        let mut endpoints: Vec<_> = route.endpoints.iter().collect();
        endpoints.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        for endpoint in endpoints {
            let Some(cluster) = by_name.get(endpoint.cluster.as_str()) else {
                return Err(IstioError::UnknownCluster {
                    model: route.model.clone(),
                    cluster: endpoint.cluster.clone(),
                });
            };
            if endpoint.weight == 0 || options.local_cluster.as_deref() == Some(&cluster.name) {
                continue;
            }
            let network = options
                .networks
                .get(&cluster.name)
                .cloned()
                .unwrap_or_else(|| cluster.name.clone());
            let locality = if cluster.zone.is_empty() {
                cluster.region.clone()
            } else {
                format!("{}/{}", cluster.region, cluster.zone)
            };
            let entry_name = format!("{name}-{}", cluster.name);
            objects.push(json!({
                "apiVersion": API_VERSION,
                "kind": "WorkloadEntry",
                "metadata": meta(&entry_name, &[(CLUSTER_LABEL, &cluster.name)]),
                "spec": {
                    "labels": { MODEL_LABEL: label, CLUSTER_LABEL: cluster.name },
                    "network": network,
                    "locality": locality,
                    "weight": endpoint.weight,
                    "ports": { "http": options.port },
                },
            }));
        }
    }
    Ok(objects)
}

/// Renders an object's metadata: its name and extra labels.
type Meta<'a> = dyn Fn(&str, &[(&str, &str)]) -> Value + 'a;

/// A model's objects in ambient mode: its global Service (the same name in every
/// cluster, so Istio merges the endpoints of every cluster's replicas, reached
/// through each network's ambient east-west gateway), through the waypoint, and
/// a DestinationRule (which waypoints enforce) with the gateway's outlier
/// detection and the route's weights as locality weights.
fn ambient(
    route: &flotilla_core::Route,
    label: &str,
    name: &str,
    meta: &Meta<'_>,
    clusters: &BTreeMap<&str, &ClusterSpec>,
    options: &IstioOptions,
) -> Result<Vec<Value>, IstioError> {
    let mut weights: BTreeMap<String, u64> = BTreeMap::new();
    for endpoint in &route.endpoints {
        let Some(cluster) = clusters.get(endpoint.cluster.as_str()) else {
            return Err(IstioError::UnknownCluster {
                model: route.model.clone(),
                cluster: endpoint.cluster.clone(),
            });
        };
        *weights.entry(locality_pattern(cluster)).or_default() += u64::from(endpoint.weight);
    }
    let mut service_meta = meta(
        name,
        &[(GLOBAL_LABEL, "true"), (USE_WAYPOINT_LABEL, WAYPOINT)],
    );
    if let Some(annotations) = service_meta.get_mut("annotations") {
        // The route revision moves with every weight change; the Service does not.
        if let Some(a) = annotations.as_object_mut() {
            a.remove("flotilla.dev/route-revision");
        }
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": service_meta,
        "spec": {
            "selector": { MODEL_LABEL: label },
            "ports": [{ "name": "http", "port": options.port, "targetPort": options.port, "protocol": "TCP" }],
        },
    });
    let mut locality = json!({ "enabled": true });
    let percents = percentages(&weights);
    if !percents.is_empty() {
        locality["distribute"] = json!([{ "from": "*", "to": percents }]);
    }
    let rule = json!({
        "apiVersion": API_VERSION,
        "kind": "DestinationRule",
        "metadata": meta(name, &[]),
        "spec": {
            "host": format!("{name}.{}.svc.cluster.local", options.namespace),
            "trafficPolicy": {
                "loadBalancer": { "simple": "LEAST_REQUEST", "localityLbSetting": locality },
                "outlierDetection": outlier_detection(),
            },
        },
    });
    Ok(vec![service, rule])
}

/// Istio's locality pattern for a cluster's endpoints: `region/zone/*`, or
/// `region/*` without a zone. Clusters sharing a locality share its weight.
fn locality_pattern(cluster: &ClusterSpec) -> String {
    if cluster.zone.is_empty() {
        format!("{}/*", cluster.region)
    } else {
        format!("{}/{}/*", cluster.region, cluster.zone)
    }
}

/// Weights as whole percentages summing to exactly 100 (what Istio's `distribute`
/// requires), by largest remainder; localities of weight 0 are left out. Empty when
/// every weight is 0.
pub fn percentages(weights: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let total: u64 = weights.values().sum();
    if total == 0 {
        return BTreeMap::new();
    }
    let mut shares: Vec<(&String, u64, u64)> = weights
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(k, w)| (k, w * 100 / total, w * 100 % total))
        .collect();
    let mut left = 100 - shares.iter().map(|(_, p, _)| p).sum::<u64>();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    // Largest remainder first; ties by locality name, so the result is stable.
    order.sort_by(|a, b| {
        shares[*b]
            .2
            .cmp(&shares[*a].2)
            .then(shares[*a].0.cmp(shares[*b].0))
    });
    for i in order {
        if left == 0 {
            break;
        }
        shares[i].1 += 1;
        left -= 1;
    }
    shares
        .into_iter()
        .filter(|(_, p, _)| *p > 0)
        .map(|(k, p, _)| (k.clone(), p))
        .collect()
}

/// The numbers of flotilla-gateway's passive health (HealthSettings::default): 3
/// failures eject, 5 s base back-off.
fn outlier_detection() -> Value {
    json!({
        "consecutiveGatewayErrors": 3,
        "consecutive5xxErrors": 3,
        "interval": "5s",
        "baseEjectionTime": "5s",
        "maxEjectionPercent": 100,
    })
}
