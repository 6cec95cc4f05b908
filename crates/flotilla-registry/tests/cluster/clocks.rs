//! Clocks that jump: a step of any member's wall clock, the leader's included, must
//! not expire a lease that is being renewed, and must not move anything.

use crate::common::register;
use flotilla_core::fixtures::{gpu_node, workload};
use flotilla_core::{ClusterState, Command, Millis, ReplicaId, Settings, State, Timestamp};
use flotilla_registry::types::NodeId;
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use std::collections::BTreeSet;
use std::time::Duration;

const TEN_MINUTES_MS: i64 = 600_000;
const LEASE: Millis = Millis(1_500);

/// The replicas placed, and whether any cluster is Unreachable, as `state` says.
fn placed(state: &State) -> (BTreeSet<ReplicaId>, bool) {
    let replicas = state
        .placements()
        .values()
        .flat_map(|p| p.replicas.keys().copied())
        .collect();
    let lost = state
        .clusters()
        .values()
        .any(|c| c.state == ClusterState::Unreachable);
    (replicas, lost)
}

/// Watches every running member's registry for `within`: nothing may be marked
/// Unreachable, no replica may change, and the federation's time may not go back.
async fn nothing_moves(
    f: &Federation,
    replicas: &BTreeSet<ReplicaId>,
    within: Duration,
    what: &str,
) -> TestResult<Timestamp> {
    let until = tokio::time::Instant::now() + within;
    let mut latest = Timestamp(0);
    while tokio::time::Instant::now() < until {
        for (id, state) in f.states() {
            let (now, lost) = placed(&state);
            assert!(
                !lost,
                "{what}: member {id} has a cluster marked Unreachable"
            );
            assert_eq!(&now, replicas, "{what}: member {id} moved a replica");
            latest = latest.max(state.latest_entry_at());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(latest)
}

async fn leader(f: &Federation) -> TestResult<NodeId> {
    Ok(f.wait_leader(Duration::from_secs(10)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepping_any_members_wall_clock_by_ten_minutes_expires_nothing_and_moves_nothing()
-> TestResult {
    bounded(Duration::from_secs(90), async {
        let mut f = Federation::with_members(3).await?;
        let first = leader(&f).await?;
        let mut admin = f.client(first)?;
        admin
            .propose(&Command::SetSettings {
                settings: Settings {
                    lease_duration: LEASE,
                    ..Settings::default()
                },
            })
            .await?;
        admin.propose(&register("east")).await?;
        let beats = f.heartbeats("east", Duration::from_millis(LEASE.0 / 3));
        admin
            .propose(&Command::ReportCapacity {
                cluster: "east".into(),
                nodes: vec![gpu_node("east", "n1", "H100", 2, 81_920)],
            })
            .await?;
        admin
            .propose(&Command::ApplyWorkload {
                workload: workload("chat", "llama", 1, 1),
            })
            .await?;
        let replicas = eventually("the replica placed", Duration::from_secs(10), || async {
            let (replicas, _) = placed(&f.servers.get(&first)?.applied().state);
            (!replicas.is_empty()).then_some(replicas)
        })
        .await?;
        // Every member has applied the placement before any is checked (a
        // follower a moment behind would look as if it had moved the replica).
        eventually(
            "every member to hold the placement",
            Duration::from_secs(10),
            || async {
                f.states()
                    .values()
                    .all(|state| placed(state).0 == replicas)
                    .then_some(())
            },
        )
        .await?;
        let before =
            nothing_moves(&f, &replicas, Duration::from_secs(1), "before any step").await?;

        // The leader's clock jumps ten minutes ahead, then twenty back.
        f.clock(first).step(TEN_MINUTES_MS);
        nothing_moves(&f, &replicas, Duration::from_secs(3), "leader +10 min").await?;
        f.clock(first).step(-2 * TEN_MINUTES_MS);
        let during = nothing_moves(&f, &replicas, Duration::from_secs(3), "leader -10 min").await?;
        assert!(
            during.since(before) < Millis(10_000),
            "the federation's time kept to real time: {:?} in about 7 s",
            during.since(before)
        );

        // The followers' clocks jump too, one each way, and the leader goes: whoever
        // takes over has a clock ten minutes off.
        let followers: Vec<NodeId> = (1..=3).filter(|id| *id != first).collect();
        f.clock(followers[0]).step(TEN_MINUTES_MS);
        f.clock(followers[1]).step(-TEN_MINUTES_MS);
        f.stop(first).await?;
        let second = leader(&f).await?;
        nothing_moves(
            &f,
            &replicas,
            Duration::from_secs(3),
            "a new leader, 10 min off",
        )
        .await?;
        f.start(first, flotilla_registry::Bootstrap::Resume).await?;
        f.stop(second).await?;
        let third = leader(&f).await?;
        assert_ne!(third, second);
        let after =
            nothing_moves(&f, &replicas, Duration::from_secs(3), "another new leader").await?;
        assert!(
            after.since(before) < Millis(30_000),
            "no leader leapt the federation's time forward: {:?} in about 14 s",
            after.since(before)
        );

        // A cluster that does stop reporting is still lost, in one lease.
        beats.stop().await?;
        eventually(
            "east marked Unreachable",
            Duration::from_secs(10),
            || async {
                let s = f.servers.get(&third)?.applied().state;
                (s.cluster("east")?.state == ClusterState::Unreachable).then_some(())
            },
        )
        .await?;
        f.stop_all().await
    })
    .await
}
