//! The routing snapshot the data plane reads: per model, the local replicas and the
//! remote cluster gateways, built from core's [`RouteTable`] plus what this cluster
//! knows about its own replicas.
//!
//! A snapshot is immutable once built. It is swapped whole (see [`crate::source`]),
//! so a request that started on one snapshot keeps it until it ends.

use crate::health::EndpointKey;
use flotilla_core::{McpServer, RouteTable};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where a local replica stands. Only `Ready` replicas get new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaPhase {
    Starting,
    Ready,
    /// Finishing what it has; gets nothing new.
    Draining,
}

/// How the gateway talks to a local replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (vLLM, TGI and most model servers).
    #[default]
    Http1,
    /// HTTP/2 over cleartext (gRPC servers).
    H2c,
}

/// Load a replica reports about itself (`flotilla.v1alpha1` inference signals).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Deserialize, serde::Serialize)]
pub struct LoadSignals {
    /// Requests waiting in the replica's own queue.
    pub queue_depth: u32,
    /// KV-cache use, 0.0–1.0.
    pub kv_cache_use: f64,
}

/// A replica of a model in this cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReplica {
    /// `host:port` (IPv6 in brackets). The host may be a DNS name (a Kubernetes
    /// Service, `<service>.<namespace>.svc:<port>`), so it is resolved when
    /// connecting, not when the table is built: a Service's address can change
    /// under an unchanged name.
    pub address: String,
    pub phase: ReplicaPhase,
    pub protocol: UpstreamProtocol,
    pub load: Option<LoadSignals>,
}

/// Another cluster's east-west gateway, with its share of a model's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGateway {
    pub cluster: String,
    pub address: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    pub weight: u32,
}

/// Everything the gateway knows about reaching one model (or host-routed service).
#[derive(Debug, Default)]
pub struct ModelRoutes {
    pub local: Vec<LocalReplica>,
    pub remote: Vec<RemoteGateway>,
    /// Spreads picks among equals and walks remote weights; per snapshot, so a
    /// swap starts the rotation afresh, which is harmless.
    pub(crate) rotation: AtomicU64,
}

/// Equal when they route the same way; the rotation counter is not routing.
impl PartialEq for ModelRoutes {
    fn eq(&self, other: &Self) -> bool {
        self.local == other.local && self.remote == other.remote
    }
}

impl ModelRoutes {
    pub fn new(local: Vec<LocalReplica>, remote: Vec<RemoteGateway>) -> Self {
        ModelRoutes {
            local,
            remote,
            rotation: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_rotation(&self) -> u64 {
        self.rotation.fetch_add(1, Ordering::Relaxed)
    }

    /// Only the endpoint an MCP session is pinned to (see [`crate::mcp`]), if it
    /// is still here: a Ready local replica, or a remote gateway.
    pub(crate) fn pinned(&self, pin: &str) -> Option<ModelRoutes> {
        let matches = |key: EndpointKey| crate::mcp::pin_of(&key) == pin;
        if let Some(r) = self.local.iter().find(|r| {
            r.phase == ReplicaPhase::Ready && matches(EndpointKey::Replica(r.address.clone()))
        }) {
            return Some(ModelRoutes::new(vec![r.clone()], Vec::new()));
        }
        self.remote
            .iter()
            .find(|g| matches(EndpointKey::Gateway(g.cluster.clone())))
            .map(|g| ModelRoutes::new(Vec::new(), vec![g.clone()]))
    }
}

/// Plain HTTP and gRPC that is not OpenAI-shaped is routed by host and path prefix
/// to a named service, which is looked up like a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct HostRule {
    /// Matches the request's host (without port); `None` matches any host.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "root_prefix")]
    pub path_prefix: String,
    pub service: String,
}

fn root_prefix() -> String {
    "/".to_owned()
}

/// A whole routing snapshot.
#[derive(Debug, Default, PartialEq)]
pub struct RoutingTable {
    /// The registry revision this was built from.
    pub revision: u64,
    pub models: BTreeMap<String, ModelRoutes>,
    /// Tried in order; the first match wins.
    pub host_rules: Vec<HostRule>,
    /// MCP servers (`flotilla.v1alpha1`), matched before the host rules.
    pub mcp: Vec<McpServer>,
}

/// The address and certificate name of another cluster's east-west gateway.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct GatewayAddress {
    pub address: SocketAddr,
    pub server_name: String,
}

impl RoutingTable {
    /// Builds a snapshot from the federation's route table, as seen from
    /// `local_cluster`.
    ///
    /// Local replicas come from `local_replicas` (this cluster's own, fresher view
    /// of phases and load); a model's local replicas are used only while the route
    /// still lists this cluster, so a route withdrawn by the registry stops local
    /// traffic too. Remote clusters need a known gateway address and a weight above
    /// zero; the others are left out rather than failing the whole table.
    pub fn from_core(
        routes: &RouteTable,
        local_cluster: &str,
        local_replicas: &BTreeMap<String, Vec<LocalReplica>>,
        gateways: &BTreeMap<String, GatewayAddress>,
        host_rules: Vec<HostRule>,
    ) -> RoutingTable {
        let mut models = BTreeMap::new();
        for (model, route) in &routes.routes {
            if route.endpoints.is_empty() {
                continue;
            }
            let serves_here = route.endpoints.iter().any(|e| e.cluster == local_cluster);
            let local = if serves_here {
                local_replicas.get(model).cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            let remote = route
                .endpoints
                .iter()
                .filter(|e| e.cluster != local_cluster && e.weight > 0)
                .filter_map(|e| {
                    gateways.get(&e.cluster).map(|g| RemoteGateway {
                        cluster: e.cluster.clone(),
                        address: g.address,
                        server_name: g.server_name.clone(),
                        weight: e.weight,
                    })
                })
                .collect();
            models.insert(model.clone(), ModelRoutes::new(local, remote));
        }
        RoutingTable {
            revision: routes.revision,
            models,
            host_rules,
            mcp: Vec::new(),
        }
    }

    /// The MCP server a request is for: of those whose rule matches, one that
    /// names the host before one for any host, then the longest path prefix.
    pub fn mcp_server(&self, host: Option<&str>, path: &str) -> Option<&McpServer> {
        self.mcp
            .iter()
            .filter(|s| s.matches(host, path))
            .max_by_key(|s| (!s.host.is_empty(), s.path_prefix.len()))
    }

    /// The service a non-OpenAI request goes to.
    pub fn match_host(&self, host: Option<&str>, path: &str) -> Option<&str> {
        self.host_rules
            .iter()
            .find(|r| {
                r.host.as_deref().is_none_or(|h| Some(h) == host)
                    && path.starts_with(&r.path_prefix)
            })
            .map(|r| r.service.as_str())
    }
}
