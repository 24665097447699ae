//! The scheduler: which node runs each new task. Pure: the nodes and the tasks already
//! on them in, node choices (or the reason there is none) out.
//!
//! Docker's rules. A node must pass every filter, in this order: ready (status Ready and
//! availability Active), resources (the task's reservation fits in what the node's
//! running tasks leave), constraints, and `--replicas-max-per-node`. Of the nodes that
//! pass, a task goes to the one with the fewest active tasks of its service, then the
//! fewest active tasks in all, then the lowest id (so a run is reproducible). When no
//! node passes, the reason names how many nodes each filter turned away, each node
//! counted once, at the first filter it failed, most frequent first:
//! `no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not
//! available for new tasks)`.
//!
//! `--placement-pref spread=<label>` comes before that ranking, as Docker's does: the
//! nodes that pass the filters are grouped by the label's value (nodes without it form
//! one more group), and each task goes to the group with the fewest tasks of the service
//! among those with a node that can take it; several preferences nest, outermost
//! first. Within the last group, the ranking above picks the node.
//!
//! Placing a group of N tasks of one service costs O(nodes + N log nodes): the nodes
//! that pass the filters that do not depend on load go into a heap ordered by load (one
//! heap per spread group); the best is popped, checked against the load filters, given
//! the task, and pushed back.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::constraint::{Constraint, NodeFacts};
use super::ServiceId;
use crate::raft::NodeId;

/// CPU (in billionths of a core, Docker's NanoCPUs) and memory (bytes).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Resources {
    pub nano_cpus: u64,
    pub memory: u64,
}

impl Resources {
    fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory == 0
    }

    fn fits_in(&self, free: Resources) -> bool {
        self.nano_cpus <= free.nano_cpus && self.memory <= free.memory
    }
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub facts: NodeFacts<'a>,
    /// Status Ready and availability Active: it takes new tasks.
    pub available: bool,
    /// What it can give tasks' reservations in all.
    pub capacity: Resources,
}

/// Tasks of one service to place, alike.
#[derive(Clone, Debug)]
pub struct Group<'a> {
    pub service: ServiceId,
    pub constraints: &'a [Constraint],
    /// `--replicas-max-per-node`; 0 for no limit.
    pub max_per_node: u64,
    pub reserve: Resources,
    /// `--placement-pref spread=` labels, outermost first.
    pub spread: &'a [String],
}

type Rank = Reverse<(u32, u32, NodeId, usize)>;

/// A group of nodes in the spread tree: those whose spread labels share the values on
/// the path to it. The root holds every node; a leaf (at the depth of the last
/// preference, or the root when there is none) holds its nodes in a heap.
#[derive(Default)]
struct Branch<'a> {
    /// Its label value, and the group it is in (the root: itself).
    value: &'a str,
    parent: usize,
    /// Active tasks of the service on the group's nodes.
    tasks: u32,
    /// The next preference's groups, by label value (arena indexes).
    children: BTreeMap<&'a str, usize>,
    /// Those groups, fewest tasks first (then by value). An entry whose count is no
    /// longer its group's is stale and skipped: a group's new count is pushed anew.
    order: BinaryHeap<Reverse<(u32, &'a str, usize)>>,
    /// At the last preference: its nodes, by rank.
    heap: BinaryHeap<Rank>,
    /// No node in it can take another task of the group.
    spent: bool,
}

/// The filters, in the order they run; a node is charged to the first it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    Ready,
    Resources,
    Constraints,
    MaxPerNode,
}

impl Filter {
    const ALL: [Filter; 4] = [
        Filter::Ready,
        Filter::Resources,
        Filter::Constraints,
        Filter::MaxPerNode,
    ];

    fn explain(self, n: usize) -> String {
        let nodes = if n == 1 {
            "1 node".to_string()
        } else {
            format!("{n} nodes")
        };
        match self {
            Filter::Ready => format!("{nodes} not available for new tasks"),
            Filter::Resources => format!("insufficient resources on {nodes}"),
            Filter::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            // Docker's words, count-less.
            Filter::MaxPerNode => "max replicas per node limit exceed".to_string(),
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Load {
    /// Active tasks (desired state up to complete), of every service.
    tasks: u32,
    reserved: Resources,
}

/// Where tasks went, in the order they were asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub nodes: Vec<NodeId>,
    /// Why the tasks not placed (if any) found no node.
    pub unplaced: Option<String>,
}

pub struct Scheduler<'a> {
    nodes: Vec<Candidate<'a>>,
    loads: Vec<Load>,
    index: BTreeMap<NodeId, usize>,
    /// Active tasks per service, per node (indexed like `nodes`).
    per_service: BTreeMap<ServiceId, Vec<u32>>,
}

impl<'a> Scheduler<'a> {
    pub fn new(nodes: impl IntoIterator<Item = Candidate<'a>>) -> Scheduler<'a> {
        let mut nodes: Vec<Candidate<'a>> = nodes.into_iter().collect();
        nodes.sort_by_key(|c| c.facts.id);
        nodes.dedup_by_key(|c| c.facts.id);
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.facts.id, i))
            .collect();
        Scheduler {
            loads: vec![Load::default(); nodes.len()],
            nodes,
            index,
            per_service: BTreeMap::new(),
        }
    }

