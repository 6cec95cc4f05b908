//! The federation's time: what the leader stamps on every entry, and so what leases,
//! deadlines and phases are judged by.
//!
//! A member's wall clock can step (NTP, an operator, a VM resumed). Stamped
//! straight from it, a forward step of the leader's clock would expire every
//! cluster's lease at once, and a backward step would keep a dead cluster alive.
//! So the leader's stamps come from its monotonic clock, as etcd judges leases:
//!
//! - On taking over (a new term), the leader anchors at the time the federation
//!   had reached, the latest time an applied entry carried, plus the time its own
//!   monotonic clock says passed since it applied that entry: the old leader
//!   stamped it no later, so that much real time surely passed while no one led.
//!   Where its wall clock is further ahead, it moves towards it by at most one
//!   heartbeat interval. Federation time therefore never goes back, never runs
//!   ahead of real time across a change of leader, and a new leader whose clock
//!   is ahead cannot leap it forward. Leases run out after the real time they
//!   name, however long the election took.
//! - While it leads, time advances with its monotonic clock. Where its wall clock
//!   is ahead (a federation that was down for a while, or a step), time catches up
//!   at most [`SLEW`] faster than real time; where it is behind, time does not wait.
//!   A lease of 15 s therefore lasts at least 15 / 1.1 s, whatever the clocks do.
//!
//! [`WallClock`] is the seam for tests that step a member's clock.

use flotilla_core::{Millis, Timestamp};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How much faster than real time federation time may run while it catches up
/// with the leader's wall clock: a tenth.
pub const SLEW: u32 = 10;

/// A member's wall clock: the system's, plus an offset that tests step.
#[derive(Debug, Clone, Default)]
pub struct WallClock {
    offset_ms: Arc<AtomicI64>,
}

impl WallClock {
    pub fn now(&self) -> Timestamp {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let at = system.saturating_add(self.offset_ms.load(Ordering::Relaxed));
        Timestamp(u64::try_from(at).unwrap_or(0))
    }

    /// Steps this clock by `by_ms` milliseconds (negative: back), as NTP or an
    /// operator would step a host's clock. For tests.
    pub fn step(&self, by_ms: i64) {
        self.offset_ms.fetch_add(by_ms, Ordering::Relaxed);
    }
}

/// The federation's latest time as this member applied it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latest {
    /// The latest time an applied entry carried (0: none yet).
    pub(crate) at: Timestamp,
    /// When this member applied the entry that carried it (`None`: not since it
    /// started, as after a restart or a snapshot installed).
    pub(crate) applied_at: Option<Instant>,
}

/// Where a leader's time stands in one term.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    at: Timestamp,
    since: Instant,
    /// The last time stamped: stamps never go back.
    last: Timestamp,
}

/// The leader's stamps (see the module documentation).
#[derive(Debug)]
pub(crate) struct FederationClock {
    wall: WallClock,
    anchor: Mutex<Option<Anchor>>,
}

impl FederationClock {
    pub(crate) fn new(wall: WallClock) -> Self {
        FederationClock {
            wall,
            anchor: Mutex::new(None),
        }
    }

    /// The time to stamp on an entry written in `term`. `latest` is the latest time
    /// an applied entry carried, and `catch_up` how far a new leader may move time
    /// forward towards its wall clock.
    pub(crate) fn stamp(&self, term: u64, latest: Latest, catch_up: Millis) -> Timestamp {
        let mut guard = self
            .anchor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let wall = self.wall.now();
        let anchor = match *guard {
            Some(a) if a.term == term => a,
            _ => {
                let since_applied = latest.applied_at.map_or(Millis(0), |t| millis(t.elapsed()));
                let at = anchor_at(latest.at, since_applied, wall, catch_up);
                Anchor {
                    term,
                    at,
                    since: Instant::now(),
                    last: at,
                }
            }
        };
        let at = advanced(anchor.at, millis(anchor.since.elapsed()), wall).max(anchor.last);
        *guard = Some(Anchor { last: at, ..anchor });
        at
    }
}

