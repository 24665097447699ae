//! `swarmlet info`: Docker's `docker info` Swarm section, plus the Raft log's figures
//! (first and last index, last snapshot, WAL bytes on disk) and the errors the node
//! dropped with nobody to tell.

use std::fmt::Write as _;
use std::process::ExitCode;

use argh::FromArgs;
use serde_json::{json, Value};

use super::{call, Global, UsageError};
use crate::api::{InfoView, Request, Response};
use crate::cluster::NodeRole;

#[cfg_attr(test, derive(argh::ArgsInfo))]
#[derive(FromArgs, Debug, PartialEq)]
#[argh(subcommand, name = "info")]
/// Show this node's swarm state, its Raft log and dropped-error counts.
pub struct InfoCommand {
    /// output format: json (Docker's shape under "Swarm"); default a text summary
    #[argh(option)]
    pub format: Option<String>,
}

pub fn run(global: &Global, cmd: InfoCommand) -> anyhow::Result<ExitCode> {
    let json = match cmd.format.as_deref() {
        None => false,
        Some("json") | Some("{{json .}}") => true,
        Some(other) => {
            return Err(
                UsageError(format!("--format: {other:?} is not supported (use json)")).into(),
            )
        }
    };
    let Response::Info(info) = call(global, &Request::Info)? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    if json {
        println!("{}", to_json(&info));
    } else {
        print!("{}", to_text(&info));
    }
    Ok(ExitCode::SUCCESS)
}

/// Docker's `Swarm` object, with swarmlet's log figures under `Swarm.Raft` and the
/// dropped-error counts under `Swarm.Dropped`. A tick is one Raft heartbeat interval
/// (100 ms here; Docker's is 1 s).
pub fn to_json(i: &InfoView) -> Value {
    let manager = i.role == Some(NodeRole::Manager);
    let cluster = i.cluster_id.as_ref().map(|id| {
        let spec = i.raft.as_ref().map(|r| {
            json!({
                "Raft": {
                    "SnapshotInterval": r.snapshot_interval,
                    "HeartbeatTick": 1,
                    "ElectionTick": r.election_timeout_ms / r.heartbeat_ms.max(1),
                }
            })
        });
        json!({ "ID": id, "Spec": spec })
    });
    let raft = i.raft.as_ref().map(|r| {
        json!({
            "Term": r.term,
            "FirstIndex": r.first_index,
            "LastIndex": r.last_index,
            "CommitIndex": r.commit_index,
            "AppliedIndex": r.applied_index,
            "SnapshotIndex": r.snapshot_index,
            "WalBytes": r.wal_bytes,
            "HeartbeatMs": r.heartbeat_ms,
            "ElectionTimeoutMs": r.election_timeout_ms,
        })
    });
    let dropped: serde_json::Map<String, Value> = i
        .counters
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "Swarm": {
            "NodeID": i.node_id.to_string(),
            "NodeAddr": i.advertise.map(|a| a.ip().to_string()).unwrap_or_default(),
            "LocalNodeState": i.local_state,
            "ControlAvailable": manager,
            "Error": "",
            "RemoteManagers": i.remote_managers.iter().map(|(id, a)| json!({
                "NodeID": id.to_string(),
                "Addr": a.to_string(),
            })).collect::<Vec<_>>(),
            "Nodes": i.nodes,
            "Managers": i.managers,
            "Cluster": cluster,
            "Leader": i.leader.map(|l| l.to_string()),
            "Raft": raft,
            "Dropped": dropped,
        }
    })
}

