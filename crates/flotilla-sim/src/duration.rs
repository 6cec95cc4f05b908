//! Durations in scenario files: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1.5s"`.
//! The simulator's clock counts microseconds.

use serde::{Deserialize, Deserializer, de};
use std::fmt;

/// Microseconds of simulated time.
pub type Micros = u64;

pub const MICROS_PER_MS: Micros = 1_000;
pub const MICROS_PER_SEC: Micros = 1_000_000;

/// A duration as written in a scenario file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Micros);

impl Dur {
    pub fn micros(self) -> Micros {
        self.0
    }

    /// Parses `<number><unit>` with unit `us`, `ms`, `s`, `m` or `h`.
    pub fn parse(text: &str) -> Result<Dur, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("{text:?} has no unit; write e.g. \"30s\", \"250ms\", \"5m\", \"1h\"")
            })?;
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} does not start with a number"))?;
        let scale = match unit.trim() {
            "us" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            "m" | "min" => 60e6,
            "h" => 3600e6,
            other => {
                return Err(format!(
                    "{text:?} has unknown unit {other:?}; use us, ms, s, m or h"
                ));
            }
        };
        let micros = value * scale;
        if !micros.is_finite() || micros > 1e15 {
            return Err(format!("{text:?} is too long"));
        }
        Ok(Dur(micros.round() as Micros))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us.is_multiple_of(3600 * MICROS_PER_SEC) && us > 0 {
            write!(f, "{}h", us / (3600 * MICROS_PER_SEC))
        } else if us.is_multiple_of(60 * MICROS_PER_SEC) && us > 0 {
            write!(f, "{}m", us / (60 * MICROS_PER_SEC))
        } else if us.is_multiple_of(MICROS_PER_SEC) {
            write!(f, "{}s", us / MICROS_PER_SEC)
        } else if us.is_multiple_of(MICROS_PER_MS) {
            write!(f, "{}ms", us / MICROS_PER_MS)
        } else {
            write!(f, "{us}us")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Dur::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_their_unit() {
        assert_eq!(Dur::parse("250ms"), Ok(Dur(250_000)));
        assert_eq!(Dur::parse("1.5s"), Ok(Dur(1_500_000)));
        assert_eq!(Dur::parse("5m"), Ok(Dur(300_000_000)));
        assert_eq!(Dur::parse("1h"), Ok(Dur(3_600_000_000)));
        assert_eq!(Dur::parse("0s"), Ok(Dur(0)));
    }

    #[test]
    fn a_duration_without_unit_says_how_to_write_one() {
        let err = Dur::parse("30").unwrap_err();
        assert!(err.contains("has no unit"), "{err}");
        let err = Dur::parse("3 days").unwrap_err();
        assert!(err.contains("unknown unit"), "{err}");
    }

    #[test]
    fn durations_print_in_the_largest_whole_unit() {
        assert_eq!(Dur(90 * MICROS_PER_SEC).to_string(), "90s");
        assert_eq!(Dur(3600 * MICROS_PER_SEC).to_string(), "1h");
        assert_eq!(Dur(1_500).to_string(), "1500us");
        assert_eq!(Dur(2_000).to_string(), "2ms");
    }
}
