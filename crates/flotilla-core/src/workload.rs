//! Workloads: inference services Flotilla places and moves.

use crate::error::{ObjectKind, ValidationError};
use crate::gpu::GpuNeed;
use crate::names::{validate_identifier, validate_name, validate_product_name};
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many replicas a workload wants. The scheduler places `max` where GPUs allow
/// and preempts lower priorities only to reach `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replicas {
    pub min: u32,
    pub max: u32,
}

/// Where a workload may and would rather run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Regions it may run in; empty means any.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Clusters it may run in; empty means any.
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Pinned: runs in this cluster only, and never moves from it.
    #[serde(default)]
    pub pinned: Option<String>,
    /// At most one replica per cluster, for resilience.
    #[serde(default)]
    pub spread_across_clusters: bool,
    /// Regions it prefers, with weights: a move to a preferred region happens when the
    /// weight gained beats the federation's hysteresis threshold.
    #[serde(default)]
    pub preferred_regions: Vec<RegionPreference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionPreference {
    pub region: String,
    pub weight: u32,
}

/// Latency objectives, used by the simulator to score policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Time to first token.
    pub ttft: Millis,
    /// End-to-end latency.
    pub e2e: Millis,
}

/// Whether and how often a workload may move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mobility {
    pub movable: bool,
    /// A replica stays at least this long where it was placed before an optimising
    /// move (forced moves, such as a reclaimed GPU, ignore it).
    pub min_dwell: Millis,
}

impl Default for Mobility {
    fn default() -> Self {
        Mobility {
            movable: true,
            min_dwell: Millis::from_secs(300),
        }
    }
}

/// An inference service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    /// The model it serves; gateways route requests by this id.
    pub model: String,
    pub replicas: Replicas,
    pub gpu: GpuNeed,
    #[serde(default)]
    pub constraints: Constraints,
    /// Higher wins when GPUs are scarce.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub slo: Option<Slo>,
    #[serde(default)]
    pub mobility: Mobility,
    /// The container each replica runs, as the user wrote it (a vLLM, TGI or SGLang
    /// image runs unchanged). Only the Kubernetes materializer reads it; absent, it
    /// runs the `flotilla model` stand-in. Skipped when absent so that files and
    /// snapshots written before it existed read, and write, the same. Boxed so that
    /// `Command` stays small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
}

/// The container a replica runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// An image reference (`vllm/vllm-openai:v0.6.3`).
    pub image: String,
    /// Arguments to the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, name → value. Never a credential: a name that says
    /// it holds one (`HF_TOKEN`, `OPENAI_API_KEY`, `…_PASSWORD`) is refused here,
    /// and belongs in `secret_env`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables taken from Kubernetes Secrets in the replica's
    /// namespace, name → which Secret and key. The registry holds only the
    /// reference, never the value: the kubelet reads the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretKeyRef>,
    /// The ports it listens on; the first is the one it serves (and is probed) on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// An HTTP path answering 200 when the server is ready (`/health` for vLLM, TGI
    /// and SGLang); absent, readiness is a TCP connect to the serving port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// Requests and limits beyond the GPUs (`gpu.count` sets `nvidia.com/gpu`).
    #[serde(default, skip_serializing_if = "ContainerResources::is_empty")]
    pub resources: ContainerResources,
}

/// A key of a Kubernetes Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name (a DNS subdomain), in the replica's namespace.
    pub secret: String,
    /// The key within it (`[-._a-zA-Z0-9]+`).
    pub key: String,
}

/// Whether an environment variable's name says it holds a credential: one of its
/// `_`-separated words is TOKEN, SECRET, PASSWORD, PASSWD or CREDENTIALS, or two
/// adjacent words are API KEY, ACCESS KEY or PRIVATE KEY (`HF_TOKEN`,
/// `OPENAI_API_KEY`; not `MAX_TOKENS`).
pub fn names_a_credential(name: &str) -> bool {
    let words: Vec<String> = name
        .split(['_', '-', '.'])
        .map(str::to_ascii_uppercase)
        .collect();
    let single = [
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIALS",
        "APIKEY",
    ];
    words.iter().any(|w| single.contains(&w.as_str()))
        || words.windows(2).any(|pair| {
            pair[1] == "KEY" && matches!(pair[0].as_str(), "API" | "ACCESS" | "PRIVATE")
        })
}

