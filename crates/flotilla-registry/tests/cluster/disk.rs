//! A full disk: the member whose writes fail says so in its health and ends its
//! watches, while the majority goes on.

use crate::common::{health, lazy_channel, register};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::placement_service_client::PlacementServiceClient;
use flotilla_testkit::{Federation, TestResult, bounded, eventually};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_says_not_serving_ends_its_watches_and_the_majority_goes_on()
-> TestResult {
    bounded(Duration::from_secs(90), async {
        let mut f = Federation::with_members(3).await?;
        let leader = f.wait_leader(Duration::from_secs(5)).await?;
        let full = (1..=3).find(|id| *id != leader).unwrap_or(1);
        let serving = Some(ServingStatus::Serving as i32);
        let not_serving = Some(ServingStatus::NotServing as i32);
        let mut watch = PlacementServiceClient::new(lazy_channel(&f.addr(full))?)
            .watch_placements(pb::WatchPlacementsRequest {
                progress: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(watch.message().await?.is_some(), "the watch runs");

        // The disk fills; the next entry the member must append fails to write.
        f.disk(full).fill();
        let reply = f.client(leader)?.propose(&register("east")).await?;
        assert!(reply.applied, "the majority commits without it");
        eventually(
            "the member with a full disk to say NOT_SERVING",
            Duration::from_secs(15),
            || async { (health(&f.addr(full), "").await == not_serving).then_some(()) },
        )
        .await?;
        let ended = crate::common::watch_end(&mut watch).await?;
        assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
        assert!(ended.message().contains("storage failed"), "{ended:?}");
        for id in (1..=3).filter(|id| *id != full) {
            assert_eq!(health(&f.addr(id), "").await, serving, "member {id}");
        }
        let reply = f.client(leader)?.propose(&register("west")).await?;
        assert!(reply.applied, "the majority still commits");

        // Space again, and a restart: it catches up and serves.
        f.disk(full).free();
        f.stop(full).await?;
        f.start(full, flotilla_registry::Bootstrap::Resume).await?;
        eventually(
            "the restarted member to serve again",
            Duration::from_secs(20),
            || async { (health(&f.addr(full), "").await == serving).then_some(()) },
        )
        .await?;
        eventually("it to catch up", Duration::from_secs(20), || async {
            f.states()
                .get(&full)
                .and_then(|s| s.cluster("west"))
                .map(|_| ())
        })
        .await?;
        f.stop_all().await
    })
    .await
}
