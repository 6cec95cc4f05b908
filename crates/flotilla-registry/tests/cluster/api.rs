//! The public API (`flotilla.v1`) over federation mTLS on 127.0.0.1: conformance and
//! status codes per service, forwarding from a follower, WatchRoutes resume, foreign
//! and expired certificates, rotation under an open stream, the authorization matrix,
//! and joining with a token.

use crate::common::{cluster, code, make_ready, mtls_federation, nodes, spec, workload};
use flotilla_pki::{Identity, Role, RotatingCert, TrustBundle, Validity};
use flotilla_proto::registry::v1::{
    Consistency, ProposeRequest, ReadRequest, registry_client::RegistryClient,
};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::{
    capacity_service_client::CapacityServiceClient,
    federation_service_client::FederationServiceClient, pki_service_client::PkiServiceClient,
    placement_service_client::PlacementServiceClient, policy_service_client::PolicyServiceClient,
    route_service_client::RouteServiceClient, workload_service_client::WorkloadServiceClient,
};
use flotilla_registry::{Bootstrap, Mtls, TransportSecurity};
use flotilla_testkit::{Federation, TestPki, TestResult, bounded};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

const FED: &str = flotilla_testkit::FEDERATION;
const HOUR: Duration = Duration::from_secs(3600);

/// A refused handshake: TLS 1.3 clients learn of it when the connection drops.
fn refused(c: Code) -> bool {
    matches!(c, Code::Unavailable | Code::Cancelled | Code::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_and_maps_errors_to_standard_codes() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let ch = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let mut fed = FederationServiceClient::new(ch.clone());
        let mut cap = CapacityServiceClient::new(ch.clone());
        let mut wl = WorkloadServiceClient::new(ch.clone());
        let mut pol = PolicyServiceClient::new(ch.clone());
        let mut routes = RouteServiceClient::new(ch.clone());

        // Federation and clusters.
        let info = fed
            .get_federation(pb::GetFederationRequest {})
            .await?
            .into_inner();
        assert_eq!((info.name.as_str(), info.leader_id), (FED, 1));
        fed.register_cluster(pb::RegisterClusterRequest {
            spec: Some(spec("c1")),
            ..Default::default()
        })
        .await?;
        cap.report_capacity(pb::ReportCapacityRequest {
            cluster: "c1".into(),
            nodes: nodes(2),
            ..Default::default()
        })
        .await?;
        let clusters = fed
            .list_clusters(pb::ListClustersRequest::default())
            .await?
            .into_inner()
            .clusters;
        assert_eq!(clusters.len(), 1);
        assert_eq!((clusters[0].gpus_total, clusters[0].gpus_free), (2, 2));
        let gpus = cap
            .list_gpus(pb::ListGpusRequest::default())
            .await?
            .into_inner()
            .gpus;
        assert_eq!(gpus.len(), 2);
        let missing = fed
            .get_cluster(pb::GetClusterRequest {
                name: "nope".into(),
                allow_stale: false,
            })
            .await;
        assert_eq!(code(missing), Code::NotFound);
        let status = fed
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(pb::ClusterSpec {
                    region: "Bad Region".into(),
                    ..spec("c9")
                }),
                ..Default::default()
            })
            .await
            .err()
            .ok_or("a bad region was accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("region"), "{}", status.message());
        assert_eq!(
            status
                .metadata()
                .get("flotilla-field")
                .and_then(|v| v.to_str().ok()),
            Some("region")
        );
        // The same, as google.rpc details for programs.
        assert_eq!(
            status
                .get_details_error_info()
                .map(|i| (i.reason, i.domain)),
            Some(("INVALID_FIELD".to_owned(), "flotilla.v1".to_owned()))
        );
        assert_eq!(
            status
                .get_details_bad_request()
                .map(|b| b.field_violations[0].field.clone()),
            Some("region".to_owned())
        );
        assert_eq!(
            code(
                fed.cordon_cluster(pb::CordonClusterRequest {
                    name: "nope".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        fed.cordon_cluster(pb::CordonClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await?;
        fed.uncordon_cluster(pb::UncordonClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await?;

        // Workloads.
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(workload("chat", "llama")),
        })
        .await?;
        let got = wl
            .get_workload(pb::GetWorkloadRequest {
                name: "chat".into(),
                allow_stale: false,
            })
            .await?
            .into_inner();
        assert_eq!(got.workload.ok_or("no workload")?.model, "llama");
        let mut bad = workload("bad", "m");
        bad.replicas = Some(pb::Replicas { min: 3, max: 2 });
        let status = wl
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(bad),
            })
            .await
            .err()
            .ok_or("min > max accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("replicas.min"),
            "{}",
            status.message()
        );
        let mut no_gpu = workload("bad", "m");
        no_gpu.gpu = None;
        let status = wl
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(no_gpu),
            })
            .await
            .err()
            .ok_or("no gpu accepted")?;
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "workload.gpu: required")
        );
        assert_eq!(
            code(
                wl.delete_workload(pb::DeleteWorkloadRequest {
                    name: "nope".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(
                wl.move_workload(pb::MoveWorkloadRequest {
                    name: "chat".into(),
                    cluster: "nope".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        let mut pinned = workload("pinned", "m");
        pinned.constraints = Some(pb::Constraints {
            pinned: "c1".into(),
            ..Default::default()
        });
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(pinned),
        })
        .await?;
        fed.register_cluster(pb::RegisterClusterRequest {
            spec: Some(spec("c2")),
            ..Default::default()
        })
        .await?;
        assert_eq!(
            code(
                wl.move_workload(pb::MoveWorkloadRequest {
                    name: "pinned".into(),
                    cluster: "c2".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        wl.move_workload(pb::MoveWorkloadRequest {
            name: "chat".into(),
            cluster: "c2".into(),
            ..Default::default()
        })
        .await?;
        let moved = wl
            .get_workload(pb::GetWorkloadRequest {
                name: "chat".into(),
                allow_stale: true,
            })
            .await?
            .into_inner();
        assert_eq!(
            moved
                .workload
                .and_then(|w| w.constraints)
                .map(|c| c.clusters),
            Some(vec!["c2".to_owned()])
        );

        // Placements and routes: a Ready replica gives the model a route.
        make_ready(&pki, &f.addr(1), "pinned", "c1", 0).await?;
        let placements = PlacementServiceClient::new(ch.clone())
            .list_placements(pb::ListPlacementsRequest::default())
            .await?
            .into_inner();
        assert!(
            placements
                .placements
                .iter()
                .any(|p| p.workload == "pinned" && p.replicas.len() == 1)
        );
        let table = routes
            .list_routes(pb::ListRoutesRequest::default())
            .await?
            .into_inner();
        assert_eq!(table.routes.len(), 1);
        assert_eq!(table.routes[0].endpoints[0].cluster, "c1");
        // A cluster running replicas cannot leave.
        assert_eq!(
            code(
                fed.leave_cluster(pb::LeaveClusterRequest {
                    name: "c1".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::FailedPrecondition
        );
        fed.leave_cluster(pb::LeaveClusterRequest {
            name: "c2".into(),
            ..Default::default()
        })
        .await?;

        // Policies: a model no workload serves is refused (a typo would approve
        // nothing).
        let approving = |model: &str| pb::SetPolicyRequest {
            policy: Some(pb::TenantPolicy {
                tenant: "acme".into(),
                approved_models: vec![model.into()],
                ..Default::default()
            }),
        };
        let unknown = pol.set_policy(approving("lama")).await.unwrap_err();
        assert_eq!(unknown.code(), Code::FailedPrecondition);
        assert!(
            unknown
                .message()
                .contains("no workload serves model \"lama\""),
            "{}",
            unknown.message()
        );
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(workload("chat", "llama")),
        })
        .await?;
        pol.set_policy(approving("llama")).await?;
        let p = pol
            .get_policy(pb::GetPolicyRequest {
                tenant: "acme".into(),
                allow_stale: false,
            })
            .await?
            .into_inner();
        assert_eq!(
            p.policy.map(|p| p.approved_models),
            Some(vec!["llama".to_owned()])
        );
        assert_eq!(
            code(
                pol.delete_policy(pb::DeletePolicyRequest {
                    tenant: "nobody".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        assert_eq!(
            code(pol.set_policy(pb::SetPolicyRequest { policy: None }).await),
            Code::InvalidArgument
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_is_unavailable_with_a_retry_hint() -> TestResult {
    bounded(Duration::from_secs(20), async {
        let mut f = Federation::new()?;
        let pki = TestPki::new(FED, f.dir.path())?;
        f.security.insert(1, pki.security("c1", Role::Server)?);
        // Never initialized: no leader, ever.
        f.start(1, Bootstrap::Resume).await?;
        let ch = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let status = WorkloadServiceClient::new(ch.clone())
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload("w", "m")),
            })
            .await
            .err()
            .ok_or("a write without a leader succeeded")?;
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .metadata()
                .get(flotilla_client::RETRY_AFTER)
                .is_some()
        );
        assert!(
            status
                .get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .is_some_and(|d| d > Duration::ZERO),
            "RetryInfo says when to retry"
        );
        assert_eq!(
            status.get_details_error_info().map(|i| i.reason),
            Some("NO_LEADER".to_owned())
        );
        let read = FederationServiceClient::new(ch)
            .list_clusters(pb::ListClustersRequest::default())
            .await;
        assert_eq!(code(read), Code::Unavailable);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_writes_and_serves_linearizable_reads() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(2).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let follower = if leader == 1 { 2 } else { 1 };
        let ch = pki.channel(&f.addr(follower), "ops", Role::Admin)?;
        let mut wl = WorkloadServiceClient::new(ch.clone());
        for i in 0..5 {
            wl.apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload(&format!("w{i}"), "m")),
            })
            .await?;
            // Read-your-writes on the follower: linearizable by default.
            let got = wl
                .get_workload(pb::GetWorkloadRequest {
                    name: format!("w{i}"),
                    allow_stale: false,
                })
                .await;
            assert_eq!(
                code(got),
                Code::Ok,
                "w{i} not visible on the follower right after its write"
            );
        }
        // Rejections come back from the leader with their code.
        assert_eq!(
            code(
                wl.delete_workload(pb::DeleteWorkloadRequest {
                    name: "nope".into(),
                    ..Default::default()
                })
                .await
            ),
            Code::NotFound
        );
        // An agent of c2 reporting through the follower.
        let agent = pki.channel(&f.addr(follower), "c2", Role::Agent)?;
        FederationServiceClient::new(agent.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c2")),
                ..Default::default()
            })
            .await?;
        CapacityServiceClient::new(agent)
            .report_capacity(pb::ReportCapacityRequest {
                cluster: "c2".into(),
                nodes: nodes(1),
                ..Default::default()
            })
            .await?;
        f.stop_all().await
    })
    .await
}

async fn collect_routes(
    stream: &mut tonic::Streaming<pb::WatchRoutesResponse>,
    until_revision: u64,
) -> TestResult<Vec<pb::Route>> {
    let mut seen = Vec::new();
    while seen
        .last()
        .map(|r: &pb::Route| r.revision)
        .unwrap_or_default()
        < until_revision
    {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .map_err(|_| "watch stalled")??
            .ok_or("watch ended")?;
        seen.push(msg.route.ok_or("no route")?);
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_routes_resumes_without_gaps_or_duplicates_and_survives_rotation() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(1).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let mut fed = FederationServiceClient::new(admin.clone());
        fed.register_cluster(pb::RegisterClusterRequest {
            spec: Some(spec("c1")),
            ..Default::default()
        })
        .await?;
        CapacityServiceClient::new(admin.clone())
            .report_capacity(pb::ReportCapacityRequest {
                cluster: "c1".into(),
                nodes: nodes(8),
                ..Default::default()
            })
            .await?;
        let mut wl = WorkloadServiceClient::new(admin.clone());
        for i in 0..8 {
            wl.apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload(&format!("w{i}"), &format!("m{i}"))),
            })
            .await?;
        }

        // A gateway watches from the start, while routes 1–3 appear.
        let gw_cert = pki.cert("c1", Role::Gateway, Validity::from_now(HOUR))?;
        let gw_security = TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), gw_cert.clone())?);
        let gw = gw_security.channel(&f.addr(1), Duration::from_secs(2))?;
        let mut watch = RouteServiceClient::new(gw.clone())
            .watch_routes(pb::WatchRoutesRequest {
                from_revision: 0,
                ..Default::default()
            })
            .await?
            .into_inner();
        for i in 0..3 {
            make_ready(&pki, &f.addr(1), &format!("w{i}"), "c1", i).await?;
        }
        let first = collect_routes(&mut watch, 3).await?;
        let last_seen = first.last().map(|r| r.revision).ok_or("nothing seen")?;
        drop(watch); // the gateway disconnects

        // While it is away: routes 4–6, and w0's replica drains (its route goes).
        for i in 3..6 {
            make_ready(&pki, &f.addr(1), &format!("w{i}"), "c1", i).await?;
        }
        wl.delete_workload(pb::DeleteWorkloadRequest {
            name: "w0".into(),
            ..Default::default()
        })
        .await?;
        let table = RouteServiceClient::new(admin.clone())
            .list_routes(pb::ListRoutesRequest::default())
            .await?
            .into_inner();

        // Renew the gateway's certificate before it reconnects.
        let renewed = pki.ca.ca.issue(
            &Identity::new(FED, "c1", Role::Gateway)?,
            Validity::from_now(2 * HOUR),
            &[],
        )?;
        gw_cert.rotate(renewed.chain, renewed.key)?;

        // Resume from the last revision seen: exactly what was missed.
        let mut resumed = RouteServiceClient::new(gw.clone())
            .watch_routes(pb::WatchRoutesRequest {
                from_revision: last_seen,
                ..Default::default()
            })
            .await?
            .into_inner();
        let missed = collect_routes(&mut resumed, table.revision).await?;
        let revisions: Vec<u64> = first.iter().chain(&missed).map(|r| r.revision).collect();
        assert!(
            revisions.windows(2).all(|w| w[0] < w[1]),
            "revisions not strictly increasing: {revisions:?}"
        );
        assert!(
            missed.iter().all(|r| r.revision > last_seen),
            "duplicates after resume"
        );
        assert!(
            missed
                .iter()
                .any(|r| r.model == "m0" && r.endpoints.is_empty()),
            "w0's removal was missed"
        );
        for m in ["m3", "m4", "m5"] {
            assert!(
                missed.iter().any(|r| r.model == m),
                "{m} was missed: {missed:?}"
            );
        }

        // The open stream keeps going after another change.
        make_ready(&pki, &f.addr(1), "w6", "c1", 6).await?;
        let more = collect_routes(&mut resumed, table.revision + 1).await?;
        assert_eq!(more.last().map(|r| r.model.as_str()), Some("m6"));

        // With progress: a watcher that is up to date hears at once that it is in
        // sync, and at which revision.
        let mut progress = RouteServiceClient::new(gw.clone())
            .watch_routes(pb::WatchRoutesRequest {
                from_revision: table.revision + 1,
                progress: true,
            })
            .await?
            .into_inner();
        let marker = tokio::time::timeout(Duration::from_secs(5), progress.message())
            .await??
            .ok_or("the watch ended")?;
        assert!(marker.synced && marker.route.is_none(), "{marker:?}");
        assert_eq!(marker.revision, table.revision + 1);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_servers_certificate_keeps_open_streams() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let mut f = Federation::new()?;
        f.tweak = |c| c.housekeeping_interval = None;
        let pki = TestPki::new(FED, f.dir.path())?;
        let server_cert = pki.cert("c1", Role::Server, Validity::from_now(HOUR))?;
        f.security.insert(
            1,
            TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), server_cert.clone())?),
        );
        f.start(1, Bootstrap::Init).await?;
        f.wait_leader(Duration::from_secs(10)).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        FederationServiceClient::new(admin.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c1")),
                ..Default::default()
            })
            .await?;
        CapacityServiceClient::new(admin.clone())
            .report_capacity(pb::ReportCapacityRequest {
                cluster: "c1".into(),
                nodes: nodes(2),
                ..Default::default()
            })
            .await?;
        WorkloadServiceClient::new(admin.clone())
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload("a", "ma")),
            })
            .await?;
        WorkloadServiceClient::new(admin.clone())
            .apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload("b", "mb")),
            })
            .await?;
        let gw = pki.channel(&f.addr(1), "c1", Role::Gateway)?;
        let mut watch = RouteServiceClient::new(gw.clone())
            .watch_routes(pb::WatchRoutesRequest {
                from_revision: 0,
                ..Default::default()
            })
            .await?
            .into_inner();
        make_ready(&pki, &f.addr(1), "a", "c1", 0).await?;
        collect_routes(&mut watch, 1).await?;

        let old_serial = server_cert.info().serial;
        let renewed = pki.ca.ca.issue(
            &Identity::new(FED, "c1", Role::Server)?,
            Validity::from_now(HOUR),
            &[],
        )?;
        server_cert.rotate(renewed.chain, renewed.key)?;
        assert_ne!(server_cert.info().serial, old_serial);

        // The stream opened before the rotation still delivers.
        make_ready(&pki, &f.addr(1), "b", "c1", 1).await?;
        let seen = collect_routes(&mut watch, 2).await?;
        assert_eq!(seen.last().map(|r| r.model.as_str()), Some("mb"));
        // New connections handshake with the new certificate and work.
        let fresh = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        assert_eq!(
            code(
                FederationServiceClient::new(fresh)
                    .list_clusters(pb::ListClustersRequest::default())
                    .await
            ),
            Code::Ok
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_missing_certificates_are_refused() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        // A certificate from another CA (same federation name): the handshake fails.
        let other = TestPki::new(FED, f.dir.path())?;
        let foreign = other.cert("ops", Role::Admin, Validity::from_now(HOUR))?;
        let ch = TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), foreign)?)
            .channel(&addr, Duration::from_secs(2))?;
        let r = FederationServiceClient::new(ch)
            .list_clusters(pb::ListClustersRequest::default())
            .await;
        assert!(refused(code(r)), "a foreign-CA client got through");
        // An expired certificate from the right CA: refused too.
        let now = SystemTime::now();
        let expired = pki.cert(
            "ops",
            Role::Admin,
            Validity {
                not_before: now - 2 * HOUR,
                not_after: now - HOUR,
            },
        )?;
        let ch = TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), expired)?)
            .channel(&addr, Duration::from_secs(2))?;
        let r = FederationServiceClient::new(ch)
            .list_clusters(pb::ListClustersRequest::default())
            .await;
        assert!(
            refused(code(r)),
            "an expired client certificate got through"
        );
        // No certificate: the handshake passes (for Join) but the API answers UNAUTHENTICATED;
        // health still answers.
        let anon = flotilla_client::transport::tls_channel(
            Arc::new(flotilla_pki::client_config(
                &pki.trust,
                None,
                &[Role::Server],
            )?),
            &addr,
            Duration::from_secs(2),
        )?;
        let r = FederationServiceClient::new(anon.clone())
            .list_clusters(pb::ListClustersRequest::default())
            .await;
        assert_eq!(code(r), Code::Unauthenticated);
        let health = tonic_health::pb::health_client::HealthClient::new(anon)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "flotilla.v1.RouteService".into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            health.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_role_by_rpc() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        FederationServiceClient::new(admin.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c1")),
                ..Default::default()
            })
            .await?;
        FederationServiceClient::new(admin.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c2")),
                ..Default::default()
            })
            .await?;

        // (cluster, role) × RPC → expected code.
        let callers = [
            ("ops", Role::Admin),
            ("c1", Role::Server),
            ("c1", Role::Agent),
            ("c1", Role::Gateway),
        ];
        const OK: Code = Code::Ok;
        const NO: Code = Code::PermissionDenied;
        //                       admin server agent gateway
        let matrix: [(&str, [Code; 4]); 16] = [
            ("ApplyWorkload", [OK, NO, NO, NO]),
            ("SetPolicy", [OK, NO, NO, NO]),
            ("CordonCluster", [OK, NO, NO, NO]),
            ("ReportCapacity(c1)", [OK, OK, OK, NO]),
            ("ReportCapacity(c2)", [OK, NO, NO, NO]),
            ("ListClusters", [OK, OK, OK, OK]),
            ("WatchRoutes", [OK, OK, OK, OK]),
            // Agents and gateways follow their cluster's replicas this way, and
            // read no other cluster's.
            ("WatchPlacements(c1)", [OK, OK, OK, OK]),
            ("WatchPlacements(c2)", [OK, OK, NO, NO]),
            ("ListPlacements(all)", [OK, OK, NO, NO]),
            // Workload specs carry containers and their environment: not a
            // gateway's business. Policies are for the gateways that enforce them.
            ("ListWorkloads", [OK, OK, OK, NO]),
            ("ListPolicies", [OK, OK, NO, OK]),
            ("GetSettings", [OK, OK, OK, OK]),
            // The internal service: servers and admins only.
            ("Registry/Read", [OK, OK, NO, NO]),
            // Core commands as JSON: the writes servers forward, servers only.
            ("Registry/Propose", [NO, OK, NO, NO]),
            ("Registry/Propose(c2)", [NO, OK, NO, NO]),
        ];
        for (i, (cluster, role)) in callers.iter().enumerate() {
            let ch = pki.channel(&addr, cluster, *role)?;
            for (rpc, expected) in &matrix {
                let got = match *rpc {
                    "ApplyWorkload" => code(
                        WorkloadServiceClient::new(ch.clone())
                            .apply_workload(pb::ApplyWorkloadRequest {
                                workload: Some(workload("w", "m")),
                            })
                            .await,
                    ),
                    "SetPolicy" => code(
                        PolicyServiceClient::new(ch.clone())
                            .set_policy(pb::SetPolicyRequest {
                                policy: Some(pb::TenantPolicy {
                                    tenant: "t".into(),
                                    approved_models: vec!["*".into()],
                                    ..Default::default()
                                }),
                            })
                            .await,
                    ),
                    "CordonCluster" => code(
                        FederationServiceClient::new(ch.clone())
                            .cordon_cluster(pb::CordonClusterRequest {
                                name: "c1".into(),
                                ..Default::default()
                            })
                            .await,
                    ),
                    "ReportCapacity(c1)" => code(
                        CapacityServiceClient::new(ch.clone())
                            .report_capacity(pb::ReportCapacityRequest {
                                cluster: "c1".into(),
                                nodes: nodes(1),
                                ..Default::default()
                            })
                            .await,
                    ),
                    "ReportCapacity(c2)" => code(
                        CapacityServiceClient::new(ch.clone())
                            .report_capacity(pb::ReportCapacityRequest {
                                cluster: "c2".into(),
                                nodes: nodes(1),
                                ..Default::default()
                            })
                            .await,
                    ),
                    "ListClusters" => code(
                        FederationServiceClient::new(ch.clone())
                            .list_clusters(pb::ListClustersRequest::default())
                            .await,
                    ),
                    "WatchRoutes" => code(
                        RouteServiceClient::new(ch.clone())
                            .watch_routes(pb::WatchRoutesRequest {
                                from_revision: 0,
                                ..Default::default()
                            })
                            .await,
                    ),
                    "WatchPlacements(c1)" => code(
                        PlacementServiceClient::new(ch.clone())
                            .watch_placements(pb::WatchPlacementsRequest {
                                cluster: "c1".into(),
                                ..Default::default()
                            })
                            .await,
                    ),
                    "WatchPlacements(c2)" => code(
                        PlacementServiceClient::new(ch.clone())
                            .watch_placements(pb::WatchPlacementsRequest {
                                cluster: "c2".into(),
                                ..Default::default()
                            })
                            .await,
                    ),
                    "ListPlacements(all)" => code(
                        PlacementServiceClient::new(ch.clone())
                            .list_placements(pb::ListPlacementsRequest::default())
                            .await,
                    ),
                    "ListWorkloads" => code(
                        WorkloadServiceClient::new(ch.clone())
                            .list_workloads(pb::ListWorkloadsRequest::default())
                            .await,
                    ),
                    "ListPolicies" => code(
                        PolicyServiceClient::new(ch.clone())
                            .list_policies(pb::ListPoliciesRequest::default())
                            .await,
                    ),
                    "GetSettings" => code(
                        FederationServiceClient::new(ch.clone())
                            .get_settings(pb::GetSettingsRequest::default())
                            .await,
                    ),
                    "Registry/Read" => code(
                        RegistryClient::new(ch.clone())
                            .read(ReadRequest {
                                consistency: Consistency::Local as i32,
                                ..Default::default()
                            })
                            .await,
                    ),
                    "Registry/Propose(c2)" => code(
                        RegistryClient::new(ch.clone())
                            .propose(ProposeRequest {
                                command_json: r#"{"type":"heartbeat","cluster":"c2"}"#.into(),
                            })
                            .await,
                    ),
                    _ => code(
                        RegistryClient::new(ch.clone())
                            .propose(ProposeRequest {
                                command_json: r#"{"type":"heartbeat","cluster":"c1"}"#.into(),
                            })
                            .await,
                    ),
                };
                assert_eq!(got, expected[i], "{role} of {cluster} calling {rpc}");
            }
        }
        // A denial says who tried what.
        let agent = pki.channel(&addr, "c1", Role::Agent)?;
        let status = CapacityServiceClient::new(agent)
            .report_capacity(pb::ReportCapacityRequest {
                cluster: "c2".into(),
                nodes: nodes(1),
                ..Default::default()
            })
            .await
            .err()
            .ok_or("an agent reported for another cluster")?;
        assert!(
            status
                .message()
                .contains("spiffe://test-fed/cluster/c1/agent may not call ReportCapacity"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("\"c2\""), "{}", status.message());
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_buys_one_certificate() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let joiner = Identity::new(FED, "c7", Role::Agent)?;
        let token = pki
            .ca
            .tokens
            .issue(&joiner, HOUR, &addr, pki.ca.ca.cert())?;
        let (chain, key) = flotilla_client::join::redeem_token(&token, None).await?;
        assert_eq!(Identity::from_cert(&chain[0])?, joiner);
        // The new identity works at once.
        let cert = RotatingCert::new(chain, key)?;
        let ch = TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), cert)?)
            .channel(&addr, Duration::from_secs(2))?;
        FederationServiceClient::new(ch)
            .list_clusters(pb::ListClustersRequest::default())
            .await?;
        // Single use.
        let again = flotilla_client::join::redeem_token(&token, None)
            .await
            .err()
            .ok_or("a token was used twice")?;
        assert!(again.to_string().contains("already used"), "{again}");
        // A CSR for another identity is refused, and does not burn the token.
        let token = pki
            .ca
            .tokens
            .issue(&joiner, HOUR, &addr, pki.ca.ca.cert())?;
        let (_, csr) = flotilla_pki::new_key_and_csr(&Identity::new(FED, "c7", Role::Admin)?)?;
        let anon = flotilla_client::transport::tls_channel(
            Arc::new(flotilla_pki::bootstrap_client_config(
                &token.ca_fingerprint,
            )?),
            &addr,
            Duration::from_secs(2),
        )?;
        let status = PkiServiceClient::new(anon)
            .join(pb::JoinRequest {
                token: token.encode()?,
                csr_der: csr,
            })
            .await
            .err()
            .ok_or("a CSR for admin was signed with an agent token")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        flotilla_client::join::redeem_token(&token, None).await?;
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_join_is_refused_before_any_signing_and_a_flood_of_them_leaves_writes_alone()
-> TestResult {
    bounded(Duration::from_secs(60), async {
        let mut f = Federation::new()?;
        f.tweak = |c| {
            c.housekeeping_interval = None;
            c.limit_loopback_joins = true;
        };
        let pki = TestPki::new(FED, f.dir.path())?;
        f.security.insert(1, pki.security("c1", Role::Server)?);
        f.ca.insert(1, pki.ca.clone());
        f.start_members(1).await?;
        let addr = f.addr(1);
        let joiner = Identity::new(FED, "c7", Role::Agent)?;
        // Issued by a ledger this server never saw: well formed, unknown here.
        let elsewhere = tempfile::TempDir::new()?;
        let forged = flotilla_pki::TokenStore::new(elsewhere.path()).issue(
            &joiner,
            HOUR,
            &addr,
            pki.ca.ca.cert(),
        )?;
        let anon = flotilla_client::transport::tls_channel(
            Arc::new(flotilla_pki::bootstrap_client_config(
                &forged.ca_fingerprint,
            )?),
            &addr,
            Duration::from_secs(2),
        )?;
        let join = |csr_der: Vec<u8>| {
            let mut client = PkiServiceClient::new(anon.clone());
            let token = forged.encode();
            async move {
                client
                    .join(pb::JoinRequest {
                        token: token.map_err(|e| tonic::Status::internal(e.to_string()))?,
                        csr_der,
                    })
                    .await
            }
        };
        // The token is checked first: a CSR that could never be signed is not
        // even looked at.
        let refused = join(vec![1, 2, 3])
            .await
            .err()
            .ok_or("a forged token joined")?;
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(
            refused.message().contains("unknown to this CA"),
            "{refused:?}"
        );

        // Three hundred at once while an admin writes: each is refused, at once
        // when the queue is full, and every write goes through.
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        let flood = futures::future::join_all((0..300).map(|_| join(vec![1, 2, 3])));
        let writes = async {
            let mut workloads = WorkloadServiceClient::new(admin.clone());
            for i in 0..20 {
                workloads
                    .apply_workload(pb::ApplyWorkloadRequest {
                        workload: Some(workload(&format!("w{i}"), "m")),
                    })
                    .await?;
            }
            Ok::<_, tonic::Status>(())
        };
        let (answers, wrote) = tokio::join!(flood, writes);
        wrote?;
        let mut over_the_bound = 0;
        for answer in answers {
            let status = answer.err().ok_or("a forged join got in")?;
            match status.code() {
                Code::Unauthenticated => {}
                Code::ResourceExhausted
                    if status.message().contains("too many joins from 127.0.0.1") =>
                {
                    assert!(
                        status.metadata().get("retry-after-ms").is_some(),
                        "{status:?}"
                    );
                    over_the_bound += 1;
                }
                Code::ResourceExhausted => {}
                other => return Err(format!("{other:?}: {status:?}").into()),
            }
        }
        assert!(
            over_the_bound >= 280,
            "one source gets its burst of 10, then is bounded: {over_the_bound}"
        );
        // An honest joiner still gets in afterwards, once its source's bucket has
        // a join in it again (half a second at 2 a second).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let token = pki
            .ca
            .tokens
            .issue(&joiner, HOUR, &addr, pki.ca.ca.cert())?;
        flotilla_client::join::redeem_token(&token, None).await?;
        f.stop_all().await
    })
    .await
}

