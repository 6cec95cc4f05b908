//! `flotilla ctl status`: the federation on one screen.
//!
//! Reads each server's own copy (`allow_stale`), because status is what people run
//! when something is wrong, and a federation without a leader cannot answer a
//! linearizable read. The header says which server answered and at which index.

use super::{ExitWith, Output, code, emit, rpc_error};
use crate::table;
use flotilla_client::TransportSecurity;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::federation_service_client::FederationServiceClient;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use tonic::transport::Channel;

/// How long one member may take to say its applied index; a member that does not
/// answer is shown as such rather than holding the screen.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// What one member said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    Index(MemberLog),
    Unreachable(String),
}

/// One member's log: how far it applied, its latest snapshot, the entries it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemberLog {
    pub(super) applied: u64,
    pub(super) last_snapshot: u64,
    pub(super) entries: u64,
}

impl MemberLog {
    fn of(r: &pb::GetFederationResponse) -> MemberLog {
        MemberLog {
            applied: r.applied_index,
            last_snapshot: r.last_snapshot_index,
            entries: r.log_entries,
        }
    }
}

/// Everything the screen shows, gathered first so that rendering is pure.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) answered_by: String,
    pub(super) federation: pb::GetFederationResponse,
    /// Per member, in the order of `federation.members`.
    pub(super) applied: Vec<Applied>,
    pub(super) clusters: Vec<pb::Cluster>,
    pub(super) workloads: Vec<pb::Workload>,
    pub(super) placements: Vec<pb::Placement>,
}

pub(super) async fn run(
    ch: &Channel,
    security: &TransportSecurity,
    server: &str,
    output: Output,
) -> anyhow::Result<()> {
    let snapshot = gather(ch, security, server).await?;
    let view = summarize(&snapshot);
    match output {
        Output::Table => print!("{}", render(&view)),
        Output::Json | Output::Yaml => emit(output, &view)?,
    }
    // Scripts use status as a health check: without a leader nothing can change.
    if snapshot.federation.leader_id == 0 {
        return Err(ExitWith {
            code: code::UNAVAILABLE,
            message: "no leader: writes wait until a majority of voters run and elect one".into(),
        }
        .into());
    }
    Ok(())
}

async fn gather(
    ch: &Channel,
    security: &TransportSecurity,
    server: &str,
) -> anyhow::Result<Snapshot> {
    let federation = FederationServiceClient::new(ch.clone())
        .get_federation(pb::GetFederationRequest {})
        .await
        .map_err(|s| rpc_error("get federation", s))?
        .into_inner();
    let mut applied = Vec::with_capacity(federation.members.len());
    for m in &federation.members {
        applied.push(member_applied(security, &m.address).await);
    }
    let clusters = flotilla_client::lists::clusters(ch, true)
        .await
        .map_err(|s| rpc_error("list clusters", s))?;
    let workloads = flotilla_client::lists::workloads(ch, true)
        .await
        .map_err(|s| rpc_error("list workloads", s))?;
    let placements = flotilla_client::lists::placements(ch, "", true)
        .await
        .map_err(|s| rpc_error("list placements", s))?;
    Ok(Snapshot {
        answered_by: server.to_owned(),
        federation,
        applied,
        clusters,
        workloads,
        placements,
    })
}

