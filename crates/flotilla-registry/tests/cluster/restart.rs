//! A member restarts from its data directory; a member that missed enough to need a
//! snapshot catches up through one.

use crate::common::{assert_identical, register};
use flotilla_registry::Bootstrap;
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarts_from_its_data_directory() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let mut f = Federation::with_members(3).await?;
        for i in 0..10 {
            f.client(1)?.propose(&register(&format!("c-{i}"))).await?;
        }
        f.wait_converged(Duration::from_secs(10)).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let victim = (1..=3).find(|id| *id != leader).unwrap_or(3);
        let before = (*f.servers[&victim].applied().state).clone();
        f.stop(victim).await?;
        for i in 10..15 {
            f.client(leader)?
                .propose(&register(&format!("c-{i}")))
                .await?;
        }
        f.start(victim, Bootstrap::Resume).await?;
        // Right after the restart, the registry is back from disk before any catch-up.
        let restored = f.servers[&victim].applied().state;
        assert!(restored.clusters().len() >= before.clusters().len());
        f.wait_converged(Duration::from_secs(10)).await?;
        let states = f.states();
        assert_identical(&states);
        assert_eq!(states[&victim].clusters().len(), 15);
        f.stop_all().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_far_behind_catches_up_through_a_snapshot() -> TestResult {
    bounded(Duration::from_secs(90), async {
        let mut f = Federation::new()?;
        f.tweak = |c| {
            c.snapshot_after_entries = 20;
            c.entries_kept_after_snapshot = 0;
        };
        f.start(1, Bootstrap::Init).await?;
        f.wait_leader(Duration::from_secs(10)).await?;
        for id in 2..=3 {
            let first = f.addr(1);
            f.start(id, Bootstrap::Join(first)).await?;
        }
        f.wait_voters(3, Duration::from_secs(20)).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let victim = (1..=3).find(|id| *id != leader).unwrap_or(3);
        f.stop(victim).await?;
        for i in 0..80 {
            f.client(leader)?
                .propose(&register(&format!("c-{i}")))
                .await?;
        }
        // The leader has snapshotted and purged what the victim missed.
        let purged = eventually(
            "the leader to purge its log",
            Duration::from_secs(10),
            || async {
                let m = f.servers.get(&leader)?.raft().metrics().borrow().clone();
                m.purged.filter(|p| p.index > 20)
            },
        )
        .await?;
        f.start(victim, Bootstrap::Resume).await?;
        f.wait_converged(Duration::from_secs(20)).await?;
        let m = f.servers[&victim].raft().metrics().borrow().clone();
        let snap = m.snapshot.map(|s| s.index).unwrap_or_default();
        assert!(
            snap >= purged.index,
            "victim's snapshot {snap} should cover the purged log up to {}",
            purged.index
        );
        let states = f.states();
        assert_identical(&states);
        assert_eq!(states[&victim].clusters().len(), 80);
        f.stop_all().await
    })
    .await
}
