//! Counters and gauges, rendered in the Prometheus text format under vLLM's names so
//! that whatever scrapes a real vLLM scrapes the stand-in.
//!
//! Labels are bounded: the configured models, a fixed set of finish reasons and a
//! fixed set of status codes. An unknown model in a request is never a label.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The status codes counted; anything else counts as `other`.
const CODES: [u16; 9] = [200, 400, 404, 405, 413, 429, 500, 503, 0];

#[derive(Debug, Default)]
pub(crate) struct ModelMetrics {
    pub(crate) running: AtomicU64,
    pub(crate) waiting: AtomicU64,
    pub(crate) success_length: AtomicU64,
    pub(crate) success_stop: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) generation_tokens: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) models: Vec<(String, ModelMetrics)>,
    responses: [AtomicU64; CODES.len()],
}

impl Metrics {
    pub(crate) fn new(models: &[String]) -> Metrics {
        Metrics {
            models: models
                .iter()
                .map(|m| (m.clone(), ModelMetrics::default()))
                .collect(),
            responses: Default::default(),
        }
    }

    pub(crate) fn model(&self, index: usize) -> Option<&ModelMetrics> {
        self.models.get(index).map(|(_, m)| m)
    }

    pub(crate) fn count_response(&self, status: u16) {
        let slot = CODES
            .iter()
            .position(|c| *c == status)
            .unwrap_or(CODES.len() - 1);
        if let Some(counter) = self.responses.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition text. `cache_usage` stands in for KV-cache use: the share of
    /// the concurrency limit in use, which is what fills a real cache.
    pub(crate) fn render(&self, cache_usage: f64, draining: bool) -> String {
        let mut out = String::new();
        // One family per metric: HELP, TYPE, then one sample per model.
        let family = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      value: &dyn Fn(&ModelMetrics) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (model, m) in &self.models {
                let _ = writeln!(
                    out,
                    "{name}{{model_name=\"{}\"}} {}",
                    escape(model),
                    value(m)
                );
            }
        };
        let gauge =
            |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ModelMetrics) -> String| {
                family(out, name, "gauge", help, value)
            };
        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests currently running on GPU.",
            &|m| m.running.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            &|m| m.waiting.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage (stand-in: share of the concurrency limit in use).",
            &|_| format!("{cache_usage}"),
        );
        let _ = writeln!(
            out,
            "# HELP vllm:request_success_total Count of successfully processed requests.\n# TYPE vllm:request_success_total counter"
        );
        for (model, m) in &self.models {
            for (reason, counter) in [("length", &m.success_length), ("stop", &m.success_stop)] {
                let _ = writeln!(
                    out,
                    "vllm:request_success_total{{finished_reason=\"{reason}\",model_name=\"{}\"}} {}",
                    escape(model),
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        let counter =
            |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ModelMetrics) -> u64| {
                family(out, name, "counter", help, &|m| value(m).to_string())
            };
        counter(
            &mut out,
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            &|m| m.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            &|m| m.generation_tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP flotilla_model_responses_total Responses by HTTP status.\n# TYPE flotilla_model_responses_total counter"
        );
        for (code, counter) in CODES.iter().zip(&self.responses) {
            let code = if *code == 0 {
                "other".to_owned()
            } else {
                code.to_string()
            };
            let _ = writeln!(
                out,
                "flotilla_model_responses_total{{code=\"{code}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP flotilla_model_draining 1 while the replica drains.\n# TYPE flotilla_model_draining gauge\nflotilla_model_draining {}",
            u8::from(draining)
        );
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
