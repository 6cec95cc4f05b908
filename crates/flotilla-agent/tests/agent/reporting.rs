//! The reporting loop against a real registry server: fleet changes become registry
//! changes, noise does not, the loop survives servers that are not there yet or
//! restart, and agents that report only their own node share a cluster.

use crate::FLEET;
use crate::registry::{Counting, link, state};
use flotilla_agent::change::ReportPolicy;
use flotilla_agent::gpu::GpuSource;
use flotilla_agent::gpu::simulated::{DeviceChange, SimulatedFleet};
use flotilla_agent::report::{self, ReportConfig, StatusHandle};
use flotilla_client::RegistryLink;
use flotilla_core::{ClusterSpec, Command, Millis, ReportScope, Settings, State};
use flotilla_registry::Bootstrap;
use flotilla_testkit::{TestResult, bounded, eventually, free_addr, start_server};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn config() -> ReportConfig {
    let mut c = ReportConfig::new(ClusterSpec {
        name: "east".into(),
        region: "europe".into(),
        zone: "a".into(),
        labels: Default::default(),
        gateway_address: "gw.east.example:15443".into(),
        endpoint_ranges: Vec::new(),
    });
    c.sample_interval = Duration::from_millis(50);
    c.policy = ReportPolicy {
        heartbeat_interval: Millis(200),
        ..ReportPolicy::default()
    };
    c.retry_initial = Duration::from_millis(50);
    c.retry_max = Duration::from_millis(400);
    c
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), flotilla_agent::AgentError>>,
    status: StatusHandle,
}

fn start<L: RegistryLink>(fleet: &SimulatedFleet, link: L) -> Running {
    start_with(fleet, link, config())
}

fn start_with<L: RegistryLink>(fleet: &SimulatedFleet, link: L, config: ReportConfig) -> Running {
    let stop = CancellationToken::new();
    let status = StatusHandle::default();
    let source: Arc<dyn GpuSource> = Arc::new(fleet.clone());
    let task = tokio::spawn(report::run(
        source,
        link,
        config,
        status.clone(),
        stop.clone(),
    ));
    Running { stop, task, status }
}

impl Running {
    async fn stop(self) -> TestResult {
        self.stop.cancel();
        self.task.await??;
        Ok(())
    }
}

fn healthy(state: &State, node: &str, uuid: &str) -> Option<bool> {
    let c = state.cluster("east")?;
    Some(
        c.inventory
            .nodes
            .get(node)?
            .devices
            .get(uuid)?
            .report
            .healthy,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_changes_become_registry_changes_and_utilisation_writes_nothing() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        let (server, addr) =
            start_server(dir.path(), "127.0.0.1:0".parse()?, Bootstrap::Init).await?;
        let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET)?;
        let link = Counting::new(link(&[addr])?);
        let agent = start(&fleet, link.clone());

        // Registered with its spec, and every node of the source is in the inventory.
        let devices = eventually("the inventory", Duration::from_secs(5), || async {
            let s = state(&server);
            let c = s.cluster("east")?;
            (c.inventory.device_count() > 0).then(|| (c.spec.clone(), c.inventory.device_count()))
        })
        .await?;
        assert_eq!(devices.0.gateway_address, "gw.east.example:15443");
        assert_eq!(devices.0.zone, "a");
        // gpu-a: 2 H100 + 2 MIG instances; gpu-b: 1 L4.
        assert_eq!(devices.1, 5);
        assert_eq!(
            healthy(&state(&server), "gpu-a", "GPU-sim-gpu-a-0"),
            Some(true)
        );

        // Take a GPU away: the registry sees it fail.
        fleet.set("gpu-a", "0", DeviceChange::Detach)?;
        eventually(
            "the GPU to be reported lost",
            Duration::from_secs(5),
            || async {
                (healthy(&state(&server), "gpu-a", "GPU-sim-gpu-a-0") == Some(false)).then_some(())
            },
        )
        .await?;
        // And give it back.
        fleet.set("gpu-a", "0", DeviceChange::Recover)?;
        eventually(
            "the GPU to be reported back",
            Duration::from_secs(5),
            || async {
                (healthy(&state(&server), "gpu-a", "GPU-sim-gpu-a-0") == Some(true)).then_some(())
            },
        )
        .await?;
        // The registry applies a write a moment before the proposer hears back.
        eventually(
            "first report, loss, recovery",
            Duration::from_secs(2),
            || async { (link.applied("report_capacity") == 3).then_some(()) },
        )
        .await?;
        let writes = 3;

        // Utilisation moves on every GPU for many samples: no capacity write, only
        // lease renewals.
        let heartbeats = link.applied("heartbeat");
        for i in 0..20u32 {
            for device in ["0", "1"] {
                fleet.set(
                    "gpu-a",
                    device,
                    DeviceChange::Usage {
                        memory_used_mib: 0,
                        utilization_pct: (i * 7) % 100,
                    },
                )?;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(link.applied("report_capacity"), writes);
        assert!(
            link.applied("heartbeat") > heartbeats,
            "the lease is renewed while nothing changes"
        );
        assert_eq!(link.applied("register_cluster"), 1);
        let status = agent.status.get();
        assert_eq!((status.capacity_writes, status.registrations), (3, 1));
        agent.stop().await?;
        server.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_waits_for_a_server_that_is_not_up_yet_and_tries_every_server() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        // The first server in the list never comes; the second comes late.
        let never = free_addr()?;
        let late = free_addr()?;
        let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET)?;
        let link = Counting::new(link(&[never, late])?);
        let agent = start(&fleet, link.clone());
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(link.applied("register_cluster"), 0);
        assert!(
            agent.status.get().last_error.is_some(),
            "the failure is visible"
        );

        let (server, _) = start_server(dir.path(), late, Bootstrap::Init).await?;
        eventually("the inventory", Duration::from_secs(10), || async {
            let s = state(&server);
            (s.cluster("east")?.inventory.device_count() == 5).then_some(())
        })
        .await?;
        eventually("the error to clear", Duration::from_secs(5), || async {
            agent.status.get().last_error.is_none().then_some(())
        })
        .await?;
        agent.stop().await?;
        server.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporter_survives_a_server_restart_and_reports_what_changed_meanwhile() -> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        let (server, addr) =
            start_server(dir.path(), "127.0.0.1:0".parse()?, Bootstrap::Init).await?;
        let fleet = SimulatedFleet::from_toml("fleet.toml", FLEET)?;
        let link = Counting::new(link(&[addr])?);
        let agent = start(&fleet, link.clone());
        eventually("the inventory", Duration::from_secs(5), || async {
            healthy(&state(&server), "gpu-a", "GPU-sim-gpu-a-1")
        })
        .await?;

        server.shutdown().await?;
        // While the server is down a GPU fails; the write fails and is retried.
        fleet.set(
            "gpu-a",
            "1",
            DeviceChange::Fail {
                reason: "Xid 79".into(),
            },
        )?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (server, _) = start_server(dir.path(), addr, Bootstrap::Resume).await?;
        eventually(
            "the failure to reach the restarted server",
            Duration::from_secs(10),
            || async {
                (healthy(&state(&server), "gpu-a", "GPU-sim-gpu-a-1") == Some(false)).then_some(())
            },
        )
        .await?;
        // The registry kept the cluster: no second registration was needed.
        assert_eq!(link.applied("register_cluster"), 1);
        agent.stop().await?;
        server.shutdown().await?;
        Ok(())
    })
    .await
}

