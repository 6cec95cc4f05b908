//! Exponential backoff with jitter, for reconnecting to the registry and restarting
//! replicas.
//!
//! Jitter spreads the retries of many agents that lost the same server, so they do
//! not all arrive at the new leader in the same millisecond. It comes from a small
//! seeded generator (xorshift), not from a global RNG: tests choose the seed and
//! get the same delays every run; processes seed it with [`Backoff::seed_from`]:
//! their name, the process id and the time they asked, so that the agents of one
//! cluster (each PID 1 in its own container) still draw different delays.

use std::time::Duration;

/// Delays that double from `initial` up to `max`, each with up to `jitter` of
/// itself taken off at random ("equal jitter": never less than `1 - jitter` of the
/// nominal delay, so a retry is never immediate).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// 0.0–1.0.
    jitter: f64,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: 0.5,
            attempt: 0,
            rng: mix(seed),
        }
    }

    /// A seed that differs between processes and clusters, and between processes
    /// of one cluster that share a process id (containers).
    pub fn seed_from(name: &str) -> u64 {
        // FNV-1a over the name, mixed with the process id and the clock.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        h ^ u64::from(std::process::id()).rotate_left(32) ^ now
    }

    /// The next delay; each call doubles the nominal delay until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt.min(31)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let r = self.next_unit();
        nominal.mul_f64(1.0 - self.jitter * r)
    }

    /// Success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// splitmix64's finaliser: neighbouring seeds give unrelated states, and xorshift
/// must never start at zero.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    match z ^ (z >> 31) {
        0 => 1,
        x => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_keep_at_least_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let nominal = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = Duration::from_millis(n);
            assert!(
                *d <= n && *d >= n / 2,
                "{d:?} not within [{:?}, {n:?}]",
                n / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_another_seed_others() {
        let run = |seed| {
            let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), seed);
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
