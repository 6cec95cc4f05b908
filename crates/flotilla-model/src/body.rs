//! Response bodies that arrive over time and hold what a request holds (its place
//! in the drain count, its concurrency permit) until the last byte is out or the
//! client goes away.

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Sleep;

/// Chunks, each sent after its delay. Whatever is in `held` is dropped when the body
/// ends or is dropped, which is when the request stops counting as in flight.
pub(crate) struct Timed {
    chunks: VecDeque<(Duration, Bytes)>,
    sleep: Option<Pin<Box<Sleep>>>,
    held: Option<Box<dyn Send>>,
    on_end: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed")
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Timed {
    pub(crate) fn new(chunks: VecDeque<(Duration, Bytes)>, held: Box<dyn Send>) -> Timed {
        Timed {
            chunks,
            sleep: None,
            held: Some(held),
            on_end: None,
        }
    }

    /// Runs `f` once the last chunk is out (not when the client goes away early).
    pub(crate) fn on_end(mut self, f: impl FnOnce() + Send + 'static) -> Timed {
        self.on_end = Some(Box::new(f));
        self
    }
}

impl Body for Timed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some((delay, _)) = this.chunks.front() else {
            if let Some(f) = this.on_end.take() {
                f();
            }
            this.held = None;
            return Poll::Ready(None);
        };
        if !delay.is_zero() {
            let delay = *delay;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        match this.chunks.pop_front() {
            Some((_, bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not until `poll_frame` has returned `None`: that is where `on_end` runs.
        false
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunks.iter().all(|(d, _)| d.is_zero()) {
            SizeHint::with_exact(self.chunks.iter().map(|(_, b)| b.len() as u64).sum())
        } else {
            SizeHint::default()
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        // hyper may drop a body of known length once its last byte is written,
        // without asking for the end: every chunk out is the end.
        if self.chunks.is_empty()
            && let Some(f) = self.on_end.take()
        {
            f();
        }
    }
}
