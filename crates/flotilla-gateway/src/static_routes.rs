//! A routes file: the route source of static mode (`flotilla gateway --routes`),
//! for a gateway that runs without a registry.
//!
//! It names the same things the registry sends — per model, which clusters
//! serve it with what weight — plus what only this cluster knows (its replicas) and
//! static configuration (other gateways' addresses, host rules). The file format is
//! read by the CLI (TOML); this type is its deserialised form.

use crate::error::GatewayError;
use crate::table::{
    GatewayAddress, HostRule, LoadSignals, LocalReplica, ReplicaPhase, RoutingTable,
    UpstreamProtocol,
};
use flotilla_core::{Route, RouteEndpoint, RouteTable};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoutes {
    #[serde(default)]
    pub revision: u64,
    /// Cluster → its east-west gateway.
    #[serde(default)]
    pub gateways: BTreeMap<String, GatewayAddress>,
    #[serde(default)]
    pub routes: Vec<StaticRoute>,
    /// Replicas in this cluster.
    #[serde(default)]
    pub replicas: Vec<StaticReplica>,
    #[serde(default)]
    pub hosts: Vec<HostRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    pub model: String,
    pub endpoints: Vec<StaticEndpoint>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticEndpoint {
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticReplica {
    pub model: String,
    /// `host:port`; the host may be a DNS name, resolved when connecting.
    pub address: String,
    #[serde(default = "ready")]
    pub phase: ReplicaPhase,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub load: Option<LoadSignals>,
}

fn ready() -> ReplicaPhase {
    ReplicaPhase::Ready
}

impl StaticRoutes {
    /// The routing snapshot for `local_cluster`. A model with local replicas but no
    /// route is served here alone; a route to a cluster without a gateway address,
    /// or a host rule to an unknown service, is an error, since a file is written
    /// by hand and a silent drop would hide the mistake.
    pub fn to_table(&self, local_cluster: &str) -> Result<RoutingTable, GatewayError> {
        let mut core = RouteTable {
            revision: self.revision,
            routes: BTreeMap::new(),
            compacted: 0,
        };
        let mut local: BTreeMap<String, Vec<LocalReplica>> = BTreeMap::new();
        for r in &self.replicas {
            // The address goes into a URI; refuse what would not make one, naming
            // the replica, rather than fail every request to it.
            flotilla_core::placement::validate_endpoint(&r.model, &r.address).map_err(|e| {
                GatewayError::Routes(format!(
                    "replica of model `{}`: address {}",
                    r.model, e.message
                ))
            })?;
            local
                .entry(r.model.clone())
                .or_default()
                .push(LocalReplica {
                    address: r.address.clone(),
                    phase: r.phase,
                    protocol: r.protocol,
                    load: r.load,
                });
        }
        for route in &self.routes {
            let mut endpoints = Vec::new();
            for e in &route.endpoints {
                if e.cluster != local_cluster && !self.gateways.contains_key(&e.cluster) {
                    return Err(GatewayError::Routes(format!(
                        "model `{}` is routed to cluster `{}`, which has no gateway address",
                        route.model, e.cluster
                    )));
                }
                let ready = if e.cluster == local_cluster {
                    local.get(&route.model).map_or(0, |v| {
                        v.iter().filter(|r| r.phase == ReplicaPhase::Ready).count() as u32
                    })
                } else {
                    1
                };
                endpoints.push(RouteEndpoint {
                    cluster: e.cluster.clone(),
                    weight: e.weight,
                    ready_replicas: ready,
                });
            }
            if core.routes.contains_key(&route.model) {
                return Err(GatewayError::Routes(format!(
                    "model `{}` is routed twice",
                    route.model
                )));
            }
            core.routes.insert(
                route.model.clone(),
                Route {
                    model: route.model.clone(),
                    endpoints,
                    revision: self.revision,
                },
            );
        }
        for (model, replicas) in &local {
            core.routes.entry(model.clone()).or_insert_with(|| Route {
                model: model.clone(),
                endpoints: vec![RouteEndpoint {
                    cluster: local_cluster.to_owned(),
                    weight: 100,
                    ready_replicas: replicas.len() as u32,
                }],
                revision: self.revision,
            });
        }
        for h in &self.hosts {
            if !core.routes.contains_key(&h.service) {
                return Err(GatewayError::Routes(format!(
                    "host rule for `{}` names service `{}`, which has no route or replica",
                    h.host.as_deref().unwrap_or("*"),
                    h.service
                )));
            }
        }
        Ok(RoutingTable::from_core(
            &core,
            local_cluster,
            &local,
            &self.gateways,
            self.hosts.clone(),
        ))
    }
}
