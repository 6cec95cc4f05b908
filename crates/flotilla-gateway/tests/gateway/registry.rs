//! Registry mode: a real registry server on 127.0.0.1:0 (the registry's own test
//! federation) and real `flotilla model` replicas in-process, reported Ready with
//! their endpoints as an agent would. Commands go through the registry, so routes
//! and this cluster's replicas reach the gateway the way they do in production.

use crate::support::*;
use flotilla_core::{ClusterSpec, Command, DeviceRef, Phase, ReplicaId, fixtures};
use flotilla_gateway::{
    Connector, GatewayError, PeerCheck, RegistryProgress, RegistryRouteSource, RegistrySourceConfig,
};
use flotilla_pki::{Identity, Role, Validity};
use flotilla_registry::{Bootstrap, TransportSecurity};
use flotilla_testkit::{Federation, TestResult, bounded, eventually, free_addr, rotating_cert};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub(crate) const WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- registry

pub(crate) async fn registry() -> TestResult<Federation> {
    let mut f = Federation::new()?;
    // The tests drive every change themselves; no scheduler.
    f.tweak = |c| c.housekeeping_interval = None;
    f.start_members(1).await?;
    Ok(f)
}

pub(crate) async fn propose(f: &Federation, command: Command) -> TestResult {
    let reply = f.client(1)?.propose(&command).await?;
    assert!(
        reply.applied,
        "{command:?} rejected: {}",
        reply.rejection_message
    );
    Ok(())
}

/// Registers `name` with `gpus` idle GPUs on node n1.
pub(crate) async fn add_cluster(
    f: &Federation,
    name: &str,
    gateway_address: String,
    gpus: u32,
) -> TestResult {
    propose(
        f,
        Command::RegisterCluster {
            spec: ClusterSpec {
                gateway_address,
                endpoint_ranges: Vec::new(),
                ..fixtures::cluster(name, "europe")
            },
        },
    )
    .await?;
    propose(
        f,
        Command::ReportCapacity {
            cluster: name.into(),
            nodes: vec![fixtures::gpu_node(name, "n1", "NVIDIA H100", gpus, 81_920)],
        },
    )
    .await
}

/// Places a replica of `workload` on GPU `gpu` of `cluster`, as the scheduler
/// would; it is Starting, without an endpoint. Returns its id.
async fn place_replica(f: &Federation, workload: &str, cluster: &str, gpu: u32) -> TestResult<u64> {
    propose(
        f,
        Command::StartReplica {
            workload: workload.into(),
            cluster: cluster.into(),
            devices: vec![DeviceRef {
                node: "n1".into(),
                uuid: format!("GPU-{cluster}-n1-{gpu}"),
            }],
            replaces: None,
        },
    )
    .await?;
    let (_, state) = f.client(1)?.read_state(true).await?;
    Ok(state
        .placement(workload)
        .and_then(|p| p.replicas.keys().max())
        .ok_or("no replica placed")?
        .0)
}

/// Sets a replica's phase (with its endpoint, for Ready), as its cluster's agent
/// would.
async fn set_phase(
    f: &Federation,
    workload: &str,
    id: u64,
    phase: Phase,
    endpoint: Option<String>,
) -> TestResult {
    propose(
        f,
        Command::SetReplicaPhase {
            workload: workload.into(),
            replica: ReplicaId(id),
            phase,
            endpoint,
        },
    )
    .await
}

/// Applies workload `name` serving `model` (core's test workload: `gpus` per
/// replica, at most `max` replicas).
pub(crate) async fn apply_workload(
    f: &Federation,
    name: &str,
    model: &str,
    gpus: u32,
    max: u32,
) -> TestResult {
    propose(
        f,
        Command::ApplyWorkload {
            workload: fixtures::workload(name, model, gpus, max),
        },
    )
    .await
}

/// Places a replica of `workload` on `cluster`, serves it in this process and
/// reports it Ready at its address: a route change.
pub(crate) async fn serving_replica(
    f: &Federation,
    workload: &str,
    name: &str,
    cluster: &str,
    gpu: u32,
) -> TestResult<(u64, Model)> {
    let id = place_replica(f, workload, cluster, gpu).await?;
    let m = model(id, cluster, name).await;
    set_phase(f, workload, id, Phase::Ready, Some(m.addr.to_string())).await?;
    Ok((id, m))
}

