//! A history of registry writes and reads taken under faults, and its check.
//!
//! The probe writes distinct keys (tenant policies `chaos-N`) and reads the whole
//! registry with linearizable reads, noting when each call began and ended as the
//! client saw it. The registry behaves as a grow-only set of those keys, and for
//! such a set a history is linearizable exactly when:
//! 1. a read sees only keys whose write had begun before the read ended;
//! 2. a read that begins after a write was acknowledged sees its key;
//! 3. the sets that reads see are ordered by inclusion (one sequence of states);
//! 4. a read that begins after another ended sees at least as much;
//! 5. a read that sees a key also sees every key acknowledged before that key's
//!    write began.
//!
//! A write that failed or timed out is indeterminate (it may still be applied
//! later), so it ends at infinity: it constrains nothing until a read sees it. At
//! the end, every acknowledged write must be in the last read: nothing
//! acknowledged is lost. Pure: the probe that records it is in [`crate::chaos`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One write of key `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: u64,
    pub began: Duration,
    /// When it was acknowledged; `None` when it failed or timed out (indeterminate).
    pub acknowledged: Option<Duration>,
}

/// One linearizable read and the probe's keys it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub began: Duration,
    pub ended: Duration,
    pub seen: BTreeSet<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
}

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub writes_acknowledged: usize,
    pub writes_indeterminate: usize,
    pub reads: usize,
    /// Acknowledged keys missing from the last read.
    pub lost: Vec<u64>,
    /// Each way the history is not linearizable, in words (the first few).
    pub anomalies: Vec<String>,
}

/// At most this many anomalies are spelled out: one is enough to fail a run.
const MAX_ANOMALIES: usize = 20;

impl History {
    pub fn check(&self) -> Verdict {
        let mut anomalies = Vec::new();
        let writes: BTreeMap<u64, &Write> = self.writes.iter().map(|w| (w.key, w)).collect();
        let mut reads: Vec<&Read> = self.reads.iter().collect();
        reads.sort_by_key(|r| (r.seen.len(), r.began));
        for r in &reads {
            self.check_read(r, &writes, &mut anomalies);
        }
        check_order(&reads, &mut anomalies);
        let last = self.reads.iter().max_by_key(|r| r.began);
        let lost = self
            .writes
            .iter()
            .filter(|w| w.acknowledged.is_some())
            .filter(|w| last.is_none_or(|r| !r.seen.contains(&w.key)))
            .map(|w| w.key)
            .collect();
        Verdict {
            writes_acknowledged: self
                .writes
                .iter()
                .filter(|w| w.acknowledged.is_some())
                .count(),
            writes_indeterminate: self
                .writes
                .iter()
                .filter(|w| w.acknowledged.is_none())
                .count(),
            reads: self.reads.len(),
            lost,
            anomalies,
        }
    }

    /// Rules 1, 2 and 5 for one read.
    fn check_read(&self, r: &Read, writes: &BTreeMap<u64, &Write>, out: &mut Vec<String>) {
        // The latest-begun write this read saw: every write acknowledged before it
        // began must be seen too (rule 5).
        let mut latest: Option<&Write> = None;
        for key in &r.seen {
            match writes.get(key) {
                None => note(
                    out,
                    format!("a read at {:?} saw key {key}, never written", r.began),
                ),
                Some(w) if w.began > r.ended => note(
                    out,
                    format!(
                        "a read ending at {:?} saw key {key}, whose write began later ({:?})",
                        r.ended, w.began
                    ),
                ),
                Some(w) => {
                    if latest.is_none_or(|l| w.began > l.began) {
                        latest = Some(w);
                    }
                }
            }
        }
        for w in &self.writes {
            let Some(at) = w.acknowledged else { continue };
            if r.seen.contains(&w.key) {
                continue;
            }
            if at < r.began {
                note(
                    out,
                    format!(
                        "a read at {:?} missed key {}, acknowledged at {at:?}",
                        r.began, w.key
                    ),
                );
            } else if let Some(l) = latest.filter(|l| at < l.began) {
                note(
                    out,
                    format!(
                        "a read at {:?} saw key {} but not key {}, acknowledged before key {}'s write began",
                        r.began, l.key, w.key, l.key
                    ),
                );
            }
        }
    }
}

fn note(out: &mut Vec<String>, anomaly: String) {
    if out.len() < MAX_ANOMALIES {
        out.push(anomaly);
    }
}

