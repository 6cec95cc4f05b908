//! Accepting connections, admitting requests, and draining.

use crate::metrics::Metrics;
use crate::{ModelConfig, ModelError, api};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long connections get to close once a finished drain tells them to: they are
/// idle by then, so this only bounds a client that never reads.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A stand-in replica: cheap to clone, every clone the same replica. Serve it with
/// [`Replica::serve`]; drain it with [`Replica::drain`].
#[derive(Debug, Clone)]
pub struct Replica {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ModelConfig,
    pub(crate) started: Instant,
    /// Draining flag and in-flight count under one lock, so that a request is either
    /// counted before a drain looks or sees the drain and is refused.
    gate: watch::Sender<Gate>,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    pub(crate) metrics: Metrics,
    pub(crate) next_id: AtomicU64,
    pub(crate) mcp_sessions: crate::mcp::Sessions,
}

#[derive(Debug, Clone, Copy, Default)]
struct Gate {
    draining: bool,
    in_flight: usize,
}

/// A request's place in the in-flight count; leaving it lets a drain finish.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.gate.send_modify(|g| g.in_flight -= 1);
    }
}

/// Counts a request in a per-model gauge while it lives.
#[derive(Debug)]
pub(crate) struct Counted {
    shared: Arc<Shared>,
    model: usize,
    which: Gauge,
}

#[derive(Debug, Clone, Copy)]
enum Gauge {
    Running,
    Waiting,
}

impl Counted {
    fn new(shared: &Arc<Shared>, model: usize, which: Gauge) -> Counted {
        if let Some(m) = shared.metrics.model(model) {
            match which {
                Gauge::Running => m.running.fetch_add(1, Ordering::Relaxed),
                Gauge::Waiting => m.waiting.fetch_add(1, Ordering::Relaxed),
            };
        }
        Counted {
            shared: shared.clone(),
            model,
            which,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(m) = self.shared.metrics.model(self.model) {
            match self.which {
                Gauge::Running => m.running.fetch_sub(1, Ordering::Relaxed),
                Gauge::Waiting => m.waiting.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }
}

/// What a request holds while it generates.
#[derive(Debug)]
pub(crate) struct Running {
    _permit: OwnedSemaphorePermit,
    _running: Counted,
    _in_flight: InFlight,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Loading,
    Draining,
    Overloaded,
}

impl Shared {
    /// Counts the request in flight unless the replica drains or still loads.
    pub(crate) fn enter(self: &Arc<Self>) -> Result<InFlight, Refusal> {
        if self.started.elapsed() < self.config.load_time {
            return Err(Refusal::Loading);
        }
        let admitted = self.gate.send_if_modified(|g| {
            if g.draining {
                false
            } else {
                g.in_flight += 1;
                true
            }
        });
        if admitted {
            Ok(InFlight(self.clone()))
        } else {
            Err(Refusal::Draining)
        }
    }

    /// Waits for a concurrency slot, or refuses at once when the queue is full.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        in_flight: InFlight,
        model: usize,
    ) -> Result<Running, Refusal> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let queue = self.config.queue;
                if self
                    .waiting
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                        (w < queue).then_some(w + 1)
                    })
                    .is_err()
                {
                    return Err(Refusal::Overloaded);
                }
                let _waiting = Counted::new(self, model, Gauge::Waiting);
                let _queued = Queued(self);
                // The semaphore is never closed, so this only fails if it were.
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Refusal::Draining)?
            }
        };
        Ok(Running {
            _permit: permit,
            _running: Counted::new(self, model, Gauge::Running),
            _in_flight: in_flight,
        })
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.gate.borrow().draining
    }

    pub(crate) fn cache_usage(&self) -> f64 {
        let max = self.config.max_concurrency;
        let used = max.saturating_sub(self.permits.available_permits());
        used as f64 / max as f64
    }
}

/// Leaves the queue when the wait ends, or when the client gives up waiting.
struct Queued<'a>(&'a Shared);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Replica {
    /// Checks the settings; nothing is bound yet.
    pub fn new(config: ModelConfig) -> Result<Replica, ModelError> {
        config.validate()?;
        let (gate, _) = watch::channel(Gate::default());
        Ok(Replica {
            shared: Arc::new(Shared {
                metrics: Metrics::new(&config.models),
                permits: Arc::new(Semaphore::new(config.max_concurrency)),
                config,
                started: Instant::now(),
                gate,
                waiting: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
                mcp_sessions: Default::default(),
            }),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.shared.config
    }

    /// Starts draining, if it has not started, and waits until no request is in
    /// flight. From the first call on, `/health` says draining and new inference
    /// requests get 503; running requests and streams go on to their end.
    pub async fn drain(&self) {
        self.shared.gate.send_modify(|g| g.draining = true);
        let mut gate = self.shared.gate.subscribe();
        // The sender lives in `self`, so this cannot fail while we wait on it.
        let _ = gate.wait_for(|g| g.in_flight == 0).await;
    }

    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Requests counted in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.gate.borrow().in_flight
    }

    /// Serves on `listener` until `shutdown` completes, then drains: new requests get
    /// 503 while in-flight ones finish, for at most the drain deadline; then the
    /// connections close and this returns. No task outlives it.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ModelError> {
        listener.local_addr().map_err(ModelError::Listener)?;
        let (close, closing) = watch::channel(false);
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => self.spawn(&mut connections, accepted, &closing).await,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        // Keep answering while draining, so that clients are told 503 rather than
        // finding the port closed, until the last request ends or time is up.
        let deadline = Instant::now() + self.shared.config.drain_deadline;
        let drained = self.drain();
        tokio::pin!(drained);
        let finished = loop {
            tokio::select! {
                () = &mut drained => break true,
                () = tokio::time::sleep_until(deadline) => break false,
                accepted = listener.accept() => self.spawn(&mut connections, accepted, &closing).await,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        };
        drop(listener);
        if finished {
            let _ = close.send(true);
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                while connections.join_next().await.is_some() {}
            })
            .await;
        }
        connections.shutdown().await;
        Ok(())
    }

    async fn spawn(
        &self,
        connections: &mut JoinSet<()>,
        accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
        closing: &watch::Receiver<bool>,
    ) {
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a connection reset before accept: wait a
                // little rather than spin, and keep serving.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        // Tokens are small writes; Nagle's algorithm would hold them back.
        let _ = stream.set_nodelay(true);
        let shared = self.shared.clone();
        let mut closing = closing.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| api::handle(shared.clone(), request));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = async { _ = closing.wait_for(|c| *c).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Validates `config`, then serves on `listener` until `shutdown` completes and the
/// drain that follows ends. See [`Replica::serve`].
pub async fn serve(
    listener: TcpListener,
    config: ModelConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ModelError> {
    Replica::new(config)?.serve(listener, shutdown).await
}
