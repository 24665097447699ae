//! `service logs`: every task's container log, gathered from the nodes that ran them,
//! each line prefixed as Docker does (`web.1.3f2a9c0d1b7e@pi-2    | hello`).
//!
//! The CLI asks its manager for the tasks (`TaskList`), then reads each node's
//! containers a chunk at a time through the manager (`NodeLogs`; see `control::logs`),
//! one thread per node and batch of containers, keeping each container's cursor. A node
//! down or silent is named on stderr while the others go on; the output is then
//! incomplete and the exit code 1. With `-f` the threads poll until interrupted, a
//! silent node is tried again, and tasks started since are picked up.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::container::log_since;
use super::container::tail_lines;
use super::service::ServiceLogs;
use super::Global;
use crate::api::{self, LogFrom, LogLine, LogPiece, LogRead, Request, Response, TaskView};
use crate::raft::NodeId;
use crate::services::store::TaskId;

/// How long a follower waits, once caught up, before asking again.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// How often `-f` looks for tasks started since, and tries a silent node again.
const FOLLOW_REFRESH: Duration = Duration::from_secs(2);
/// Spaces between the widest prefix and the `|`, as Docker prints them.
const PREFIX_GAP: usize = 4;

/// What the flags mean.
struct Plan {
    /// The first log time shown (`--since`), in the logs' own form.
    since: Option<String>,
    tail: Option<u64>,
    follow: bool,
    timestamps: bool,
    raw: bool,
    no_task_ids: bool,
    no_trunc: bool,
    no_resolve: bool,
}

/// One task's log, as a thread reads it.
struct Source {
    /// The line prefix, padded, with its `| ` (empty for `--raw`).
    prefix: String,
    container: String,
    from: LogFrom,
    /// The last line printed was a piece of a longer one: no prefix before the rest.
    mid_line: bool,
    done: bool,
}

/// Nodes whose logs could not be read (by name), for the closing error.
type Missing = Arc<Mutex<BTreeSet<String>>>;

pub fn logs(global: &Global, c: ServiceLogs) -> anyhow::Result<ExitCode> {
    let plan = Plan {
        since: c.since.as_deref().map(log_since).transpose()?,
        tail: tail_lines(c.tail.as_deref())?,
        follow: c.follow,
        timestamps: c.timestamps,
        raw: c.raw,
        no_task_ids: c.no_task_ids,
        no_trunc: c.no_trunc,
        no_resolve: c.no_resolve,
    };
    let tasks = tasks_of(global, &c.service)?;
    let width = tasks
        .iter()
        .map(|t| context(t, &plan).chars().count())
        .max()
        .unwrap_or(0);
    let missing: Missing = Arc::default();
    let mut seen: BTreeSet<TaskId> = BTreeSet::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let start = |tasks: Vec<TaskView>, from: LogFrom| {
            for (node, name, down, sources) in batches(tasks, &plan, width, from) {
                let (plan, missing) = (&plan, missing.clone());
                if down {
                    let what = tasks_named(&sources);
                    eprintln!("swarmlet: node {name} is down: the logs of {what} are not shown");
                    missing
                        .lock()
                        .expect("invariant: no panic holds it")
                        .insert(name.clone());
                    if !plan.follow {
                        continue;
                    }
                }
                s.spawn(move || follow_node(global, node, &name, sources, plan, &missing, down));
            }
        };
        seen.extend(tasks.iter().map(|t| t.id));
        start(tasks, LogFrom::Tail(plan.tail));
        if !plan.follow {
            return Ok(());
        }
        loop {
            std::thread::sleep(FOLLOW_REFRESH);
            // Tasks started since (a replica replaced, the service scaled): read whole.
            // A manager that fails to answer now may answer next time; the readers
            // started go on meanwhile.
            let Ok(now) = tasks_of(global, &c.service) else {
                continue;
            };
            let new: Vec<TaskView> = now.into_iter().filter(|t| seen.insert(t.id)).collect();
            start(new, LogFrom::Tail(None));
        }
    })?;
    let missing = missing.lock().expect("invariant: no panic holds it");
    if missing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<&str> = missing.iter().map(String::as_str).collect();
    anyhow::bail!(
        "incomplete logs: nothing could be read from node {}",
        names.join(", ")
    )
}

/// The tasks of a service, or the one task `what` names (its id or a unique prefix).
fn tasks_of(global: &Global, what: &str) -> anyhow::Result<Vec<TaskView>> {
    let list = |services: Vec<String>| -> anyhow::Result<Result<Vec<TaskView>, String>> {
        let req = Request::TaskList {
            services,
            node: None,
        };
        match api::call(&global.socket, &req)? {
            Response::Tasks(v) => Ok(Ok(v)),
            Response::Error(e) => Ok(Err(e)),
            other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
        }
    };
    match list(vec![what.to_string()])? {
        Ok(v) => return Ok(v),
        Err(e) if e.ends_with("not found") => {}
        Err(e) => anyhow::bail!(e),
    }
    let all = list(Vec::new())?.map_err(anyhow::Error::msg)?;
    let hits: Vec<TaskView> = all
        .into_iter()
        .filter(|t| !what.is_empty() && t.id.to_string().starts_with(what))
        .collect();
    match hits.len() {
        0 => anyhow::bail!("no such service or task: {what}"),
        1 => Ok(hits),
        n => anyhow::bail!("task id prefix {what} is ambiguous ({n} tasks)"),
    }
}

