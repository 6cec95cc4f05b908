//! Body types: one boxed body for everything the proxy sends, a request body that
//! can be taken back if its connection failed before it was polled, and a response
//! body that holds the endpoint's outstanding count until it ends.

use crate::health::InflightGuard;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every body the gateway sends, upstream or to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A streamed request body that can be reclaimed after a failed connect.
///
/// A connection failure reported by the client pool means the request never went
/// out, but the pool has already consumed the `Request`. The body lives in a
/// shared slot so that the proxy can take it back and send it elsewhere, as long
/// as not one frame of it was read.
#[derive(Debug)]
pub(crate) struct Reclaimable {
    slot: Arc<Mutex<Option<Incoming>>>,
    polled: Arc<AtomicBool>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReclaimHandle {
    slot: Arc<Mutex<Option<Incoming>>>,
    polled: Arc<AtomicBool>,
}

impl Reclaimable {
    pub(crate) fn new(body: Incoming) -> (Reclaimable, ReclaimHandle) {
        let slot = Arc::new(Mutex::new(Some(body)));
        let polled = Arc::new(AtomicBool::new(false));
        (
            Reclaimable {
                slot: slot.clone(),
                polled: polled.clone(),
            },
            ReclaimHandle { slot, polled },
        )
    }
}

impl ReclaimHandle {
    /// The body back, if nothing of it was sent.
    pub(crate) fn reclaim(&self) -> Option<Incoming> {
        if self.polled.load(Ordering::Acquire) {
            return None;
        }
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Body for Reclaimable {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.polled.store(true, Ordering::Release);
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// A response body passed through frame by frame, holding the endpoint's
/// outstanding-request count until it ends or the client goes away.
#[derive(Debug)]
pub(crate) struct Tracked {
    inner: Incoming,
    guard: Option<InflightGuard>,
}

impl Tracked {
    pub(crate) fn new(inner: Incoming, guard: InflightGuard) -> Tracked {
        Tracked {
            inner,
            guard: Some(guard),
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            self.guard = None;
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is done with a metered answer's token spend.
pub(crate) type OnSpent = Box<dyn FnOnce(u64) + Send>;

/// A response body passed through unchanged while its token spend is read
/// ([`UsageScanner`](crate::usage::UsageScanner)), and handed to `on_spent`
/// when it ends or the client goes away, whichever comes first.
pub(crate) struct Metered {
    inner: ProxyBody,
    scanner: crate::usage::UsageScanner,
    on_spent: Option<OnSpent>,
}

impl Metered {
    pub(crate) fn new(inner: ProxyBody, content_type: Option<&str>, on_spent: OnSpent) -> Metered {
        Metered {
            inner,
            scanner: crate::usage::UsageScanner::new(content_type),
            on_spent: Some(on_spent),
        }
    }
}

impl Body for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.scanner.feed(data);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(on_spent) = self.on_spent.take() {
            on_spent(self.scanner.finish());
        }
    }
}
