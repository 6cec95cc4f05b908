//! When to start again a process that exited on its own: a doubling back-off per
//! process (1 s, 2 s, 4 s … up to 30 s; an agent's from 250 ms), which starts over
//! once the process has run for a minute. Pure: times are the run's own clock,
//! passed in.

use crate::supervisor::Role;
use std::collections::BTreeMap;
use std::time::Duration;

const FIRST_DELAY: Duration = Duration::from_secs(1);
/// An agent's absence has a deadline: its cluster's lease runs out 1.3–2 s after
/// it dies (at `up`'s 2 s lease), and then its replicas move. Back sooner, it
/// adopts the replicas that kept serving.
const AGENT_FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A process that ran this long before it exited is restarted as if for the first
/// time.
const STABLE_AFTER: Duration = Duration::from_secs(60);

type Key = (String, Role);

#[derive(Debug, Default)]
pub struct Restarts {
    /// Restarts in a row per process, and when it was last started.
    history: BTreeMap<Key, (u32, Duration)>,
    /// Processes waiting to be started again, and when.
    due: BTreeMap<Key, Duration>,
}

impl Restarts {
    /// A process exited on its own at `now`: when to start it again (delay from now).
    pub fn exited(&mut self, cluster: &str, role: Role, now: Duration) -> Duration {
        let key = (cluster.to_owned(), role);
        let (in_a_row, started) = self.history.get(&key).copied().unwrap_or_default();
        let in_a_row = if now.saturating_sub(started) >= STABLE_AFTER {
            0
        } else {
            in_a_row
        };
        let first = match role {
            Role::Agent => AGENT_FIRST_DELAY,
            Role::Server | Role::Gateway => FIRST_DELAY,
        };
        let delay = first
            .saturating_mul(2u32.saturating_pow(in_a_row.min(16)))
            .min(MAX_DELAY);
        self.history.insert(key.clone(), (in_a_row + 1, started));
        self.due.insert(key, now + delay);
        delay
    }

    /// The processes whose restart is due at `now`; each is taken off the list and
    /// counted as started now.
    pub fn due(&mut self, now: Duration) -> Vec<(String, Role, u32)> {
        let ready: Vec<Key> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        ready
            .into_iter()
            .map(|key| {
                self.due.remove(&key);
                let entry = self.history.entry(key.clone()).or_default();
                entry.1 = now;
                (key.0, key.1, entry.0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_process_that_keeps_exiting_waits_twice_as_long_each_time_up_to_a_cap() {
        let mut r = Restarts::default();
        let mut now = s(100);
        let mut delays = Vec::new();
        for _ in 0..7 {
            let d = r.exited("a", Role::Gateway, now);
            delays.push(d.as_secs());
            now += d;
            assert_eq!(r.due(now).len(), 1);
        }
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn nothing_is_due_before_its_time_and_each_restart_is_handed_out_once() {
        let mut r = Restarts::default();
        r.exited("a", Role::Server, s(10));
        assert!(r.due(s(10)).is_empty());
        assert_eq!(r.due(s(11)), [("a".to_owned(), Role::Server, 1)]);
        assert!(r.due(s(12)).is_empty());
    }

    #[test]
    fn a_process_that_ran_a_minute_starts_over_from_the_first_delay() {
        let mut r = Restarts::default();
        let d1 = r.exited("a", Role::Gateway, s(0));
        let d2 = r.exited("a", Role::Gateway, s(0) + d1);
        assert_eq!((d1, d2), (s(1), s(2)));
        r.due(s(3));
        assert_eq!(r.exited("a", Role::Gateway, s(3) + STABLE_AFTER), s(1));
    }

    #[test]
    fn processes_back_off_independently() {
        let mut r = Restarts::default();
        r.exited("a", Role::Server, s(0));
        r.exited("a", Role::Server, s(1));
        assert_eq!(r.exited("b", Role::Server, s(1)), s(1));
        assert_eq!(r.exited("a", Role::Gateway, s(1)), s(1));
    }

    #[test]
    fn an_agent_starts_again_well_within_its_clusters_lease() {
        let mut r = Restarts::default();
        let ms = Duration::from_millis;
        let first = r.exited("a", Role::Agent, s(0));
        let second = r.exited("a", Role::Agent, first);
        assert_eq!((first, second), (ms(250), ms(500)));
    }
}
