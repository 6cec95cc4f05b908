//! Choosing where a request goes: a local Ready replica with the least load, else a
//! remote cluster by the route's weights.

use crate::health::{EndpointKey, Health};
use crate::table::{LocalReplica, ModelRoutes, RemoteGateway, ReplicaPhase};
use std::time::Instant;

/// A full KV cache weighs as much as this many queued requests: the replica will
/// have to evict or queue before it can start a new sequence.
const KV_CACHE_WEIGHT: f64 = 4.0;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Local(&'a LocalReplica),
    Remote(&'a RemoteGateway),
}

impl Target<'_> {
    pub(crate) fn key(&self) -> EndpointKey {
        match self {
            Target::Local(r) => EndpointKey::Replica(r.address.clone()),
            Target::Remote(g) => EndpointKey::Gateway(g.cluster.clone()),
        }
    }
}

fn load_score(replica: &LocalReplica, outstanding: u64) -> f64 {
    let signals = replica.load.map_or(0.0, |l| {
        f64::from(l.queue_depth) + l.kv_cache_use.clamp(0.0, 1.0) * KV_CACHE_WEIGHT
    });
    outstanding as f64 + signals
}

/// Whether ejected endpoints may be picked when no other can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ejected {
    /// Never: the request has somewhere else to go (the last tier).
    Skip,
    /// When ejection leaves nothing else (Envoy's panic routing): ejection
    /// steers requests among endpoints, and must not fail one that an endpoint
    /// may still serve, such as a gateway that came back during its back-off
    /// just as the route moved to it alone.
    AsLastResort,
}

/// The next endpoint to try, skipping those already tried for this request and
/// those ejected (but see [`Ejected`]). `allow_remote` is false for requests that
/// arrived over the east-west hop: they are delivered here or nowhere, so they
/// never loop.
pub(crate) fn pick<'a>(
    routes: &'a ModelRoutes,
    health: &Health,
    tried: &[EndpointKey],
    allow_remote: bool,
    ejected: Ejected,
    now: Instant,
) -> Option<Target<'a>> {
    let rotation = routes.next_rotation();
    let candidate = |key: &EndpointKey| !tried.contains(key);
    let in_rotation = |key: &EndpointKey| candidate(key) && !health.is_ejected(key, now);
    pick_where(routes, health, rotation, allow_remote, in_rotation).or_else(|| {
        (ejected == Ejected::AsLastResort)
            .then(|| pick_where(routes, health, rotation, allow_remote, candidate))
            .flatten()
    })
}

