//! Conversions between flotilla-core types and `flotilla.v1` messages, at the edge:
//! both directions of each conversion live here, for servers and clients alike.
//! Protobuf-level problems (a required message missing) are `INVALID_ARGUMENT` naming
//! the field; everything else is checked by core's validation when applied.

use flotilla_core as core;
use flotilla_proto::v1 as pb;
use tonic::Status;

pub fn required<T>(v: Option<T>, field: &str) -> Result<T, Status> {
    v.ok_or_else(|| crate::errors::invalid_field(field, format!("{field}: required")))
}

pub fn non_empty(v: &str, field: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(crate::errors::invalid_field(
            field,
            format!("{field}: required (empty)"),
        ));
    }
    Ok(())
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

pub fn cluster_spec_from(p: pb::ClusterSpec) -> core::ClusterSpec {
    core::ClusterSpec {
        name: p.name,
        region: p.region,
        zone: p.zone,
        labels: p.labels.into_iter().collect(),
        gateway_address: p.gateway_address,
        endpoint_ranges: p.endpoint_ranges,
    }
}

pub fn cluster_spec_to(s: &core::ClusterSpec) -> pb::ClusterSpec {
    pb::ClusterSpec {
        name: s.name.clone(),
        region: s.region.clone(),
        zone: s.zone.clone(),
        labels: s.labels.clone().into_iter().collect(),
        gateway_address: s.gateway_address.clone(),
        endpoint_ranges: s.endpoint_ranges.clone(),
    }
}

pub fn node_report_to(n: &core::NodeReport) -> pb::NodeReport {
    pb::NodeReport {
        name: n.name.clone(),
        devices: n.devices.iter().map(device_report_to).collect(),
    }
}

pub fn report_scope_to(scope: core::ReportScope) -> pb::ReportScope {
    match scope {
        core::ReportScope::Cluster => pb::ReportScope::Cluster,
        core::ReportScope::Nodes => pb::ReportScope::Nodes,
    }
}

pub fn cluster_to(c: &core::Cluster) -> pb::Cluster {
    let state = match c.state {
        core::ClusterState::Ready => pb::ClusterState::Ready,
        core::ClusterState::Cordoned => pb::ClusterState::Cordoned,
        core::ClusterState::Unreachable => pb::ClusterState::Unreachable,
    };
    pb::Cluster {
        spec: Some(cluster_spec_to(&c.spec)),
        state: state as i32,
        draining: c.draining,
        cordoned: c.cordoned,
        lease_expires_at_ms: c.lease_expires_at.0,
        gpus_total: c.inventory.device_count() as u32,
        gpus_free: c.inventory.free_device_count() as u32,
        etag: String::new(),
    }
}

pub fn device_report_to(d: &core::DeviceReport) -> pb::DeviceReport {
    pb::DeviceReport {
        uuid: d.uuid.clone(),
        model: d.model.clone(),
        memory_total_mib: d.memory_total_mib,
        memory_used_mib: d.memory_used_mib,
        utilization_pct: u32::from(d.utilization_pct),
        mig_profile: d.mig_profile.clone().unwrap_or_default(),
        healthy: d.healthy,
        claimed_by_other: d.claimed_by_other,
    }
}

