//! `RegistryClient::watch_replicas`: an agent's blocking query for the replicas
//! placed on its cluster, over `flotilla.v1` `WatchPlacements` with a cluster filter. It answers at once when the caller's version is stale, holds the call
//! while nothing changes, and answers as soon as a placement on that cluster does.

use crate::common::register;
use flotilla_core::fixtures::{gpu_node, workload};
use flotilla_core::{Command, Phase};
use flotilla_testkit::{Federation, TestResult, bounded};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_answers_stale_callers_at_once_and_waits_for_a_change() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let f = Federation::with_members(1).await?;
        f.wait_leader(Duration::from_secs(5)).await?;
        let mut c = f.client(1)?;
        c.propose(&register("east")).await?;
        c.propose(&Command::ReportCapacity {
            cluster: "east".into(),
            nodes: vec![gpu_node("east", "n1", "H100", 2, 81_920)],
        })
        .await?;

        // Nothing placed yet: a caller with no version gets the empty list at once.
        let t = Instant::now();
        let (empty, replicas) = c.watch_replicas("east", 0, Duration::from_secs(5)).await?;
        assert!(replicas.is_empty());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a stale caller waits for nothing"
        );

        // Up to date and nothing changes: held until the wait ends, same version.
        let t = Instant::now();
        let (same, _) = c
            .watch_replicas("east", empty, Duration::from_millis(600))
            .await?;
        assert_eq!(same, empty);
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        // A workload is placed on east while a caller waits: it hears at once.
        let mut waiter = f.client(1)?;
        let watch = tokio::spawn(async move {
            let t = Instant::now();
            let r = waiter
                .watch_replicas("east", empty, Duration::from_secs(20))
                .await;
            (t.elapsed(), r)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.propose(&Command::ApplyWorkload {
            workload: workload("chat", "llama", 1, 1),
        })
        .await?;
        let (waited, answer) = watch.await?;
        let (version, replicas) = answer?;
        assert!(waited < Duration::from_secs(10), "waited {waited:?}");
        assert_ne!(version, empty);
        assert_eq!(replicas.len(), 1, "{replicas:?}");
        assert_eq!(replicas[0].workload, "chat");
        assert_eq!(replicas[0].model, "llama");
        assert_eq!(replicas[0].replica.phase, Phase::Starting);

        // Another cluster's watch does not see east's replica.
        let (_, west) = c.watch_replicas("west", 0, Duration::from_secs(1)).await?;
        assert!(west.is_empty());
        f.stop_all().await
    })
    .await
}
