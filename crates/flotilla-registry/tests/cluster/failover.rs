//! Kill the leader: a new one is elected within a bounded time, and no acknowledged
//! write is lost.

use crate::common::{assert_identical, register};
use flotilla_testkit::{ELECTION_MAX, Federation, TestResult, bounded, eventually};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_keeps_every_acknowledged_write() -> TestResult {
    bounded(Duration::from_secs(60), async {
        let mut f = Federation::with_members(3).await?;
        let old = f.wait_leader(Duration::from_secs(5)).await?;
        let mut acknowledged = Vec::new();
        for i in 0..20 {
            let name = format!("before-{i}");
            let r = f.client(old)?.propose(&register(&name)).await?;
            assert!(r.applied);
            acknowledged.push(name);
        }
        let killed_at = Instant::now();
        f.stop(old).await?;
        let survivors: Vec<u64> = f.servers.keys().copied().collect();
        let new = eventually("a new leader", Duration::from_secs(10), || async {
            f.agreed_leader(&survivors).filter(|l| *l != old)
        })
        .await?;
        let took = killed_at.elapsed();
        // Bounded, not timed to the millisecond: a few election timeouts at most.
        assert!(
            took < ELECTION_MAX * 6,
            "new leader {new} took {took:?} (election timeout max {ELECTION_MAX:?})"
        );
        for i in 0..10 {
            let name = format!("after-{i}");
            let via = survivors[i % survivors.len()];
            let r = f.client(via)?.propose(&register(&name)).await?;
            assert!(r.applied);
            acknowledged.push(name);
        }
        f.wait_converged(Duration::from_secs(10)).await?;
        let states = f.states();
        assert_identical(&states);
        for (id, s) in &states {
            for name in &acknowledged {
                assert!(
                    s.cluster(name).is_some(),
                    "node {id} lost acknowledged write {name}"
                );
            }
        }
        f.stop_all().await
    })
    .await
}
