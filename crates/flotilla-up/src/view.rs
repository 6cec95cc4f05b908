//! The live view: clusters with their GPUs, placements and phases, each model's
//! traffic share per cluster, the request rate and errors, recent events.
//!
//! [`render`] is pure (a frame is text); [`Screen`] draws frames on a terminal by
//! moving the cursor home and overwriting line by line, which does not flicker the
//! way clearing the screen does. When stdout is not a terminal, nothing is drawn and
//! events are printed as plain lines instead.

use crate::load::Record;
use crate::topology::TimedEvent;
use flotilla_core::{Phase, State};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

/// How far back the traffic figures look.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Frame<'a> {
    pub elapsed: Duration,
    pub until: Duration,
    pub scenario: &'a str,
    pub next_event: Option<&'a TimedEvent>,
    pub state: Option<&'a State>,
    pub records: &'a [Record],
    pub events: Vec<&'a (Duration, String)>,
    pub hint: &'a str,
}

fn mmss(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}", s / 60, s % 60)
}

pub fn render(f: &Frame<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "flotilla up · scenario {} · {} / {}",
        f.scenario,
        mmss(f.elapsed),
        mmss(f.until)
    );
    match f.next_event {
        Some(e) => {
            let _ = writeln!(
                out,
                "next: at {} on {}: {}",
                mmss(e.at),
                e.cluster,
                e.action.describe()
            );
        }
        None => {
            let _ = writeln!(out, "next: no more scenario events");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:<12} {:>5} {:>5} {:>8} {:>9}",
        "CLUSTER", "REGION", "STATE", "GPUS", "USED", "CLAIMED", "UNHEALTHY"
    );
    if let Some(state) = f.state {
        for (name, c) in state.clusters() {
            let (mut total, mut used, mut claimed, mut sick) = (0, 0, 0, 0);
            for (_, d) in c.inventory.devices() {
                total += 1;
                used += usize::from(d.allocated_to.is_some());
                claimed += usize::from(d.report.claimed_by_other);
                sick += usize::from(!d.report.healthy);
            }
            let mut st = format!("{:?}", c.state);
            if c.cordoned {
                st.push_str(",cordoned");
            }
            let _ = writeln!(
                out,
                "{:<12} {:<10} {:<12} {:>5} {:>5} {:>8} {:>9}",
                name, c.spec.region, st, total, used, claimed, sick
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<12} {:<16} REPLICAS", "WORKLOAD", "MODEL");
        for (workload, p) in state.placements() {
            let parts: Vec<String> = p
                .summary()
                .into_iter()
                .filter(|(_, phase, _)| *phase != Phase::Gone)
                .map(|(c, phase, n)| format!("{c}: {n} {}", phase.as_str()))
                .collect();
            let moving = if p.migrations.is_empty() {
                String::new()
            } else {
                format!("  ({} moving)", p.migrations.len())
            };
            let _ = writeln!(
                out,
                "{:<12} {:<16} {}{}",
                workload,
                p.model,
                parts.join(", "),
                moving
            );
        }
    } else {
        let _ = writeln!(out, "(waiting for the registry)");
    }
    let _ = writeln!(out);
    let recent: Vec<&Record> = f
        .records
        .iter()
        .filter(|r| r.finished + WINDOW >= f.elapsed)
        .collect();
    let total_failed = f.records.iter().filter(|r| !r.ok).count();
    let _ = writeln!(
        out,
        "TRAFFIC (last {}s): {:.1} req/s, {} failed · since start: {} requests, {} failed",
        WINDOW.as_secs(),
        recent.len() as f64 / WINDOW.as_secs_f64(),
        recent.iter().filter(|r| !r.ok).count(),
        f.records.len(),
        total_failed
    );
    let mut by_model: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for r in recent.iter().filter(|r| r.ok) {
        *by_model
            .entry(r.model.as_str())
            .or_default()
            .entry(r.served_by.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    for (model, clusters) in &by_model {
        let n: usize = clusters.values().sum();
        let shares: Vec<String> = clusters
            .iter()
            .map(|(c, k)| format!("{c} {:>3.0}%", 100.0 * *k as f64 / n.max(1) as f64))
            .collect();
        let _ = writeln!(out, "  {:<22} {}", model, shares.join("  "));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "EVENTS");
    for (at, text) in &f.events {
        let _ = writeln!(out, "  {}  {}", mmss(*at), text);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", f.hint);
    out
}

/// Draws frames on a terminal without flicker.
#[derive(Debug)]
pub struct Screen {
    tty: bool,
}

impl Screen {
    pub fn new(tty: bool) -> Screen {
        if tty {
            // Hide the cursor and start from a clean screen once.
            print!("\x1b[?25l\x1b[2J");
        }
        Screen { tty }
    }

    pub fn is_tty(&self) -> bool {
        self.tty
    }

    pub fn draw(&self, frame: &str) {
        if !self.tty {
            return;
        }
        let mut buf = String::with_capacity(frame.len() + 256);
        buf.push_str("\x1b[H");
        for line in frame.lines() {
            buf.push_str(line);
            buf.push_str("\x1b[K\n");
        }
        buf.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(buf.as_bytes());
        let _ = stdout.flush();
    }

    /// Leaves the terminal as it was found (cursor shown), below the last frame.
    pub fn finish(&self) {
        if self.tty {
            print!("\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(finished_s: u64, model: &str, cluster: &str, ok: bool) -> Record {
        Record {
            started: Duration::from_secs(finished_s),
            finished: Duration::from_secs(finished_s),
            origin: "a".into(),
            model: model.into(),
            streamed: false,
            status: 200,
            served_by: Some(cluster.into()),
            replica: Some("r1".into()),
            ok,
            error: None,
        }
    }

    #[test]
    fn a_frame_shows_each_models_share_per_cluster_over_the_window() {
        let records = vec![
            record(1, "chat", "a", true), // outside the window
            record(25, "chat", "a", true),
            record(26, "chat", "b", true),
            record(27, "chat", "b", true),
            record(28, "chat", "b", true),
            record(29, "code", "a", false),
        ];
        let events = [(
            Duration::from_secs(20),
            "chat r1 on a is Draining".to_owned(),
        )];
        let frame = render(&Frame {
            elapsed: Duration::from_secs(30),
            until: Duration::from_secs(60),
            scenario: "demo",
            next_event: None,
            state: None,
            records: &records,
            events: events.iter().collect(),
            hint: "Ctrl-C stops",
        });
        assert!(frame.contains("00:30 / 01:00"), "{frame}");
        assert!(
            frame.contains("chat                   a  25%  b  75%"),
            "{frame}"
        );
        assert!(frame.contains("0.5 req/s, 1 failed"), "{frame}");
        assert!(frame.contains("00:20  chat r1 on a is Draining"), "{frame}");
    }
}