fn short(id: String, no_trunc: bool) -> String {
    if no_trunc {
        id
    } else {
        id.chars().take(12).collect()
    }
}

/// Docker's prefix: `service.slot.task@node` (a global task's node id for its slot).
fn context(t: &TaskView, p: &Plan) -> String {
    let node_id = t.node_id.map(|n| n.to_string()).unwrap_or_default();
    let service = match p.no_resolve {
        true => t.service_id.to_string(),
        false => t.service.clone(),
    };
    let slot = match t.slot {
        0 => short(node_id.clone(), p.no_trunc),
        s => s.to_string(),
    };
    let mut c = format!("{service}.{slot}");
    if !p.no_task_ids {
        c.push('.');
        c.push_str(&short(t.id.to_string(), p.no_trunc));
    }
    let node = match (&t.node, p.no_resolve) {
        (Some(name), false) => name.clone(),
        _ => node_id,
    };
    format!("{c}@{node}")
}

/// The container a task runs in on its node (`services::agent` names it so).
fn container_name(t: &TaskView) -> String {
    match (t.slot, t.node_id) {
        (0, Some(n)) => format!("{}.{n}.{}", t.service, t.id),
        (s, _) => format!("{}.{s}.{}", t.service, t.id),
    }
}

/// The tasks grouped by node, at most `api::MAX_LOG_READS` to a batch: (node, its
/// name, whether the state has it down, the sources).
fn batches(
    mut tasks: Vec<TaskView>,
    p: &Plan,
    width: usize,
    from: LogFrom,
) -> Vec<(NodeId, String, bool, Vec<Source>)> {
    tasks.retain(|t| t.node_id.is_some());
    tasks.sort_by_key(|t| (t.node_id, t.slot, t.created_ms));
    let mut out: Vec<(NodeId, String, bool, Vec<Source>)> = Vec::new();
    for t in tasks {
        let Some(node) = t.node_id else { continue };
        let prefix = match p.raw {
            true => String::new(),
            false => {
                let c = context(&t, p);
                let pad = width.saturating_sub(c.chars().count()) + PREFIX_GAP;
                format!("{c}{:pad$}| ", "")
            }
        };
        let source = Source {
            prefix,
            container: container_name(&t),
            from,
            mid_line: false,
            done: false,
        };
        match out.last_mut() {
            Some((n, _, _, v)) if *n == node && v.len() < api::MAX_LOG_READS => v.push(source),
            _ => {
                let name = t.node.clone().unwrap_or_else(|| node.to_string());
                out.push((node, name, t.node_down, vec![source]));
            }
        }
    }
    out
}

/// `web.1.x, web.2.y` for a message: the containers, without the padding.
fn tasks_named(sources: &[Source]) -> String {
    let names: Vec<&str> = sources.iter().map(|s| s.container.as_str()).collect();
    format!("task {}", names.join(", "))
}

