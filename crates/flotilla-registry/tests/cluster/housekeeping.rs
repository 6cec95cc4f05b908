//! Leader-side housekeeping: a cluster that stops reporting becomes Unreachable.

use crate::common::*;
use flotilla_core::{ClusterState, Command, Millis, Settings};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_stops_reporting_becomes_unreachable() -> TestResult {
    bounded(60, async {
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
