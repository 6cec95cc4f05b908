//! The hostile-member suite: a member of the federation, holding real credentials
//! the CA issued it, tries to go past what its job needs (or, for a cluster that
//! left, to act at all, its server included). Each attack is refused, the registry
//! is left as it was, and the refusal is logged with who and what.
//!
//! Attacks tried elsewhere, with the same kind of credentials:
//! - a forged-join flood beside normal writes: `api::a_forged_join_is_refused_before_any_signing_and_a_flood_of_them_leaves_writes_alone`;
//! - a wall-clock step of ±10 min on any member: `clocks`;
//! - the wrong role at either end of a connection, a token sent to a non-server,
//!   a renewed certificate from another CA: `flotilla-pki/tests/pki.rs`;
//! - reads past a role, writes for another cluster, a member moving its cluster to
//!   another region: `api::authorization_matrix_role_by_rpc` and its neighbours;
//! - peers of another federation and garbage on the Raft port: `bad_input`.
//!
//! The other direction is here too: a left cluster's server is sent no Raft (it
//! reads nothing more of the registry) and the leader takes it out of the
//! membership.

use crate::common::{cluster, mtls_federation, placement, spec, start_replica, workload};
use flotilla_pki::{Identity, Role};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::{
    capacity_service_client::CapacityServiceClient,
    federation_service_client::FederationServiceClient,
    placement_service_client::PlacementServiceClient, policy_service_client::PolicyServiceClient,
    workload_service_client::WorkloadServiceClient,
};
use flotilla_testkit::{TestPki, TestResult, bounded, eventually, warnings_with};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const LIMIT: Duration = Duration::from_secs(40);

/// Node `name` with one healthy GPU, `GPU-<name>`.
fn gpu_node(name: &str) -> pb::NodeReport {
    pb::NodeReport {
        name: name.into(),
        devices: vec![pb::DeviceReport {
            uuid: format!("GPU-{name}"),
            model: "NVIDIA H100".into(),
            memory_total_mib: 81_920,
            healthy: true,
            ..Default::default()
        }],
    }
}

fn node_report(cluster: &str, nodes: Vec<pb::NodeReport>) -> pb::ReportCapacityRequest {
    pb::ReportCapacityRequest {
        cluster: cluster.into(),
        nodes,
        scope: pb::ReportScope::Nodes as i32,
    }
}

/// Registers `cluster` (as an admin, with `ranges` for its endpoints), applies
/// workload "chat", and has the node agents of `nodes` each report their own node.
async fn cluster_of_nodes(
    pki: &TestPki,
    addr: &str,
    cluster: &str,
    ranges: &[&str],
    nodes: &[&str],
) -> TestResult {
    let mut spec = spec(cluster);
    spec.endpoint_ranges = ranges.iter().map(|r| r.to_string()).collect();
    FederationServiceClient::new(pki.channel(addr, "ops", Role::Admin)?)
        .register_cluster(pb::RegisterClusterRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await?;
    WorkloadServiceClient::new(pki.channel(addr, "ops", Role::Admin)?)
        .apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(workload("chat", "llama")),
        })
        .await?;
    for node in nodes {
        CapacityServiceClient::new(pki.node_channel(addr, cluster, node)?)
            .report_capacity(node_report(cluster, vec![gpu_node(node)]))
            .await?;
    }
    Ok(())
}

/// Asserts that `answer` is PERMISSION_DENIED and that the server logged the refusal
/// naming the caller and the RPC.
fn refused_and_logged<T: std::fmt::Debug>(
    answer: Result<T, tonic::Status>,
    who: &Identity,
    rpc: &str,
    attack: &str,
) -> TestResult<String> {
    let status = answer
        .err()
        .ok_or_else(|| format!("{attack}: it was allowed"))?;
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{attack}: {status:?}"
    );
    let uri = who.uri();
    let logged = warnings_with(&["refused a call past the caller's role", &uri, rpc]);
    assert!(
        !logged.is_empty(),
        "{attack}: refused, but no warning names {uri} and {rpc}"
    );
    Ok(status.message().to_owned())
}

fn node(pki: &TestPki, cluster: &str, node: &str) -> TestResult<Identity> {
    Ok(Identity::for_node(pki.federation(), cluster, node)?)
}

