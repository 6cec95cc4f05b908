//! 3 and 5 members: a leader is elected, writes replicate, every state machine ends identical.

use crate::common::{assert_identical, register};
use flotilla_testkit::{Federation, TestResult, bounded};
use std::time::Duration;

async fn replicate(members: u64) -> TestResult {
    let f = Federation::with_members(members).await?;
    let leader = f.wait_leader(Duration::from_secs(5)).await?;
    assert!(f.servers.contains_key(&leader));
    // Writes through every member: followers forward to the leader.
    for i in 0..30u64 {
        let via = 1 + i % members;
        let reply = f
            .client(via)?
            .propose(&register(&format!("cluster-{i}")))
            .await?;
        assert!(
            reply.applied,
            "write {i} via node {via}: {}",
            reply.rejection_message
        );
    }
    f.wait_converged(Duration::from_secs(10)).await?;
    let states = f.states();
    assert_eq!(states.len() as u64, members);
    assert_identical(&states);
    for s in states.values() {
        assert_eq!(s.clusters().len(), 30);
    }
    // Linearizable reads through a follower see every acknowledged write.
    let follower = (1..=members).find(|id| *id != leader).unwrap_or(1);
    let (_, read) = f.client(follower)?.read_state(true).await?;
    assert_eq!(read.clusters().len(), 30);
    f.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_replicate_and_agree() -> TestResult {
    bounded(Duration::from_secs(60), replicate(3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_elect_replicate_and_agree() -> TestResult {
    bounded(Duration::from_secs(60), replicate(5)).await
}
