//! The route table: for each model, which clusters serve it and with what weight.
//! It is derived from placements inside `apply`, never written directly.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One cluster's share of a model's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEndpoint {
    pub cluster: String,
    /// Relative weight; a Ready replica not in a move weighs 100.
    pub weight: u32,
    /// Ready replicas behind this endpoint that take new requests.
    pub ready_replicas: u32,
}

/// A model's route. An empty endpoint list means the model is served nowhere now
/// (a tombstone kept so that resuming watchers learn of the removal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub model: String,
    pub endpoints: Vec<RouteEndpoint>,
    /// The table revision at which this route last changed.
    pub revision: u64,
}

impl Route {
    pub fn total_weight(&self) -> u32 {
        self.endpoints.iter().map(|e| e.weight).sum()
    }

    /// The share of traffic (0.0–1.0) a cluster gets.
    pub fn share(&self, cluster: &str) -> f64 {
        let total = self.total_weight();
        if total == 0 {
            return 0.0;
        }
        let w: u32 = self
            .endpoints
            .iter()
            .filter(|e| e.cluster == cluster)
            .map(|e| e.weight)
            .sum();
        f64::from(w) / f64::from(total)
    }
}

/// Routes by model, with a revision that grows by one on every change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteTable {
    pub revision: u64,
    pub routes: BTreeMap<String, Route>,
}

impl RouteTable {
    pub fn get(&self, model: &str) -> Option<&Route> {
        self.routes.get(model).filter(|r| !r.endpoints.is_empty())
    }

    /// Routes changed after `revision`, oldest first: what a watcher that saw
    /// `revision` missed. Tombstones are included.
    pub fn changes_since(&self, revision: u64) -> Vec<&Route> {
        let mut changed: Vec<&Route> = self
            .routes
            .values()
            .filter(|r| r.revision > revision)
            .collect();
        changed.sort_by_key(|r| r.revision);
        changed
    }

    /// Replaces a model's endpoints; bumps the revision only if they changed.
    pub(crate) fn set(&mut self, model: &str, endpoints: Vec<RouteEndpoint>) -> Option<u64> {
        match self.routes.get(model) {
            Some(r) if r.endpoints == endpoints => return None,
            None if endpoints.is_empty() => return None,
            _ => {}
        }
        self.revision += 1;
        self.routes.insert(
            model.to_owned(),
            Route {
                model: model.to_owned(),
                endpoints,
                revision: self.revision,
            },
        );
        Some(self.revision)
    }
}