pub fn node_report_from(n: pb::NodeReport, i: usize) -> Result<core::NodeReport, Status> {
    let devices = n
        .devices
        .into_iter()
        .enumerate()
        .map(|(j, d)| {
            let utilization_pct = u8::try_from(d.utilization_pct)
                .ok()
                .filter(|u| *u <= 100)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "nodes[{i}].devices[{j}].utilization_pct: {} is not between 0 and 100",
                        d.utilization_pct
                    ))
                })?;
            Ok(core::DeviceReport {
                uuid: d.uuid,
                model: d.model,
                memory_total_mib: d.memory_total_mib,
                memory_used_mib: d.memory_used_mib,
                utilization_pct,
                mig_profile: opt(&d.mig_profile),
                healthy: d.healthy,
                claimed_by_other: d.claimed_by_other,
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(core::NodeReport {
        name: n.name,
        devices,
    })
}

/// A report's scope from its wire value; an unknown value (a newer client's scope
/// this server does not know) is refused rather than read as a whole-cluster report,
/// which would drop every node it does not name.
pub fn report_scope_from(scope: i32) -> Result<core::ReportScope, Status> {
    match pb::ReportScope::try_from(scope) {
        Ok(pb::ReportScope::Cluster) => Ok(core::ReportScope::Cluster),
        Ok(pb::ReportScope::Nodes) => Ok(core::ReportScope::Nodes),
        Err(_) => Err(Status::invalid_argument(format!(
            "scope: {scope} is not a report scope (REPORT_SCOPE_CLUSTER = 0, REPORT_SCOPE_NODES = 1)"
        ))),
    }
}

pub fn workload_from(p: pb::Workload) -> Result<core::Workload, Status> {
    let replicas = required(p.replicas, "workload.replicas")?;
    let gpu = required(p.gpu, "workload.gpu")?;
    let c = p.constraints.unwrap_or_default();
    let mobility = match p.mobility {
        Some(m) => core::Mobility {
            movable: m.movable,
            min_dwell: core::Millis(m.min_dwell_ms),
        },
        None => core::Mobility::default(),
    };
    Ok(core::Workload {
        name: p.name,
        model: p.model,
        replicas: core::Replicas {
            min: replicas.min,
            max: replicas.max,
        },
        gpu: core::GpuNeed {
            count: gpu.count,
            min_memory_mib: gpu.min_memory_mib,
            models: gpu.models,
            mig_profile: opt(&gpu.mig_profile),
        },
        constraints: core::Constraints {
            regions: c.regions,
            clusters: c.clusters,
            pinned: opt(&c.pinned),
            spread_across_clusters: c.spread_across_clusters,
            preferred_regions: c
                .preferred_regions
                .into_iter()
                .map(|r| core::RegionPreference {
                    region: r.region,
                    weight: r.weight,
                })
                .collect(),
        },
        priority: p.priority,
        slo: p.slo.map(|s| core::Slo {
            ttft: core::Millis(s.ttft_ms),
            e2e: core::Millis(s.e2e_ms),
        }),
        mobility,
        container: p.container.map(container_from).transpose()?.map(Box::new),
    })
}

fn container_from(c: pb::ContainerSpec) -> Result<core::ContainerSpec, Status> {
    let ports = c
        .ports
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let protocol = match p.protocol.as_str() {
                "" | "TCP" => core::PortProtocol::Tcp,
                "UDP" => core::PortProtocol::Udp,
                "SCTP" => core::PortProtocol::Sctp,
                other => {
                    return Err(Status::invalid_argument(format!(
                        "workload.container.ports[{i}].protocol: {other:?} is not TCP, UDP or SCTP"
                    )));
                }
            };
            Ok(core::ContainerPort {
                name: p.name,
                container_port: p.container_port,
                protocol,
            })
        })
        .collect::<Result<_, Status>>()?;
    Ok(core::ContainerSpec {
        image: c.image,
        args: c.args,
        env: c.env.into_iter().collect(),
        secret_env: c
            .secret_env
            .into_iter()
            .map(|(name, r)| {
                (
                    name,
                    core::SecretKeyRef {
                        secret: r.secret,
                        key: r.key,
                    },
                )
            })
            .collect(),
        ports,
        health_path: opt(&c.health_path),
        resources: core::ContainerResources {
            requests: c.resource_requests.into_iter().collect(),
            limits: c.resource_limits.into_iter().collect(),
        },
    })
}

fn container_to(c: &core::ContainerSpec) -> pb::ContainerSpec {
    pb::ContainerSpec {
        image: c.image.clone(),
        args: c.args.clone(),
        env: c.env.clone().into_iter().collect(),
        secret_env: c
            .secret_env
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    pb::SecretKeyRef {
                        secret: r.secret.clone(),
                        key: r.key.clone(),
                    },
                )
            })
            .collect(),
        ports: c
            .ports
            .iter()
            .map(|p| pb::ContainerPort {
                name: p.name.clone(),
                container_port: p.container_port,
                protocol: p.protocol.as_str().into(),
            })
            .collect(),
        health_path: c.health_path.clone().unwrap_or_default(),
        resource_requests: c.resources.requests.clone().into_iter().collect(),
        resource_limits: c.resources.limits.clone().into_iter().collect(),
    }
}

