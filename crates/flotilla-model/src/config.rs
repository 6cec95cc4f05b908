//! What a stand-in replica serves and how it behaves, checked before anything binds.

use crate::ModelError;
use flotilla_core::ObjectKind;
use flotilla_core::names::{validate_identifier, validate_name};
use std::time::Duration;

/// A replica's settings. [`ModelConfig::new`] gives the defaults; change the fields,
/// then [`crate::Replica::new`] validates them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Model ids served, e.g. `meta-llama/Llama-3.1-8B-Instruct`; requests name one.
    pub models: Vec<String>,
    /// This replica's name, reported in every response.
    pub replica: String,
    /// The cluster it runs in, reported in every response.
    pub cluster: String,
    /// Time to first token.
    pub ttft: Duration,
    /// Delay between tokens after the first.
    pub token_delay: Duration,
    /// Requests generating at once; more wait in the queue.
    pub max_concurrency: usize,
    /// Requests that may wait; more are refused with 429.
    pub queue: usize,
    /// Tokens generated when a request sets no `max_tokens`.
    pub default_max_tokens: u32,
    /// The most tokens any request gets, whatever its `max_tokens`.
    pub max_tokens_cap: u32,
    /// How long the replica takes to "load the model": `/health` says loading and
    /// inference is refused with 503 until then.
    pub load_time: Duration,
    /// How long a drain waits for in-flight requests before closing connections.
    pub drain_deadline: Duration,
}

impl ModelConfig {
    pub fn new(
        models: Vec<String>,
        replica: impl Into<String>,
        cluster: impl Into<String>,
    ) -> ModelConfig {
        ModelConfig {
            models,
            replica: replica.into(),
            cluster: cluster.into(),
            ttft: Duration::from_millis(200),
            token_delay: Duration::from_millis(20),
            max_concurrency: 8,
            queue: 32,
            default_max_tokens: 16,
            max_tokens_cap: 1024,
            load_time: Duration::ZERO,
            drain_deadline: Duration::from_secs(30),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        let bad = |field: &str, message: String| {
            Err(ModelError::Config {
                field: field.to_owned(),
                message,
            })
        };
        if self.models.is_empty() {
            return bad("models", "name at least one model to serve".into());
        }
        for (i, m) in self.models.iter().enumerate() {
            if let Err(e) = validate_identifier(ObjectKind::Workload, m, &format!("models[{i}]"), m)
            {
                return bad(&e.field, e.message);
            }
            if self.models[..i].contains(m) {
                return bad(&format!("models[{i}]"), format!("{m:?} is listed twice"));
            }
        }
        for (field, value) in [("replica", &self.replica), ("cluster", &self.cluster)] {
            if let Err(e) = validate_name(ObjectKind::Replica, value, field) {
                return bad(field, format!("{value:?} {}", e.message));
            }
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1".into());
        }
        if self.default_max_tokens == 0 || self.max_tokens_cap == 0 {
            return bad(
                "max_tokens",
                "the default and the cap must be at least 1".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ModelConfig {
        ModelConfig::new(vec!["m".into()], "r-0", "east")
    }

    #[test]
    fn settings_are_checked_and_errors_name_the_field() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.models.clear();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid model server setting models: name at least one model to serve"
        );
        let mut c = config();
        c.replica = "R 0".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("invalid model server setting replica: \"R 0\" contains"),
            "{err}"
        );
        let mut c = config();
        c.models = vec!["a".into(), "a".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("models[1]: \"a\" is listed twice")
        );
        let mut c = config();
        c.max_concurrency = 0;
        assert!(c.validate().is_err());
    }
}
