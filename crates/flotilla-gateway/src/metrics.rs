//! Prometheus text metrics with bounded label sets: models are labelled only while
//! they are in the routing table (and at most [`MAX_MODEL_LABELS`] of them), every
//! other name is counted as `_other`; outcomes and targets are fixed enums.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub(crate) const MAX_MODEL_LABELS: usize = 1000;
const OTHER_MODEL: &str = "_other";

/// How a request ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    Success,
    Upstream4xx,
    Upstream5xx,
    UpstreamFailed,
    NoReplica,
    UnknownModel,
    Forbidden,
    Unauthorized,
    BadRequest,
    TooLarge,
    RateLimited,
}

const OUTCOMES: [Outcome; 11] = [
    Outcome::Success,
    Outcome::Upstream4xx,
    Outcome::Upstream5xx,
    Outcome::UpstreamFailed,
    Outcome::NoReplica,
    Outcome::UnknownModel,
    Outcome::Forbidden,
    Outcome::Unauthorized,
    Outcome::BadRequest,
    Outcome::TooLarge,
    Outcome::RateLimited,
];

impl Outcome {
    /// How an answer from upstream (a replica, a peer gateway, an external
    /// endpoint) counts, by its status.
    pub(crate) fn of_upstream(status: http::StatusCode) -> Outcome {
        if status.is_server_error() {
            Outcome::Upstream5xx
        } else if status.is_client_error() {
            Outcome::Upstream4xx
        } else {
            Outcome::Success
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Upstream4xx => "upstream_4xx",
            Outcome::Upstream5xx => "upstream_5xx",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::NoReplica => "no_replica",
            Outcome::UnknownModel => "unknown_model",
            Outcome::Forbidden => "forbidden",
            Outcome::Unauthorized => "unauthorized",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// Where an upstream call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Local,
    Remote,
    /// An approved external endpoint (the last tier).
    External,
}

const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Model → count per outcome (indexed like `OUTCOMES`); looked up by `&str`
    /// so that counting a request allocates nothing.
    requests: Mutex<HashMap<String, [u64; OUTCOMES.len()]>>,
    retries: AtomicU64,
    local_latency: Histogram,
    remote_latency: Histogram,
    external_latency: Histogram,
    /// (tenant, reason) → requests denied; tenants beyond
    /// [`MAX_TENANT_LABELS`] are folded into one label.
    denied: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Tenant → tokens its answers spent, of tenants with a token limit (the
    /// only answers whose usage is read); bounded like `denied`.
    tokens: Mutex<BTreeMap<String, u64>>,
}

/// The most tenant labels the denial counter keeps.
pub(crate) const MAX_TENANT_LABELS: usize = 1000;
/// The label of a denied request whose tenant is unknown (no or a bad key).
pub(crate) const NO_TENANT: &str = "_none";

/// Values read from elsewhere at scrape time.
#[derive(Debug)]
pub(crate) struct Gauges {
    pub(crate) fail_static: bool,
    /// `None` with static routes: there is no registry link to report.
    pub(crate) registry_connected: Option<bool>,
    pub(crate) routes_age: Option<Duration>,
    pub(crate) route_revision: u64,
    pub(crate) models: usize,
    pub(crate) ejected: usize,
    /// Whether the gateway enforces governance (off: every caller reaches every
    /// model).
    pub(crate) governance_enforced: bool,
}

impl Metrics {
    /// `known` says whether the model is in the current table; unknown names are
    /// folded so that clients cannot grow the label set.
    pub(crate) fn request(&self, model: &str, known: bool, outcome: Outcome) {
        let i = outcome as usize;
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counts) = m.get_mut(if known { model } else { OTHER_MODEL }) {
            counts[i] += 1;
            return;
        }
        let label = if known && m.len() < MAX_MODEL_LABELS {
            model
        } else {
            OTHER_MODEL
        };
        m.entry(label.to_owned()).or_insert([0; OUTCOMES.len()])[i] += 1;
    }

    /// A request refused by governance: `reason` is `unauthenticated`,
    /// `model_not_approved` or `rate_limited`.
    pub(crate) fn denied(&self, tenant: Option<&str>, reason: &'static str) {
        let mut m = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        let tenant = tenant.unwrap_or(NO_TENANT);
        let label = if m.contains_key(&(tenant.to_owned(), reason)) || m.len() < MAX_TENANT_LABELS {
            tenant
        } else {
            OTHER_MODEL
        };
        *m.entry((label.to_owned(), reason)).or_insert(0) += 1;
    }

    pub(crate) fn tokens_spent(&self, tenant: &str, n: u64) {
        let mut m = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let label = if m.contains_key(tenant) || m.len() < MAX_TENANT_LABELS {
            tenant
        } else {
            OTHER_MODEL
        };
        match m.get_mut(label) {
            Some(v) => *v += n,
            None => {
                m.insert(label.to_owned(), n);
            }
        }
    }

    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn upstream_latency(&self, kind: TargetKind, d: Duration) {
        match kind {
            TargetKind::Local => self.local_latency.observe(d),
            TargetKind::Remote => self.remote_latency.observe(d),
            TargetKind::External => self.external_latency.observe(d),
        }
    }

    pub(crate) fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP flotilla_gateway_requests_total Requests by model and outcome.\n");
        out.push_str("# TYPE flotilla_gateway_requests_total counter\n");
        {
            let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let sorted: BTreeMap<&String, &[u64; OUTCOMES.len()]> = m.iter().collect();
            for (model, counts) in sorted {
                for (outcome, v) in OUTCOMES.iter().zip(counts) {
                    if *v > 0 {
                        let _ = writeln!(
                            out,
                            "flotilla_gateway_requests_total{{model=\"{}\",outcome=\"{}\"}} {v}",
                            escape(model),
                            outcome.label()
                        );
                    }
                }
            }
        }
        out.push_str("# HELP flotilla_gateway_retries_total Requests sent again after a connection failed before the request went out.\n");
        out.push_str("# TYPE flotilla_gateway_retries_total counter\n");
        let _ = writeln!(
            out,
            "flotilla_gateway_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        out.push_str("# HELP flotilla_gateway_upstream_seconds Time from sending a request upstream to its response headers.\n");
        out.push_str("# TYPE flotilla_gateway_upstream_seconds histogram\n");
        self.local_latency.render(
            &mut out,
            "flotilla_gateway_upstream_seconds",
            "target=\"local\"",
        );
        self.remote_latency.render(
            &mut out,
            "flotilla_gateway_upstream_seconds",
            "target=\"remote\"",
        );
        self.external_latency.render(
            &mut out,
            "flotilla_gateway_upstream_seconds",
            "target=\"external\"",
        );
        out.push_str("# HELP flotilla_gateway_fail_static 1 while the registry is unreachable and the last route table is served.\n");
        out.push_str("# TYPE flotilla_gateway_fail_static gauge\n");
        let _ = writeln!(
            out,
            "flotilla_gateway_fail_static {}",
            u8::from(g.fail_static)
        );
        if let Some(c) = g.registry_connected {
            out.push_str("# HELP flotilla_gateway_registry_connected 1 while the registry's route watch is open.\n");
            out.push_str("# TYPE flotilla_gateway_registry_connected gauge\n");
            let _ = writeln!(out, "flotilla_gateway_registry_connected {}", u8::from(c));
        }
        if let Some(age) = g.routes_age {
            out.push_str("# HELP flotilla_gateway_routes_age_seconds Time since the route table was last swapped.\n");
            out.push_str("# TYPE flotilla_gateway_routes_age_seconds gauge\n");
            let _ = writeln!(
                out,
                "flotilla_gateway_routes_age_seconds {:.3}",
                age.as_secs_f64()
            );
        }
        out.push_str("# TYPE flotilla_gateway_route_revision gauge\n");
        let _ = writeln!(out, "flotilla_gateway_route_revision {}", g.route_revision);
        out.push_str("# TYPE flotilla_gateway_models gauge\n");
        let _ = writeln!(out, "flotilla_gateway_models {}", g.models);
        out.push_str("# TYPE flotilla_gateway_ejected_endpoints gauge\n");
        let _ = writeln!(out, "flotilla_gateway_ejected_endpoints {}", g.ejected);
        out.push_str("# HELP flotilla_gateway_governance_enforced 1 while tenants, keys and policies are enforced; 0: every caller reaches every model.\n");
        out.push_str("# TYPE flotilla_gateway_governance_enforced gauge\n");
        let _ = writeln!(
            out,
            "flotilla_gateway_governance_enforced {}",
            u8::from(g.governance_enforced)
        );
        out.push_str("# HELP flotilla_gateway_denied_total Requests refused by governance, by tenant and reason.\n");
        out.push_str("# TYPE flotilla_gateway_denied_total counter\n");
        let denied = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        for ((tenant, reason), v) in denied.iter() {
            let _ = writeln!(
                out,
                "flotilla_gateway_denied_total{{tenant=\"{}\",reason=\"{reason}\"}} {v}",
                escape(tenant)
            );
        }
        drop(denied);
        out.push_str("# HELP flotilla_gateway_tokens_total Tokens spent (from responses' usage) by tenants with a token limit.\n");
        out.push_str("# TYPE flotilla_gateway_tokens_total counter\n");
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        for (tenant, v) in tokens.iter() {
            let _ = writeln!(
                out,
                "flotilla_gateway_tokens_total{{tenant=\"{}\"}} {v}",
                escape(tenant)
            );
        }
        drop(tokens);
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