pub fn workload_to(w: &core::Workload) -> pb::Workload {
    let c = &w.constraints;
    pb::Workload {
        name: w.name.clone(),
        model: w.model.clone(),
        replicas: Some(pb::Replicas {
            min: w.replicas.min,
            max: w.replicas.max,
        }),
        gpu: Some(pb::GpuNeed {
            count: w.gpu.count,
            min_memory_mib: w.gpu.min_memory_mib,
            models: w.gpu.models.clone(),
            mig_profile: w.gpu.mig_profile.clone().unwrap_or_default(),
        }),
        constraints: Some(pb::Constraints {
            regions: c.regions.clone(),
            clusters: c.clusters.clone(),
            pinned: c.pinned.clone().unwrap_or_default(),
            spread_across_clusters: c.spread_across_clusters,
            preferred_regions: c
                .preferred_regions
                .iter()
                .map(|r| pb::RegionPreference {
                    region: r.region.clone(),
                    weight: r.weight,
                })
                .collect(),
        }),
        priority: w.priority,
        slo: w.slo.map(|s| pb::Slo {
            ttft_ms: s.ttft.0,
            e2e_ms: s.e2e.0,
        }),
        mobility: Some(pb::Mobility {
            movable: w.mobility.movable,
            min_dwell_ms: w.mobility.min_dwell.0,
        }),
        container: w.container.as_deref().map(container_to),
        etag: String::new(),
    }
}

/// A placement as `flotilla.v1` shows it; `revision` is the placement table's at its
/// last change ([`core::State::placement_revision`]).
pub fn placement_to(workload: &str, p: &core::Placement, revision: u64) -> pb::Placement {
    pb::Placement {
        workload: workload.to_owned(),
        model: p.model.clone(),
        replicas: p
            .replicas
            .values()
            .map(|r| pb::Replica {
                id: r.id.0,
                cluster: r.cluster.clone(),
                phase: phase_to(r.phase) as i32,
                devices: r
                    .devices
                    .iter()
                    .map(|d| format!("{}/{}", d.node, d.uuid))
                    .collect(),
                phase_since_ms: r.phase_since.0,
                evicted: r.evicted,
                endpoint: r.endpoint.clone().unwrap_or_default(),
                drain_deadline: r.drain_deadline.map(timestamp_to),
            })
            .collect(),
        migrations: p
            .migrations
            .iter()
            .map(|m| pb::Migration {
                source: m.source.0,
                target: m.target.0,
                reason: m.reason.as_str().to_owned(),
                target_weight: m.target_weight,
            })
            .collect(),
        generation: p.generation,
        deleted: p.deleted,
        revision,
    }
}

