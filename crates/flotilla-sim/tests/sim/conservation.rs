//! Every request is served or counted as failed: none vanishes, whatever the policy
//! and whatever happens to the GPUs under it.

use super::policies::CHAOS;
use super::run;

#[test]
fn every_request_is_served_or_counted_as_failed() {
    let o = run(CHAOS);
    for r in &o.runs {
        let s = &r.summary;
        assert!(s.requests > 1000, "a real load: {}", s.requests);
        assert_eq!(s.requests, s.completed + s.failed, "{}", s.policy);
        assert_eq!(
            s.failed,
            s.failed_by_reason.values().sum::<u64>(),
            "{}",
            s.policy
        );
        for m in &s.models {
            assert_eq!(
                m.requests,
                m.completed + m.failed,
                "{} {}",
                s.policy,
                m.model
            );
        }
        let arrivals: u64 = r.samples.iter().map(|x| x.arrivals).sum();
        let completed: u64 = r.samples.iter().map(|x| x.completed).sum();
        let failed: u64 = r.samples.iter().map(|x| x.failed).sum();
        assert_eq!(
            (arrivals, completed, failed),
            (s.requests, s.completed, s.failed)
        );
        assert!(s.slo_met <= s.completed);
    }
}

#[test]
fn every_policy_sees_the_same_requests() {
    let o = run(CHAOS);
    let end = o.scenario.duration;
    let arrivals: Vec<Vec<u64>> = o
        .runs
        .iter()
        .map(|r| {
            r.samples
                .iter()
                .filter(|s| s.at <= end)
                .map(|s| s.arrivals)
                .collect()
        })
        .collect();
    assert!(arrivals.windows(2).all(|w| w[0] == w[1]));
}
