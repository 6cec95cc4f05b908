//! What the registry shows over time: replicas appearing and changing phase, moves
//! starting and ending, clusters changing state. The live view shows the latest
//! state and the recent events; the summary uses the moves.

use flotilla_core::{MoveReason, Phase, ReplicaId, State};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// One make-before-break move as seen from outside.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveSeen {
    pub workload: String,
    pub model: String,
    pub source: ReplicaId,
    pub source_cluster: String,
    pub target: ReplicaId,
    pub target_cluster: String,
    pub reason: MoveReason,
    /// When the move was first seen (since the start of the run).
    pub seen_at: Duration,
    pub target_ready_at: Option<Duration>,
    /// When the move left the registry: done, or rolled back.
    pub ended_at: Option<Duration>,
    pub rolled_back: bool,
}

#[derive(Debug, Default)]
pub struct Observer {
    last: Option<State>,
    events: VecDeque<(Duration, String)>,
    /// Every event ever noted, the forgotten ones too.
    noted: u64,
    moves: BTreeMap<(String, ReplicaId), MoveSeen>,
}

const KEEP_EVENTS: usize = 200;

impl Observer {
    pub fn state(&self) -> Option<&State> {
        self.last.as_ref()
    }

    /// The most recent events, oldest first.
    pub fn recent_events(&self, n: usize) -> impl Iterator<Item = &(Duration, String)> {
        self.events.iter().skip(self.events.len().saturating_sub(n))
    }

    /// How many events were noted so far, and those still held that came after the
    /// first `seen` of them: what a printer that printed `seen` has not printed yet.
    pub fn events_after(&self, seen: u64) -> (u64, impl Iterator<Item = &(Duration, String)>) {
        let new = usize::try_from(self.noted.saturating_sub(seen)).unwrap_or(usize::MAX);
        (self.noted, self.recent_events(new))
    }

    pub fn moves(&self) -> impl Iterator<Item = &MoveSeen> {
        self.moves.values()
    }

    pub fn note(&mut self, at: Duration, text: String) {
        tracing::info!(target: "flotilla_up::events", "{text}");
        self.events.push_back((at, text));
        self.noted += 1;
        while self.events.len() > KEEP_EVENTS {
            self.events.pop_front();
        }
    }

    /// Takes in a new read of the registry.
    pub fn update(&mut self, at: Duration, state: State) {
        let mut notes = Vec::new();
        if let Some(prev) = &self.last {
            for (name, c) in state.clusters() {
                match prev.cluster(name) {
                    None => notes.push(format!("cluster {name} joined")),
                    Some(p) if p.state != c.state => {
                        notes.push(format!("cluster {name} is {:?}", c.state));
                    }
                    Some(_) => {}
                }
            }
            for (workload, placement) in state.placements() {
                let before = prev.placement(workload);
                for (id, r) in &placement.replicas {
                    match before.and_then(|b| b.replicas.get(id)) {
                        None => notes.push(format!(
                            "{workload} {id} {} on {}",
                            r.phase.as_str(),
                            r.cluster
                        )),
                        Some(b) if b.phase != r.phase => notes.push(format!(
                            "{workload} {id} on {} is {}",
                            r.cluster,
                            r.phase.as_str()
                        )),
                        Some(_) => {}
                    }
                }
                if let Some(b) = before {
                    for (id, r) in &b.replicas {
                        if !placement.replicas.contains_key(id) {
                            notes.push(format!("{workload} {id} on {} is Gone", r.cluster));
                        }
                    }
                }
            }
        }
        for n in notes {
            self.note(at, n);
        }
        self.track_moves(at, &state);
        self.last = Some(state);
    }

    fn track_moves(&mut self, at: Duration, state: &State) {
        let mut live = Vec::new();
        for (workload, placement) in state.placements() {
            for m in &placement.migrations {
                let key = (workload.clone(), m.target);
                live.push(key.clone());
                let cluster_of = |id: ReplicaId| {
                    placement
                        .replicas
                        .get(&id)
                        .map(|r| r.cluster.clone())
                        .unwrap_or_default()
                };
                let target_ready = placement
                    .replicas
                    .get(&m.target)
                    .is_some_and(|r| r.phase == Phase::Ready);
                let entry = self.moves.entry(key).or_insert_with(|| MoveSeen {
                    workload: workload.clone(),
                    model: placement.model.clone(),
                    source: m.source,
                    source_cluster: cluster_of(m.source),
                    target: m.target,
                    target_cluster: cluster_of(m.target),
                    reason: m.reason,
                    seen_at: at,
                    target_ready_at: None,
                    ended_at: None,
                    rolled_back: false,
                });
                if target_ready && entry.target_ready_at.is_none() {
                    entry.target_ready_at = Some(at);
                }
            }
        }
        let mut ended = Vec::new();
        for (key, m) in self.moves.iter_mut() {
            if m.ended_at.is_some() || live.contains(key) {
                continue;
            }
            m.ended_at = Some(at);
            let target = state
                .placement(&key.0)
                .and_then(|p| p.replicas.get(&m.target));
            m.rolled_back = !target.is_some_and(|r| r.is_active());
            if !m.rolled_back && m.target_ready_at.is_none() {
                m.target_ready_at = Some(at);
            }
            ended.push(format!(
                "move of {} {} ({} → {}, {}) {}",
                m.workload,
                m.source,
                m.source_cluster,
                m.target_cluster,
                m.reason.as_str(),
                if m.rolled_back { "rolled back" } else { "done" }
            ));
        }
        for (key, m) in &self.moves {
            if m.seen_at == at && live.contains(key) {
                ended.push(format!(
                    "move of {} {} from {} to {} started ({})",
                    m.workload,
                    m.source,
                    m.source_cluster,
                    m.target_cluster,
                    m.reason.as_str()
                ));
            }
        }
        for n in ended {
            self.note(at, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printer_sees_every_new_event_even_after_the_window_is_full() {
        let mut o = Observer::default();
        let mut printed = 0;
        let mut seen = Vec::new();
        for i in 0..(KEEP_EVENTS as u64 * 3) {
            o.note(Duration::from_secs(i), format!("event {i}"));
            let (noted, new) = o.events_after(printed);
            seen.extend(new.map(|(_, t)| t.clone()));
            printed = noted;
        }
        assert_eq!(seen.len(), KEEP_EVENTS * 3);
        assert_eq!(seen.last().map(String::as_str), Some("event 599"));
    }
}