/// The replicas of a placement that run in `cluster`, as their materializer needs
/// them (what the v1 Replica carries; the registry's bookkeeping, such as when a
/// replica was placed, is not part of it).
pub fn placed_replicas_from(
    cluster: &str,
    p: &pb::Placement,
) -> Result<Vec<core::PlacedReplica>, Status> {
    p.replicas
        .iter()
        .filter(|r| r.cluster == cluster)
        .map(|r| {
            let devices = r
                .devices
                .iter()
                .map(|d| {
                    let (node, uuid) = d.split_once('/').ok_or_else(|| {
                        crate::errors::invalid_field(
                            "replicas.devices",
                            format!("replicas.devices: {d:?} is not node/uuid"),
                        )
                    })?;
                    Ok(core::DeviceRef {
                        node: node.to_owned(),
                        uuid: uuid.to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            Ok(core::PlacedReplica {
                workload: p.workload.clone(),
                model: p.model.clone(),
                replica: core::Replica {
                    id: core::ReplicaId(r.id),
                    cluster: r.cluster.clone(),
                    devices,
                    phase: phase_from(r.phase, "replicas.phase")?,
                    phase_since: core::Timestamp(r.phase_since_ms),
                    placed_at: core::Timestamp(0),
                    drain_deadline: r.drain_deadline.map(timestamp_from),
                    evicted: r.evicted,
                    preempted_for: None,
                    endpoint: (!r.endpoint.is_empty()).then(|| r.endpoint.clone()),
                },
            })
        })
        .collect()
}

fn timestamp_to(t: core::Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(t.0 / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((t.0 % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the epoch; a time before it reads as the epoch.
fn timestamp_from(t: prost_types::Timestamp) -> core::Timestamp {
    let ms = u64::try_from(t.seconds)
        .unwrap_or(0)
        .saturating_mul(1000)
        .saturating_add(u64::try_from(t.nanos / 1_000_000).unwrap_or(0));
    core::Timestamp(ms)
}

pub fn route_to(r: &core::Route) -> pb::Route {
    pb::Route {
        model: r.model.clone(),
        endpoints: r
            .endpoints
            .iter()
            .map(|e| pb::RouteEndpoint {
                cluster: e.cluster.clone(),
                weight: e.weight,
                ready_replicas: e.ready_replicas,
            })
            .collect(),
        revision: r.revision,
    }
}

/// A watched route back into core's shape (the gateway keeps a copy of core's
/// route table; a route without endpoints is a tombstone).
pub fn route_from(r: pb::Route) -> core::Route {
    core::Route {
        model: r.model,
        endpoints: r
            .endpoints
            .into_iter()
            .map(|e| core::RouteEndpoint {
                cluster: e.cluster,
                weight: e.weight,
                ready_replicas: e.ready_replicas,
            })
            .collect(),
        revision: r.revision,
    }
}

pub fn policy_to(p: &core::TenantPolicy) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant: p.tenant.clone(),
        approved_models: p.approved_models.clone(),
        etag: String::new(),
        requests_per_minute: p.requests_per_minute,
        tokens_per_minute: p.tokens_per_minute,
        external_endpoints: p.external_endpoints.clone(),
    }
}

pub fn policy_from(p: pb::TenantPolicy) -> core::TenantPolicy {
    core::TenantPolicy {
        tenant: p.tenant,
        approved_models: p.approved_models,
        requests_per_minute: p.requests_per_minute,
        tokens_per_minute: p.tokens_per_minute,
        external_endpoints: p.external_endpoints,
    }
}

pub fn tenant_to(t: &core::Tenant, revision: u64) -> pb::Tenant {
    pb::Tenant {
        name: t.name.clone(),
        identities: t.identities.clone(),
        etag: etag_to(revision),
    }
}

pub fn tenant_from(t: pb::Tenant) -> core::Tenant {
    core::Tenant {
        name: t.name,
        identities: t.identities,
    }
}

pub fn api_key_to(k: &core::ApiKey) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id.clone(),
        tenant: k.tenant.clone(),
        sha256: k.sha256.clone(),
        create_time: Some(timestamp_to(k.created_at)),
        expire_time: k.expires_at.map(timestamp_to),
        revoked: k.revoked,
    }
}

/// A wall-clock time as core has times (ms since the epoch; before it, 0).
pub fn timestamp_of(t: std::time::SystemTime) -> core::Timestamp {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    core::Timestamp(ms)
}

/// A core time (ms since the epoch) as a request's timestamp.
pub fn time_to(t: core::Timestamp) -> prost_types::Timestamp {
    timestamp_to(t)
}

/// A request's timestamp as core has it (ms since the epoch).
pub fn time_from(t: prost_types::Timestamp) -> core::Timestamp {
    timestamp_from(t)
}

/// A reported phase, as core has it; Unspecified and unknown values are refused.
pub fn phase_from(phase: i32, field: &str) -> Result<core::Phase, Status> {
    match pb::Phase::try_from(phase) {
        Ok(pb::Phase::Starting) => Ok(core::Phase::Starting),
        Ok(pb::Phase::Ready) => Ok(core::Phase::Ready),
        Ok(pb::Phase::Draining) => Ok(core::Phase::Draining),
        Ok(pb::Phase::Gone) => Ok(core::Phase::Gone),
        Ok(pb::Phase::Unspecified) | Err(_) => Err(crate::errors::invalid_field(
            field,
            format!("{field}: {phase} is not a phase (PHASE_READY, PHASE_DRAINING or PHASE_GONE)"),
        )),
    }
}

pub fn phase_to(phase: core::Phase) -> pb::Phase {
    match phase {
        core::Phase::Starting => pb::Phase::Starting,
        core::Phase::Ready => pb::Phase::Ready,
        core::Phase::Draining => pb::Phase::Draining,
        core::Phase::Gone => pb::Phase::Gone,
    }
}

fn duration_to(m: core::Millis) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(m.0 / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((m.0 % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// A duration as core keeps it (milliseconds); negative, absent or finer than a
/// millisecond is refused, naming the field.
fn duration_from(d: Option<prost_types::Duration>, field: &str) -> Result<core::Millis, Status> {
    let d = required(d, field)?;
    if d.seconds < 0 || d.nanos < 0 || d.nanos % 1_000_000 != 0 {
        return Err(crate::errors::invalid_field(
            field,
            format!(
                "{field}: {}s {}ns is not a whole, non-negative number of milliseconds",
                d.seconds, d.nanos
            ),
        ));
    }
    let ms = u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(u64::try_from(d.nanos / 1_000_000).ok()?))
        .ok_or_else(|| crate::errors::invalid_field(field, format!("{field}: too long")))?;
    Ok(core::Millis(ms))
}

pub fn settings_to(s: &core::Settings) -> pb::Settings {
    pb::Settings {
        placement_policy: match s.placement_policy {
            core::PlacementPolicy::Pack => pb::PlacementPolicy::Pack,
            core::PlacementPolicy::Spread => pb::PlacementPolicy::Spread,
        } as i32,
        hysteresis: s.hysteresis,
        traffic_step_pct: s.traffic_step_pct,
        traffic_step_interval: Some(duration_to(s.traffic_step_interval)),
        start_deadline: Some(duration_to(s.start_deadline)),
        drain_deadline: Some(duration_to(s.drain_deadline)),
        lease_duration: Some(duration_to(s.lease_duration)),
        max_concurrent_moves: s.max_concurrent_moves,
        preemption: s.preemption,
        etag: String::new(),
    }
}

/// The settings field names an update mask may hold.
pub const SETTINGS_FIELDS: [&str; 9] = [
    "placement_policy",
    "hysteresis",
    "traffic_step_pct",
    "traffic_step_interval",
    "start_deadline",
    "drain_deadline",
    "lease_duration",
    "max_concurrent_moves",
    "preemption",
];

/// `current` with the fields named in `mask` (all, when it is empty) taken from
/// `update`. An unknown field name, or a bad value, is `INVALID_ARGUMENT`; core
/// validates the whole when it is applied.
pub fn settings_update(
    current: &core::Settings,
    update: &pb::Settings,
    mask: &[String],
) -> Result<core::Settings, Status> {
    if let Some(unknown) = mask.iter().find(|f| !SETTINGS_FIELDS.contains(&f.as_str())) {
        return Err(crate::errors::invalid_field(
            "update_mask",
            format!(
                "update_mask: {unknown:?} is not a settings field (one of {})",
                SETTINGS_FIELDS.join(", ")
            ),
        ));
    }
    let all = mask.is_empty();
    let set = |f: &str| all || mask.iter().any(|m| m == f);
    let mut s = current.clone();
    if set("placement_policy") {
        s.placement_policy = match pb::PlacementPolicy::try_from(update.placement_policy) {
            Ok(pb::PlacementPolicy::Pack) => core::PlacementPolicy::Pack,
            Ok(pb::PlacementPolicy::Spread) => core::PlacementPolicy::Spread,
            _ => {
                return Err(crate::errors::invalid_field(
                    "settings.placement_policy",
                    format!(
                        "settings.placement_policy: {} is not a policy (PLACEMENT_POLICY_PACK or PLACEMENT_POLICY_SPREAD)",
                        update.placement_policy
                    ),
                ));
            }
        };
    }
    if set("hysteresis") {
        s.hysteresis = update.hysteresis;
    }
    if set("traffic_step_pct") {
        s.traffic_step_pct = update.traffic_step_pct;
    }
    if set("traffic_step_interval") {
        s.traffic_step_interval = duration_from(
            update.traffic_step_interval,
            "settings.traffic_step_interval",
        )?;
    }
    if set("start_deadline") {
        s.start_deadline = duration_from(update.start_deadline, "settings.start_deadline")?;
    }
    if set("drain_deadline") {
        s.drain_deadline = duration_from(update.drain_deadline, "settings.drain_deadline")?;
    }
    if set("lease_duration") {
        s.lease_duration = duration_from(update.lease_duration, "settings.lease_duration")?;
    }
    if set("max_concurrent_moves") {
        s.max_concurrent_moves = update.max_concurrent_moves;
    }
    if set("preemption") {
        s.preemption = update.preemption;
    }
    Ok(s)
}

/// An etag as the API carries it: the object's revision in decimal.
pub fn etag_to(revision: u64) -> String {
    revision.to_string()
}

/// The revision a request's etag names; `None` when it is empty (an unconditional
/// write). Anything but an etag this API gave out is `INVALID_ARGUMENT`.
pub fn etag_from(etag: &str, field: &str) -> Result<Option<u64>, Status> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.parse().map(Some).map_err(|_| {
        crate::errors::invalid_field(
            field,
            format!(
                "{field}: {etag:?} is not an etag this registry gave out (they are what reads return in `etag`)"
            ),
        )
    })
}

/// `command`, made conditional on the object's etag when the request carried one.
pub fn conditional(
    command: core::Command,
    kind: core::ObjectKind,
    name: &str,
    etag: &str,
    field: &str,
) -> Result<core::Command, Status> {
    Ok(match etag_from(etag, field)? {
        Some(revision) => command.expecting(kind, name, revision),
        None => command,
    })
}

/// A core rejection as a gRPC status: Invalid → `INVALID_ARGUMENT` (the message
/// names object and field; the field also travels as `flotilla-field` metadata),
/// NotFound → `NOT_FOUND`, Precondition → `FAILED_PRECONDITION`, Conflict (a stale
/// etag) → `ABORTED`.
pub fn rejection_status(r: &core::Rejection) -> Status {
    use crate::errors;
    match r {
        core::Rejection::Invalid(v) => errors::invalid_field(&v.field, r.to_string()),
        core::Rejection::NotFound { kind, name } => {
            errors::not_found(&kind.to_string(), name, r.to_string())
        }
        core::Rejection::Precondition { kind, name, .. } => {
            errors::failed_precondition(&kind.to_string(), name, r.to_string())
        }
        core::Rejection::Conflict {
            kind,
            name,
            expected,
            actual,
        } => errors::etag_mismatch(&kind.to_string(), name, *expected, *actual, r.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_cross_the_api_unchanged_and_a_mask_changes_only_what_it_names() {
        let s = core::Settings::default();
        let pb = settings_to(&s);
        assert_eq!(settings_update(&s, &pb, &[]).unwrap(), s);

        let mut wanted = pb.clone();
        wanted.drain_deadline = Some(prost_types::Duration {
            seconds: 90,
            nanos: 500_000_000,
        });
        wanted.hysteresis = 99;
        let changed = settings_update(&s, &wanted, &["drain_deadline".into()]).unwrap();
        assert_eq!(changed.drain_deadline, core::Millis(90_500));
        assert_eq!(changed.hysteresis, s.hysteresis, "not in the mask");

        let err = settings_update(&s, &wanted, &["drain_dedline".into()]).unwrap_err();
        assert!(err.message().contains("not a settings field"), "{err:?}");
        wanted.lease_duration = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        let err = settings_update(&s, &wanted, &["lease_duration".into()]).unwrap_err();
        assert!(
            err.message().starts_with("settings.lease_duration"),
            "{err:?}"
        );
    }

    #[test]
    fn a_container_spec_crosses_the_v1_api_unchanged() {
        let mut w = core::fixtures::workload("chat", "m", 1, 1);
        w.container = Some(Box::new(core::ContainerSpec {
            image: "vllm/vllm-openai:v0.6.3".into(),
            args: vec!["--port".into(), "8000".into()],
            env: [("HF_HOME".to_owned(), "/cache".to_owned())].into(),
            secret_env: [(
                "HF_TOKEN".to_owned(),
                core::SecretKeyRef {
                    secret: "hugging-face".into(),
                    key: "token".into(),
                },
            )]
            .into(),
            ports: vec![core::ContainerPort {
                name: "http".into(),
                container_port: 8000,
                protocol: core::PortProtocol::Tcp,
            }],
            health_path: Some("/health".into()),
            resources: core::ContainerResources {
                requests: [("cpu".to_owned(), "4".to_owned())].into(),
                limits: [("memory".to_owned(), "64Gi".to_owned())].into(),
            },
        }));
        let back = workload_from(workload_to(&w)).expect("converts back");
        assert_eq!(back, w);
        let mut none = w.clone();
        none.container = None;
        assert_eq!(
            workload_from(workload_to(&none)).expect("converts back"),
            none
        );
    }

    #[test]
    fn a_route_crosses_the_v1_api_unchanged_tombstones_included() {
        let route = core::Route {
            model: "llama".into(),
            endpoints: vec![core::RouteEndpoint {
                cluster: "eu".into(),
                weight: 75,
                ready_replicas: 2,
            }],
            revision: 9,
        };
        assert_eq!(route_from(route_to(&route)), route);
        let tombstone = core::Route {
            endpoints: Vec::new(),
            ..route
        };
        assert_eq!(route_from(route_to(&tombstone)), tombstone);
    }

    #[test]
    fn an_unknown_port_protocol_is_an_invalid_argument() {
        let mut p = workload_to(&core::fixtures::workload("chat", "m", 1, 1));
        p.container = Some(pb::ContainerSpec {
            image: "x".into(),
            ports: vec![pb::ContainerPort {
                name: "http".into(),
                container_port: 80,
                protocol: "HTTP".into(),
            }],
            ..Default::default()
        });
        let err = workload_from(p).expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("ports[0].protocol"),
            "{}",
            err.message()
        );
    }
}

/// `flotilla.v1alpha1` MCP servers.
pub mod mcp {
    use super::core;
    use flotilla_proto::v1alpha1 as pb;
    use tonic::Status;

    pub fn server_to(s: &core::McpServer) -> pb::McpServer {
        pb::McpServer {
            name: s.name.clone(),
            host: s.host.clone(),
            path_prefix: s.path_prefix.clone(),
            service: s.service.clone(),
            grants: s
                .tools
                .iter()
                .map(|(tenant, tools)| pb::ToolGrant {
                    tenant: tenant.clone(),
                    tools: tools.clone(),
                })
                .collect(),
        }
    }

    /// A tenant granted twice is refused, not merged: one of the two was a mistake.
    pub fn server_from(s: pb::McpServer) -> Result<core::McpServer, Status> {
        let mut tools = std::collections::BTreeMap::new();
        for (i, grant) in s.grants.into_iter().enumerate() {
            let tenant = grant.tenant.clone();
            if tools.insert(grant.tenant, grant.tools).is_some() {
                return Err(crate::errors::invalid_field(
                    &format!("server.grants[{i}].tenant"),
                    format!("server.grants[{i}].tenant: {tenant:?} is granted twice"),
                ));
            }
        }
        Ok(core::McpServer {
            name: s.name,
            host: s.host,
            path_prefix: s.path_prefix,
            service: s.service,
            tools,
        })
    }
}
