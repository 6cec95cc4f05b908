//! Leader-side housekeeping: a cluster that stops reporting becomes Unreachable; a
//! node reported on its own that stops reporting leaves the inventory.

use crate::common::{assert_identical, register};
use flotilla_core::fixtures::gpu_node;
use flotilla_core::{ClusterState, Command, Millis, Settings};
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_stops_reporting_becomes_unreachable() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = Federation::with_members(3).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let settings = Settings {
            lease_duration: Millis(600),
            ..Settings::default()
        };
        f.client(leader)?
            .propose(&Command::SetSettings { settings })
            .await?;
        f.client(leader)?.propose(&register("quiet")).await?;
        // Nobody heartbeats "quiet": the leader's housekeeping marks it Unreachable.
        eventually("the lease to expire", Duration::from_secs(10), || async {
            let s = f.servers.get(&leader)?.applied().state;
            (s.cluster("quiet")?.state == ClusterState::Unreachable).then_some(())
        })
        .await?;
        f.wait_converged(Duration::from_secs(10)).await?;
        assert_identical(&f.states());
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_agent_stops_reporting_leaves_the_inventory() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = Federation::with_members(1).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let settings = Settings {
            lease_duration: Millis(600),
            ..Settings::default()
        };
        f.client(leader)?
            .propose(&Command::SetSettings { settings })
            .await?;
        f.client(leader)?.propose(&register("east")).await?;
        let report = |node: &str| Command::ReportNodes {
            cluster: "east".into(),
            nodes: vec![gpu_node("east", node, "H100", 1, 81_920)],
        };
        f.client(leader)?.propose(&report("gpu-a")).await?;
        // gpu-b's agent keeps reporting (and with it the cluster's lease); gpu-a's
        // has stopped.
        let east = eventually(
            "gpu-a's lease to expire",
            Duration::from_secs(10),
            || async {
                f.client(leader)
                    .ok()?
                    .propose(&report("gpu-b"))
                    .await
                    .ok()?;
                let s = f.servers.get(&leader)?.applied().state;
                let east = s.cluster("east")?.clone();
                (!east.inventory.nodes.contains_key("gpu-a")).then_some(east)
            },
        )
        .await?;
        assert!(east.inventory.nodes.contains_key("gpu-b"));
        assert_eq!(east.state, ClusterState::Ready);
        f.stop_all().await
    })
    .await
}