async fn replica(ch: &Channel, workload: &str, id: u64) -> TestResult<pb::Replica> {
    Ok(placement(ch, workload)
        .await?
        .replicas
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(format!("no replica {id}"))?)
}

fn ready_at(workload: &str, replica: u64, endpoint: &str) -> pb::ReportReplicaPhaseRequest {
    pb::ReportReplicaPhaseRequest {
        workload: workload.into(),
        replica,
        phase: pb::Phase::Ready as i32,
        endpoint: endpoint.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_agent_reports_its_own_node_and_nothing_else() -> TestResult {
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        cluster_of_nodes(&pki, &addr, "c1", &[], &["gpu-a", "gpu-b"]).await?;
        cluster_of_nodes(&pki, &addr, "c2", &[], &["gpu-z"]).await?;
        let gpu_a = node(&pki, "c1", "gpu-a")?;
        let mut capacity = CapacityServiceClient::new(pki.channel_as(&addr, &gpu_a)?);

        let why = refused_and_logged(
            capacity
                .report_capacity(node_report("c1", vec![gpu_node("gpu-b")]))
                .await,
            &gpu_a,
            "ReportCapacity",
            "a node reporting a neighbour's GPUs",
        )?;
        assert!(why.contains("\"gpu-b\""), "{why}");
        refused_and_logged(
            capacity
                .report_capacity(pb::ReportCapacityRequest {
                    cluster: "c1".into(),
                    nodes: vec![gpu_node("gpu-a")],
                    scope: pb::ReportScope::Cluster as i32,
                })
                .await,
            &gpu_a,
            "ReportCapacity",
            "a node replacing its whole cluster's inventory",
        )?;
        refused_and_logged(
            capacity
                .report_capacity(node_report("c2", vec![gpu_node("gpu-a")]))
                .await,
            &gpu_a,
            "ReportCapacity",
            "a node reporting into another cluster",
        )?;

        // Nothing changed: each node still has its own GPU.
        let gpus = CapacityServiceClient::new(pki.channel(&addr, "ops", Role::Admin)?)
            .list_gpus(pb::ListGpusRequest {
                cluster: "c1".into(),
                allow_stale: false,
                ..Default::default()
            })
            .await?
            .into_inner()
            .gpus;
        let held: Vec<(&str, &str)> = gpus
            .iter()
            .map(|g| {
                let uuid = g.device.as_ref().map_or("", |d| d.uuid.as_str());
                (g.node.as_str(), uuid)
            })
            .collect();
        assert_eq!(held, [("gpu-a", "GPU-gpu-a"), ("gpu-b", "GPU-gpu-b")]);
        capacity
            .report_capacity(node_report("c1", vec![gpu_node("gpu-a")]))
            .await?;
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_node_that_runs_a_replica_or_its_controller_sets_its_endpoint() -> TestResult {
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        cluster_of_nodes(&pki, &addr, "c1", &[], &["gpu-a", "gpu-b"]).await?;
        let id = start_replica(&pki, &addr, "chat", "c1", ("gpu-b", "GPU-gpu-b")).await?;
        let admin = pki.channel(&addr, "ops", Role::Admin)?;

        // A compromised gpu-a tries to pull chat's traffic (prompts included) to
        // an address of its choice.
        let gpu_a = node(&pki, "c1", "gpu-a")?;
        let why = refused_and_logged(
            PlacementServiceClient::new(pki.channel_as(&addr, &gpu_a)?)
                .report_replica_phase(ready_at("chat", id, "10.6.6.6:8000"))
                .await,
            &gpu_a,
            "ReportReplicaPhase",
            "a node setting the endpoint of a replica on another node",
        )?;
        assert!(why.contains("runs on node \"gpu-b\""), "{why}");
        let untouched = replica(&admin, "chat", id).await?;
        assert_eq!(untouched.phase, pb::Phase::Starting as i32);
        assert_eq!(untouched.endpoint, "");

        // A node agent of another cluster: refused too.
        let gpu_z = node(&pki, "c2", "gpu-a")?;
        refused_and_logged(
            PlacementServiceClient::new(pki.channel_as(&addr, &gpu_z)?)
                .report_replica_phase(ready_at("chat", id, "10.6.6.6:8000"))
                .await,
            &gpu_z,
            "ReportReplicaPhase",
            "another cluster's node setting an endpoint",
        )?;

        // The node that runs it, and the cluster's controller (its agent identity),
        // may.
        PlacementServiceClient::new(pki.node_channel(&addr, "c1", "gpu-b")?)
            .report_replica_phase(ready_at("chat", id, "10.0.0.7:8000"))
            .await?;
        assert_eq!(replica(&admin, "chat", id).await?.endpoint, "10.0.0.7:8000");
        PlacementServiceClient::new(pki.channel(&addr, "c1", Role::Agent)?)
            .report_replica_phase(ready_at("chat", id, "10.0.0.8:8000"))
            .await?;
        assert_eq!(replica(&admin, "chat", id).await?.endpoint, "10.0.0.8:8000");
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_lie_in_the_clusters_declared_ranges_which_only_an_admin_changes() -> TestResult {
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        cluster_of_nodes(&pki, &addr, "c1", &["10.1.0.0/16"], &["gpu-a"]).await?;
        let id = start_replica(&pki, &addr, "chat", "c1", ("gpu-a", "GPU-gpu-a")).await?;
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        let mut gpu_a = PlacementServiceClient::new(pki.node_channel(&addr, "c1", "gpu-a")?);

        let status = gpu_a
            .report_replica_phase(ready_at("chat", id, "203.0.113.5:8000"))
            .await
            .err()
            .ok_or("an endpoint outside the cluster's ranges was accepted")?;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("203.0.113.5") && status.message().contains("10.1.0.0/16"),
            "{}",
            status.message()
        );
        assert_eq!(replica(&admin, "chat", id).await?.endpoint, "");
        gpu_a
            .report_replica_phase(ready_at("chat", id, "10.1.2.3:8000"))
            .await?;

        // The cluster's own members cannot widen the ranges; leaving them out of a
        // registration (as every agent's heartbeat registration does) keeps them.
        let member = Identity::new(pki.federation(), "c1", Role::Agent)?;
        let mut widened = spec("c1");
        widened.endpoint_ranges = vec!["0.0.0.0/0".into()];
        let mut members = FederationServiceClient::new(pki.channel_as(&addr, &member)?);
        let why = refused_and_logged(
            members
                .register_cluster(pb::RegisterClusterRequest {
                    spec: Some(widened),
                    ..Default::default()
                })
                .await,
            &member,
            "RegisterCluster",
            "a member widening its cluster's endpoint ranges",
        )?;
        assert!(why.contains("admin"), "{why}");
        // With the current etag, as an admin's conditional write carries it: the
        // same checks.
        let etag = cluster(&admin, "c1").await?.etag;
        let mut moved = spec("c1");
        moved.region = "asia".into();
        refused_and_logged(
            members
                .register_cluster(pb::RegisterClusterRequest {
                    spec: Some(moved),
                    etag,
                })
                .await,
            &member,
            "RegisterCluster",
            "a member moving its cluster with a conditional write",
        )?;
        members
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c1")),
                ..Default::default()
            })
            .await?;
        let kept = cluster(&admin, "c1").await?.spec.ok_or("c1's spec")?;
        assert_eq!(kept.endpoint_ranges, ["10.1.0.0/16"]);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_agent_reads_no_workload_specs_policies_or_other_clusters_replicas() -> TestResult {
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        cluster_of_nodes(&pki, &addr, "c1", &[], &["gpu-a"]).await?;
        let gpu_a = node(&pki, "c1", "gpu-a")?;
        let ch = pki.channel_as(&addr, &gpu_a)?;
        refused_and_logged(
            WorkloadServiceClient::new(ch.clone())
                .list_workloads(pb::ListWorkloadsRequest::default())
                .await,
            &gpu_a,
            "ListWorkloads",
            "a node reading workload specs (their environment)",
        )?;
        refused_and_logged(
            PolicyServiceClient::new(ch.clone())
                .list_policies(pb::ListPoliciesRequest::default())
                .await,
            &gpu_a,
            "ListPolicies",
            "a node reading tenant policies",
        )?;
        refused_and_logged(
            PlacementServiceClient::new(ch.clone())
                .list_placements(pb::ListPlacementsRequest::default())
                .await,
            &gpu_a,
            "ListPlacements",
            "a node reading every cluster's placements",
        )?;

        // A placement with replicas in c1 and c2: c1's members see c1's replica only.
        cluster_of_nodes(&pki, &addr, "c2", &[], &["gpu-z"]).await?;
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        let mut two = workload("chat", "llama");
        two.replicas = Some(pb::Replicas { min: 2, max: 2 });
        WorkloadServiceClient::new(admin.clone())
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(two),
            })
            .await?;
        let here = start_replica(&pki, &addr, "chat", "c1", ("gpu-a", "GPU-gpu-a")).await?;
        start_replica(&pki, &addr, "chat", "c2", ("gpu-z", "GPU-gpu-z")).await?;
        let mut placements = PlacementServiceClient::new(ch.clone());
        let listed = placements
            .list_placements(pb::ListPlacementsRequest {
                cluster: "c1".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .placements;
        let watched = placements
            .watch_placements(pb::WatchPlacementsRequest {
                cluster: "c1".into(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .message()
            .await?
            .and_then(|m| m.placement)
            .ok_or("the watch sent no placement")?;
        for (how, p) in [("listed", &listed[0]), ("watched", &watched)] {
            let shown: Vec<(u64, &str)> = p
                .replicas
                .iter()
                .map(|r| (r.id, r.cluster.as_str()))
                .collect();
            assert_eq!(shown, [(here, "c1")], "{how}");
        }
        let all = placement(&admin, "chat").await?;
        assert_eq!(all.replicas.len(), 2, "an admin sees every replica");
        f.stop_all().await
    })
    .await
}

/// A channel as the holder of `token`, joined through the registry's `Join`.
async fn joined(pki: &TestPki, addr: &str, token: &flotilla_pki::JoinToken) -> TestResult<Channel> {
    let (chain, key) = flotilla_client::join::redeem_token(token, None).await?;
    let cert = flotilla_pki::RotatingCert::new(chain, key)?;
    Ok(
        flotilla_registry::TransportSecurity::Mtls(flotilla_registry::Mtls::new(
            pki.trust.clone(),
            cert,
        )?)
        .channel(addr, Duration::from_secs(2))?,
    )
}

/// A join token for `who`, good for an hour and `uses` joins, naming the server
/// at `addr`.
fn token_for(
    pki: &TestPki,
    addr: &str,
    who: &Identity,
    uses: u32,
) -> TestResult<flotilla_pki::JoinToken> {
    Ok(pki
        .ca
        .tokens
        .issue_counted(who, Duration::from_secs(3600), addr, pki.ca.ca.cert(), uses)?)
}

/// The admin on `admin` makes `cluster` leave the federation.
async fn leave(admin: &Channel, cluster: &str) -> TestResult {
    FederationServiceClient::new(admin.clone())
        .leave_cluster(pb::LeaveClusterRequest {
            name: cluster.into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// Asserts that `holder` on `ch`, whose cluster left, may not renew.
async fn renewal_refused(ch: &Channel, holder: &Identity, attack: &str) -> TestResult {
    let (_, csr) = flotilla_pki::new_key_and_csr(holder)?;
    revoked_and_logged(
        flotilla_proto::v1::pki_service_client::PkiServiceClient::new(ch.clone())
            .renew(pb::RenewRequest { csr_der: csr })
            .await,
        holder,
        "Renew",
        attack,
    )
}

/// Asserts that `answer` is UNAUTHENTICATED for a revoked certificate, and that the
/// server logged it naming the caller and the RPC.
fn revoked_and_logged<T: std::fmt::Debug>(
    answer: Result<T, tonic::Status>,
    who: &Identity,
    rpc: &str,
    attack: &str,
) -> TestResult {
    let status = answer
        .err()
        .ok_or_else(|| format!("{attack}: it was allowed"))?;
    assert_eq!(status.code(), Code::Unauthenticated, "{attack}: {status:?}");
    assert!(
        status.message().contains("left the federation"),
        "{status:?}"
    );
    let uri = who.uri();
    assert!(
        !warnings_with(&["refused a revoked certificate", &uri, rpc]).is_empty(),
        "{attack}: refused, but no warning names {uri} and {rpc}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_left_comes_back_only_with_a_new_token() -> TestResult {
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let member = Identity::new(pki.federation(), "c3", Role::Agent)?;
        let token = |uses| token_for(&pki, &addr, &member, uses);
        // One identity joined through the registry, and one made outside it (as
        // `flotilla up` and identities older than the record are).
        let joined_before = joined(&pki, &addr, &token(1)?).await?;
        let made_outside = pki.channel_as(&addr, &member)?;
        let register = || pb::RegisterClusterRequest {
            spec: Some(spec("c3")),
            ..Default::default()
        };
        for ch in [&joined_before, &made_outside] {
            FederationServiceClient::new(ch.clone())
                .register_cluster(register())
                .await?;
        }

        // A watch opened before the cluster leaves.
        let mut watch = FederationServiceClient::new(joined_before.clone())
            .watch_clusters(pb::WatchClustersRequest::default())
            .await?
            .into_inner();

        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        leave(&admin, "c3").await?;

        for (ch, holder) in [(&joined_before, "joined"), (&made_outside, "made outside")] {
            revoked_and_logged(
                FederationServiceClient::new(ch.clone())
                    .register_cluster(register())
                    .await,
                &member,
                "RegisterCluster",
                &format!("a left cluster's {holder} identity re-registering it"),
            )?;
            revoked_and_logged(
                CapacityServiceClient::new(ch.clone())
                    .heartbeat(pb::HeartbeatRequest {
                        cluster: "c3".into(),
                    })
                    .await,
                &member,
                "Heartbeat",
                &format!("a left cluster's {holder} identity heartbeating"),
            )?;
        }
        // The watch ends, refused, instead of following the federation on.
        let ended = crate::common::watch_end(&mut watch).await?;
        assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
        assert!(ended.message().contains("WatchClusters"), "{ended:?}");
        renewal_refused(
            &joined_before,
            &member,
            "a left cluster's member renewing its certificate",
        )
        .await?;
        let gone = cluster(&admin, "c3").await;
        assert_eq!(gone.err().map(|s| s.code()), Some(Code::NotFound));
        let revoked = f.states()[&1].certificates().revoked().len();
        assert_eq!(
            revoked, 1,
            "the joined certificate is on the revocation list"
        );

        // A new token brings it back; the old identities stay refused.
        let rejoined = joined(&pki, &addr, &token(1)?).await?;
        FederationServiceClient::new(rejoined)
            .register_cluster(register())
            .await?;
        revoked_and_logged(
            FederationServiceClient::new(made_outside)
                .register_cluster(register())
                .await,
            &member,
            "RegisterCluster",
            "an old identity after the cluster came back",
        )?;
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_clusters_server_neither_speaks_raft_nor_forwards_writes_nor_renews() -> TestResult {
    use flotilla_proto::raft::v1::{RaftRequest, raft_client::RaftClient};
    use flotilla_proto::registry::v1 as reg;
    use flotilla_proto::registry::v1::registry_client::RegistryClient;
    bounded(LIMIT, async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let server = Identity::new(pki.federation(), "c3", Role::Server)?;
        let token = token_for(&pki, &addr, &server, 1)?;
        // One server identity joined through the registry (recorded), one made
        // outside it (as `flotilla up` makes them).
        let joined_server = joined(&pki, &addr, &token).await?;
        let made_outside = pki.channel_as(&addr, &server)?;
        let agent = pki.channel(&addr, "c3", Role::Agent)?;
        FederationServiceClient::new(agent)
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c3")),
                ..Default::default()
            })
            .await?;
        let forged_admin_write = || reg::ProposeRequest {
            command_json: r#"{"type":"set_settings","settings":{}}"#.into(),
        };
        let raft_message = || RaftRequest {
            federation: pki.federation().to_owned(),
            from: 3,
            payload: b"{}".to_vec(),
        };
        // While c3 is a member, its server is heard (the empty vote is refused
        // for what it says, not for who sent it).
        for ch in [&joined_server, &made_outside] {
            RegistryClient::new(ch.clone())
                .status(reg::StatusRequest {})
                .await?;
            let heard = RaftClient::new(ch.clone()).vote(raft_message()).await;
            assert_eq!(heard.err().map(|s| s.code()), Some(Code::InvalidArgument));
        }

        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        leave(&admin, "c3").await?;

        for (ch, holder) in [(&joined_server, "joined"), (&made_outside, "made outside")] {
            let attack = |what: &str| format!("a left cluster's {holder} server {what}");
            revoked_and_logged(
                RaftClient::new(ch.clone()).vote(raft_message()).await,
                &server,
                "flotilla.raft.v1.Raft/Vote",
                &attack("asking for votes"),
            )?;
            revoked_and_logged(
                RaftClient::new(ch.clone())
                    .append_entries(raft_message())
                    .await,
                &server,
                "flotilla.raft.v1.Raft/AppendEntries",
                &attack("appending entries"),
            )?;
            revoked_and_logged(
                RegistryClient::new(ch.clone())
                    .propose(forged_admin_write())
                    .await,
                &server,
                "flotilla.registry.v1.Registry/Propose",
                &attack("forwarding a write"),
            )?;
            revoked_and_logged(
                RegistryClient::new(ch.clone())
                    .join(reg::JoinRequest {
                        node_id: 3,
                        address: "127.0.0.1:1".into(),
                        federation: pki.federation().to_owned(),
                    })
                    .await,
                &server,
                "flotilla.registry.v1.Registry/Join",
                &attack("joining Raft"),
            )?;
        }
        renewal_refused(
            &joined_server,
            &server,
            "a left cluster's server renewing its certificate",
        )
        .await?;
        let listed = f.states()[&1]
            .certificates()
            .revoked()
            .values()
            .any(|c| c.identity == server.uri());
        assert!(
            listed,
            "the joined server's certificate is on the revocation list"
        );
        let status = RegistryClient::new(admin)
            .status(reg::StatusRequest {})
            .await?;
        assert_eq!(
            status.get_ref().members.len(),
            1,
            "nothing joined: {:?}",
            status.get_ref().members
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_left_clusters_server_is_sent_nothing_more_and_leaves_the_raft_membership() -> TestResult
{
    use flotilla_proto::registry::v1 as reg;
    use flotilla_proto::registry::v1::registry_client::RegistryClient;
    bounded(LIMIT, async {
        // Three voters, node 3 being cluster c3's server.
        let (f, pki) = mtls_federation(3).await?;
        let addr = f.addr(1);
        FederationServiceClient::new(pki.channel(&addr, "c3", Role::Agent)?)
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c3")),
                ..Default::default()
            })
            .await?;
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        leave(&admin, "c3").await?;

        // Whichever node led, the leader stops replicating to node 3 and takes it
        // out of the membership, so that it no longer counts toward the majority.
        let members = || async {
            RegistryClient::new(admin.clone())
                .status(reg::StatusRequest {})
                .await
                .ok()
                .map(|s| s.into_inner().members)
        };
        let left = eventually(
            "node 3 out of the membership",
            Duration::from_secs(20),
            || async {
                let members = members().await?;
                members.iter().all(|m| m.node_id != 3).then_some(members)
            },
        )
        .await?;
        assert_eq!(left.len(), 2, "{left:?}");
        eventually(
            "the leader to log whom it took out",
            Duration::from_secs(5),
            || async {
                let logged =
                    warnings_with(&["took a server whose certificate was revoked", "peer=3"]);
                (!logged.is_empty()).then_some(())
            },
        )
        .await?;

        // It reads nothing written after that.
        FederationServiceClient::new(admin.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c4")),
                ..Default::default()
            })
            .await?;
        eventually("c4 on nodes 1 and 2", Duration::from_secs(10), || async {
            let states = f.states();
            [1, 2]
                .iter()
                .all(|id| states.get(id).is_some_and(|s| s.cluster("c4").is_some()))
                .then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            f.states()[&3].cluster("c4").is_none(),
            "node 3 was sent a write after its cluster left"
        );
        f.stop_all().await
    })
    .await
}
