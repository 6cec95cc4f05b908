//! What the cluster tests share beyond the test kit: a command to replicate, a
//! check that every member holds the same registry, an mTLS federation to call
//! with real credentials, and the requests most of those calls carry.

use flotilla_core::State;
use flotilla_pki::Role;
use flotilla_proto::registry::v1::{ProposeRequest, registry_client::RegistryClient};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::federation_service_client::FederationServiceClient;
use flotilla_proto::v1::placement_service_client::PlacementServiceClient;
use flotilla_registry::types::NodeId;
use flotilla_testkit::{Federation, TestPki, TestResult};
use std::collections::BTreeMap;
use tonic::Code;

pub(crate) use flotilla_testkit::register;

const FED: &str = flotilla_testkit::FEDERATION;

/// Asserts that every server holds an identical registry.
pub(crate) fn assert_identical(states: &BTreeMap<NodeId, State>) {
    let mut it = states.iter();
    if let Some((first_id, first)) = it.next() {
        for (id, s) in it {
            assert!(
                s == first,
                "node {id}'s registry differs from node {first_id}'s"
            );
        }
    }
}

/// An mTLS federation of `n` servers (server identities of clusters c1, c2, …), with
/// housekeeping off so that tests drive every change themselves.
pub(crate) async fn mtls_federation(n: NodeId) -> TestResult<(Federation, TestPki)> {
    let mut f = Federation::new()?;
    f.tweak = |c| c.housekeeping_interval = None;
    let pki = TestPki::new(FED, f.dir.path())?;
    for id in 1..=n {
        f.security
            .insert(id, pki.security(&format!("c{id}"), Role::Server)?);
    }
    f.ca.insert(1, pki.ca.clone());
    f.start_members(n).await?;
    Ok((f, pki))
}

/// A cluster in region "europe".
pub(crate) fn spec(name: &str) -> pb::ClusterSpec {
    pb::ClusterSpec {
        name: name.into(),
        region: "europe".into(),
        ..Default::default()
    }
}

/// Node `n1` with `gpus` healthy H100s, `GPU-0`, `GPU-1`, ….
pub(crate) fn nodes(gpus: usize) -> Vec<pb::NodeReport> {
    vec![pb::NodeReport {
        name: "n1".into(),
        devices: (0..gpus)
            .map(|i| pb::DeviceReport {
                uuid: format!("GPU-{i}"),
                model: "NVIDIA H100".into(),
                memory_total_mib: 81_920,
                healthy: true,
                ..Default::default()
            })
            .collect(),
    }]
}

/// A workload of one replica of `model` on one GPU.
pub(crate) fn workload(name: &str, model: &str) -> pb::Workload {
    pb::Workload {
        name: name.into(),
        model: model.into(),
        replicas: Some(pb::Replicas { min: 1, max: 1 }),
        gpu: Some(pb::GpuNeed {
            count: 1,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The status code of a call's answer (`Ok` when it succeeded).
pub(crate) fn code<T>(r: Result<T, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Applies one core command (as JSON) through the internal `Propose`, as a server
/// of c1, and asserts that it applied.
async fn propose(ch: &tonic::transport::Channel, command: serde_json::Value) -> TestResult {
    let reply = RegistryClient::new(ch.clone())
        .propose(ProposeRequest {
            command_json: command.to_string(),
        })
        .await?
        .into_inner();
    assert!(reply.applied, "{}", reply.rejection_message);
    Ok(())
}

/// Places a replica of `workload` on `cluster`, on device `uuid` of `node`, as the
/// leader's scheduler would (through the internal `Propose`, which only servers
/// may call), and returns its id.
pub(crate) async fn start_replica(
    pki: &TestPki,
    addr: &str,
    workload: &str,
    cluster: &str,
    (node, uuid): (&str, &str),
) -> TestResult<u64> {
    let ch = pki.channel(addr, "c1", Role::Server)?;
    propose(
        &ch,
        serde_json::json!({"type": "start_replica", "workload": workload, "cluster": cluster,
            "devices": [{"node": node, "uuid": uuid}], "replaces": null}),
    )
    .await?;
    Ok(placement(&ch, workload)
        .await?
        .replicas
        .iter()
        .map(|r| r.id)
        .max()
        .ok_or("no replica")?)
}

/// `workload`'s placement, read linearizably.
pub(crate) async fn placement(
    ch: &tonic::transport::Channel,
    workload: &str,
) -> TestResult<pb::Placement> {
    Ok(PlacementServiceClient::new(ch.clone())
        .get_placement(pb::GetPlacementRequest {
            workload: workload.into(),
            allow_stale: false,
        })
        .await?
        .into_inner()
        .placement
        .ok_or(format!("{workload} has no placement"))?)
}

/// The cluster `name` as the registry holds it, read linearizably.
pub(crate) async fn cluster(
    ch: &tonic::transport::Channel,
    name: &str,
) -> Result<pb::Cluster, tonic::Status> {
    FederationServiceClient::new(ch.clone())
        .get_cluster(pb::GetClusterRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .cluster
        .ok_or_else(|| tonic::Status::internal(format!("GetCluster {name:?} answered no cluster")))
}

/// Starts a replica of `workload` on `cluster` (device `GPU-<gpu>` of node `n1`)
/// and reports it Ready, as the leader's scheduler and the cluster's agent would.
pub(crate) async fn make_ready(
    pki: &TestPki,
    addr: &str,
    workload: &str,
    cluster: &str,
    gpu: usize,
) -> TestResult {
    let uuid = format!("GPU-{gpu}");
    let id = start_replica(pki, addr, workload, cluster, ("n1", &uuid)).await?;
    let ch = pki.channel(addr, "c1", Role::Server)?;
    propose(
        &ch,
        serde_json::json!({"type": "set_replica_phase", "workload": workload, "replica": id, "phase": "Ready"}),
    )
    .await
}

/// A plaintext channel to `addr`, connected on first use.
pub(crate) fn lazy_channel(
    addr: &str,
) -> Result<tonic::transport::Channel, tonic::codegen::http::uri::InvalidUri> {
    tonic::transport::Channel::from_shared(format!("http://{addr}")).map(|c| c.connect_lazy())
}

/// The gRPC health of `service` ("": the whole server) at `addr`, or `None` when it
/// does not answer.
pub(crate) async fn health(addr: &str, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(lazy_channel(addr).ok()?);
    let request = HealthCheckRequest {
        service: service.into(),
    };
    Some(client.check(request).await.ok()?.into_inner().status)
}

/// The status `watch` ends with, after whatever it still had to send; an error when
/// it ends without one.
pub(crate) async fn watch_end<T>(watch: &mut tonic::Streaming<T>) -> Result<tonic::Status, String> {
    loop {
        match watch.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the watch ended without saying why".to_owned()),
            Err(status) => return Ok(status),
        }
    }
}
