//! Server-streaming watches, driven by the state machine's "applied" notifications.
//! A stream ends when the client goes away, the server shuts down or stops serving,
//! or the caller's certificate is revoked; no task outlives it (each stream is a
//! state machine polled by tonic, not a spawned task).

use super::ApiCore;
use crate::authz::CertificateHolder;
use crate::store::StateMachineStore;
use flotilla_client::convert;
use flotilla_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;
use tonic::Status;

pub(crate) type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

struct Watch<T> {
    /// The RPC, for the refusal that ends it.
    rpc: &'static str,
    /// The caller's certificate, judged again after each change: the watch ends
    /// once it is revoked (its cluster left).
    holder: Option<CertificateHolder>,
    /// The cluster whose replicas alone the caller is shown, if scoped.
    replica_scope: Option<String>,
    sm: StateMachineStore,
    changes: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    serving: watch::Receiver<bool>,
    pending: VecDeque<T>,
}

impl<T> Watch<T> {
    fn new(core: &ApiCore, watcher: Watcher) -> Self {
        Watch {
            rpc: watcher.rpc,
            holder: watcher.holder,
            replica_scope: watcher.replica_scope,
            sm: core.api.sm.clone(),
            changes: core.api.sm.changes(),
            shutdown: core.shutdown.clone(),
            serving: core.serving.clone(),
            pending: VecDeque::new(),
        }
    }

    /// Waits for the next applied change, for the end of the stream (shutdown), or
    /// for this member to stop serving.
    async fn next_change(&mut self) -> Next {
        if *self.shutdown.borrow() {
            return Next::End;
        }
        if !*self.serving.borrow() {
            return Next::NotServing;
        }
        tokio::select! {
            r = self.changes.changed() => if r.is_ok() { Next::Changed } else { Next::End },
            _ = self.shutdown.wait_for(|s| *s) => Next::End,
            Ok(_) = self.serving.wait_for(|s| !*s) => Next::NotServing,
        }
    }

    /// Waits for the next applied change, or for `idle` to pass without one.
    async fn next_change_within(&mut self, idle: Duration) -> Next {
        tokio::select! {
            next = self.next_change() => next,
            () = tokio::time::sleep(idle) => Next::Idle,
        }
    }

    /// Whether this member serves now.
    fn serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// The refusal that ends the watch, once the caller's certificate was revoked.
    fn revoked(&self) -> Option<Status> {
        let holder = self.holder.as_ref()?;
        holder.revoked(self.sm.current().state.certificates(), self.rpc)
    }
}

/// Who watches, through which RPC.
pub(crate) struct Watcher {
    pub(crate) rpc: &'static str,
    pub(crate) holder: Option<CertificateHolder>,
    pub(crate) replica_scope: Option<String>,
}

enum Next {
    Changed,
    Idle,
    End,
    /// This member lost the leader (`crate::health`): the client should watch
    /// another server.
    NotServing,
}

/// The end of a watch on a member that stopped serving: no leader is known here,
/// so the table it would follow may be frozen.
fn not_serving() -> Status {
    flotilla_client::errors::retry_later(
        "NO_LEADER",
        Duration::from_millis(100),
        "this server knows no leader of the federation (cut off, or its storage failed); watch from another server",
    )
}

/// How long a watch with progress messages stays silent before a bookmark.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// What one kind of watch sends: it queues messages on its [`Watch`] when read.
trait Follow: Send + 'static {
    type Item: Send + 'static;
    fn watch(&mut self) -> &mut Watch<Self::Item>;
    /// Queues what changed since the last read; on the `first` read, the catch-up
    /// and (when asked for) a synced marker. `Err` ends the stream with it.
    fn read(&mut self, first: bool) -> Result<(), Status>;
    /// What to send after an idle spell, when progress messages were asked for.
    fn bookmark(&self) -> Option<Self::Item>;
}