fn millis(d: std::time::Duration) -> Millis {
    Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a new leader starts: the federation's latest time plus the real time
/// that passed since this member applied it, or that time moved towards its wall
/// clock by at most `catch_up`, whichever is later; its wall clock alone when
/// nothing was applied yet.
fn anchor_at(
    latest: Timestamp,
    since_applied: Millis,
    wall: Timestamp,
    catch_up: Millis,
) -> Timestamp {
    if latest == Timestamp(0) {
        return wall;
    }
    (latest + since_applied).max(wall.min(latest + catch_up))
}

/// Time `elapsed` after the anchor `at`: real time, and up to a [`SLEW`]th more
/// while the wall clock is ahead.
fn advanced(at: Timestamp, elapsed: Millis, wall: Timestamp) -> Timestamp {
    let steady = at + elapsed;
    let fastest = steady + Millis(elapsed.0 / u64::from(SLEW));
    steady.max(wall.min(fastest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATEST: Timestamp = Timestamp(1_000_000);
    const FLOOR: Millis = Millis(5_000);

    #[test]
    fn a_new_leader_never_takes_time_back_nor_leaps_it_forward() {
        let none = Millis(0);
        assert_eq!(
            anchor_at(LATEST, none, Timestamp(1_002_000), FLOOR),
            Timestamp(1_002_000)
        );
        assert_eq!(
            anchor_at(LATEST, none, LATEST + Millis(600_000), FLOOR),
            LATEST + FLOOR,
            "a clock ten minutes ahead moves time one heartbeat interval at most"
        );
        assert_eq!(
            anchor_at(LATEST, none, Timestamp(400_000), FLOOR),
            LATEST,
            "a clock behind does not take time back"
        );
        assert_eq!(
            anchor_at(Timestamp(0), none, Timestamp(7), FLOOR),
            Timestamp(7)
        );
    }

    #[test]
    fn a_new_leader_counts_the_real_time_that_passed_since_it_applied_the_latest_entry() {
        let election = Millis(1_800);
        for wall in [Timestamp(400_000), LATEST, LATEST + Millis(600_000)] {
            assert!(
                anchor_at(LATEST, election, wall, FLOOR) >= LATEST + election,
                "an election longer than the catch-up is counted whatever the wall clock says ({wall:?})"
            );
        }
        assert_eq!(
            anchor_at(LATEST, election, LATEST + Millis(600_000), Millis(5_000)),
            LATEST + Millis(5_000),
            "nor does it stop a clock ahead from moving time by the catch-up"
        );
    }

    #[test]
    fn time_runs_at_most_a_tenth_fast_while_it_catches_up_and_never_waits() {
        let ten_s = Millis(10_000);
        let far_ahead = LATEST + Millis(600_000);
        assert_eq!(advanced(LATEST, ten_s, far_ahead), LATEST + Millis(11_000));
        let far_behind = Timestamp(5);
        assert_eq!(advanced(LATEST, ten_s, far_behind), LATEST + ten_s);
        let slightly_ahead = LATEST + Millis(10_300);
        assert_eq!(advanced(LATEST, ten_s, slightly_ahead), slightly_ahead);
    }

    #[test]
    fn a_step_of_the_leaders_wall_clock_moves_its_stamps_by_a_tenth_at_most() {
        let wall = WallClock::default();
        let clock = FederationClock::new(wall.clone());
        let latest = |at| Latest {
            at,
            applied_at: Some(Instant::now()),
        };
        let first = clock.stamp(1, latest(Timestamp(0)), FLOOR);
        wall.step(600_000);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let ahead = clock.stamp(1, latest(first), FLOOR);
        assert!(
            ahead.since(first) < Millis(1_000),
            "{:?}",
            ahead.since(first)
        );
        wall.step(-1_200_000);
        let behind = clock.stamp(1, latest(ahead), FLOOR);
        assert!(behind >= ahead, "never back");
        // A new term re-anchors on the federation's latest time.
        let next_term = clock.stamp(2, latest(behind), FLOOR);
        assert!(next_term >= behind && next_term.since(behind) < Millis(1_000));
    }
}