/// The replica ids of `workload`, from the Placements API.
async fn replica_ids(ch: &Channel, workload: &str) -> Result<Vec<u64>, tonic::Status> {
    let p = PlacementServiceClient::new(ch.clone())
        .get_placement(pb::GetPlacementRequest {
            workload: workload.into(),
            allow_stale: false,
        })
        .await?
        .into_inner();
    Ok(p.placement
        .map(|p| p.replicas.iter().map(|r| r.id).collect())
        .unwrap_or_default())
}

/// What `flotilla agent` proposes (through the registry's JSON-command service),
/// under an agent identity of cluster c1: its own cluster's reports pass, another
/// cluster's are refused with PERMISSION_DENIED naming who tried what, and a replica
/// phase counts for the cluster the replica is placed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_registers_and_relabels_its_cluster_but_only_an_admin_moves_it() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let mut agent = FederationServiceClient::new(pki.channel(&addr, "c1", Role::Agent)?);
        let register = |spec: pb::ClusterSpec| pb::RegisterClusterRequest {
            spec: Some(spec),
            ..Default::default()
        };
        // First registration, then again unchanged, then with a gateway address.
        agent.register_cluster(register(spec("c1"))).await?;
        agent.register_cluster(register(spec("c1"))).await?;
        let mut relabelled = spec("c1");
        relabelled.gateway_address = "gw.c1.example.com:8443".into();
        agent.register_cluster(register(relabelled.clone())).await?;

        let mut moved = relabelled.clone();
        moved.region = "asia".into();
        let err = agent
            .register_cluster(register(moved.clone()))
            .await
            .err()
            .ok_or("an agent moved its cluster to another region")?;
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("europe")
                && err.message().contains("asia")
                && err.message().contains("admin"),
            "{err:?}"
        );
        let mut rezoned = relabelled.clone();
        rezoned.zone = "europe-1b".into();
        assert_eq!(
            code(agent.register_cluster(register(rezoned)).await),
            Code::PermissionDenied
        );

        // Node agents of a new cluster registering it at once: each races the
        // others' writes, and each gets through (the server reads and checks again).
        let racers = pki.channel(&addr, "c9", Role::Agent)?;
        let registrations = (0..8).map(|_| {
            let mut c = FederationServiceClient::new(racers.clone());
            let r = register(spec("c9"));
            async move { c.register_cluster(r).await }
        });
        for answer in futures::future::join_all(registrations).await {
            answer?;
        }

        let admin_channel = pki.channel(&addr, "ops", Role::Admin)?;
        let mut admin = FederationServiceClient::new(admin_channel.clone());
        admin.register_cluster(register(moved)).await?;
        let moved = cluster(&admin_channel, "c1")
            .await?
            .spec
            .ok_or("c1's spec")?;
        assert_eq!(moved.region, "asia", "an admin moves it");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_proposes_reports_only_for_its_own_cluster() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        for (c, w) in [("c1", "a"), ("c2", "b")] {
            FederationServiceClient::new(admin.clone())
                .register_cluster(pb::RegisterClusterRequest {
                    spec: Some(spec(c)),
                    ..Default::default()
                })
                .await?;
            CapacityServiceClient::new(admin.clone())
                .report_capacity(pb::ReportCapacityRequest {
                    cluster: c.into(),
                    nodes: nodes(1),
                    ..Default::default()
                })
                .await?;
            WorkloadServiceClient::new(admin.clone())
                .apply_workload(pb::ApplyWorkloadRequest {
                    workload: Some(workload(w, &format!("m{w}"))),
                })
                .await?;
        }
        let mut agent =
            flotilla_client::RegistryClient::new(&addr, &pki.security("c1", Role::Agent)?)?;
        // Agents write through the typed RPCs (`submit`).
        let submit = |command: flotilla_core::Command| {
            let mut agent = agent.clone();
            async move { agent.submit(&command).await }
        };
        let heartbeat = |c: &str| flotilla_core::Command::Heartbeat { cluster: c.into() };

        // Its own cluster: applied.
        submit(heartbeat("c1")).await?;
        // The same device the admin reported, as the agent sees it.
        let mut node = flotilla_core::fixtures::gpu_node("c1", "n1", "NVIDIA H100", 1, 81_920);
        node.devices[0].uuid = "GPU-0".into();
        submit(flotilla_core::Command::ReportCapacity {
            cluster: "c1".into(),
            nodes: vec![node],
        })
        .await?;
        // A node agent's report of its own node of its own cluster passes too.
        submit(flotilla_core::Command::ReportNodes {
            cluster: "c1".into(),
            nodes: vec![flotilla_core::fixtures::gpu_node(
                "c1",
                "n2",
                "NVIDIA H100",
                1,
                81_920,
            )],
        })
        .await?;

        // Another cluster: refused, saying who tried what.
        let c2 = flotilla_core::fixtures::cluster("c2", "europe");
        for (command, rpc) in [
            (heartbeat("c2"), "Heartbeat"),
            (
                flotilla_core::Command::ReportCapacity {
                    cluster: "c2".into(),
                    nodes: Vec::new(),
                },
                "ReportCapacity",
            ),
            (
                flotilla_core::Command::ReportNodes {
                    cluster: "c2".into(),
                    nodes: Vec::new(),
                },
                "ReportCapacity",
            ),
            (
                flotilla_core::Command::RegisterCluster { spec: c2 },
                "RegisterCluster",
            ),
        ] {
            let kind = command.kind();
            let err = submit(command)
                .await
                .err()
                .ok_or(format!("an agent of c1 proposed {kind} for c2"))?;
            let flotilla_client::Error::Rpc { code, message, .. } = &err else {
                return Err(format!("{kind}: unexpected error {err}").into());
            };
            assert_eq!(*code, Code::PermissionDenied, "{kind}: {message}");
            assert!(
                message.contains(&format!(
                    "spiffe://test-fed/cluster/c1/agent may not call {rpc}"
                )) && message.contains("\"c2\""),
                "{message}"
            );
        }
        // Admin writes are not an agent's.
        let err = FederationServiceClient::new(pki.channel(&addr, "c1", Role::Agent)?)
            .cordon_cluster(pb::CordonClusterRequest {
                name: "c1".into(),
                ..Default::default()
            })
            .await
            .err()
            .ok_or("an agent cordoned a cluster")?;
        assert!(err.message().contains("only admin identities"), "{err:?}");
        // Nor is the internal service, whatever the command: expiring a node is
        // the leader's housekeeping.
        for json in [
            serde_json::json!({"type": "expire_node", "cluster": "c1", "node": "n2"}),
            serde_json::json!({"type": "heartbeat", "cluster": "c1"}),
        ] {
            let err = agent
                .propose_json(json.to_string())
                .await
                .err()
                .ok_or("an agent used the internal service")?;
            assert!(
                err.to_string().contains("write through flotilla.v1"),
                "{err}"
            );
        }

        // Replica phases: only for replicas placed on its own cluster.
        // (The scheduler's StartReplica: through the internal Propose, servers only.)
        let mut server_reg = RegistryClient::new(pki.channel(&addr, "c1", Role::Server)?);
        for (w, c) in [("a", "c1"), ("b", "c2")] {
            let start = serde_json::json!({"type": "start_replica", "workload": w, "cluster": c,
                "devices": [{"node": "n1", "uuid": "GPU-0"}], "replaces": null});
            let reply = server_reg
                .propose(ProposeRequest {
                    command_json: start.to_string(),
                })
                .await?
                .into_inner();
            assert!(reply.applied, "{}", reply.rejection_message);
        }
        let (a, b) = (
            replica_ids(&admin, "a").await?,
            replica_ids(&admin, "b").await?,
        );
        // Replica phases: only for replicas placed on its own cluster.
        let typed = |w: &str, id: u64| pb::ReportReplicaPhaseRequest {
            workload: w.into(),
            replica: id,
            phase: pb::Phase::Ready as i32,
            endpoint: "127.0.0.1:41000".into(),
        };
        let agent_ch = pki.channel(&addr, "c1", Role::Agent)?;
        let denied = PlacementServiceClient::new(agent_ch.clone())
            .report_replica_phase(typed("b", b[0]))
            .await
            .err()
            .ok_or("an agent of c1 reported a replica on c2")?;
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("\"c2\""), "{denied:?}");
        let gateway = pki.channel(&addr, "c1", Role::Gateway)?;
        assert_eq!(
            code(
                PlacementServiceClient::new(gateway)
                    .report_replica_phase(typed("a", a[0]))
                    .await
            ),
            Code::PermissionDenied
        );
        let unknown = PlacementServiceClient::new(agent_ch.clone())
            .report_replica_phase(typed("a", 999))
            .await;
        assert_eq!(code(unknown), Code::NotFound);
        PlacementServiceClient::new(agent_ch)
            .report_replica_phase(typed("a", a[0]))
            .await?;
        // The endpoint is published in the Placements API.
        let p = PlacementServiceClient::new(admin.clone())
            .get_placement(pb::GetPlacementRequest {
                workload: "a".into(),
                allow_stale: false,
            })
            .await?
            .into_inner()
            .placement
            .ok_or("no placement of a")?;
        assert_eq!(p.replicas[0].endpoint, "127.0.0.1:41000");
        assert_eq!(p.replicas[0].phase, pb::Phase::Ready as i32);

        // And it follows its cluster's replicas (how the agent learns what to
        // run), but does not read the whole registry.
        let (_, mine) = agent
            .watch_replicas("c1", 0, Duration::from_millis(0))
            .await?;
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0].workload, "a");
        assert_eq!(mine[0].replica.endpoint.as_deref(), Some("127.0.0.1:41000"));
        let err = agent
            .read_state(false)
            .await
            .err()
            .ok_or("an agent read the whole registry")?;
        assert!(err.to_string().contains("PermissionDenied"), "{err}");
        f.stop_all().await
    })
    .await
}

