//! Server-streaming watches, driven by the state machine's "applied" notifications.
//! A stream ends when the client goes away or the server shuts down; no task outlives
//! it (each stream is a state machine polled by tonic, not a spawned task).

use super::ApiCore;
use crate::store::StateMachineStore;
use flotilla_client::convert;
use flotilla_proto::v1 as pb;
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use tokio::sync::watch;
use tonic::Status;

pub(crate) type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

struct Watch<T> {
    sm: StateMachineStore,
    changes: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    pending: VecDeque<T>,
}

impl<T> Watch<T> {
    fn new(core: &ApiCore) -> Self {
        Watch {
            sm: core.api.sm.clone(),
            changes: core.api.sm.changes(),
            shutdown: core.shutdown.clone(),
            pending: VecDeque::new(),
        }
    }

    /// Waits for the next applied change; false when the stream should end.
    async fn next_change(&mut self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        tokio::select! {
            r = self.changes.changed() => r.is_ok(),
            _ = self.shutdown.wait_for(|s| *s) => false,
        }
    }
}

/// `WatchRoutes(from_revision)`: what changed after `from`, then each change.
pub(crate) fn routes(core: &ApiCore, from: u64) -> Stream<pb::WatchRoutesResponse> {
    let state = (Watch::<flotilla_core::Route>::new(core), from);
    Box::pin(futures::stream::unfold(
        state,
        |(mut w, mut last)| async move {
            loop {
                if let Some(route) = w.pending.pop_front() {
                    last = route.revision;
                    let item = pb::WatchRoutesResponse {
                        route: Some(convert::route_to(&route)),
                    };
                    return Some((Ok(item), (w, last)));
                }
                // Mark the notification seen before reading, so none is missed.
                w.changes.borrow_and_update();
                let applied = w.sm.current();
                w.pending = applied
                    .state
                    .routes()
                    .changes_since(last)
                    .into_iter()
                    .cloned()
                    .collect();
                if w.pending.is_empty() && !w.next_change().await {
                    return None;
                }
            }
        },
    ))
}

/// `WatchPlacements`: every placement, then each whose generation changes.
pub(crate) fn placements(core: &ApiCore) -> Stream<pb::WatchPlacementsResponse> {
    let state = (
        Watch::<pb::WatchPlacementsResponse>::new(core),
        BTreeMap::<String, u64>::new(),
        true,
    );
    Box::pin(futures::stream::unfold(
        state,
        |(mut w, mut seen, mut first)| async move {
            loop {
                if let Some(item) = w.pending.pop_front() {
                    return Some((Ok(item), (w, seen, first)));
                }
                if !first && !w.next_change().await {
                    return None;
                }
                first = false;
                w.changes.borrow_and_update();
                let applied = w.sm.current();
                let index = applied.last_applied.map(|l| l.index).unwrap_or_default();
                let now = applied.state.placements();
                for (name, p) in now {
                    if seen.get(name) != Some(&p.generation) {
                        seen.insert(name.clone(), p.generation);
                        w.pending.push_back(pb::WatchPlacementsResponse {
                            placement: Some(convert::placement_to(name, p)),
                            removed: false,
                            applied_index: index,
                        });
                    }
                }
                let gone: Vec<String> = seen
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .cloned()
                    .collect();
                for name in gone {
                    seen.remove(&name);
                    w.pending.push_back(pb::WatchPlacementsResponse {
                        placement: Some(pb::Placement {
                            workload: name,
                            ..Default::default()
                        }),
                        removed: true,
                        applied_index: index,
                    });
                }
            }
        },
    ))
}
