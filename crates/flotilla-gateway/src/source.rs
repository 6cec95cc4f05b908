//! Where routes come from, and the atomically swapped snapshot the data plane reads.
//!
//! A [`RouteSource`] yields [`RouteEvent`]s; the gateway applies them to its
//! [`RouteState`]. The sources are the registry
//! ([`crate::RegistryRouteSource`], following `WatchRoutes`) and a channel (tests,
//! and the static routes file, which is read once).

use crate::table::RoutingTable;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// Something that changed in what the gateway knows about routes.
#[derive(Debug)]
pub enum RouteEvent {
    /// A whole new snapshot; replaces the current one atomically.
    Replace(RoutingTable),
    /// The registry watch is (re)established.
    RegistryConnected,
    /// The registry watch is lost: keep serving the last table (fail-static).
    RegistryLost,
    /// New governance (tenants, keys, policies) from the registry; replaces the
    /// current one atomically.
    Governance(std::sync::Arc<crate::governance::Governance>),
}

/// A stream of route events.
///
/// `next` must be cancel-safe: the gateway polls it inside `select!` alongside its
/// listeners. `None` means the source is gone for good, which the gateway treats as
/// losing the registry.
pub trait RouteSource: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Option<RouteEvent>> + Send;
}

impl RouteSource for mpsc::Receiver<RouteEvent> {
    async fn next(&mut self) -> Option<RouteEvent> {
        self.recv().await
    }
}

/// How the gateway's routes relate to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryStatus {
    /// Routes come from a file; there is no registry to lose.
    Static,
    /// Waiting for the registry's first answer.
    Connecting,
    Connected,
    /// The registry is unreachable; the last table keeps serving.
    FailStatic {
        since: SystemTime,
    },
}

#[derive(Debug)]
struct Inner {
    table: Arc<RoutingTable>,
    link: RegistryStatus,
    /// When the table was last replaced.
    replaced_at: Option<SystemTime>,
}

/// The current snapshot and registry link, shared by every connection.
///
/// The lock guards only a pointer swap or clone, never IO, and is never held across
/// an await: readers clone the `Arc` and let go.
#[derive(Debug, Clone)]
pub struct RouteState {
    inner: Arc<RwLock<Inner>>,
}

impl RouteState {
    pub fn new(link: RegistryStatus) -> RouteState {
        RouteState {
            inner: Arc::new(RwLock::new(Inner {
                table: Arc::new(RoutingTable::default()),
                link,
                replaced_at: None,
            })),
        }
    }

    /// The snapshot a new request should use.
    pub fn current(&self) -> Arc<RoutingTable> {
        match self.inner.read() {
            Ok(g) => g.table.clone(),
            // A writer never panics while holding the lock (it only assigns), so a
            // poisoned lock still holds a whole value.
            Err(p) => p.into_inner().table.clone(),
        }
    }

    pub fn link(&self) -> RegistryStatus {
        match self.inner.read() {
            Ok(g) => g.link,
            Err(p) => p.into_inner().link,
        }
    }

    /// When the current table was swapped in (`None`: never). With the registry
    /// connected an old table is just a quiet one; in fail-static it is the age of
    /// what is served.
    pub fn replaced_at(&self) -> Option<SystemTime> {
        match self.inner.read() {
            Ok(g) => g.replaced_at,
            Err(p) => p.into_inner().replaced_at,
        }
    }

    pub fn apply(&self, event: RouteEvent) {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match event {
            RouteEvent::Replace(table) => {
                tracing::info!(
                    revision = table.revision,
                    models = table.models.len(),
                    "routes replaced"
                );
                g.table = Arc::new(table);
                g.replaced_at = Some(SystemTime::now());
            }
            // The gateway swaps governance itself; the route state holds none.
            RouteEvent::Governance(_) => {}
            RouteEvent::RegistryConnected => {
                if g.link != RegistryStatus::Static {
                    g.link = RegistryStatus::Connected;
                }
            }
            RouteEvent::RegistryLost => {
                if matches!(
                    g.link,
                    RegistryStatus::Connected | RegistryStatus::Connecting
                ) {
                    tracing::warn!(
                        revision = g.table.revision,
                        "registry lost; serving the last route table (fail-static)"
                    );
                    g.link = RegistryStatus::FailStatic {
                        since: SystemTime::now(),
                    };
                }
            }
        }
    }

    /// Whether the gateway serves a table it can no longer refresh.
    pub fn fail_static(&self) -> bool {
        matches!(self.link(), RegistryStatus::FailStatic { .. })
    }
}