/// `ReportCapacity` with scope `REPORT_SCOPE_NODES`: what one agent per node sends.
/// Each agent's node stays beside the others' and carries a lease of its own (shown
/// by `ListGpus`); a whole-cluster report still replaces everything; bad scopes and
/// empty node reports are `INVALID_ARGUMENT`; an agent reports only its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_report_their_own_nodes_side_by_side() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let addr = f.addr(1);
        let admin = pki.channel(&addr, "ops", Role::Admin)?;
        for c in ["c1", "c2"] {
            FederationServiceClient::new(admin.clone())
                .register_cluster(pb::RegisterClusterRequest {
                    spec: Some(spec(c)),
                    ..Default::default()
                })
                .await?;
        }
        let mut agent = CapacityServiceClient::new(pki.channel(&addr, "c1", Role::Agent)?);
        let node = |name: &str, gpus: usize| {
            let mut n = nodes(gpus).remove(0);
            n.name = name.into();
            for d in &mut n.devices {
                d.uuid = format!("GPU-{name}-{}", d.uuid);
            }
            n
        };
        let report =
            |cluster: &str, scope: i32, nodes: Vec<pb::NodeReport>| pb::ReportCapacityRequest {
                cluster: cluster.into(),
                nodes,
                scope,
            };
        let by_node = pb::ReportScope::Nodes as i32;
        agent
            .report_capacity(report("c1", by_node, vec![node("gpu-a", 1)]))
            .await?;
        agent
            .report_capacity(report("c1", by_node, vec![node("gpu-b", 2)]))
            .await?;
        let gpus = CapacityServiceClient::new(admin.clone())
            .list_gpus(pb::ListGpusRequest {
                cluster: "c1".into(),
                allow_stale: false,
                ..Default::default()
            })
            .await?
            .into_inner()
            .gpus;
        let mut seen: Vec<&str> = gpus.iter().map(|g| g.node.as_str()).collect();
        seen.dedup();
        assert_eq!(seen, ["gpu-a", "gpu-b"]);
        assert!(
            gpus.iter().all(|g| g.node_lease_expires_at_ms > 0),
            "node-scoped nodes carry their lease: {gpus:?}"
        );

        // Refusals.
        let status = agent
            .report_capacity(report("c1", 7, vec![node("gpu-a", 1)]))
            .await
            .err()
            .ok_or("an unknown scope was accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with("scope: 7"),
            "{}",
            status.message()
        );
        let status = agent
            .report_capacity(report("c1", by_node, vec![]))
            .await
            .err()
            .ok_or("a node-scoped report without nodes was accepted")?;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status
                .metadata()
                .get("flotilla-field")
                .and_then(|v| v.to_str().ok()),
            Some("nodes")
        );
        let status = agent
            .report_capacity(report("c2", by_node, vec![node("gpu-a", 1)]))
            .await
            .err()
            .ok_or("an agent of c1 reported a node of c2")?;
        assert_eq!(status.code(), Code::PermissionDenied);

        // A whole cluster's report (scope left out, as older agents send it) would
        // drop the nodes the node agents report: refused, naming why.
        let status = agent
            .report_capacity(pb::ReportCapacityRequest {
                cluster: "c1".into(),
                nodes: vec![node("gpu-c", 1)],
                ..Default::default()
            })
            .await
            .err()
            .ok_or("a whole-cluster report replaced the node agents' nodes")?;
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status
                .message()
                .contains("reported one by one by node agents"),
            "{}",
            status.message()
        );
        let gpus = CapacityServiceClient::new(admin)
            .list_gpus(pb::ListGpusRequest {
                cluster: "c1".into(),
                allow_stale: false,
                ..Default::default()
            })
            .await?
            .into_inner()
            .gpus;
        let nodes: std::collections::BTreeSet<&str> =
            gpus.iter().map(|g| g.node.as_str()).collect();
        assert_eq!(nodes, ["gpu-a", "gpu-b"].into());
        f.stop_all().await
    })
    .await
}

