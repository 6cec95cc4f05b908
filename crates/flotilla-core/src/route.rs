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
    /// The newest revision of a tombstone that was compacted away: a watcher that
    /// saw less than this must list the whole table again (as etcd's compaction and
    /// Kubernetes' 410 Gone).
    #[serde(default)]
    pub compacted: u64,
}

/// Tombstones are kept for this many revisions, then dropped: the table does not
/// grow with every model that was ever served.
pub const TOMBSTONE_REVISIONS: u64 = 1000;

/// A watcher's revision is older than the table's compaction: it missed removals
/// that are no longer recorded, and must list the whole table again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "revision {from} is older than the {table} table's compaction (at {compacted}); list the whole table again (from revision 0)"
)]
pub struct Compacted {
    /// "route" or "placement".
    pub table: &'static str,
    pub from: u64,
    pub compacted: u64,
}

impl RouteTable {
    pub fn get(&self, model: &str) -> Option<&Route> {
        self.routes.get(model).filter(|r| !r.endpoints.is_empty())
    }

    /// Routes changed after `revision`, oldest first: what a watcher that saw
    /// `revision` missed. Tombstones are included. 0 asks for the whole table; a
    /// revision older than the compaction cannot be answered.
    pub fn changes_since(&self, revision: u64) -> Result<Vec<&Route>, Compacted> {
        if revision != 0 && revision < self.compacted {
            return Err(Compacted {
                table: "route",
                from: revision,
                compacted: self.compacted,
            });
        }
        let mut changed: Vec<&Route> = self
            .routes
            .values()
            .filter(|r| r.revision > revision)
            .collect();
        changed.sort_by_key(|r| r.revision);
        Ok(changed)
    }

    /// Drops the tombstones older than [`TOMBSTONE_REVISIONS`].
    fn compact(&mut self) {
        let now = self.revision;
        let mut compacted = self.compacted;
        self.routes.retain(|_, r| {
            let drop =
                r.endpoints.is_empty() && now.saturating_sub(r.revision) > TOMBSTONE_REVISIONS;
            if drop {
                compacted = compacted.max(r.revision);
            }
            !drop
        });
        self.compacted = compacted;
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
        self.compact();
        Some(self.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(cluster: &str, weight: u32) -> Vec<RouteEndpoint> {
        vec![RouteEndpoint {
            cluster: cluster.into(),
            weight,
            ready_replicas: 1,
        }]
    }

    #[test]
    fn tombstones_are_dropped_after_a_while_and_older_watchers_must_relist() {
        let mut t = RouteTable::default();
        t.set("gone", served("a", 100));
        let before_removal = t.revision;
        t.set("gone", Vec::new());
        let tombstone = t.revision;
        assert_eq!(
            t.changes_since(before_removal).unwrap()[0].endpoints.len(),
            0,
            "a watcher that was away learns of the removal"
        );
        for i in 0..TOMBSTONE_REVISIONS {
            t.set("busy", served("a", 1 + u32::try_from(i % 2).unwrap_or(0)));
        }
        assert!(
            t.routes.contains_key("gone"),
            "kept for {TOMBSTONE_REVISIONS} revisions"
        );
        t.set("busy", served("b", 100));
        assert!(!t.routes.contains_key("gone"), "then dropped");
        assert_eq!(t.compacted, tombstone);

        let err = t.changes_since(before_removal).unwrap_err();
        assert_eq!(err.compacted, tombstone);
        assert!(err.to_string().contains("list the whole table again"));
        assert!(t.changes_since(tombstone).is_ok(), "it saw the removal");
        let whole = t.changes_since(0).unwrap();
        assert_eq!(whole.len(), 1, "the whole table: only what is served");
    }
}
