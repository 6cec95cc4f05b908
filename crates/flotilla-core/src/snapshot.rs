//! The versioned snapshot format: what Raft snapshots and `flotilla sim` checkpoints
//! store. JSON inside a small envelope so that a future format can still read old ones.

use crate::state::{Persistent, State};
use serde::{Deserialize, Serialize};

/// The format this build writes. Readers accept this and every older version they know.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The magic string that marks a Flotilla registry snapshot.
const MAGIC: &str = "flotilla-registry-snapshot";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a Flotilla registry snapshot: {0}")]
    Malformed(String),
    #[error(
        "snapshot format {found} is newer than this build understands (up to {SNAPSHOT_FORMAT}); upgrade Flotilla"
    )]
    TooNew { found: u32 },
    #[error("snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    magic: &'static str,
    format: u32,
    state: &'a Persistent,
}

#[derive(Deserialize)]
struct EnvelopeIn {
    magic: String,
    format: u32,
    state: serde_json::Value,
}

impl State {
    /// Serializes the registry. Restoring the bytes gives back an equal `State`.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let envelope = EnvelopeOut {
            magic: MAGIC,
            format: SNAPSHOT_FORMAT,
            state: &self.persistent,
        };
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }

    /// Restores a registry from snapshot bytes, checking its format and consistency.
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
        let envelope: EnvelopeIn =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if envelope.magic != MAGIC {
            return Err(SnapshotError::Malformed(format!(
                "magic is {:?}",
                envelope.magic
            )));
        }
        if envelope.format > SNAPSHOT_FORMAT {
            return Err(SnapshotError::TooNew {
                found: envelope.format,
            });
        }
        let persistent: Persistent = serde_json::from_value(envelope.state)
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        check_consistency(&persistent)?;
        let mut state = State {
            persistent,
            derived: Default::default(),
        };
        state.rebuild_indexes();
        Ok(state)
    }
}

/// A snapshot that decodes but contradicts itself is refused rather than half-trusted.
fn check_consistency(p: &Persistent) -> Result<(), SnapshotError> {
    let bad = |m: String| Err(SnapshotError::Inconsistent(m));
    for (name, c) in &p.clusters {
        if *name != c.spec.name {
            return bad(format!(
                "cluster stored as {name:?} is named {:?}",
                c.spec.name
            ));
        }
    }
    for (name, w) in &p.workloads {
        if *name != w.name {
            return bad(format!("workload stored as {name:?} is named {:?}", w.name));
        }
        if let Err(e) = w.validate() {
            return bad(e.to_string());
        }
    }
    for (name, placement) in &p.placements {
        for (id, r) in &placement.replicas {
            if *id != r.id {
                return bad(format!("replica stored as {id} of {name} has id {}", r.id));
            }
            if id.0 >= p.next_replica_id {
                return bad(format!(
                    "replica {id} of {name} is not below the next id {}",
                    p.next_replica_id
                ));
            }
            let Some(c) = p.clusters.get(&r.cluster) else {
                return bad(format!(
                    "replica {id} of {name} is in unknown cluster {}",
                    r.cluster
                ));
            };
            for at in &r.devices {
                if c.inventory.device(at).and_then(|d| d.allocated_to) != Some(*id) {
                    return bad(format!(
                        "replica {id} of {name} holds {}/{} in {}, which is not allocated to it",
                        at.node, at.uuid, r.cluster
                    ));
                }
            }
        }
        for m in &placement.migrations {
            if !placement.replicas.contains_key(&m.source)
                || !placement.replicas.contains_key(&m.target)
            {
                return bad(format!("a move of {name} names a replica it does not have"));
            }
        }
    }
    Ok(())
}