/// The leaf certificate a fresh TLS connection to `addr` is shown.
async fn served_serial(trust: &TrustBundle, addr: &str) -> TestResult<Vec<u8>> {
    let config = flotilla_pki::client_config(trust, None, &[Role::Server])?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from("flotilla.invalid")?,
            tcp,
        )
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("the server showed no certificate")?
        .clone();
    Ok(flotilla_pki::identity::CertInfo::parse(&leaf)?.serial)
}

/// Short-lived certificates renewed by the renewal task, on a running server: the
/// server's own certificate (renewed through itself, the CA holder) and an agent's.
/// New connections see the new serial on the listener that was already open; the
/// files hold the new certificate; nothing restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_in_place_before_they_expire() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let mut f = Federation::new()?;
        f.tweak = |c| c.housekeeping_interval = None;
        // What Renew issues lasts a minute: no second renewal within the test.
        let pki = TestPki::issuing_for(FED, f.dir.path(), Duration::from_secs(60))?;
        // The first certificates last 3 s: due 2 s after issue.
        let short = || Validity::from_now(Duration::from_secs(3));
        let server_cert = pki.cert("c1", Role::Server, short())?;
        let server_security =
            TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), server_cert.clone())?);
        f.security.insert(1, server_security.clone());
        f.ca.insert(1, pki.ca.clone());
        f.start(1, Bootstrap::Init).await?;
        f.wait_leader(Duration::from_secs(10)).await?;
        let addr = f.addr(1);
        let agent_cert = pki.cert("c1", Role::Agent, short())?;
        let agent_security =
            TransportSecurity::Mtls(Mtls::new(pki.trust.clone(), agent_cert.clone())?);

        let old_server = server_cert.info().serial;
        let old_agent = agent_cert.info().serial;
        assert_eq!(served_serial(&pki.trust, &addr).await?, old_server);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let files = tempfile::tempdir()?;
        let mut tasks = Vec::new();
        for (cert, security, name) in [
            (server_cert.clone(), server_security.clone(), "server"),
            (agent_cert.clone(), agent_security.clone(), "agent"),
        ] {
            let mut renewal = flotilla_client::renewal::Renewal::new(
                cert,
                vec![addr.clone()],
                security,
                files.path(),
                name,
            );
            renewal.retry_min = Duration::from_millis(100);
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(renewal.run(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })));
        }

        flotilla_testkit::eventually(
            "both certificates renewed",
            Duration::from_secs(15),
            || async {
                (server_cert.info().serial != old_server && agent_cert.info().serial != old_agent)
                    .then_some(())
            },
        )
        .await?;
        // The listener opened before the renewal shows the new certificate.
        let new_server = server_cert.info().serial;
        assert_eq!(served_serial(&pki.trust, &addr).await?, new_server);
        // The files hold the renewed identity (and its key).
        for (name, cert) in [("server", &server_cert), ("agent", &agent_cert)] {
            let on_disk = RotatingCert::load(files.path(), name)?;
            assert_eq!(on_disk.info().serial, cert.info().serial, "{name}");
            assert_eq!(on_disk.identity(), cert.identity(), "{name}");
        }
        // The renewed agent still calls the API, on a new connection.
        let ch = agent_security.channel(&addr, Duration::from_secs(2))?;
        FederationServiceClient::new(ch)
            .list_clusters(pb::ListClustersRequest::default())
            .await?;
        // Past the old certificates' expiry, new handshakes still succeed.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(served_serial(&pki.trust, &addr).await?, new_server);

        stop.send_replace(true);
        for t in tasks {
            t.await??;
        }
        f.stop_all().await
    })
    .await
}