    /// Counts an active task (desired state up to complete) already on `node`. Tasks on
    /// nodes the scheduler does not know are ignored.
    pub fn add_task(&mut self, node: NodeId, service: ServiceId, reserve: Resources) {
        let Some(&i) = self.index.get(&node) else {
            return;
        };
        self.charge(i, service, reserve);
    }

    fn charge(&mut self, i: usize, service: ServiceId, reserve: Resources) {
        let n = self.nodes.len();
        let load = &mut self.loads[i];
        load.tasks = load.tasks.saturating_add(1);
        load.reserved.nano_cpus = load.reserved.nano_cpus.saturating_add(reserve.nano_cpus);
        load.reserved.memory = load.reserved.memory.saturating_add(reserve.memory);
        let counts = self
            .per_service
            .entry(service)
            .or_insert_with(|| vec![0; n]);
        counts[i] = counts[i].saturating_add(1);
    }

    fn service_tasks(&self, service: ServiceId, i: usize) -> u32 {
        self.per_service.get(&service).map_or(0, |c| c[i])
    }

    /// The first filter node `i` fails for `g`, if any.
    fn fails(&self, i: usize, g: &Group<'_>) -> Option<Filter> {
        let c = &self.nodes[i];
        let load = &self.loads[i];
        Filter::ALL.into_iter().find(|f| match f {
            Filter::Ready => !c.available,
            Filter::Resources => {
                let free = Resources {
                    nano_cpus: c.capacity.nano_cpus.saturating_sub(load.reserved.nano_cpus),
                    memory: c.capacity.memory.saturating_sub(load.reserved.memory),
                };
                !g.reserve.is_zero() && !g.reserve.fits_in(free)
            }
            Filter::Constraints => !g.constraints.iter().all(|k| k.matches(&c.facts)),
            Filter::MaxPerNode => {
                g.max_per_node > 0 && u64::from(self.service_tasks(g.service, i)) >= g.max_per_node
            }
        })
    }

