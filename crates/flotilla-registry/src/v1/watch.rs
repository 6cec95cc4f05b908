//! Server-streaming watches, driven by the state machine's "applied" notifications.
//! A stream ends when the client goes away or the server shuts down; no task outlives
//! it (each stream is a state machine polled by tonic, not a spawned task).

use super::ApiCore;
use crate::store::StateMachineStore;
use flotilla_client::convert;
use flotilla_proto::v1 as pb;
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::time::Duration;
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

    /// Waits for the next applied change, or for `idle` to pass without one.
    async fn next_change_within(&mut self, idle: Duration) -> Next {
        tokio::select! {
            more = self.next_change() => if more { Next::Changed } else { Next::End },
            () = tokio::time::sleep(idle) => Next::Idle,
        }
    }
}

enum Next {
    Changed,
    Idle,
    End,
}

/// How long a watch with progress messages stays silent before a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// The end of a watch whose revision was compacted away: list again.
fn compacted(c: flotilla_core::Compacted) -> Status {
    let mut details = tonic_types::ErrorDetails::with_error_info(
        "REVISION_COMPACTED",
        flotilla_client::errors::DOMAIN,
        std::collections::HashMap::from([
            ("from_revision".to_owned(), c.from.to_string()),
            ("compacted_revision".to_owned(), c.compacted.to_string()),
        ]),
    );
    details.add_bad_request_violation("from_revision", c.to_string());
    <Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::OutOfRange,
        c.to_string(),
        details,
    )
}

/// A route watch's position.
struct RouteWatch {
    w: Watch<pb::WatchRoutesResponse>,
    /// The revision of the last route sent (or the watcher's `from_revision`).
    last: u64,
    /// The table's revision at the last read, all of whose changes were sent.
    sent_up_to: u64,
    progress: bool,
    synced: bool,
    done: bool,
}

impl RouteWatch {
    /// Queues what changed since the last read; `Err` when that is no longer known.
    fn read(&mut self) -> Result<(), Status> {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        let table = applied.state.routes();
        for route in table.changes_since(self.last).map_err(compacted)? {
            self.last = route.revision;
            self.w.pending.push_back(pb::WatchRoutesResponse {
                route: Some(convert::route_to(route)),
                ..Default::default()
            });
        }
        self.sent_up_to = table.revision.max(self.last);
        if self.progress && !self.synced {
            self.synced = true;
            self.w.pending.push_back(self.marker(true, false));
        }
        Ok(())
    }

    fn marker(&self, synced: bool, bookmark: bool) -> pb::WatchRoutesResponse {
        pb::WatchRoutesResponse {
            route: None,
            synced,
            bookmark,
            revision: self.sent_up_to,
        }
    }
}

/// `WatchRoutes(from_revision)`: what changed after `from`, then each change; with
/// `progress`, a synced marker after the catch-up and bookmarks while idle.
pub(crate) fn routes(core: &ApiCore, from: u64, progress: bool) -> Stream<pb::WatchRoutesResponse> {
    let state = RouteWatch {
        w: Watch::new(core),
        last: from,
        sent_up_to: from,
        progress,
        synced: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(item) = s.w.pending.pop_front() {
                return Some((Ok(item), s));
            }
            if s.done {
                return None;
            }
            if let Err(status) = s.read() {
                s.done = true;
                return Some((Err(status), s));
            }
            if !s.w.pending.is_empty() {
                continue;
            }
            match s.w.next_change_within(BOOKMARK_EVERY).await {
                Next::Changed => {}
                Next::Idle if s.progress => {
                    let bookmark = s.marker(false, true);
                    s.w.pending.push_back(bookmark);
                }
                Next::Idle => {}
                Next::End => return None,
            }
        }
    }))
}

/// A placement watch's position: the generation of each placement sent.
struct PlacementWatch {
    w: Watch<pb::WatchPlacementsResponse>,
    seen: BTreeMap<String, u64>,
    cluster: String,
    progress: bool,
    synced: bool,
    index: u64,
}

impl PlacementWatch {
    /// Queues each placement (in the filter) whose generation changed, and those
    /// that left.
    fn read(&mut self) {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        self.index = applied.last_applied.map(|l| l.index).unwrap_or_default();
        let now = applied.state.placements();
        let wanted = |p: &flotilla_core::Placement| {
            self.cluster.is_empty() || p.replicas.values().any(|r| r.cluster == self.cluster)
        };
        for (name, p) in now.iter().filter(|(_, p)| wanted(p)) {
            if self.seen.get(name) != Some(&p.generation) {
                self.seen.insert(name.clone(), p.generation);
                self.w.pending.push_back(pb::WatchPlacementsResponse {
                    placement: Some(convert::placement_to(name, p)),
                    applied_index: self.index,
                    ..Default::default()
                });
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !now.get(*k).is_some_and(wanted))
            .cloned()
            .collect();
        for name in gone {
            self.seen.remove(&name);
            self.w.pending.push_back(pb::WatchPlacementsResponse {
                placement: Some(pb::Placement {
                    workload: name,
                    ..Default::default()
                }),
                removed: true,
                applied_index: self.index,
                ..Default::default()
            });
        }
        if self.progress && !self.synced {
            self.synced = true;
            self.w.pending.push_back(pb::WatchPlacementsResponse {
                synced: true,
                applied_index: self.index,
                ..Default::default()
            });
        }
    }
}

/// `WatchPlacements`: every placement (in the cluster filter), then each whose
/// generation changes; with `progress`, a synced marker and bookmarks.
pub(crate) fn placements(
    core: &ApiCore,
    cluster: String,
    progress: bool,
) -> Stream<pb::WatchPlacementsResponse> {
    let state = PlacementWatch {
        w: Watch::new(core),
        seen: BTreeMap::new(),
        cluster,
        progress,
        synced: false,
        index: 0,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        let mut first = true;
        loop {
            if let Some(item) = s.w.pending.pop_front() {
                return Some((Ok(item), s));
            }
            if !first {
                match s.w.next_change_within(BOOKMARK_EVERY).await {
                    Next::Changed => {}
                    Next::Idle => {
                        if s.progress {
                            s.w.pending.push_back(pb::WatchPlacementsResponse {
                                bookmark: true,
                                applied_index: s.index,
                                ..Default::default()
                            });
                        }
                        continue;
                    }
                    Next::End => return None,
                }
            }
            first = false;
            s.read();
        }
    }))
}