/// `flotilla agent --report-scope node`: one agent per GPU node (a Kubernetes
/// DaemonSet), each seeing only its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_of_one_cluster_keep_each_others_nodes_and_a_stopped_ones_node_expires()
-> TestResult {
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir()?;
        let (server, addr) =
            start_server(dir.path(), "127.0.0.1:0".parse()?, Bootstrap::Init).await?;
        let settings = Settings {
            lease_duration: Millis(1_000),
            ..Settings::default()
        };
        link(&[addr])?
            .propose(&Command::SetSettings { settings })
            .await?;
        let split = FLEET
            .find("[[nodes]]\nname = \"gpu-b\"")
            .ok_or("FLEET has gpu-b")?;
        let (only_a, only_b) = FLEET.split_at(split);
        let fleet_a = SimulatedFleet::from_toml("a.toml", only_a)?;
        let fleet_b = SimulatedFleet::from_toml("b.toml", only_b)?;
        let mut by_node = config();
        by_node.scope = ReportScope::Nodes;
        let (link_a, link_b) = (Counting::new(link(&[addr])?), Counting::new(link(&[addr])?));
        let agent_a = start_with(&fleet_a, link_a.clone(), by_node.clone());
        let agent_b = start_with(&fleet_b, link_b.clone(), by_node);

        let nodes = |s: &State| -> Option<Vec<String>> {
            Some(s.cluster("east")?.inventory.nodes.keys().cloned().collect())
        };
        eventually("both nodes", Duration::from_secs(5), || async {
            (nodes(&state(&server))? == ["gpu-a", "gpu-b"]).then_some(())
        })
        .await?;
        // Several heartbeat intervals later neither agent has overwritten the other,
        // and each renewed its node's lease with its node's report, not a heartbeat.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let s = state(&server);
        assert_eq!(nodes(&s), Some(vec!["gpu-a".into(), "gpu-b".into()]));
        assert_eq!(
            s.cluster("east").map(|c| c.inventory.device_count()),
            Some(5)
        );
        for l in [&link_a, &link_b] {
            assert!(
                l.applied("report_nodes") >= 3,
                "the lease is renewed by reports"
            );
            assert_eq!(l.applied("heartbeat"), 0);
            assert_eq!(l.applied("report_capacity"), 0);
        }
        assert!(
            s.cluster("east")
                .and_then(|c| c.inventory.nodes.get("gpu-a"))
                .and_then(|n| n.lease_expires_at)
                .is_some(),
            "a node reported on its own holds a lease"
        );
        assert!(agent_a.status.get().heartbeats >= 2);

        // gpu-b's agent stops: its node leaves once its lease runs out; gpu-a stays.
        agent_b.stop().await?;
        eventually("gpu-b to expire", Duration::from_secs(10), || async {
            (nodes(&state(&server))? == ["gpu-a"]).then_some(())
        })
        .await?;
        assert_eq!(
            state(&server).cluster("east").map(|c| c.state),
            Some(flotilla_core::ClusterState::Ready)
        );
        agent_a.stop().await?;
        server.shutdown().await?;
        Ok(())
    })
    .await
}