async fn route_revision(f: &Federation) -> TestResult<u64> {
    Ok(f.client(1)?.read_state(true).await?.1.routes().revision)
}

// ---------------------------------------------------------------- replicas

// ---------------------------------------------------------------- gateway

async fn registry_gateway(cluster: &str, servers: Vec<String>) -> (TestGateway, RegistryProgress) {
    registry_gateway_with(config(cluster), None, servers, |_| {}).await
}

pub(crate) async fn registry_gateway_with(
    config: flotilla_gateway::GatewayConfig,
    east_west: Option<TcpListener>,
    servers: Vec<String>,
    tweak: impl FnOnce(&mut RegistrySourceConfig),
) -> (TestGateway, RegistryProgress) {
    let cluster = config.cluster.clone();
    let mut source = RegistrySourceConfig::new(cluster, servers);
    tweak(&mut source);
    source.rpc_timeout = Duration::from_secs(2);
    source.backoff_initial = Duration::from_millis(50);
    source.backoff_max = Duration::from_millis(300);
    let connect: Connector = Arc::new(|addr: &str| {
        TransportSecurity::Plaintext
            .channel(addr, Duration::from_secs(1))
            .map_err(|e| GatewayError::Config(e.to_string()))
    });
    let source = RegistryRouteSource::start(source, connect).unwrap();
    let progress = source.progress();
    let listeners = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        east_west,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    (
        start_gateway_with_source(config, listeners, source),
        progress,
    )
}

/// Status and the replica that answered (`x-flotilla-replica`).
async fn served_by(gw: &TestGateway, model: &str) -> (u16, String) {
    served_at(gw.inference, model).await
}