/// The stream of a [`Follow`]: a read at once, what it queued, then a read after
/// every applied change, and bookmarks while idle.
fn follow<F: Follow>(f: F) -> Stream<F::Item> {
    struct Driver<F> {
        f: F,
        started: bool,
        done: bool,
    }
    let driver = Driver {
        f,
        started: false,
        done: false,
    };
    Box::pin(futures::stream::unfold(driver, |mut d| async move {
        loop {
            if let Some(item) = d.f.watch().pending.pop_front() {
                return Some((Ok(item), d));
            }
            if d.done {
                return None;
            }
            if d.started {
                match d.f.watch().next_change_within(BOOKMARK_EVERY).await {
                    Next::Changed => {
                        if let Some(status) = d.f.watch().revoked() {
                            d.done = true;
                            return Some((Err(status), d));
                        }
                    }
                    Next::Idle => {
                        if let Some(bookmark) = d.f.bookmark() {
                            d.f.watch().pending.push_back(bookmark);
                        }
                        continue;
                    }
                    Next::End => return None,
                    Next::NotServing => {
                        d.done = true;
                        return Some((Err(not_serving()), d));
                    }
                }
            } else if !d.f.watch().serving() {
                d.done = true;
                return Some((Err(not_serving()), d));
            }
            let first = !d.started;
            d.started = true;
            if let Err(status) = d.f.read(first) {
                d.done = true;
                return Some((Err(status), d));
            }
        }
    }))
}

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
}

impl Follow for RouteWatch {
    type Item = pb::WatchRoutesResponse;

    fn watch(&mut self) -> &mut Watch<Self::Item> {
        &mut self.w
    }

    /// Queues what changed since the last read; `Err` when that is no longer known.
    fn read(&mut self, first: bool) -> Result<(), Status> {
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
        if self.progress && first {
            self.w.pending.push_back(self.marker(true, false));
        }
        Ok(())
    }

    fn bookmark(&self) -> Option<Self::Item> {
        self.progress.then(|| self.marker(false, true))
    }
}

impl RouteWatch {
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
pub(crate) fn routes(
    core: &ApiCore,
    watcher: Watcher,
    from: u64,
    progress: bool,
) -> Stream<pb::WatchRoutesResponse> {
    follow(RouteWatch {
        w: Watch::new(core, watcher),
        last: from,
        sent_up_to: from,
        progress,
    })
}

/// A placement watch's position: as a route watch's, plus what the watcher holds
/// when it filters by cluster (so that a placement that leaves the cluster is
/// sent as removed to those that had it, and to no one else).
struct PlacementWatch {
    w: Watch<pb::WatchPlacementsResponse>,
    cluster: String,
    /// The revision of the last change sent (or the watcher's `from_revision`).
    last: u64,
    /// The table's revision at the last read, all of whose changes were sent.
    sent_up_to: u64,
    /// With a cluster filter: the placements in it that the watcher holds.
    held: BTreeSet<String>,
    index: u64,
    progress: bool,
}

impl PlacementWatch {
    fn wanted(&self, p: &flotilla_core::Placement) -> bool {
        self.cluster.is_empty() || p.replicas.values().any(|r| r.cluster == self.cluster)
    }

    fn marker(&self, synced: bool, bookmark: bool) -> pb::WatchPlacementsResponse {
        pb::WatchPlacementsResponse {
            synced,
            bookmark,
            applied_index: self.index,
            revision: self.sent_up_to,
            ..Default::default()
        }
    }
}

impl Follow for PlacementWatch {
    type Item = pb::WatchPlacementsResponse;

    fn watch(&mut self) -> &mut Watch<Self::Item> {
        &mut self.w
    }

    /// Queues what changed since the last read; `Err` when that is no longer known.
    fn read(&mut self, first: bool) -> Result<(), Status> {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        let state = &applied.state;
        self.index = applied.last_applied.map(|l| l.index).unwrap_or_default();
        // A watcher that resumes held, with a filter, what was in it then: a
        // placement changed since that is no longer in it may have been held.
        let resuming = first && self.last != 0;
        for change in state
            .placement_changes_since(self.last)
            .map_err(compacted)?
        {
            self.last = self.last.max(change.revision);
            match change.placement {
                Some(p) if self.wanted(p) => {
                    if !self.cluster.is_empty() {
                        self.held.insert(change.workload.to_owned());
                    }
                    let placement = crate::authz::scoped_placement(
                        convert::placement_to(change.workload, p, change.revision),
                        self.w.replica_scope.as_deref(),
                    );
                    self.w.pending.push_back(pb::WatchPlacementsResponse {
                        placement: Some(placement),
                        applied_index: self.index,
                        revision: change.revision,
                        ..Default::default()
                    });
                }
                _ => {
                    let held =
                        self.cluster.is_empty() || self.held.remove(change.workload) || resuming;
                    if held {
                        self.w.pending.push_back(removed_placement(
                            change.workload,
                            change.revision,
                            self.index,
                        ));
                    }
                }
            }
        }
        if resuming && !self.cluster.is_empty() {
            // Those that did not change since are still held.
            let held: Vec<String> = state
                .placements()
                .iter()
                .filter(|(_, p)| self.wanted(p))
                .map(|(w, _)| w.clone())
                .collect();
            self.held.extend(held);
        }
        self.sent_up_to = state.placements_revision().max(self.last);
        if self.progress && first {
            self.w.pending.push_back(self.marker(true, false));
        }
        Ok(())
    }

