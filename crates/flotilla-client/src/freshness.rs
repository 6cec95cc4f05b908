//! Never going back: reads are answered from one server's copy, and after a
//! fail-over to a server that is behind, its older answer must not undo what was
//! already seen (a replica placed since would look removed, and a controller would
//! delete it). Every answer carries the log index it reflects; [`Freshness`] keeps
//! the highest one seen and refuses anything older.

use crate::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};

/// The highest log index an answer reflected, shared by concurrent callers.
#[derive(Debug, Default)]
pub struct Freshness {
    seen: AtomicU64,
}

impl Freshness {
    /// Accepts an answer from `peer` reflecting log index `index`, unless an answer
    /// already seen was newer: then [`Error::Behind`] (retryable, on another server).
    pub fn accept(&self, peer: &str, index: u64) -> Result<(), Error> {
        let seen = self.seen.fetch_max(index, Ordering::AcqRel);
        if index < seen {
            return Err(Error::Behind {
                peer: peer.to_owned(),
                index,
                seen,
            });
        }
        Ok(())
    }

    /// The highest index accepted so far (0: none yet).
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_older_than_one_already_seen_is_refused_and_equal_ones_are_not() {
        let fresh = Freshness::default();
        assert!(fresh.accept("a", 40).is_ok());
        assert!(fresh.accept("a", 40).is_ok(), "the same index is fine");
        let err = fresh
            .accept("b", 35)
            .expect_err("an older answer was taken");
        assert!(err.is_retryable(), "another server may be current");
        assert!(err.to_string().contains("behind"), "{err}");
        assert_eq!(fresh.seen(), 40, "a refused answer does not lower the mark");
        assert!(fresh.accept("c", 41).is_ok());
    }
}