fn tenant_policy(tenant: &str, models: &[&str], etag: &str) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant: tenant.into(),
        approved_models: models.iter().map(|m| (*m).to_owned()).collect(),
        requests_per_minute: 0,
        tokens_per_minute: 0,
        external_endpoints: Vec::new(),
        etag: etag.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_admins_racing_on_one_policy_get_one_success_and_one_aborted() -> TestResult {
    bounded(Duration::from_secs(40), async {
        let (f, pki) = mtls_federation(2).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        // Through a follower: the condition travels with the forwarded write.
        let follower = if leader == 1 { 2 } else { 1 };
        let ch = pki.channel(&f.addr(follower), "ops", Role::Admin)?;
        let mut pol = PolicyServiceClient::new(ch.clone());
        let set = |p: pb::TenantPolicy| pb::SetPolicyRequest { policy: Some(p) };
        let get = |tenant: &str| pb::GetPolicyRequest {
            tenant: tenant.into(),
            allow_stale: false,
        };
        let mut wl = WorkloadServiceClient::new(ch.clone());
        for model in ["x", "y", "z", "m"] {
            let workload = Some(workload(&format!("serves-{model}"), model));
            wl.apply_workload(pb::ApplyWorkloadRequest { workload })
                .await?;
        }
        pol.set_policy(set(tenant_policy("acme", &["x", "y"], "")))
            .await?;
        let read = pol
            .get_policy(get("acme"))
            .await?
            .into_inner()
            .policy
            .ok_or("no policy")?;
        assert!(!read.etag.is_empty(), "reads carry the etag");

        // One removes x; the other, from the same read, adds z.
        pol.set_policy(set(tenant_policy("acme", &["y"], &read.etag)))
            .await?;
        let second = pol
            .set_policy(set(tenant_policy("acme", &["x", "y", "z"], &read.etag)))
            .await
            .expect_err("a write from a stale read is refused");
        assert_eq!(second.code(), Code::Aborted, "{second:?}");
        let info = second.get_details_error_info().ok_or("no ErrorInfo")?;
        assert_eq!(info.reason, "ETAG_MISMATCH");
        assert_eq!(
            info.metadata.get("expected_etag"),
            Some(&read.etag),
            "{info:?}"
        );
        assert!(
            second.message().contains("changed since it was read"),
            "{second:?}"
        );
        let now = pol
            .get_policy(get("acme"))
            .await?
            .into_inner()
            .policy
            .ok_or("no policy")?;
        assert_eq!(now.approved_models, ["y"], "x was not approved again");
        assert_ne!(now.etag, read.etag);

        // A stale delete is refused; one at the current etag deletes.
        let stale = pb::DeletePolicyRequest {
            tenant: "acme".into(),
            etag: read.etag.clone(),
        };
        assert_eq!(code(pol.delete_policy(stale).await), Code::Aborted);
        pol.delete_policy(pb::DeletePolicyRequest {
            tenant: "acme".into(),
            etag: now.etag.clone(),
        })
        .await?;

        // "0" creates only; something else than an etag is invalid.
        pol.set_policy(set(tenant_policy("new", &["m"], "0")))
            .await?;
        assert_eq!(
            code(pol.set_policy(set(tenant_policy("new", &["m"], "0"))).await),
            Code::Aborted
        );
        assert_eq!(
            code(
                pol.set_policy(set(tenant_policy("new", &["m"], "W/xyz")))
                    .await
            ),
            Code::InvalidArgument
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_carry_etags_and_a_move_from_a_stale_read_is_aborted() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let ch = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        FederationServiceClient::new(ch.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec("c1")),
                ..Default::default()
            })
            .await?;
        let mut wl = WorkloadServiceClient::new(ch.clone());
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(workload("chat", "m")),
        })
        .await?;
        let listed = wl
            .list_workloads(pb::ListWorkloadsRequest {
                allow_stale: false,
                ..Default::default()
            })
            .await?
            .into_inner()
            .workloads;
        let etag = listed.first().map(|w| w.etag.clone()).ok_or("none")?;
        assert!(!etag.is_empty());

        // Someone changes it after our read: our move is refused, theirs stays.
        let mut theirs = workload("chat", "m");
        theirs.priority = 5;
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(theirs),
        })
        .await?;
        let moved = wl
            .move_workload(pb::MoveWorkloadRequest {
                name: "chat".into(),
                cluster: "c1".into(),
                etag: etag.clone(),
            })
            .await;
        assert_eq!(code(moved), Code::Aborted);
        // Without an etag the move applies to the workload as it is now.
        wl.move_workload(pb::MoveWorkloadRequest {
            name: "chat".into(),
            cluster: "c1".into(),
            ..Default::default()
        })
        .await?;
        let now = wl
            .get_workload(pb::GetWorkloadRequest {
                name: "chat".into(),
                allow_stale: false,
            })
            .await?
            .into_inner()
            .workload
            .ok_or("none")?;
        assert_eq!(now.priority, 5, "the other change was kept");
        assert_eq!(
            now.constraints.map(|c| c.clusters),
            Some(vec!["c1".to_owned()])
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_come_in_pages_that_follow_each_other_in_key_order() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let ch = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let mut wl = WorkloadServiceClient::new(ch.clone());
        for name in ["w4", "w1", "w3", "w0", "w2"] {
            wl.apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload(name, "m")),
            })
            .await?;
        }
        let list = |page_token: String| pb::ListWorkloadsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        };
        let first = wl.list_workloads(list(String::new())).await?.into_inner();
        assert_eq!(first.workloads.len(), 2);
        assert!(!first.next_page_token.is_empty());
        // A write between pages: one before the cursor, which this listing misses.
        wl.apply_workload(pb::ApplyWorkloadRequest {
            workload: Some(workload("w00", "m")),
        })
        .await?;
        let second = wl
            .list_workloads(list(first.next_page_token.clone()))
            .await?
            .into_inner();
        let third = wl
            .list_workloads(list(second.next_page_token.clone()))
            .await?
            .into_inner();
        assert!(third.next_page_token.is_empty(), "the last page says so");
        let names: Vec<String> = [first.workloads, second.workloads, third.workloads]
            .into_iter()
            .flatten()
            .map(|w| w.name)
            .collect();
        assert_eq!(names, ["w0", "w1", "w2", "w3", "w4"]);

        // A token belongs to its RPC and its filter.
        let gpus = CapacityServiceClient::new(ch.clone())
            .list_gpus(pb::ListGpusRequest {
                page_token: first.next_page_token,
                ..Default::default()
            })
            .await;
        assert_eq!(code(gpus), Code::InvalidArgument);
        // Without a page size, the server's default page (500) holds them all.
        let all = wl
            .list_workloads(pb::ListWorkloadsRequest::default())
            .await?
            .into_inner();
        assert_eq!(all.workloads.len(), 6);
        assert!(all.next_page_token.is_empty());
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_watch_can_follow_one_cluster_and_says_when_it_is_in_sync() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        clusters_with_gpus(&admin, &["c1", "c2"]).await?;
        let mut wl = WorkloadServiceClient::new(admin.clone());
        for (w, m) in [("w0", "m0"), ("w1", "m1"), ("w2", "m2")] {
            wl.apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload(w, m)),
            })
            .await?;
        }
        make_ready(&pki, &f.addr(1), "w0", "c1", 0).await?;
        make_ready(&pki, &f.addr(1), "w1", "c2", 0).await?;

        let mut watch = PlacementServiceClient::new(admin.clone())
            .watch_placements(pb::WatchPlacementsRequest {
                cluster: "c1".into(),
                progress: true,
                from_revision: 0,
            })
            .await?
            .into_inner();
        let mut next = async || -> TestResult<pb::WatchPlacementsResponse> {
            Ok(
                tokio::time::timeout(Duration::from_secs(5), watch.message())
                    .await??
                    .ok_or("the watch ended")?,
            )
        };
        let first = next().await?;
        assert_eq!(
            first.placement.map(|p| p.workload).as_deref(),
            Some("w0"),
            "only c1's placements"
        );
        let synced = next().await?;
        assert!(synced.synced && synced.placement.is_none(), "{synced:?}");
        make_ready(&pki, &f.addr(1), "w2", "c1", 1).await?;
        let later = next().await?;
        assert_eq!(later.placement.map(|p| p.workload).as_deref(), Some("w2"));
        f.stop_all().await
    })
    .await
}