    /// Why no node takes a task of `g` now: each node charged to its first failed
    /// filter, most frequent first.
    fn explain(&self, g: &Group<'_>) -> String {
        let mut counts: BTreeMap<Filter, usize> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            if let Some(f) = self.fails(i, g) {
                *counts.entry(f).or_default() += 1;
            }
        }
        let mut counts: Vec<(Filter, usize)> = counts.into_iter().collect();
        // Most frequent first; equal counts in filter order (the sort is stable).
        counts.sort_by_key(|(_, n)| Reverse(*n));
        let parts: Vec<String> = counts.into_iter().map(|(f, n)| f.explain(n)).collect();
        if parts.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({})", parts.join("; "))
        }
    }

    /// Places `count` tasks of `g`, each counted on its node as it goes (so the next
    /// group sees them).
    pub fn place(&mut self, g: &Group<'_>, count: usize) -> Placement {
        // The spread tree, in an arena; 0 is the root. Only nodes that take tasks and
        // meet the constraints are in it, and only their tasks count (Docker's).
        let mut tree: Vec<Branch<'a>> = vec![Branch::default()];
        for i in 0..self.nodes.len() {
            let c = &self.nodes[i];
            if !c.available || !g.constraints.iter().all(|k| k.matches(&c.facts)) {
                continue;
            }
            let ours = self.service_tasks(g.service, i);
            let mut b = 0;
            for key in g.spread {
                let value = self.nodes[i].facts.label(key);
                b = match tree[b].children.get(value) {
                    Some(&c) => c,
                    None => {
                        tree.push(Branch {
                            value,
                            parent: b,
                            ..Branch::default()
                        });
                        let c = tree.len() - 1;
                        tree[b].children.insert(value, c);
                        c
                    }
                };
                tree[b].tasks = tree[b].tasks.saturating_add(ours);
            }
            let r = self.rank(g, i);
            tree[b].heap.push(r);
        }
        for c in 1..tree.len() {
            let (p, t, v) = (tree[c].parent, tree[c].tasks, tree[c].value);
            tree[p].order.push(Reverse((t, v, c)));
        }
        let mut nodes = Vec::new();
        let mut path = Vec::with_capacity(g.spread.len());
        while nodes.len() < count && !tree[0].spent {
            // Down the tree, to the group with the fewest of ours at each level (the
            // lowest value on a tie, so a run is reproducible).
            path.clear();
            let mut b = 0;
            while !tree[b].children.is_empty() {
                let next = loop {
                    match tree[b].order.peek() {
                        None => break None,
                        Some(&Reverse((t, _, c))) if tree[c].spent || t != tree[c].tasks => {
                            tree[b].order.pop();
                        }
                        Some(&Reverse((_, _, c))) => break Some(c),
                    }
                };
                match next {
                    Some(c) => {
                        path.push(c);
                        b = c;
                    }
                    None => break,
                }
            }
            if !tree[b].children.is_empty() {
                // Every group under it is spent: so is it.
                tree[b].spent = true;
                continue;
            }
            let Some(Reverse((_, _, id, i))) = tree[b].heap.pop() else {
                tree[b].spent = true;
                continue;
            };
            // Load only grows here: a node the load filters turn away stays away.
            if self.fails(i, g).is_some() {
                continue;
            }
            self.charge(i, g.service, g.reserve);
            nodes.push(id);
            let r = self.rank(g, i);
            tree[b].heap.push(r);
            for &c in &path {
                tree[c].tasks = tree[c].tasks.saturating_add(1);
                let (p, t, v) = (tree[c].parent, tree[c].tasks, tree[c].value);
                tree[p].order.push(Reverse((t, v, c)));
            }
        }
        let unplaced = (nodes.len() < count).then(|| self.explain(g));
        Placement { nodes, unplaced }
    }

    fn rank(&self, g: &Group<'_>, i: usize) -> Rank {
        Reverse((
            self.service_tasks(g.service, i),
            self.loads[i].tasks,
            self.nodes[i].facts.id,
            i,
        ))
    }

    /// For a task bound to `node` (a global service's): whether it may start there now,
    /// and if not, why (Docker gives the bare reason, without `no suitable node`).
    pub fn check(&mut self, node: NodeId, g: &Group<'_>) -> Result<(), String> {
        let Some(&i) = self.index.get(&node) else {
            return Err(Filter::Ready.explain(1));
        };
        match self.fails(i, g) {
            Some(f) => Err(f.explain(1)),
            None => {
                self.charge(i, g.service, g.reserve);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeRole;

    fn empty() -> &'static BTreeMap<String, String> {
        static EMPTY: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
        EMPTY.get_or_init(BTreeMap::new)
    }

    fn node(n: u64, labels: &BTreeMap<String, String>) -> Candidate<'_> {
        Candidate {
            facts: NodeFacts {
                id: NodeId(n),
                hostname: "pi",
                role: NodeRole::Worker,
                os: "linux",
                arch: "aarch64",
                labels,
                engine_labels: empty(),
            },
            available: true,
            capacity: Resources {
                nano_cpus: 4_000_000_000,
                memory: 1 << 30,
            },
        }
    }

    fn group(constraints: &[Constraint]) -> Group<'_> {
        Group {
            service: ServiceId(1),
            constraints,
            max_per_node: 0,
            reserve: Resources::default(),
            spread: &[],
        }
    }

    fn ids(p: &Placement) -> Vec<u64> {
        p.nodes.iter().map(|n| n.0).collect()
    }

    #[test]
    fn spreads_over_the_least_loaded_nodes() {
        let mut s = Scheduler::new((1..=3).map(|n| node(n, empty())));
        // Node 1 runs a task of another service, node 2 one of ours.
        s.add_task(NodeId(1), ServiceId(9), Resources::default());
        s.add_task(NodeId(2), ServiceId(1), Resources::default());
        let p = s.place(&group(&[]), 4);
        // Fewest of our service first (1 and 3 have none; 3 has fewer in all), then
        // the fewest in all, then the lowest id.
        assert_eq!(ids(&p), vec![3, 1, 2, 3]);
        assert_eq!(p.unplaced, None);
        let p = s.place(&group(&[]), 3);
        assert_eq!(ids(&p), vec![1, 2, 3]);
    }

    #[test]
    fn filters_and_explains_like_docker() {
        let east: BTreeMap<String, String> = [("zone".to_string(), "east".to_string())].into();
        let mut nodes = vec![node(1, &east), node(2, empty()), node(3, empty())];
        nodes[2].available = false;
        let mut s = Scheduler::new(nodes);
        let only_east = [Constraint::parse("node.labels.zone==east").unwrap()];
        let p = s.place(&group(&only_east), 2);
        assert_eq!(ids(&p), vec![1, 1]);
        assert_eq!(p.unplaced, None);
        let none = [Constraint::parse("node.labels.zone==west").unwrap()];
        let p = s.place(&group(&none), 1);
        assert_eq!(ids(&p), Vec::<u64>::new());
        assert_eq!(
            p.unplaced.as_deref(),
            Some("no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)")
        );
        // Max per node: two nodes take one each (node 2 first: node 1 runs two tasks
        // already), the third task waits.
        let mut g = group(&[]);
        g.service = ServiceId(2);
        g.max_per_node = 1;
        let p = s.place(&g, 3);
        assert_eq!(ids(&p), vec![2, 1]);
        assert_eq!(
            p.unplaced.as_deref(),
            Some("no suitable node (max replicas per node limit exceed; 1 node not available for new tasks)")
        );
    }

    #[test]
    fn reservations_fill_nodes_up() {
        let mut s = Scheduler::new((1..=2).map(|n| node(n, empty())));
        let mut g = group(&[]);
        g.reserve = Resources {
            nano_cpus: 1_500_000_000,
            memory: 0,
        };
        // 4 CPUs each: two tasks of 1.5 fit per node.
        let p = s.place(&g, 5);
        assert_eq!(ids(&p), vec![1, 2, 1, 2]);
        assert_eq!(
            p.unplaced.as_deref(),
            Some("no suitable node (insufficient resources on 2 nodes)")
        );
    }

    #[test]
    fn a_bound_task_is_checked_on_its_node_only() {
        let mut nodes = vec![node(1, empty()), node(2, empty())];
        nodes[1].available = false;
        let mut s = Scheduler::new(nodes);
        let g = group(&[]);
        assert_eq!(s.check(NodeId(1), &g), Ok(()));
        assert_eq!(
            s.check(NodeId(2), &g),
            Err("1 node not available for new tasks".to_string())
        );
        let west = [Constraint::parse("node.labels.zone==west").unwrap()];
        assert_eq!(
            s.check(NodeId(1), &group(&west)),
            Err("scheduling constraints not satisfied on 1 node".to_string())
        );
    }

    #[test]
    fn spread_evens_out_over_label_values_first() {
        let label = |z: &str| -> BTreeMap<String, String> { [("zone".into(), z.into())].into() };
        let (a, b) = (label("a"), label("b"));
        // Zone a has three nodes, zone b one, node 5 no zone (a group of its own).
        let nodes = vec![
            node(1, &a),
            node(2, &a),
            node(3, &a),
            node(4, &b),
            node(5, empty()),
        ];
        let mut s = Scheduler::new(nodes);
        // One of ours already runs in zone a.
        s.add_task(NodeId(1), ServiceId(1), Resources::default());
        let spread = ["node.labels.zone".to_string()];
        let mut g = group(&[]);
        g.spread = &spread;
        let p = s.place(&g, 5);
        // The no-zone group ("") and zone b first (none of ours), then round the
        // three groups; zone a's share goes to its emptiest nodes.
        assert_eq!(ids(&p), vec![5, 4, 5, 2, 4]);
        let per_zone = |z: &[u64]| {
            z.iter()
                .map(|&n| s.service_tasks(ServiceId(1), s.index[&NodeId(n)]))
                .sum::<u32>()
        };
        assert_eq!(
            (per_zone(&[1, 2, 3]), per_zone(&[4]), per_zone(&[5])),
            (2, 2, 2)
        );
        // A group whose nodes cannot take more drops out; the rest take the tasks.
        g.max_per_node = 2;
        let p = s.place(&g, 5);
        assert_eq!(ids(&p), vec![3, 1, 2, 3]);
        assert_eq!(
            p.unplaced.as_deref(),
            Some("no suitable node (max replicas per node limit exceed)")
        );
    }

    #[test]
    fn spread_nests_preferences_outermost_first() {
        let l = |z: &str, r: &str| -> BTreeMap<String, String> {
            [("zone".into(), z.into()), ("rack".into(), r.into())].into()
        };
        let (a1, a2, b1) = (l("a", "1"), l("a", "2"), l("b", "1"));
        let mut s = Scheduler::new(vec![node(1, &a1), node(2, &a1), node(3, &a2), node(4, &b1)]);
        let spread = [
            "node.labels.zone".to_string(),
            "node.labels.rack".to_string(),
        ];
        let mut g = group(&[]);
        g.spread = &spread;
        // Zones alternate; within zone a, racks alternate.
        assert_eq!(ids(&s.place(&g, 4)), vec![1, 4, 3, 4]);
    }

    #[test]
    fn no_nodes_no_suitable_node() {
        let mut s = Scheduler::new(Vec::new());
        let p = s.place(&group(&[]), 1);
        assert_eq!(p.unplaced.as_deref(), Some("no suitable node"));
    }
}