    fn bookmark(&self) -> Option<Self::Item> {
        self.progress.then(|| self.marker(false, true))
    }
}

fn removed_placement(workload: &str, revision: u64, index: u64) -> pb::WatchPlacementsResponse {
    pb::WatchPlacementsResponse {
        placement: Some(pb::Placement {
            workload: workload.to_owned(),
            ..Default::default()
        }),
        removed: true,
        applied_index: index,
        revision,
        ..Default::default()
    }
}

/// `WatchPlacements(cluster, from_revision)`: what changed after `from` (every
/// placement, from 0), then each change; with `progress`, a synced marker after the
/// catch-up and bookmarks while idle.
pub(crate) fn placements(
    core: &ApiCore,
    watcher: Watcher,
    cluster: String,
    from: u64,
    progress: bool,
) -> Stream<pb::WatchPlacementsResponse> {
    follow(PlacementWatch {
        w: Watch::new(core, watcher),
        cluster,
        last: from,
        sent_up_to: from,
        held: BTreeSet::new(),
        index: 0,
        progress,
    })
}

/// What a diffing watch follows: keyed items with a version each. On every applied
/// change, the items whose version differs from the one sent go out, and those
/// that left go out as removals.
trait Differ: Send + 'static {
    type Item: Send + 'static;
    type Version: PartialEq + Send + 'static;
    /// Each key (in the watch's filter) with its version now.
    fn versions(&self, state: &flotilla_core::State) -> Vec<(String, Self::Version)>;
    /// The message for `key`, which is in `state`.
    fn item(&self, state: &flotilla_core::State, key: &str, index: u64) -> Option<Self::Item>;
    fn removed(&self, key: String, index: u64) -> Self::Item;
    fn progress(&self, synced: bool, bookmark: bool, index: u64) -> Self::Item;
}

struct DiffWatch<D: Differ> {
    w: Watch<D::Item>,
    d: D,
    seen: BTreeMap<String, D::Version>,
    progress: bool,
    index: u64,
}

impl<D: Differ> Follow for DiffWatch<D> {
    type Item = D::Item;

    fn watch(&mut self) -> &mut Watch<Self::Item> {
        &mut self.w
    }

    fn read(&mut self, first: bool) -> Result<(), Status> {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        self.index = applied.last_applied.map(|l| l.index).unwrap_or_default();
        let mut now = BTreeMap::new();
        for (key, version) in self.d.versions(&applied.state) {
            if self.seen.get(&key) != Some(&version)
                && let Some(item) = self.d.item(&applied.state, &key, self.index)
            {
                self.w.pending.push_back(item);
                self.seen.insert(key.clone(), version);
            }
            now.insert(key, ());
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.seen.remove(&key);
            self.w.pending.push_back(self.d.removed(key, self.index));
        }
        if self.progress && first {
            self.w
                .pending
                .push_back(self.d.progress(true, false, self.index));
        }
        Ok(())
    }

    fn bookmark(&self) -> Option<Self::Item> {
        self.progress
            .then(|| self.d.progress(false, true, self.index))
    }
}

/// Every item now, then each change; with `progress`, a synced marker after the
/// initial items and bookmarks while idle.
fn diff_stream<D: Differ>(
    core: &ApiCore,
    watcher: Watcher,
    d: D,
    progress: bool,
) -> Stream<D::Item> {
    follow(DiffWatch {
        w: Watch::new(core, watcher),
        d,
        seen: BTreeMap::new(),
        progress,
        index: 0,
    })
}

/// Clusters, versioned by what a reader sees of them but their lease.
struct Clusters;

impl Differ for Clusters {
    type Item = pb::WatchClustersResponse;
    type Version = pb::Cluster;

    fn versions(&self, state: &flotilla_core::State) -> Vec<(String, pb::Cluster)> {
        state
            .clusters()
            .iter()
            .map(|(name, c)| {
                let mut seen = super::services::cluster_read(c, state);
                seen.lease_expires_at_ms = 0;
                (name.clone(), seen)
            })
            .collect()
    }

    fn item(&self, state: &flotilla_core::State, key: &str, index: u64) -> Option<Self::Item> {
        let c = state.cluster(key)?;
        Some(pb::WatchClustersResponse {
            cluster: Some(super::services::cluster_read(c, state)),
            applied_index: index,
            ..Default::default()
        })
    }