/// Registers `clusters`, each with a node of four GPUs, as an admin.
async fn clusters_with_gpus(admin: &Channel, clusters: &[&str]) -> TestResult {
    for c in clusters {
        FederationServiceClient::new(admin.clone())
            .register_cluster(pb::RegisterClusterRequest {
                spec: Some(spec(c)),
                ..Default::default()
            })
            .await?;
        CapacityServiceClient::new(admin.clone())
            .report_capacity(pb::ReportCapacityRequest {
                cluster: (*c).into(),
                nodes: nodes(4),
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// The messages of a watch up to its synced marker: (workload, removed), and the
/// marker's revision.
async fn until_synced(
    watch: &mut tonic::Streaming<pb::WatchPlacementsResponse>,
) -> TestResult<(Vec<(String, bool)>, u64)> {
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await??
            .ok_or("the watch ended")?;
        if m.synced {
            return Ok((seen, m.revision));
        }
        if let Some(p) = m.placement {
            seen.push((p.workload, m.removed));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_watch_resumes_from_a_revision_with_what_it_missed_only() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        clusters_with_gpus(&admin, &["c1", "c2"]).await?;
        let mut wl = WorkloadServiceClient::new(admin.clone());
        for (w, m) in [("w0", "m0"), ("w1", "m1"), ("w2", "m2"), ("w3", "m3")] {
            wl.apply_workload(pb::ApplyWorkloadRequest {
                workload: Some(workload(w, m)),
            })
            .await?;
        }
        make_ready(&pki, &f.addr(1), "w0", "c1", 0).await?;
        make_ready(&pki, &f.addr(1), "w1", "c2", 0).await?;
        make_ready(&pki, &f.addr(1), "w3", "c1", 2).await?;
        let watch = |from_revision| {
            let mut client = PlacementServiceClient::new(admin.clone());
            async move {
                client
                    .watch_placements(pb::WatchPlacementsRequest {
                        cluster: "c1".into(),
                        progress: true,
                        from_revision,
                    })
                    .await
                    .map(tonic::Response::into_inner)
            }
        };
        let (first, seen) = until_synced(&mut watch(0).await?).await?;
        assert_eq!(
            first,
            vec![("w0".to_owned(), false), ("w3".to_owned(), false)]
        );

        // While the watcher is away: w2 is placed in c1, and w0 goes (deleted,
        // its replica gone).
        make_ready(&pki, &f.addr(1), "w2", "c1", 1).await?;
        wl.delete_workload(pb::DeleteWorkloadRequest {
            name: "w0".into(),
            ..Default::default()
        })
        .await?;
        let w0 = PlacementServiceClient::new(admin.clone())
            .get_placement(pb::GetPlacementRequest {
                workload: "w0".into(),
                allow_stale: false,
            })
            .await?
            .into_inner()
            .placement
            .ok_or("no placement")?;
        PlacementServiceClient::new(admin.clone())
            .report_replica_phase(pb::ReportReplicaPhaseRequest {
                workload: "w0".into(),
                replica: w0.replicas[0].id,
                phase: pb::Phase::Gone as i32,
                endpoint: String::new(),
            })
            .await?;

        let (missed, now) = until_synced(&mut watch(seen).await?).await?;
        assert_eq!(
            missed,
            vec![("w2".to_owned(), false), ("w0".to_owned(), true)],
            "what changed since, in order, and nothing else (w3 did not change, w1 is in c2)"
        );
        assert!(now > seen);
        let (nothing, _) = until_synced(&mut watch(now).await?).await?;
        assert!(nothing.is_empty(), "up to date: {nothing:?}");

        // A list gives the revision to watch from.
        let listed = PlacementServiceClient::new(admin.clone())
            .list_placements(pb::ListPlacementsRequest {
                cluster: "c1".into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(listed.revision, now);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_watch_sends_changes_but_not_lease_renewals() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let mut fed = FederationServiceClient::new(admin.clone());
        fed.register_cluster(pb::RegisterClusterRequest {
            spec: Some(spec("c1")),
            ..Default::default()
        })
        .await?;
        let mut watch = fed
            .watch_clusters(pb::WatchClustersRequest { progress: true })
            .await?
            .into_inner();
        let mut next = async || -> TestResult<pb::WatchClustersResponse> {
            Ok(
                tokio::time::timeout(Duration::from_secs(5), watch.message())
                    .await??
                    .ok_or("the watch ended")?,
            )
        };
        let first = next().await?;
        let name = |m: &pb::WatchClustersResponse| {
            m.cluster
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .map(|s| s.name.clone())
        };
        assert_eq!(name(&first).as_deref(), Some("c1"));
        assert!(next().await?.synced);

        // A heartbeat renews the lease: nothing to send. A cordon is a change.
        CapacityServiceClient::new(admin.clone())
            .heartbeat(pb::HeartbeatRequest {
                cluster: "c1".into(),
            })
            .await?;
        fed.cordon_cluster(pb::CordonClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await?;
        let cordoned = next().await?;
        assert!(
            cordoned.cluster.as_ref().is_some_and(|c| c.cordoned),
            "the next message is the cordon, not the heartbeat: {cordoned:?}"
        );
        fed.leave_cluster(pb::LeaveClusterRequest {
            name: "c1".into(),
            ..Default::default()
        })
        .await?;
        let left = next().await?;
        assert!(
            left.removed && name(&left).as_deref() == Some("c1"),
            "{left:?}"
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_migration_is_an_admin_write_refused_when_no_such_move_runs() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let request = || pb::AbortMigrationRequest {
            workload: "nope".into(),
            target: 7,
        };
        let agent = pki.channel(&f.addr(1), "c1", Role::Agent)?;
        assert_eq!(
            code(
                PlacementServiceClient::new(agent)
                    .abort_migration(request())
                    .await
            ),
            Code::PermissionDenied
        );
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let missing = PlacementServiceClient::new(admin)
            .abort_migration(request())
            .await
            .err()
            .ok_or("an abort of nothing succeeded")?;
        assert_eq!(missing.code(), Code::FailedPrecondition);
        assert!(
            missing.message().contains("nope/r7")
                && missing.message().contains("not the target of a move"),
            "{missing:?}"
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_read_and_changed_field_by_field_through_the_typed_api() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let (f, pki) = mtls_federation(1).await?;
        let admin = pki.channel(&f.addr(1), "ops", Role::Admin)?;
        let mut fed = FederationServiceClient::new(admin);
        let before = fed
            .get_settings(pb::GetSettingsRequest::default())
            .await?
            .into_inner()
            .settings
            .ok_or("no settings")?;
        let mut change = before.clone();
        change.drain_deadline = Some(prost_types::Duration {
            seconds: 45,
            nanos: 0,
        });
        change.hysteresis = before.hysteresis + 1;
        let mask = |paths: &[&str]| {
            Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            })
        };
        fed.update_settings(pb::UpdateSettingsRequest {
            settings: Some(change),
            update_mask: mask(&["drain_deadline"]),
        })
        .await?;
        let after = fed
            .get_settings(pb::GetSettingsRequest::default())
            .await?
            .into_inner()
            .settings
            .ok_or("no settings")?;
        assert_eq!(after.drain_deadline.map(|d| d.seconds), Some(45));
        assert_eq!(after.hysteresis, before.hysteresis, "not in the mask");

        // Core's validation names the field; nothing changes.
        let mut bad = after.clone();
        bad.traffic_step_pct = 0;
        let refused = fed
            .update_settings(pb::UpdateSettingsRequest {
                settings: Some(bad),
                update_mask: mask(&["traffic_step_pct"]),
            })
            .await
            .err()
            .ok_or("a step of 0% was accepted")?;
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(
            refused.message().contains("traffic_step_pct"),
            "{refused:?}"
        );

        // Two admins from one read: the first change stands, the second is ABORTED.
        assert!(!after.etag.is_empty() && after.etag != before.etag);
        let mut first = after.clone();
        first.hysteresis = after.hysteresis + 5;
        fed.update_settings(pb::UpdateSettingsRequest {
            settings: Some(first),
            update_mask: mask(&["hysteresis"]),
        })
        .await?;
        let mut second = after.clone();
        second.max_concurrent_moves = after.max_concurrent_moves + 1;
        let conflict = fed
            .update_settings(pb::UpdateSettingsRequest {
                settings: Some(second.clone()),
                update_mask: mask(&["max_concurrent_moves"]),
            })
            .await
            .err()
            .ok_or("a change from a stale read was applied")?;
        assert_eq!(conflict.code(), Code::Aborted, "{conflict:?}");
        // Without an etag, a masked change keeps what others changed meanwhile.
        second.etag.clear();
        fed.update_settings(pb::UpdateSettingsRequest {
            settings: Some(second),
            update_mask: mask(&["max_concurrent_moves"]),
        })
        .await?;
        let now = fed
            .get_settings(pb::GetSettingsRequest::default())
            .await?
            .into_inner()
            .settings
            .ok_or("no settings")?;
        assert_eq!(now.hysteresis, after.hysteresis + 5);
        assert_eq!(now.max_concurrent_moves, after.max_concurrent_moves + 1);

        let agent = pki.channel(&f.addr(1), "c1", Role::Agent)?;
        assert_eq!(
            code(
                FederationServiceClient::new(agent)
                    .update_settings(pb::UpdateSettingsRequest {
                        settings: Some(after),
                        update_mask: None,
                    })
                    .await
            ),
            Code::PermissionDenied
        );
        f.stop_all().await
    })
    .await
}