/// Rules 3 and 4, for `reads` sorted by how much they saw.
fn check_order(reads: &[&Read], out: &mut Vec<String>) {
    for pair in reads.windows(2) {
        if !pair[0].seen.is_subset(&pair[1].seen) {
            note(
                out,
                format!(
                    "reads at {:?} and {:?} saw sets that are not one inside the other",
                    pair[0].began, pair[1].began
                ),
            );
        }
    }
    // From the read that saw most down: the earliest end among reads that saw
    // strictly more must not come before this read began.
    let mut earliest_end_of_larger: Option<(Duration, Duration)> = None;
    let mut i = reads.len();
    while i > 0 {
        let size = reads[i - 1].seen.len();
        let mut j = i;
        while j > 0 && reads[j - 1].seen.len() == size {
            j -= 1;
        }
        let group = &reads[j..i];
        for r in group {
            if let Some((ended, began)) = earliest_end_of_larger.filter(|(e, _)| *e < r.began) {
                note(
                    out,
                    format!(
                        "a read at {:?} saw less than the read at {began:?}, which ended before it began ({ended:?})",
                        r.began
                    ),
                );
            }
        }
        for r in group {
            if earliest_end_of_larger.is_none_or(|(e, _)| r.ended < e) {
                earliest_end_of_larger = Some((r.ended, r.began));
            }
        }
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn write(key: u64, began: u64, acknowledged: Option<u64>) -> Write {
        Write {
            key,
            began: ms(began),
            acknowledged: acknowledged.map(ms),
        }
    }

    fn read(began: u64, ended: u64, seen: &[u64]) -> Read {
        Read {
            began: ms(began),
            ended: ms(ended),
            seen: seen.iter().copied().collect(),
        }
    }

    #[test]
    fn writes_seen_in_order_with_an_indeterminate_one_applied_late_are_linearizable() {
        let h = History {
            writes: vec![
                write(1, 0, Some(10)),
                write(2, 20, None),
                write(3, 30, Some(40)),
            ],
            reads: vec![
                read(15, 18, &[1]),
                read(45, 50, &[1, 3]),
                // The timed-out write 2 took effect after all.
                read(60, 70, &[1, 2, 3]),
            ],
        };
        let v = h.check();
        assert_eq!(v.anomalies, Vec::<String>::new());
        assert_eq!((v.writes_acknowledged, v.writes_indeterminate), (2, 1));
        assert!(v.lost.is_empty());
    }

    #[test]
    fn an_acknowledged_write_missing_from_a_later_read_is_an_anomaly_and_lost() {
        let h = History {
            writes: vec![write(1, 0, Some(10))],
            reads: vec![read(20, 25, &[])],
        };
        let v = h.check();
        assert_eq!(v.lost, vec![1]);
        assert!(v.anomalies[0].contains("missed key 1"), "{:?}", v.anomalies);
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_an_anomaly() {
        let h = History {
            writes: vec![write(1, 0, None), write(2, 0, None)],
            reads: vec![read(10, 20, &[1, 2]), read(30, 40, &[1])],
        };
        let v = h.check();
        assert!(
            v.anomalies.iter().any(|a| a.contains("saw less")),
            "{:?}",
            v.anomalies
        );
    }

    #[test]
    fn a_read_behind_one_that_ended_before_it_is_an_anomaly_even_with_reads_between() {
        let h = History {
            writes: vec![write(1, 0, None), write(2, 0, None), write(3, 0, None)],
            reads: vec![
                read(30, 31, &[1]),
                read(10, 35, &[1, 2]),
                read(12, 20, &[1, 2, 3]),
            ],
        };
        let a = h.check().anomalies;
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(a[0].contains("a read at 30ms saw less"), "{a:?}");
    }

    #[test]
    fn reads_that_saw_diverging_sets_are_an_anomaly() {
        let h = History {
            writes: vec![write(1, 0, None), write(2, 0, None)],
            reads: vec![read(10, 20, &[1]), read(10, 20, &[2])],
        };
        assert!(h.check().anomalies[0].contains("not one inside the other"));
    }

    #[test]
    fn a_key_seen_before_its_write_began_or_never_written_is_an_anomaly() {
        let h = History {
            writes: vec![write(1, 50, Some(60))],
            reads: vec![read(10, 20, &[1, 9])],
        };
        let a = h.check().anomalies;
        assert!(a.iter().any(|a| a.contains("began later")), "{a:?}");
        assert!(a.iter().any(|a| a.contains("never written")), "{a:?}");
    }

    #[test]
    fn seeing_a_key_without_one_acknowledged_before_it_began_is_an_anomaly() {
        let h = History {
            writes: vec![write(1, 0, Some(10)), write(2, 20, None)],
            // Concurrent with write 1's acknowledgement, so rule 2 does not apply.
            reads: vec![read(5, 30, &[2])],
        };
        let a = h.check().anomalies;
        assert!(
            a.iter().any(|a| a.contains("saw key 2 but not key 1")),
            "{a:?}"
        );
    }
}