    fn removed(&self, key: String, index: u64) -> Self::Item {
        pb::WatchClustersResponse {
            cluster: Some(pb::Cluster {
                spec: Some(pb::ClusterSpec {
                    name: key,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            removed: true,
            applied_index: index,
            ..Default::default()
        }
    }

    fn progress(&self, synced: bool, bookmark: bool, index: u64) -> Self::Item {
        pb::WatchClustersResponse {
            synced,
            bookmark,
            applied_index: index,
            ..Default::default()
        }
    }
}

/// `WatchClusters`: every cluster, then each that changes (not its lease).
pub(crate) fn clusters(
    core: &ApiCore,
    watcher: Watcher,
    progress: bool,
) -> Stream<pb::WatchClustersResponse> {
    diff_stream(core, watcher, Clusters, progress)
}

/// The governance as a watch compares it: tenants, API key records, policies.
type GovernanceSeen = (
    BTreeMap<String, flotilla_core::Tenant>,
    BTreeMap<String, flotilla_core::ApiKey>,
    BTreeMap<String, flotilla_core::TenantPolicy>,
);

/// `WatchGovernance`: the whole governance, then again after each change to it.
struct GovernanceWatch {
    w: Watch<pb::WatchGovernanceResponse>,
    /// What was sent last; compared without copying on every applied change
    /// (heartbeats and reports apply far more often than governance changes).
    sent: Option<GovernanceSeen>,
}

impl Follow for GovernanceWatch {
    type Item = pb::WatchGovernanceResponse;

    fn watch(&mut self) -> &mut Watch<Self::Item> {
        &mut self.w
    }

    fn read(&mut self, _first: bool) -> Result<(), Status> {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        let state = &applied.state;
        let unchanged = self.sent.as_ref().is_some_and(|(t, k, p)| {
            t == state.tenants() && k == state.api_keys() && p == state.policies()
        });
        if unchanged {
            return Ok(());
        }
        self.w.pending.push_back(pb::WatchGovernanceResponse {
            tenants: state
                .tenants()
                .values()
                .map(|t| super::tenants::tenant_read(t, state))
                .collect(),
            api_keys: state.api_keys().values().map(convert::api_key_to).collect(),
            policies: state
                .policies()
                .values()
                .map(|p| super::services::policy_read(p, state))
                .collect(),
            applied_index: applied.last_applied.map(|l| l.index).unwrap_or_default(),
        });
        self.sent = Some((
            state.tenants().clone(),
            state.api_keys().clone(),
            state.policies().clone(),
        ));
        Ok(())
    }

    fn bookmark(&self) -> Option<Self::Item> {
        None
    }
}

/// `WatchGovernance`: every tenant, key record and policy, whole, on every change.
pub(crate) fn governance(core: &ApiCore, watcher: Watcher) -> Stream<pb::WatchGovernanceResponse> {
    follow(GovernanceWatch {
        w: Watch::new(core, watcher),
        sent: None,
    })
}

/// `WatchMcpServers`: every MCP server, then all again after each change to any.
struct McpWatch {
    w: Watch<flotilla_proto::v1alpha1::WatchMcpServersResponse>,
    /// What was sent last, compared without copying on every applied change.
    sent: Option<BTreeMap<String, flotilla_core::McpServer>>,
}

impl Follow for McpWatch {
    type Item = flotilla_proto::v1alpha1::WatchMcpServersResponse;

    fn watch(&mut self) -> &mut Watch<Self::Item> {
        &mut self.w
    }

    fn read(&mut self, _first: bool) -> Result<(), Status> {
        self.w.changes.borrow_and_update();
        let applied = self.w.sm.current();
        let servers = applied.state.mcp_servers();
        if self.sent.as_ref() == Some(servers) {
            return Ok(());
        }
        self.w.pending.push_back(Self::Item {
            servers: servers
                .values()
                .map(flotilla_client::convert::mcp::server_to)
                .collect(),
            applied_index: applied.last_applied.map(|l| l.index).unwrap_or_default(),
        });
        self.sent = Some(servers.clone());
        Ok(())
    }

    fn bookmark(&self) -> Option<Self::Item> {
        None
    }
}

pub(crate) fn mcp_servers(
    core: &ApiCore,
    watcher: Watcher,
) -> Stream<flotilla_proto::v1alpha1::WatchMcpServersResponse> {
    follow(McpWatch {
        w: Watch::new(core, watcher),
        sent: None,
    })
}