/// A member's own applied index, asked of that member.
async fn member_applied(security: &TransportSecurity, address: &str) -> Applied {
    let ch = match security.channel(address, MEMBER_TIMEOUT) {
        Ok(ch) => ch,
        Err(e) => return Applied::Unreachable(e.to_string()),
    };
    let mut request = tonic::Request::new(pb::GetFederationRequest {});
    request.set_timeout(MEMBER_TIMEOUT);
    match tokio::time::timeout(
        MEMBER_TIMEOUT,
        FederationServiceClient::new(ch).get_federation(request),
    )
    .await
    {
        Ok(Ok(r)) => Applied::Index(MemberLog::of(r.get_ref())),
        Ok(Err(s)) => Applied::Unreachable(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Applied::Unreachable(format!("no answer within {MEMBER_TIMEOUT:?}")),
    }
}

/// The screen as data: what `-o json|yaml` prints and the table is drawn from.
pub(super) fn summarize(s: &Snapshot) -> Value {
    let leader_id = s.federation.leader_id;
    let leader_applied = s
        .federation
        .members
        .iter()
        .zip(&s.applied)
        .find(|(m, _)| m.node_id == leader_id)
        .and_then(|(_, a)| match a {
            Applied::Index(log) => Some(log.applied),
            Applied::Unreachable(_) => None,
        });
    let members: Vec<Value> = s
        .federation
        .members
        .iter()
        .zip(&s.applied)
        .map(|(m, a)| {
            let (log, lag, error) = match a {
                Applied::Index(log) => (
                    Some(log),
                    leader_applied.map(|l| l.saturating_sub(log.applied)),
                    None,
                ),
                Applied::Unreachable(e) => (None, None, Some(e.as_str())),
            };
            json!({"node_id": m.node_id, "address": m.address,
                "role": if m.voter { "voter" } else { "learner" },
                "leader": m.node_id == leader_id,
                "applied_index": log.map(|l| l.applied), "lag": lag,
                "last_snapshot_index": log.map(|l| l.last_snapshot),
                "log_entries": log.map(|l| l.entries),
                "error": error})
        })
        .collect();

    let mut by_state: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let (mut total, mut free, mut draining) = (0u64, 0u64, 0u64);
    for c in &s.clusters {
        let name = c.spec.as_ref().map_or("", |s| s.name.as_str());
        by_state
            .entry(super::state_name(c.state))
            .or_default()
            .push(name);
        total += u64::from(c.gpus_total);
        free += u64::from(c.gpus_free);
        draining += u64::from(c.draining);
    }

    let placements: BTreeMap<&str, &pb::Placement> = s
        .placements
        .iter()
        .map(|p| (p.workload.as_str(), p))
        .collect();
    let mut replicas_total: BTreeMap<&str, u64> = BTreeMap::new();
    let workloads: Vec<Value> = s
        .workloads
        .iter()
        .map(|w| {
            let mut phases: BTreeMap<&str, u64> = BTreeMap::new();
            for r in placements
                .get(w.name.as_str())
                .map(|p| p.replicas.as_slice())
                .unwrap_or_default()
            {
                let phase = super::phase_name(r.phase);
                *phases.entry(phase).or_default() += 1;
                *replicas_total.entry(phase).or_default() += 1;
            }
            let want = w.replicas.unwrap_or_default();
            json!({"name": w.name, "model": w.model,
                "replicas": {"min": want.min, "max": want.max},
                "ready": phases.get("Ready").copied().unwrap_or(0),
                "starting": phases.get("Starting").copied().unwrap_or(0),
                "draining": phases.get("Draining").copied().unwrap_or(0)})
        })
        .collect();
    let moves: Vec<Value> = s
        .placements
        .iter()
        .flat_map(|p| {
            // Migrations name replicas; people think in clusters.
            let cluster_of = |id: u64| {
                p.replicas
                    .iter()
                    .find(|r| r.id == id)
                    .map(|r| r.cluster.as_str())
            };
            p.migrations.iter().map(move |m| {
                json!({"workload": p.workload,
                    "source_replica": m.source, "source_cluster": cluster_of(m.source),
                    "target_replica": m.target, "target_cluster": cluster_of(m.target),
                    "reason": m.reason, "target_weight": m.target_weight})
            })
        })
        .collect();

    json!({
        "federation": s.federation.name,
        "answered_by": s.answered_by,
        "applied_index": s.federation.applied_index,
        "leader": (leader_id != 0).then(|| {
            let address = s.federation.members.iter().find(|m| m.node_id == leader_id).map(|m| m.address.as_str());
            json!({"node_id": leader_id, "address": address})
        }),
        "members": members,
        "clusters": {
            "total": s.clusters.len(),
            "draining": draining,
            "by_state": by_state,
        },
        "gpus": {"total": total, "used": total.saturating_sub(free), "free": free},
        "replicas": {
            "ready": replicas_total.get("Ready").copied().unwrap_or(0),
            "starting": replicas_total.get("Starting").copied().unwrap_or(0),
            "draining": replicas_total.get("Draining").copied().unwrap_or(0),
        },
        "workloads": workloads,
        "moves_in_flight": moves,
    })
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The table for people: a header, then members, capacity, workloads and moves.
pub(super) fn render(v: &Value) -> String {
    let mut out = String::new();
    let leader = match &v["leader"] {
        Value::Null => "NO LEADER (writes wait; check that a majority of voters run)".to_owned(),
        l => format!(
            "leader node {} at {}",
            num(&l["node_id"]),
            num(&l["address"])
        ),
    };
    let _ = writeln!(
        out,
        "Federation {}: {leader}\n(as {} sees it, at applied index {})\n",
        num(&v["federation"]),
        num(&v["answered_by"]),
        num(&v["applied_index"])
    );
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|m| {
            let mut role = num(&m["role"]);
            if m["leader"] == true {
                role.push_str(" (leader)");
            }
            vec![
                num(&m["node_id"]),
                num(&m["address"]),
                role,
                num(&m["applied_index"]),
                num(&m["lag"]),
                num(&m["last_snapshot_index"]),
                num(&m["log_entries"]),
                m["error"]
                    .as_str()
                    .map_or(String::new(), |e| format!("unreachable: {e}")),
            ]
        })
        .collect();
    out.push_str(&table::render(
        &[
            "MEMBER", "ADDRESS", "ROLE", "APPLIED", "LAG", "SNAPSHOT", "LOG", "",
        ],
        &rows,
    ));

    let c = &v["clusters"];
    let states = c["by_state"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(state, names)| {
                    let names: Vec<String> =
                        names.as_array().unwrap_or(&empty).iter().map(num).collect();
                    format!("{state} {} ({})", names.len(), names.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\nClusters   {}{}{}",
        num(&c["total"]),
        if states.is_empty() {
            String::new()
        } else {
            format!(": {states}")
        },
        match c["draining"].as_u64() {
            Some(0) | None => String::new(),
            Some(n) => format!("; {n} draining"),
        }
    );
    let g = &v["gpus"];
    let _ = writeln!(
        out,
        "GPUs       {} total, {} used, {} free",
        num(&g["total"]),
        num(&g["used"]),
        num(&g["free"])
    );
    let r = &v["replicas"];
    let workloads = v["workloads"].as_array().unwrap_or(&empty);
    let _ = writeln!(
        out,
        "Workloads  {}; replicas Ready {}, Starting {}, Draining {}",
        workloads.len(),
        num(&r["ready"]),
        num(&r["starting"]),
        num(&r["draining"])
    );
    let moves = v["moves_in_flight"].as_array().unwrap_or(&empty);
    let _ = writeln!(out, "Moves      {} in flight", moves.len());
    if !workloads.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = workloads
            .iter()
            .map(|w| {
                vec![
                    num(&w["name"]),
                    format!(
                        "{}..{}",
                        num(&w["replicas"]["min"]),
                        num(&w["replicas"]["max"])
                    ),
                    num(&w["ready"]),
                    num(&w["starting"]),
                    num(&w["draining"]),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["WORKLOAD", "WANT", "READY", "STARTING", "DRAINING"],
            &rows,
        ));
    }
    if !moves.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = moves
            .iter()
            .map(|m| {
                vec![
                    num(&m["workload"]),
                    format!(
                        "r{}@{} -> r{}@{}",
                        num(&m["source_replica"]),
                        num(&m["source_cluster"]),
                        num(&m["target_replica"]),
                        num(&m["target_cluster"])
                    ),
                    num(&m["reason"]),
                    num(&m["target_weight"]),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["MOVING", "FROM -> TO", "REASON", "TARGET WEIGHT"],
            &rows,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node_id: u64, voter: bool) -> pb::Member {
        pb::Member {
            node_id,
            address: format!("10.0.0.{node_id}:7400"),
            voter,
        }
    }

    fn cluster(name: &str, state: pb::ClusterState, total: u32, free: u32) -> pb::Cluster {
        pb::Cluster {
            spec: Some(pb::ClusterSpec {
                name: name.into(),
                ..Default::default()
            }),
            state: state as i32,
            gpus_total: total,
            gpus_free: free,
            ..Default::default()
        }
    }

    fn replica(id: u64, cluster: &str, phase: pb::Phase) -> pb::Replica {
        pb::Replica {
            id,
            cluster: cluster.into(),
            phase: phase as i32,
            ..Default::default()
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            answered_by: "10.0.0.2:7400".into(),
            federation: pb::GetFederationResponse {
                name: "acme".into(),
                members: vec![member(1, true), member(2, true), member(3, false)],
                leader_id: 1,
                applied_index: 40,
                ..Default::default()
            },
            applied: vec![
                Applied::Index(MemberLog {
                    applied: 42,
                    last_snapshot: 30,
                    entries: 13,
                }),
                Applied::Index(MemberLog {
                    applied: 40,
                    last_snapshot: 30,
                    entries: 11,
                }),
                Applied::Unreachable("no answer".into()),
            ],
            clusters: vec![
                cluster("us-east", pb::ClusterState::Ready, 16, 4),
                cluster("eu-west", pb::ClusterState::Cordoned, 8, 8),
            ],
            workloads: vec![pb::Workload {
                name: "chat".into(),
                model: "m".into(),
                replicas: Some(pb::Replicas { min: 1, max: 3 }),
                ..Default::default()
            }],
            placements: vec![pb::Placement {
                workload: "chat".into(),
                replicas: vec![
                    replica(1, "us-east", pb::Phase::Ready),
                    replica(2, "us-east", pb::Phase::Ready),
                    replica(3, "eu-west", pb::Phase::Draining),
                    replica(4, "us-east", pb::Phase::Starting),
                ],
                migrations: vec![pb::Migration {
                    source: 3,
                    target: 4,
                    reason: "cluster-drain".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn lag_is_measured_against_the_leaders_own_applied_index() {
        let v = summarize(&snapshot());
        assert_eq!(v["members"][0]["lag"], 0);
        assert_eq!(v["members"][0]["leader"], true);
        assert_eq!(v["members"][1]["lag"], 2);
        assert_eq!(v["members"][2]["role"], "learner");
        assert_eq!(v["members"][2]["lag"], Value::Null);
        assert_eq!(v["members"][2]["error"], "no answer");
    }

    #[test]
    fn each_member_shows_its_last_snapshot_and_the_log_it_keeps() {
        let v = summarize(&snapshot());
        assert_eq!(v["members"][0]["last_snapshot_index"], 30);
        assert_eq!(v["members"][0]["log_entries"], 13);
        assert_eq!(v["members"][2]["log_entries"], Value::Null);
        let table = render(&v);
        assert!(
            table.contains("SNAPSHOT") && table.contains("LOG"),
            "{table}"
        );
    }

    #[test]
    fn capacity_clusters_replicas_and_moves_are_totalled() {
        let v = summarize(&snapshot());
        assert_eq!(v["gpus"], json!({"total": 24, "used": 12, "free": 12}));
        assert_eq!(v["clusters"]["by_state"]["Cordoned"], json!(["eu-west"]));
        assert_eq!(
            v["replicas"],
            json!({"ready": 2, "starting": 1, "draining": 1})
        );
        assert_eq!(v["workloads"][0]["ready"], 2);
        assert_eq!(v["moves_in_flight"][0]["source_cluster"], "eu-west");
        assert_eq!(v["moves_in_flight"][0]["target_cluster"], "us-east");
    }

    #[test]
    fn the_screen_names_the_leader_and_an_unreachable_member() {
        let text = render(&summarize(&snapshot()));
        assert!(
            text.starts_with("Federation acme: leader node 1 at 10.0.0.1:7400"),
            "{text}"
        );
        assert!(text.contains("voter (leader)"), "{text}");
        assert!(text.contains("unreachable: no answer"), "{text}");
        assert!(
            text.contains("GPUs       24 total, 12 used, 12 free"),
            "{text}"
        );
        assert!(text.contains("Moves      1 in flight"), "{text}");
        assert!(text.contains("r3@eu-west -> r4@us-east"), "{text}");
    }

    #[test]
    fn without_a_leader_the_screen_says_so_and_lag_is_unknown() {
        let mut s = snapshot();
        s.federation.leader_id = 0;
        let v = summarize(&s);
        assert_eq!(v["leader"], Value::Null);
        assert_eq!(v["members"][1]["lag"], Value::Null);
        assert!(render(&v).contains("NO LEADER"));
    }
}