fn is_secret_name(name: &str) -> bool {
    (1..=253).contains(&name.len())
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn is_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// A port a container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    /// An IANA service name (`http`): lower case, at most 15 characters.
    pub name: String,
    /// 1–65535. Wider than `u16` so that a bad number is a validation error naming
    /// the field rather than a parse error.
    pub container_port: u32,
    #[serde(default)]
    pub protocol: PortProtocol,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum PortProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        }
    }
}

/// Kubernetes resource quantities (`cpu: "8"`, `memory: 64Gi`), by resource name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerResources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

impl ContainerResources {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// The GPU resource; its count comes from `gpu.count`, never from `resources`.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// An environment variable name as Kubernetes has long accepted it
/// (`[-._a-zA-Z][-._a-zA-Z0-9]*`).
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || matches!(c, '-' | '.' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// An IANA service name, as a Kubernetes port name must be: 1–15 lower-case
/// letters, digits and inner single hyphens, with at least one letter.
fn is_port_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.chars().any(|c| c.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

impl ContainerSpec {
    /// Checks every field; `Err((field, message))` names the first bad one, relative
    /// to the container (`ports[1].container_port`).
    fn check(&self) -> Result<(), (String, String)> {
        let no_space = |s: &str| !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.image.trim().is_empty() {
            return Err(("image".into(), "must not be empty".into()));
        }
        if !no_space(&self.image) {
            return Err((
                "image".into(),
                format!("{:?} must be an image reference without spaces", self.image),
            ));
        }
        for name in self.env.keys().chain(self.secret_env.keys()) {
            let field = if self.env.contains_key(name) {
                "env"
            } else {
                "secret_env"
            };
            if !is_env_name(name) {
                return Err((
                    format!("{field}.{name}"),
                    "is not a valid variable name (letters, digits, '_', '-', '.'; not starting with a digit)".into(),
                ));
            }
        }
        for name in self.env.keys() {
            if self.secret_env.contains_key(name) {
                return Err((
                    format!("env.{name}"),
                    "is also in secret_env; name a variable once".into(),
                ));
            }
            if names_a_credential(name) {
                return Err((
                    format!("env.{name}"),
                    "names a credential, and the registry keeps no credentials: put it in a Kubernetes Secret and name it in secret_env ({secret: NAME, key: KEY})".into(),
                ));
            }
        }
        for (name, r) in &self.secret_env {
            if !is_secret_name(&r.secret) {
                return Err((
                    format!("secret_env.{name}.secret"),
                    format!(
                        "{:?} is not a Secret name (a DNS subdomain: lower-case letters, digits, '-', '.')",
                        r.secret
                    ),
                ));
            }
            if !is_secret_key(&r.key) {
                return Err((
                    format!("secret_env.{name}.key"),
                    format!(
                        "{:?} is not a Secret key (letters, digits, '-', '.', '_')",
                        r.key
                    ),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut numbers = std::collections::BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !is_port_name(&p.name) {
                return Err((
                    format!("ports[{i}].name"),
                    format!(
                        "{:?} must be 1-15 lower-case letters, digits and single inner hyphens, with a letter",
                        p.name
                    ),
                ));
            }
            if !(1..=65535).contains(&p.container_port) {
                return Err((
                    format!("ports[{i}].container_port"),
                    format!("({}) must be between 1 and 65535", p.container_port),
                ));
            }
            if !names.insert(&p.name) {
                return Err((
                    format!("ports[{i}].name"),
                    format!("{:?} is used twice", p.name),
                ));
            }
            if !numbers.insert((p.container_port, p.protocol)) {
                return Err((
                    format!("ports[{i}].container_port"),
                    format!("({}) is used twice", p.container_port),
                ));
            }
        }
        if let Some(path) = &self.health_path
            && (!path.starts_with('/') || !no_space(path))
        {
            return Err((
                "health_path".into(),
                format!("{path:?} must be an absolute path without spaces"),
            ));
        }
        if self.health_path.is_some() && self.ports.is_empty() {
            return Err((
                "health_path".into(),
                "needs a port to probe: name one in ports".into(),
            ));
        }
        for (section, map) in [
            ("requests", &self.resources.requests),
            ("limits", &self.resources.limits),
        ] {
            for (resource, quantity) in map {
                let field = format!("resources.{section}.{resource}");
                if resource == GPU_RESOURCE {
                    return Err((field, "is set from gpu.count; remove it here".into()));
                }
                if resource.is_empty() || !no_space(resource) {
                    return Err((field, "is not a resource name".into()));
                }
                if quantity.is_empty() || !no_space(quantity) {
                    return Err((field, format!("{quantity:?} is not a quantity")));
                }
            }
        }
        Ok(())
    }
}

/// The most GPUs one replica may ask for: one node's worth on the largest machines.
pub const MAX_GPUS_PER_REPLICA: u32 = 16;
/// A sanity bound on replicas per workload.
pub const MAX_REPLICAS: u32 = 1024;

impl Workload {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let name = &self.name;
        let bad = |field: &str, message: String| {
            Err(ValidationError::new(
                ObjectKind::Workload,
                name,
                field,
                message,
            ))
        };
        validate_name(ObjectKind::Workload, name, "name")?;
        validate_identifier(ObjectKind::Workload, name, "model", &self.model)?;
        let Replicas { min, max } = self.replicas;
        if max == 0 {
            return bad("replicas.max", "must be at least 1".into());
        }
        if min > max {
            return bad("replicas.min", format!("({min}) > replicas.max ({max})"));
        }
        if max > MAX_REPLICAS {
            return bad(
                "replicas.max",
                format!("({max}) exceeds the limit of {MAX_REPLICAS}"),
            );
        }
        if self.gpu.count == 0 {
            return bad("gpu.count", "must be at least 1".into());
        }
        if self.gpu.count > MAX_GPUS_PER_REPLICA {
            return bad(
                "gpu.count",
                format!(
                    "({}) exceeds {MAX_GPUS_PER_REPLICA} GPUs per replica",
                    self.gpu.count
                ),
            );
        }
        for (i, m) in self.gpu.models.iter().enumerate() {
            validate_product_name(ObjectKind::Workload, name, &format!("gpu.models[{i}]"), m)?;
        }
        if let Some(p) = &self.gpu.mig_profile {
            validate_identifier(ObjectKind::Workload, name, "gpu.mig_profile", p)?;
        }
        let c = &self.constraints;
        for (i, r) in c.regions.iter().enumerate() {
            validate_name(ObjectKind::Workload, r, "").or_else(|e| {
                bad(
                    &format!("constraints.regions[{i}]"),
                    format!("{r:?} {}", e.message),
                )
            })?;
        }
        for (i, cl) in c.clusters.iter().enumerate() {
            validate_name(ObjectKind::Workload, cl, "").or_else(|e| {
                bad(
                    &format!("constraints.clusters[{i}]"),
                    format!("{cl:?} {}", e.message),
                )
            })?;
        }
        if let Some(pin) = &c.pinned {
            validate_name(ObjectKind::Workload, pin, "")
                .or_else(|e| bad("constraints.pinned", format!("{pin:?} {}", e.message)))?;
            if !c.clusters.is_empty() && !c.clusters.contains(pin) {
                return bad(
                    "constraints.pinned",
                    format!("({pin}) is not among constraints.clusters"),
                );
            }
        }
        for (i, p) in c.preferred_regions.iter().enumerate() {
            validate_name(ObjectKind::Workload, &p.region, "").or_else(|e| {
                bad(
                    &format!("constraints.preferred_regions[{i}].region"),
                    format!("{:?} {}", p.region, e.message),
                )
            })?;
            if !c.regions.is_empty() && !c.regions.contains(&p.region) {
                return bad(
                    &format!("constraints.preferred_regions[{i}].region"),
                    format!("({}) is not among constraints.regions", p.region),
                );
            }
        }
        if let Some(c) = &self.container {
            c.check()
                .or_else(|(field, message)| bad(&format!("container.{field}"), message))?;
        }
        if let Some(slo) = &self.slo
            && slo.ttft.0 > slo.e2e.0
            && slo.e2e.0 > 0
        {
            return bad(
                "slo.ttft",
                format!("({}) exceeds slo.e2e ({})", slo.ttft, slo.e2e),
            );
        }
        Ok(())
    }

    /// Whether constraints allow a replica in this cluster.
    pub fn allows(&self, cluster: &str, region: &str) -> bool {
        let c = &self.constraints;
        if let Some(pin) = &c.pinned {
            return pin == cluster;
        }
        (c.clusters.is_empty() || c.clusters.iter().any(|x| x == cluster))
            && (c.regions.is_empty() || c.regions.iter().any(|x| x == region))
    }

    /// The preference weight of a region (0 when not preferred).
    pub fn preference(&self, region: &str) -> u32 {
        self.constraints
            .preferred_regions
            .iter()
            .filter(|p| p.region == region)
            .map(|p| p.weight)
            .max()
            .unwrap_or(0)
    }

    /// The best preference weight any region could give.
    pub fn best_preference(&self) -> u32 {
        self.constraints
            .preferred_regions
            .iter()
            .map(|p| p.weight)
            .max()
            .unwrap_or(0)
    }

    /// May the scheduler move it for a better spot (not only when forced)?
    pub fn movable(&self) -> bool {
        self.mobility.movable && self.constraints.pinned.is_none()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn workload(name: &str) -> Workload {
        Workload {
            name: name.into(),
            model: "meta-llama/Llama-3.1-8B-Instruct".into(),
            replicas: Replicas { min: 1, max: 2 },
            gpu: GpuNeed {
                count: 1,
                min_memory_mib: 0,
                models: vec![],
                mig_profile: None,
            },
            constraints: Constraints::default(),
            priority: 0,
            slo: None,
            mobility: Mobility::default(),
            container: None,
        }
    }

    #[test]
    fn replica_bounds_are_checked_and_named() {
        let mut w = workload("llama-70b");
        w.replicas = Replicas { min: 3, max: 2 };
        assert_eq!(
            w.validate().unwrap_err().to_string(),
            "workload \"llama-70b\": replicas.min (3) > replicas.max (2)"
        );
    }

    #[test]
    fn a_pin_outside_the_allowed_clusters_is_refused() {
        let mut w = workload("w");
        w.constraints.clusters = vec!["a".into()];
        w.constraints.pinned = Some("b".into());
        let err = w.validate().unwrap_err();
        assert_eq!(err.field, "constraints.pinned");
    }

    #[test]
    fn zero_gpus_is_refused() {
        let mut w = workload("w");
        w.gpu.count = 0;
        assert_eq!(w.validate().unwrap_err().field, "gpu.count");
    }

    #[test]
    fn constraints_decide_where_it_may_run() {
        let mut w = workload("w");
        assert!(w.allows("a", "eu"));
        w.constraints.regions = vec!["us".into()];
        assert!(!w.allows("a", "eu"));
        assert!(w.allows("a", "us"));
        w.constraints.pinned = Some("b".into());
        assert!(!w.allows("a", "us"));
        assert!(w.allows("b", "anywhere"), "a pin overrides the region list");
        assert!(!w.movable());
    }
}
