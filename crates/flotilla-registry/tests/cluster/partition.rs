//! Partition (in-process fault-injecting transport): a minority cannot commit; after
//! healing everyone converges.

use crate::common::{assert_identical, register};
use flotilla_testkit::{ELECTION_MAX, Federation, TestResult, bounded, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_cannot_commit_and_everyone_converges_after_healing() -> TestResult {
    bounded(Duration::from_secs(90), async {
        let f = Federation::with_members(5).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        // Put the current leader in the minority with one other member.
        let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
        let minority = vec![leader, others[0]];
        let majority: Vec<u64> = others[1..].to_vec();
        f.faults.partition(&minority, &majority);

        // The old leader cannot commit: its write does not complete.
        let mut client = f.client(leader)?;
        let stuck = tokio::time::timeout(
            ELECTION_MAX * 3,
            client.propose(&register("minority-write")),
        )
        .await;
        assert!(
            !matches!(stuck, Ok(Ok(ref r)) if r.applied),
            "a minority committed a write: {stuck:?}"
        );

        // The majority elects a leader of its own and commits.
        let new = eventually("a majority leader", Duration::from_secs(10), || async {
            f.agreed_leader(&majority).filter(|l| majority.contains(l))
        })
        .await?;
        for i in 0..5 {
            let r = f
                .client(new)?
                .propose(&register(&format!("majority-{i}")))
                .await?;
            assert!(r.applied);
        }
        // The minority's members still have not applied them.
        for id in &minority {
            let s = f.servers[id].applied().state;
            assert!(
                s.cluster("majority-0").is_none(),
                "minority node {id} applied a majority write while cut off"
            );
        }

        f.faults.heal();
        f.wait_converged(Duration::from_secs(20)).await?;
        let states = f.states();
        assert_identical(&states);
        for (id, s) in &states {
            assert!(
                s.cluster("majority-4").is_some(),
                "node {id} missed a majority write"
            );
        }
        f.stop_all().await
    })
    .await
}

/// Health tells the truth: a member cut off from the majority knows no leader, so
/// it says NOT_SERVING, for the whole server and each service, and its watches end
/// with UNAVAILABLE (their clients move to another server) instead of following a
/// frozen table. Healed, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_the_majority_says_not_serving_and_ends_its_watches() -> TestResult {
    use flotilla_proto::v1 as pb;
    use flotilla_proto::v1::placement_service_client::PlacementServiceClient;
    use tonic_health::pb::health_check_response::ServingStatus;
    bounded(Duration::from_secs(90), async {
        let f = Federation::with_members(3).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let cut = (1..=3).find(|id| *id != leader).unwrap_or(1);
        let others: Vec<u64> = (1..=3).filter(|id| *id != cut).collect();
        let channel = |id: u64| crate::common::lazy_channel(&f.addr(id));
        let status = |id: u64, service: &'static str| {
            let addr = f.addr(id);
            async move { crate::common::health(&addr, service).await }
        };
        const PLACEMENTS: &str = "flotilla.v1.PlacementService";
        let serving = ServingStatus::Serving as i32;
        let not_serving = ServingStatus::NotServing as i32;
        for id in 1..=3 {
            assert_eq!(status(id, "").await, Some(serving), "member {id}");
        }
        let mut watch = PlacementServiceClient::new(channel(cut)?)
            .watch_placements(pb::WatchPlacementsRequest {
                progress: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(watch.message().await?.is_some(), "the watch runs");

        f.faults.partition(&[cut], &others);
        eventually(
            "the cut-off member to say NOT_SERVING",
            Duration::from_secs(15),
            || async {
                (status(cut, "").await == Some(not_serving)
                    && status(cut, PLACEMENTS).await == Some(not_serving))
                .then_some(())
            },
        )
        .await?;
        let ended = crate::common::watch_end(&mut watch).await?;
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        assert!(ended.message().contains("knows no leader"), "{ended:?}");
        let new_watch = PlacementServiceClient::new(channel(cut)?)
            .watch_placements(pb::WatchPlacementsRequest::default())
            .await;
        let refused = match new_watch {
            Err(s) => s,
            Ok(stream) => stream
                .into_inner()
                .message()
                .await
                .err()
                .ok_or("a new watch on the cut-off member was served")?,
        };
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        for id in &others {
            assert_eq!(
                status(*id, "").await,
                Some(serving),
                "member {id} of the majority"
            );
        }

        f.faults.heal();
        eventually(
            "the healed member to serve again",
            Duration::from_secs(15),
            || async { (status(cut, "").await == Some(serving)).then_some(()) },
        )
        .await?;
        Ok(())
    })
    .await
}