/// A local Ready replica that `usable` admits, with the least load; else, if
/// `allow_remote`, a remote gateway it admits, by the route's weights.
fn pick_where<'a>(
    routes: &'a ModelRoutes,
    health: &Health,
    rotation: u64,
    allow_remote: bool,
    usable: impl Fn(&EndpointKey) -> bool,
) -> Option<Target<'a>> {
    let n = routes.local.len();
    let mut best: Option<(&LocalReplica, f64)> = None;
    for i in 0..n {
        // Start at a rotating offset so equal scores spread over replicas.
        let r = &routes.local[(i + (rotation as usize % n.max(1))) % n];
        if r.phase != ReplicaPhase::Ready {
            continue;
        }
        let key = EndpointKey::Replica(r.address.clone());
        if !usable(&key) {
            continue;
        }
        let score = load_score(r, health.outstanding(&key));
        if best.is_none_or(|(_, s)| score < s) {
            best = Some((r, score));
        }
    }
    if let Some((r, _)) = best {
        return Some(Target::Local(r));
    }
    if !allow_remote {
        return None;
    }

    let candidates: Vec<&RemoteGateway> = routes
        .remote
        .iter()
        .filter(|g| g.weight > 0 && usable(&EndpointKey::Gateway(g.cluster.clone())))
        .collect();
    let total: u64 = candidates.iter().map(|g| u64::from(g.weight)).sum();
    if total == 0 {
        return None;
    }
    // A counter times a stride coprime with `total` visits every point of
    // 0..total once per `total` requests, so shares are exact over that window;
    // a stride near the golden section interleaves clusters instead of sending
    // bursts, and there is no random number generator to seed.
    let mut point = (rotation % total) * spread_stride(total) % total;
    for g in candidates {
        let w = u64::from(g.weight);
        if point < w {
            return Some(Target::Remote(g));
        }
        point -= w;
    }
    None
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn spread_stride(total: u64) -> u64 {
    let mut k = (total as f64 * 0.618) as u64;
    while k < total && gcd(k.max(1), total) != 1 {
        k += 1;
    }
    k.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Failure, HealthSettings};
    use crate::table::{LoadSignals, UpstreamProtocol};

    fn replica(port: u16, phase: ReplicaPhase, load: Option<LoadSignals>) -> LocalReplica {
        LocalReplica {
            address: format!("127.0.0.1:{port}"),
            phase,
            protocol: UpstreamProtocol::Http1,
            load,
        }
    }

    fn gw(cluster: &str, weight: u32) -> RemoteGateway {
        RemoteGateway {
            cluster: cluster.into(),
            address: ([127, 0, 0, 1], 1).into(),
            server_name: cluster.into(),
            weight,
        }
    }

    fn port(t: Option<Target<'_>>) -> u16 {
        match t {
            Some(Target::Local(r)) => r
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or_else(|| panic!("{} has no port", r.address)),
            other => panic!("expected a local pick, got {other:?}"),
        }
    }

    #[test]
    fn least_outstanding_then_load_signals() {
        let h = Health::new(HealthSettings::default());
        let routes = ModelRoutes::new(
            vec![
                replica(1, ReplicaPhase::Ready, None),
                replica(
                    2,
                    ReplicaPhase::Ready,
                    Some(LoadSignals {
                        queue_depth: 0,
                        kv_cache_use: 0.9,
                    }),
                ),
                replica(3, ReplicaPhase::Draining, None),
            ],
            vec![gw("b", 1)],
        );
        let now = Instant::now();
        let _busy = h.begin(&EndpointKey::Replica("127.0.0.1:1".into()));
        // 1 has one outstanding (score 1.0); 2 has none but a nearly full cache (3.6).
        assert_eq!(
            port(pick(&routes, &h, &[], true, Ejected::AsLastResort, now)),
            1
        );
        let _busier = h.begin(&EndpointKey::Replica("127.0.0.1:1".into()));
        let _busiest = h.begin(&EndpointKey::Replica("127.0.0.1:1".into()));
        let _more = h.begin(&EndpointKey::Replica("127.0.0.1:1".into()));
        assert_eq!(
            port(pick(&routes, &h, &[], true, Ejected::AsLastResort, now)),
            2
        );
    }

    #[test]
    fn remote_shares_follow_weights_and_skip_tried() {
        let h = Health::new(HealthSettings::default());
        let routes = ModelRoutes::new(vec![], vec![gw("b", 3), gw("c", 1)]);
        let now = Instant::now();
        let mut b = 0;
        for _ in 0..400 {
            if let Some(Target::Remote(g)) =
                pick(&routes, &h, &[], true, Ejected::AsLastResort, now)
                && g.cluster == "b"
            {
                b += 1;
            }
        }
        assert_eq!(b, 300);
        // Interleaved, not in bursts: any 8 picks in a row include both clusters.
        let picks: Vec<bool> = (0..64)
            .map(|_| matches!(pick(&routes, &h, &[], true, Ejected::AsLastResort, now), Some(Target::Remote(g)) if g.cluster == "b"))
            .collect();
        assert!(
            picks
                .windows(8)
                .all(|w| w.contains(&true) && w.contains(&false)),
            "{picks:?}"
        );
        let tried = [EndpointKey::Gateway("b".into())];
        for _ in 0..10 {
            assert!(
                matches!(pick(&routes, &h, &tried, true, Ejected::AsLastResort, now), Some(Target::Remote(g)) if g.cluster == "c")
            );
        }
        assert!(pick(&routes, &h, &[], false, Ejected::AsLastResort, now).is_none());
    }

    #[test]
    fn ejected_endpoints_are_skipped_while_another_is_usable_and_tried_when_none_is() {
        let h = Health::new(HealthSettings {
            failures_to_eject: 1,
            ..HealthSettings::default()
        });
        let routes = ModelRoutes::new(
            vec![replica(1, ReplicaPhase::Starting, None)],
            vec![gw("b", 1), gw("c", 1)],
        );
        let now = Instant::now();
        let c = EndpointKey::Gateway("c".into());
        h.record_failure(&c, Failure::Unreachable, now);
        for _ in 0..10 {
            assert!(
                matches!(pick(&routes, &h, &[], true, Ejected::AsLastResort, now), Some(Target::Remote(g)) if g.cluster == "b")
            );
        }
        // The route moves to c alone while c is ejected: c is tried, not nothing.
        let moved = ModelRoutes::new(vec![], vec![gw("c", 1)]);
        assert!(
            matches!(pick(&moved, &h, &[], true, Ejected::AsLastResort, now), Some(Target::Remote(g)) if g.cluster == "c")
        );
        // Unless the request has somewhere else to go.
        assert!(pick(&moved, &h, &[], true, Ejected::Skip, now).is_none());
        // Once this request has tried it, there is nothing left.
        assert!(
            pick(
                &moved,
                &h,
                std::slice::from_ref(&c),
                true,
                Ejected::AsLastResort,
                now
            )
            .is_none()
        );
        // Replicas that are not Ready are never picked, ejected or not.
        assert!(pick(&routes, &h, &[], false, Ejected::AsLastResort, now).is_none());
    }
}
