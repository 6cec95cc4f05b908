//! Time as data. Core never reads a clock: the proposer of a command stamps it, and
//! `plan` is told what time it is. That is what makes replaying a log deterministic.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};

/// Milliseconds since the Unix epoch (or since the start of a simulation).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

/// A span of time in milliseconds. Serialized as a number of milliseconds; read from
/// either that or a string with a unit (`"250ms"`, `"30s"`, `"5m"`, `"1h"`), which is
/// what people write in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl std::str::FromStr for Millis {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value: u64 = number.parse().map_err(|_| {
            format!("{text:?} is not a duration like \"250ms\", \"30s\", \"5m\" or \"1h\"")
        })?;
        let scale = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            other => {
                return Err(format!(
                    "{text:?} has unit {other:?}; use ms, s, m or h (e.g. \"30s\")"
                ));
            }
        };
        value
            .checked_mul(scale)
            .map(Millis)
            .ok_or_else(|| format!("{text:?} is too long a duration"))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Number(u64),
            Text(String),
        }
        match Form::deserialize(deserializer)? {
            Form::Number(ms) => Ok(Millis(ms)),
            Form::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Millis {
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }
}

impl Timestamp {
    pub const ZERO: Timestamp = Timestamp(0);

    /// Time elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn since(self, earlier: Timestamp) -> Millis {
        Millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Millis> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Millis) -> Timestamp {
        Timestamp(self.0.saturating_add(rhs.0))
    }
}

impl Sub<Millis> for Timestamp {
    type Output = Timestamp;
    fn sub(self, rhs: Millis) -> Timestamp {
        Timestamp(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Millis;

    #[test]
    fn durations_read_from_numbers_or_strings_with_units() {
        let read = |json: &str| serde_json::from_str::<Millis>(json).map_err(|e| e.to_string());
        assert_eq!(read("1500"), Ok(Millis(1500)));
        assert_eq!(read("\"250ms\""), Ok(Millis(250)));
        assert_eq!(read("\"30s\""), Ok(Millis(30_000)));
        assert_eq!(read("\"5m\""), Ok(Millis(300_000)));
        assert_eq!(read("\"1h\""), Ok(Millis(3_600_000)));
        assert!(
            read("\"5 days\"")
                .unwrap_err()
                .contains("use ms, s, m or h")
        );
        assert!(read("\"soon\"").unwrap_err().contains("is not a duration"));
        assert_eq!(serde_json::to_string(&Millis(30_000)).unwrap(), "30000");
    }
}
