//! `RegistryClient::watch_replicas`: an agent's blocking query for the replicas
//! placed on its cluster, over `flotilla.v1` `WatchPlacements` with a cluster filter. It answers at once when the caller's version is stale, holds the call
//! while nothing changes, and answers as soon as a placement on that cluster does.

use crate::common::register;
use flotilla_core::fixtures::{gpu_node, workload};
use flotilla_core::{Command, Phase, ReplicaId};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::placement_service_client::PlacementServiceClient;
use flotilla_testkit::{Federation, TestResult, bounded};
use std::time::{Duration, Instant};
use tonic_types::StatusExt;

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

/// The replica ids of `workload`'s placement, as the server holds them.
fn replica_ids(f: &Federation, workload: &str) -> Vec<ReplicaId> {
    f.states()
        .values()
        .next()
        .and_then(|s| {
            s.placement(workload)
                .map(|p| p.replicas.keys().copied().collect())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_watch_from_before_the_compaction_is_told_to_list_again() -> TestResult {
    bounded(Duration::from_secs(90), async {
        let f = Federation::with_members(1).await?;
        f.wait_leader(Duration::from_secs(5)).await?;
        let mut c = f.client(1)?;
        c.propose(&register("east")).await?;
        c.propose(&Command::ReportCapacity {
            cluster: "east".into(),
            nodes: vec![gpu_node("east", "n1", "H100", 2, 81_920)],
        })
        .await?;
        for name in ["chat", "gone"] {
            c.propose(&Command::ApplyWorkload {
                workload: workload(name, name, 1, 1),
            })
            .await?;
        }
        flotilla_testkit::eventually("both placed", Duration::from_secs(10), || async {
            let placed = f.states().values().next().map(|s| {
                s.placements()
                    .values()
                    .filter(|p| !p.replicas.is_empty())
                    .count()
            });
            (placed == Some(2)).then_some(())
        })
        .await?;
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", f.addr(1)))?.connect_lazy();
        let mut placements = PlacementServiceClient::new(channel);
        let list = |mut p: PlacementServiceClient<tonic::transport::Channel>| async move {
            p.list_placements(pb::ListPlacementsRequest::default())
                .await
                .map(|r| r.into_inner().revision)
        };
        let before_removal = list(placements.clone()).await?;

        // "gone" goes, leaving a tombstone; then chat's endpoint changes more
        // times than tombstones are kept.
        c.propose(&Command::DeleteWorkload {
            workload: "gone".into(),
        })
        .await?;
        for id in replica_ids(&f, "gone") {
            c.propose(&Command::SetReplicaPhase {
                workload: "gone".into(),
                replica: id,
                phase: Phase::Gone,
                endpoint: None,
            })
            .await?;
        }
        let chat = *replica_ids(&f, "chat")
            .first()
            .ok_or("chat has no replica")?;
        for i in 0..=flotilla_core::TOMBSTONE_REVISIONS {
            c.propose(&Command::SetReplicaPhase {
                workload: "chat".into(),
                replica: chat,
                phase: Phase::Ready,
                endpoint: Some(format!("127.0.0.1:{}", 20_000 + i % 2)),
            })
            .await?;
        }

        let mut stale = placements
            .watch_placements(pb::WatchPlacementsRequest {
                from_revision: before_removal,
                ..Default::default()
            })
            .await?
            .into_inner();
        let refused = stale
            .message()
            .await
            .err()
            .ok_or("a watch from before the compaction was answered")?;
        assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
        let reason = refused
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone());
        assert_eq!(reason.as_deref(), Some("REVISION_COMPACTED"));
        assert!(
            refused.message().contains("list the whole table again"),
            "{refused:?}"
        );

        // Listing again gives a revision that a watch resumes from.
        let relisted = list(placements.clone()).await?;
        let mut fresh = placements
            .watch_placements(pb::WatchPlacementsRequest {
                from_revision: relisted,
                progress: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), fresh.message())
            .await??
            .ok_or("the watch ended")?;
        assert!(first.synced && first.placement.is_none(), "{first:?}");
        f.stop_all().await
    })
    .await
}