async fn served_at(gateway: std::net::SocketAddr, model: &str) -> (u16, String) {
    let resp = send(gateway, chat(model)).await;
    let replica = resp
        .headers()
        .get("x-flotilla-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let (status, _) = text(resp).await;
    (status, replica)
}

async fn until_served(gw: &TestGateway, model: &str) -> Result<String, String> {
    eventually(&format!("{model} to be served"), WITHIN, || async {
        let (s, r) = served_by(gw, model).await;
        (s == 200).then_some(r)
    })
    .await
}

async fn until_link(gw: &TestGateway, link: &str) -> Result<serde_json::Value, String> {
    eventually(
        &format!("the registry link to be {link}"),
        WITHIN,
        || async {
            let s = gw.status().await;
            (s["registry"] == link).then_some(s)
        },
    )
    .await
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_from_the_registry_reach_a_replica_and_changes_swap_in() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        let (id1, _m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;

        let (gw, progress) = registry_gateway("a", vec![f.addr(1)]).await;
        assert_eq!(until_served(&gw, "llama").await?, format!("r{id1}"));
        let status = until_link(&gw, "connected").await?;
        assert_eq!(status["route_revision"], route_revision(&f).await?);
        assert!(status["routes_age_ms"].is_u64(), "{status}");
        assert_eq!(
            progress.last_from_revision(),
            0,
            "a first watch loads the whole table"
        );
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("flotilla_gateway_registry_connected 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("flotilla_gateway_routes_age_seconds"),
            "{metrics}"
        );

        // A second model appears through the registry and is swapped in.
        apply_workload(&f, "w2", "mistral", 1, 1).await?;
        let (id2, _m2) = serving_replica(&f, "w2", "mistral", "a", 1).await?;
        assert_eq!(until_served(&gw, "mistral").await?, format!("r{id2}"));

        // It goes again: the tombstone takes it out of the table.
        propose(
            &f,
            Command::DeleteWorkload {
                workload: "w2".into(),
            },
        )
        .await?;
        propose(
            &f,
            Command::SetReplicaPhase {
                workload: "w2".into(),
                replica: ReplicaId(id2),
                phase: Phase::Gone,
                endpoint: None,
            },
        )
        .await?;
        eventually("mistral to be gone", WITHIN, || async {
            (served_by(&gw, "mistral").await.0 == 404).then_some(())
        })
        .await?;
        assert_eq!(served_by(&gw, "llama").await, (200, format!("r{id1}")));
        assert_eq!(
            progress.watches_opened(),
            1,
            "one watch followed every change"
        );
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_clusters_replicas_come_from_the_registry_by_name_and_phase() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 2).await?;
        // Reported by DNS name, as a Kubernetes replica's Service is: the gateway
        // resolves it when connecting.
        let id1 = place_replica(&f, "w1", "a", 0).await?;
        let m1 = model(id1, "a", "llama").await;
        let by_name = format!("localhost:{}", m1.addr.port());
        set_phase(&f, "w1", id1, Phase::Ready, Some(by_name.clone())).await?;
        let (gw, _) = registry_gateway("a", vec![f.addr(1)]).await;
        assert_eq!(until_served(&gw, "llama").await?, format!("r{id1}"));

        // A second replica turns Ready, and the first drains: it gets nothing new.
        let (id2, _m2) = serving_replica(&f, "w1", "llama", "a", 1).await?;
        propose(
            &f,
            Command::DrainReplica {
                workload: "w1".into(),
                replica: ReplicaId(id1),
            },
        )
        .await?;
        eventually(
            "the draining replica to get nothing new",
            WITHIN,
            || async {
                let mut all_r2 = true;
                for _ in 0..4 {
                    all_r2 &= served_by(&gw, "llama").await == (200, format!("r{id2}"));
                }
                all_r2.then_some(())
            },
        )
        .await?;
        let status = gw.status().await;
        assert_eq!(status["ejected"], serde_json::json!([]), "{status}");
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_registry_is_fail_static_and_the_watch_resumes_from_its_revision() -> TestResult
{
    bounded(Duration::from_secs(60), async {
        let mut f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        let (id1, _m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;
        let (gw, progress) = registry_gateway("a", vec![f.addr(1)]).await;
        until_served(&gw, "llama").await?;
        until_link(&gw, "connected").await?;
        let seen = gw.state.current().revision;
        assert_eq!(seen, route_revision(&f).await?);

        // The registry goes away: the last table keeps serving, and says so.
        f.stop(1).await?;
        let status = until_link(&gw, "fail_static").await?;
        assert!(status["fail_static_since_unix_ms"].is_u64(), "{status}");
        for _ in 0..3 {
            assert_eq!(served_by(&gw, "llama").await, (200, format!("r{id1}")));
        }
        let metrics = gw.metrics().await;
        assert!(
            metrics.contains("flotilla_gateway_fail_static 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("flotilla_gateway_registry_connected 0"),
            "{metrics}"
        );

        // It comes back on its address: the gateway reconnects, resuming from the
        // revision it had rather than reloading, and follows changes again.
        f.start(1, Bootstrap::Resume).await?;
        f.wait_leader(Duration::from_secs(10)).await?;
        until_link(&gw, "connected").await?;
        assert!(progress.watches_opened() >= 2);
        assert_eq!(progress.last_from_revision(), seen);
        apply_workload(&f, "w2", "mistral", 1, 1).await?;
        let (id2, _m2) = serving_replica(&f, "w2", "mistral", "a", 1).await?;
        assert_eq!(until_served(&gw, "mistral").await?, format!("r{id2}"));
        let revision = route_revision(&f).await?;
        eventually(
            "the gateway to reach the registry's revision",
            WITHIN,
            || async { (gw.state.current().revision == revision).then_some(()) },
        )
        .await?;
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_while_the_registry_is_down_serves_the_tables_it_kept() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let kept = tempfile::tempdir()?;
        let file = kept.path().join("routing-tables.json");
        let mut f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        let (id1, _m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;
        let (gw, _) = registry_gateway_with(config("a"), None, vec![f.addr(1)], |s| {
            s.tables_file = Some(file.clone())
        })
        .await;
        until_served(&gw, "llama").await?;
        let revision = gw.state.current().revision;
        drop(gw);

        // The registry goes away, and the gateway restarts without it.
        f.stop(1).await?;
        let (gw, progress) = registry_gateway_with(config("a"), None, vec![f.addr(1)], |s| {
            s.tables_file = Some(file)
        })
        .await;
        assert_eq!(until_served(&gw, "llama").await?, format!("r{id1}"));
        assert_eq!(gw.state.current().revision, revision);
        assert_eq!(progress.watches_opened(), 0, "served without the registry");
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replicas_refusal_is_retried_on_another_replica() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 2).await?;
        let (_, m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;
        let (id2, _m2) = serving_replica(&f, "w1", "llama", "a", 1).await?;
        // r1 has begun draining, but the registry has not noticed: the gateway
        // still sees it Ready and sends it requests, which it refuses unprocessed.
        m1.replica.drain().await;
        let (gw, _) = registry_gateway("a", vec![f.addr(1)]).await;
        until_served(&gw, "llama").await?;
        for _ in 0..6 {
            assert_eq!(served_by(&gw, "llama").await, (200, format!("r{id2}")));
        }
        let metrics = gw.metrics().await;
        assert!(
            !metrics.contains("flotilla_gateway_retries_total 0"),
            "the refusal was retried: {metrics}"
        );
        f.stop_all().await
    })
    .await
}

/// A gateway configuration with a federation identity from `ca`, checking peers by
/// SPIFFE id as `flotilla gateway --servers` does.
fn spiffe_config(
    ca: &flotilla_pki::CertificateAuthority,
    cluster: &str,
) -> flotilla_gateway::GatewayConfig {
    let fed = "spiffe-fed";
    let cert = rotating_cert(
        ca,
        &Identity::new(fed, cluster, Role::Gateway).unwrap(),
        Validity::from_now(Duration::from_secs(3600)),
    )
    .unwrap();
    let trust = ca.trust().unwrap();
    let mut c = config(cluster);
    c.federation = fed.into();
    c.east_west_server_tls = Some(Arc::new(
        flotilla_pki::server_config(&trust, cert.clone(), false).unwrap(),
    ));
    c.east_west_client_tls = Some(
        flotilla_pki::client_config(&trust, Some(cert), &[flotilla_pki::Role::Gateway]).unwrap(),
    );
    c.east_west_peer_check = PeerCheck::Spiffe {
        federation: fed.into(),
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_gateways_from_the_registry_are_checked_by_spiffe_identity() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let ca = flotilla_pki::CertificateAuthority::create("spiffe-fed")?;
        let f = registry().await?;
        let b_east_west = TcpListener::bind("127.0.0.1:0").await?;
        let b_addr = b_east_west.local_addr()?;
        add_cluster(&f, "a", String::new(), 1).await?;
        add_cluster(&f, "b", b_addr.to_string(), 1).await?;
        // C claims B's address: whatever answers there is not C's gateway.
        add_cluster(&f, "c", b_addr.to_string(), 1).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        let (id1, _in_b) = serving_replica(&f, "w1", "llama", "b", 0).await?;
        apply_workload(&f, "w2", "qwen", 1, 1).await?;
        // Served in C as far as the registry knows; nothing is reached there.
        let in_c = place_replica(&f, "w2", "c", 0).await?;
        set_phase(
            &f,
            "w2",
            in_c,
            Phase::Ready,
            Some(free_addr().unwrap().to_string()),
        )
        .await?;
        let (_b, _) = registry_gateway_with(
            spiffe_config(&ca, "b"),
            Some(b_east_west),
            vec![f.addr(1)],
            |_| {},
        )
        .await;
        let a_east_west = TcpListener::bind("127.0.0.1:0").await?;
        let (a, _) = registry_gateway_with(
            spiffe_config(&ca, "a"),
            Some(a_east_west),
            vec![f.addr(1)],
            |_| {},
        )
        .await;

        // A reaches B's replica over the hop: B's certificate names B's gateway,
        // and no DNS name was needed.
        assert_eq!(until_served(&a, "llama").await?, format!("r{id1}"));

        // The route to C leads to B's listener, whose certificate is not C's.
        let (s, body) = post_chat(a.inference, "qwen").await;
        assert_eq!(s, 503, "{body}");
        let message = error_json(&body)["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("not spiffe://spiffe-fed/cluster/c/gateway"),
            "{message}"
        );
        f.stop_all().await
    })
    .await
}

// ---------------------------------------------------------------- governance

/// Makes tenant `acme` approved for `models`, with one API key; the key.
pub(crate) async fn tenant_with_key(f: &Federation, models: &[&str]) -> TestResult<String> {
    use flotilla_proto::v1 as pb;
    let ch = TransportSecurity::Plaintext.channel(&f.addr(1), Duration::from_secs(2))?;
    let mut tenants =
        flotilla_proto::v1::tenant_service_client::TenantServiceClient::new(ch.clone());
    tenants
        .set_tenant(pb::SetTenantRequest {
            tenant: Some(pb::Tenant {
                name: "acme".into(),
                ..Default::default()
            }),
        })
        .await?;
    acme_policy(f, models, 0).await?;
    let made = tenants
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "acme".into(),
            expire_time: None,
        })
        .await?
        .into_inner();
    Ok(made.key)
}

/// Sets tenant `acme`'s policy: `models` approved, `requests_per_minute` (0: no
/// limit).
pub(crate) async fn acme_policy(
    f: &Federation,
    models: &[&str],
    requests_per_minute: u32,
) -> TestResult {
    use flotilla_proto::v1 as pb;
    let ch = TransportSecurity::Plaintext.channel(&f.addr(1), Duration::from_secs(2))?;
    flotilla_proto::v1::policy_service_client::PolicyServiceClient::new(ch)
        .set_policy(pb::SetPolicyRequest {
            policy: Some(pb::TenantPolicy {
                tenant: "acme".into(),
                approved_models: models.iter().map(|m| m.to_string()).collect(),
                requests_per_minute,
                tokens_per_minute: 0,
                external_endpoints: Vec::new(),
                etag: String::new(),
            }),
        })
        .await?;
    Ok(())
}

/// The status a chat request for `model` gets with `key` (none: no header).
async fn status_with(gw: &TestGateway, model: &str, key: Option<&str>) -> u16 {
    let bearer = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    let (status, _) = text(send(gw.inference, chat_with(model, &headers)).await).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_from_the_registry_is_enforced_and_a_revoked_key_stops_at_once() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        apply_workload(&f, "w2", "mistral", 1, 1).await?;
        let (_, _m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;
        let (_, _m2) = serving_replica(&f, "w2", "mistral", "a", 1).await?;
        let key = tenant_with_key(&f, &["llama"]).await?;
        let mut config = config("a");
        config.governance.enforce = true;
        let (gw, _) = registry_gateway_with(config, None, vec![f.addr(1)], |s| {
            s.follow_governance = true;
        })
        .await;

        eventually("the key to be admitted", WITHIN, || async {
            (status_with(&gw, "llama", Some(&key)).await == 200).then_some(())
        })
        .await?;
        assert_eq!(status_with(&gw, "llama", None).await, 401, "no key");
        assert_eq!(
            status_with(&gw, "mistral", Some(&key)).await,
            403,
            "a model acme's policy does not approve"
        );
        let forged = format!("{}x", &key[..key.len() - 1]);
        assert_eq!(status_with(&gw, "llama", Some(&forged)).await, 401);

        // Revoked in the registry: refused by the gateway from its next read.
        let id = flotilla_pki::api_key_id(&key)?.to_owned();
        let ch = TransportSecurity::Plaintext.channel(&f.addr(1), Duration::from_secs(2))?;
        flotilla_proto::v1::tenant_service_client::TenantServiceClient::new(ch)
            .revoke_api_key(flotilla_proto::v1::RevokeApiKeyRequest { id })
            .await?;
        eventually("the revoked key to be refused", WITHIN, || async {
            (status_with(&gw, "llama", Some(&key)).await == 401).then_some(())
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_while_the_registry_is_down_still_enforces_governance() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let mut f = registry().await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        let (_, _m1) = serving_replica(&f, "w1", "llama", "a", 0).await?;
        let key = tenant_with_key(&f, &["llama"]).await?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("tables.json");
        let enforcing = || {
            let mut c = config("a");
            c.governance.enforce = true;
            c
        };
        let follow = |file: std::path::PathBuf| {
            move |s: &mut RegistrySourceConfig| {
                s.tables_file = Some(file);
                s.follow_governance = true;
            }
        };
        let (gw, _) =
            registry_gateway_with(enforcing(), None, vec![f.addr(1)], follow(file.clone())).await;
        eventually("the key to be admitted", WITHIN, || async {
            (status_with(&gw, "llama", Some(&key)).await == 200).then_some(())
        })
        .await?;
        drop(gw);

        f.stop(1).await?;
        let (gw, progress) =
            registry_gateway_with(enforcing(), None, vec![f.addr(1)], follow(file)).await;
        eventually("the kept key to be admitted", WITHIN, || async {
            (status_with(&gw, "llama", Some(&key)).await == 200).then_some(())
        })
        .await?;
        assert_eq!(status_with(&gw, "llama", None).await, 401, "no key");
        assert_eq!(
            progress.watches_opened(),
            0,
            "enforced without the registry"
        );
        Ok(())
    })
    .await
}

/// Issue #16: a step of any member's wall clock, beside inference traffic, may
/// not expire a lease, move a replica or fail a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wall_clock_steps_beside_inference_traffic_move_nothing_and_fail_no_request() -> TestResult
{
    const TEN_MINUTES_MS: i64 = 600_000;
    const LEASE_MS: u64 = 1_500;
    bounded(Duration::from_secs(90), async {
        // Three members with their schedulers on, and a lease the jumps dwarf.
        let f = Federation::with_members(3).await?;
        let first = f.wait_leader(WITHIN).await?;
        propose(
            &f,
            Command::SetSettings {
                settings: flotilla_core::Settings {
                    lease_duration: flotilla_core::Millis(LEASE_MS),
                    ..Default::default()
                },
            },
        )
        .await?;
        add_cluster(&f, "a", String::new(), 2).await?;
        let beats = f.heartbeats("a", Duration::from_millis(LEASE_MS / 3));
        apply_workload(&f, "w1", "llama", 1, 1).await?;
        // The scheduler places the replica; it is served here and reported Ready,
        // as the cluster's agent would.
        let id = eventually("the replica placed", WITHIN, || async {
            let (_, state) = f.client(first).ok()?.read_state(true).await.ok()?;
            Some(state.placement("w1")?.replicas.keys().next()?.0)
        })
        .await?;
        let m = model(id, "a", "llama").await;
        set_phase(&f, "w1", id, Phase::Ready, Some(m.addr.to_string())).await?;
        let servers = (1..=3).map(|i| f.addr(i)).collect();
        let (gw, _) = registry_gateway("a", servers).await;
        let replica = until_served(&gw, "llama").await?;

        // Requests every 20 ms, each answer kept, all through the steps.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (addr, stopped) = (gw.inference, stop.clone());
        let traffic = tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                answers.push(served_at(addr, "llama").await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        });
        let settle = || tokio::time::sleep(Duration::from_secs(3));
        f.clock(first).step(TEN_MINUTES_MS);
        settle().await;
        f.clock(first).step(-2 * TEN_MINUTES_MS);
        settle().await;
        for (i, follower) in (1..=3).filter(|id| *id != first).enumerate() {
            let sign = if i == 0 { 1 } else { -1 };
            f.clock(follower).step(sign * TEN_MINUTES_MS);
        }
        settle().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = traffic.await?;

        let failed: Vec<&(u16, String)> = answers
            .iter()
            .filter(|(status, by)| *status != 200 || *by != replica)
            .collect();
        assert!(
            answers.len() > 100 && failed.is_empty(),
            "{} of {} requests failed or moved: {:?}",
            failed.len(),
            answers.len(),
            failed.iter().take(5).collect::<Vec<_>>()
        );
        for (member, state) in f.states() {
            let placed: Vec<u64> = state
                .placement("w1")
                .map(|p| p.replicas.keys().map(|r| r.0).collect())
                .unwrap_or_default();
            assert_eq!(placed, [id], "member {member} moved the replica");
            let a = state.cluster("a").ok_or("cluster a gone")?;
            assert_ne!(
                a.state,
                flotilla_core::ClusterState::Unreachable,
                "member {member} expired a's lease"
            );
        }
        beats.stop().await?;
        f.stop_all().await
    })
    .await
}