/// Reads one node's batch of logs to the end (or, with `-f`, for ever), printing as it
/// goes. A failed read names the node on stderr; without `-f` the node is given up,
/// with it the node is tried again every [`FOLLOW_REFRESH`] (and named again only once
/// it answered in between).
fn follow_node(
    global: &Global,
    node: NodeId,
    name: &str,
    mut sources: Vec<Source>,
    p: &Plan,
    missing: &Missing,
    mut reported: bool,
) {
    loop {
        let live: Vec<usize> = (0..sources.len()).filter(|i| !sources[*i].done).collect();
        if live.is_empty() {
            return;
        }
        let reads: Vec<LogRead> = live
            .iter()
            .map(|i| LogRead {
                container: sources[*i].container.clone(),
                from: sources[*i].from,
            })
            .collect();
        let answer = match api::call(&global.socket, &Request::NodeLogs { node, reads }) {
            Ok(Response::LogPieces(v)) if v.len() == live.len() => Ok(v),
            Ok(Response::LogPieces(v)) => Err(format!(
                "{} pieces answered for {} reads",
                v.len(),
                live.len()
            )),
            Ok(Response::Error(e)) => Err(e),
            Ok(other) => Err(format!("unexpected answer from the daemon: {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        let pieces = match answer {
            Ok(v) => v,
            Err(e) => {
                if !reported {
                    let what = tasks_named(&sources);
                    eprintln!("swarmlet: node {name}: cannot read the logs of {what}: {e}");
                    missing
                        .lock()
                        .expect("invariant: no panic holds it")
                        .insert(name.to_string());
                    reported = true;
                }
                if !p.follow {
                    return;
                }
                std::thread::sleep(FOLLOW_REFRESH);
                continue;
            }
        };
        reported = false;
        let mut caught_up = true;
        for (i, piece) in live.into_iter().zip(pieces) {
            let src = &mut sources[i];
            match piece {
                LogPiece::Lines { lines, next, more } => {
                    print_lines(src, &lines, p);
                    src.from = LogFrom::At(next);
                    caught_up &= !more;
                    src.done = !more && !p.follow;
                }
                // Never started there, or removed since: nothing to show, as Docker.
                LogPiece::NoContainer => src.done = true,
                LogPiece::Failed(e) => {
                    eprintln!("swarmlet: node {name}: {e}");
                    src.done = true;
                }
            }
        }
        if caught_up && p.follow {
            std::thread::sleep(FOLLOW_POLL);
        }
    }
}

/// Prints one chunk of a task's lines, each stream to ours, as one write per stream.
fn print_lines(src: &mut Source, lines: &[LogLine], p: &Plan) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for l in lines {
        if p.since.as_deref().is_some_and(|s| l.time.as_str() < s) {
            continue;
        }
        let w = if l.stderr { &mut err } else { &mut out };
        if !src.mid_line {
            if p.timestamps {
                w.extend_from_slice(l.time.as_bytes());
                w.push(b' ');
            }
            w.extend_from_slice(src.prefix.as_bytes());
        }
        w.extend_from_slice(&l.text);
        if !l.partial {
            w.push(b'\n');
        }
        src.mid_line = l.partial;
    }
    // A reader gone away (a closed pipe) is no reason to stop the others.
    if !out.is_empty() {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&out).and_then(|()| o.flush());
    }
    if !err.is_empty() {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&err).and_then(|()| e.flush());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::task::TaskState;
    use crate::services::ServiceId;

    fn task(slot: u64, node: u64, host: &str) -> TaskView {
        TaskView {
            id: TaskId(0x3f2a_9c0d_1b7e_4455),
            service_id: ServiceId(0xabcd),
            service: "web".into(),
            slot,
            node_id: Some(NodeId(node)),
            node: Some(host.into()),
            node_down: false,
            image: "bb".into(),
            version: 1,
            desired: TaskState::Running,
            state: TaskState::Running,
            message: String::new(),
            error: String::new(),
            created_ms: 0,
            state_ms: 0,
        }
    }

    fn plan() -> Plan {
        Plan {
            since: None,
            tail: None,
            follow: false,
            timestamps: false,
            raw: false,
            no_task_ids: false,
            no_trunc: false,
            no_resolve: false,
        }
    }

    #[test]
    fn prefixes_and_container_names_follow_docker() {
        let t = task(2, 0x11, "pi-2");
        assert_eq!(context(&t, &plan()), "web.2.3f2a9c0d1b7e@pi-2");
        assert_eq!(container_name(&t), "web.2.3f2a9c0d1b7e4455");
        let p = Plan {
            no_trunc: true,
            ..plan()
        };
        assert_eq!(context(&t, &p), "web.2.3f2a9c0d1b7e4455@pi-2");
        let p = Plan {
            no_task_ids: true,
            ..plan()
        };
        assert_eq!(context(&t, &p), "web.2@pi-2");
        let p = Plan {
            no_resolve: true,
            ..plan()
        };
        assert_eq!(
            context(&t, &p),
            "000000000000abcd.2.3f2a9c0d1b7e@0000000000000011"
        );
        // A global task: its node id in the slot's place, as its container's name.
        let g = task(0, 0x11, "pi-2");
        assert_eq!(context(&g, &plan()), "web.000000000000.3f2a9c0d1b7e@pi-2");
        assert_eq!(container_name(&g), "web.0000000000000011.3f2a9c0d1b7e4455");
    }

    #[test]
    fn batches_group_by_node_pad_prefixes_and_cap_their_size() {
        let mut tasks = vec![task(10, 2, "b"), task(1, 1, "a")];
        tasks.extend((0..20).map(|i| task(100 + i, 3, "c")));
        let p = plan();
        let width = tasks.iter().map(|t| context(t, &p).len()).max().unwrap();
        let b = batches(tasks, &p, width, LogFrom::Tail(Some(1)));
        let sizes: Vec<(u64, usize)> = b.iter().map(|(n, _, _, v)| (n.0, v.len())).collect();
        assert_eq!(sizes, vec![(1, 1), (2, 1), (3, 16), (3, 4)]);
        // Every `|` lines up, 4 spaces after the widest prefix.
        let bars: BTreeSet<usize> = b
            .iter()
            .flat_map(|(_, _, _, v)| v.iter().map(|s| s.prefix.find('|').unwrap()))
            .collect();
        assert_eq!(bars, BTreeSet::from([width + PREFIX_GAP]));
        assert!(b[0].3[0].prefix.starts_with("web.1.3f2a9c0d1b7e@a    "));
        let raw = Plan {
            raw: true,
            ..plan()
        };
        let b = batches(vec![task(1, 1, "a")], &raw, 0, LogFrom::Tail(None));
        assert_eq!(b[0].3[0].prefix, "");
    }
}