pub fn to_text(i: &InfoView) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Swarm: {}", i.local_state);
    let _ = writeln!(s, " NodeID: {}", i.node_id);
    let _ = writeln!(s, " Hostname: {}", i.hostname);
    if let Some(a) = i.advertise {
        let _ = writeln!(s, " Node Address: {}", a.ip());
    }
    if i.local_state != "active" {
        return s;
    }
    let _ = writeln!(s, " Is Manager: {}", i.role == Some(NodeRole::Manager));
    if let Some(c) = &i.cluster_id {
        let _ = writeln!(s, " ClusterID: {c}");
    }
    if let (Some(m), Some(n)) = (i.managers, i.nodes) {
        let _ = writeln!(s, " Managers: {m}\n Nodes: {n}");
    }
    if let Some(l) = i.leader {
        let _ = writeln!(s, " Leader: {l}");
    }
    if let Some(r) = &i.raft {
        let _ = writeln!(s, " Raft:");
        let _ = writeln!(s, "  Snapshot Interval: {}", r.snapshot_interval);
        let _ = writeln!(s, "  Heartbeat Tick: 1 ({} ms)", r.heartbeat_ms);
        let _ = writeln!(
            s,
            "  Election Tick: {} ({} to {} ms)",
            r.election_timeout_ms / r.heartbeat_ms.max(1),
            r.election_timeout_ms,
            2 * r.election_timeout_ms
        );
        let _ = writeln!(s, "  Term: {}", r.term);
        let _ = writeln!(
            s,
            "  Log: first index {}, last index {}, commit {}, applied {}",
            r.first_index, r.last_index, r.commit_index, r.applied_index
        );
        let _ = writeln!(s, "  Last Snapshot Index: {}", r.snapshot_index);
        let _ = writeln!(s, "  WAL Size: {} bytes", r.wal_bytes);
    }
    if !i.remote_managers.is_empty() {
        let _ = writeln!(s, " Manager Addresses:");
        for (_, a) in &i.remote_managers {
            let _ = writeln!(s, "  {a}");
        }
    }
    let dropped: Vec<_> = i.counters.iter().filter(|(_, v)| *v > 0).collect();
    if !dropped.is_empty() {
        let _ = writeln!(s, " Dropped:");
        for (k, v) in dropped {
            let _ = writeln!(s, "  {k}: {v}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RaftInfo;
    use crate::raft::NodeId;

    fn view() -> InfoView {
        InfoView {
            node_id: NodeId(0xab),
            key: "k".into(),
            hostname: "pi-1".into(),
            local_state: "active".into(),
            cluster_id: Some("c1".into()),
            role: Some(NodeRole::Manager),
            leader: Some(NodeId(0xab)),
            listen: None,
            advertise: Some("10.0.0.1:2377".parse().unwrap()),
            managers: Some(1),
            nodes: Some(3),
            remote_managers: vec![(NodeId(0xab), "10.0.0.1:2377".parse().unwrap())],
            raft: Some(RaftInfo {
                snapshot_interval: 10_000,
                heartbeat_ms: 100,
                election_timeout_ms: 500,
                term: 3,
                first_index: 10_001,
                last_index: 10_050,
                commit_index: 10_050,
                applied_index: 10_050,
                snapshot_index: 10_000,
                wal_bytes: 4096,
            }),
            counters: vec![("sends_too_large".into(), 2), ("raft_refusals".into(), 0)],
        }
    }

    #[test]
    fn json_has_dockers_shape_and_the_log_figures() {
        let j = to_json(&view());
        assert_eq!(
            j["Swarm"]["Cluster"]["Spec"]["Raft"]["SnapshotInterval"],
            10_000
        );
        assert_eq!(j["Swarm"]["Cluster"]["Spec"]["Raft"]["ElectionTick"], 5);
        assert_eq!(j["Swarm"]["Cluster"]["ID"], "c1");
        assert_eq!(j["Swarm"]["NodeAddr"], "10.0.0.1");
        assert_eq!(j["Swarm"]["LocalNodeState"], "active");
        assert_eq!(j["Swarm"]["ControlAvailable"], true);
        assert_eq!(j["Swarm"]["Nodes"], 3);
        assert_eq!(j["Swarm"]["RemoteManagers"][0]["Addr"], "10.0.0.1:2377");
        assert_eq!(j["Swarm"]["Raft"]["FirstIndex"], 10_001);
        assert_eq!(j["Swarm"]["Raft"]["SnapshotIndex"], 10_000);
        assert_eq!(j["Swarm"]["Raft"]["WalBytes"], 4096);
        assert_eq!(j["Swarm"]["Dropped"]["sends_too_large"], 2);
    }

    #[test]
    fn text_names_what_docker_does_and_only_nonzero_drops() {
        let t = to_text(&view());
        for want in [
            "Swarm: active",
            " Is Manager: true",
            "  Snapshot Interval: 10000",
            "  Last Snapshot Index: 10000",
            "  WAL Size: 4096 bytes",
            "  sends_too_large: 2",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        assert!(!t.contains("raft_refusals"));
        let mut idle = view();
        idle.local_state = "inactive".into();
        assert!(!to_text(&idle).contains("Raft"));
    }
}
