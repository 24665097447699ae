//! Raft unit tests: a few nodes wired by hand, no faults unless a test makes them, and
//! assertions on what the cores emit.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::node::{Config, ProposeError, Raft, Ready, Role};
use super::types::{
    ConfigChange, Entry, HardState, Index, Membership, Message, NodeId, Payload, Snapshot,
    SnapshotMeta, Term,
};

struct Net {
    now: Instant,
    nodes: BTreeMap<NodeId, Raft>,
    /// Directed links that drop messages.
    cut: Vec<(NodeId, NodeId)>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    readies: BTreeMap<NodeId, Vec<Ready>>,
    /// Messages delivered so far, for assertions.
    log: Vec<(NodeId, NodeId, Message)>,
}

fn snapshot_of(ids: &[NodeId]) -> Snapshot {
    Snapshot {
        meta: SnapshotMeta {
            index: Index(1),
            term: Term(1),
            membership: Membership::new(ids.iter().copied()),
        },
        data: vec![],
    }
}

impl Net {
    fn new(n: u64, cfg: Config) -> Net {
        let now = Instant::now();
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let snap = snapshot_of(&ids);
        let nodes = ids
            .iter()
            .map(|id| {
                let hard = HardState {
                    term: Term(1),
                    vote: None,
                };
                (
                    *id,
                    Raft::restore(*id, cfg.clone(), hard, snap.clone(), vec![], now, id.0),
                )
            })
            .collect();
        Net {
            now,
            nodes,
            cut: vec![],
            applied: BTreeMap::new(),
            readies: BTreeMap::new(),
            log: vec![],
        }
    }

    /// Delivers messages until nobody has anything to say.
    fn settle(&mut self) {
        loop {
            let mut queue = Vec::new();
            for (id, r) in self.nodes.iter_mut() {
                while let Some(mut ready) = r.take_ready() {
                    for env in ready.messages.drain(..) {
                        queue.push((*id, env.to, env.msg));
                    }
                    self.applied
                        .entry(*id)
                        .or_default()
                        .append(&mut ready.committed);
                    self.readies.entry(*id).or_default().push(ready);
                }
            }
            if queue.is_empty() {
                return;
            }
            for (from, to, msg) in queue {
                if self.cut.contains(&(from, to)) {
                    continue;
                }
                self.log.push((from, to, msg.clone()));
                if let Some(r) = self.nodes.get_mut(&to) {
                    r.step(self.now, from, msg);
                }
            }
        }
    }

    /// Advances time, firing timers in order and settling after each.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.nodes.values().map(Raft::poll_timeout).min().unwrap();
            if next > end {
                break;
            }
            self.now = next.max(self.now);
            let now = self.now;
            for r in self.nodes.values_mut() {
                if r.poll_timeout() <= now {
                    r.handle_timeout(now);
                }
            }
            self.settle();
        }
        self.now = end;
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, r)| r.role() == Role::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    fn isolate(&mut self, id: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            self.cut.push((NodeId(id), other));
            self.cut.push((other, NodeId(id)));
        }
    }
}

fn elect(net: &mut Net) -> NodeId {
    net.advance(Duration::from_secs(3));
    let l = net.leaders();
    assert_eq!(l.len(), 1, "exactly one leader: {l:?}");
    l[0]
}

#[test]
fn single_node_bootstraps_and_commits_alone() {
    let now = Instant::now();
    let (mut r, snap) = Raft::bootstrap(NodeId(7), Config::default(), b"empty".to_vec(), now, 1);
    assert_eq!(snap.meta.membership, Membership::new([NodeId(7)]));
    assert_eq!(r.role(), Role::Follower);
    r.handle_timeout(r.poll_timeout());
    assert_eq!(r.role(), Role::Leader);
    let ready = r.take_ready().unwrap();
    assert_eq!(ready.hard_state.unwrap().term, Term(2));
    assert_eq!(ready.append.len(), 1, "the no-op");
    assert_eq!(ready.committed.len(), 1, "committed at once with one voter");
    let i = r.propose(b"x".to_vec()).unwrap();
    r.read_index(99);
    let ready = r.take_ready().unwrap();
    assert_eq!(ready.committed.last().unwrap().index, i);
    assert_eq!(ready.reads.len(), 1);
    assert_eq!(ready.reads[0].result, Ok(i));
    assert!(ready.messages.is_empty());
}

#[test]
fn three_nodes_elect_one_leader_and_replicate() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let i = net
        .nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"hello".to_vec())
        .unwrap();
    net.settle();
    net.advance(Duration::from_millis(300));
    for id in 1..=3 {
        let applied = &net.applied[&NodeId(id)];
        assert!(
            applied
                .iter()
                .any(|e| e.index == i && e.payload == Payload::Command(b"hello".to_vec())),
            "node {id} applied the command"
        );
    }
    // Followers refuse proposals and say who leads.
    let f = NodeId(if l.0 == 1 { 2 } else { 1 });
    assert_eq!(
        net.nodes.get_mut(&f).unwrap().propose(vec![]),
        Err(ProposeError::NotLeader(Some(l)))
    );
}

#[test]
fn votes_are_persisted_in_the_same_ready_as_the_response() {
    let mut net = Net::new(3, Config::default());
    elect(&mut net);
    for (id, readies) in &net.readies {
        for r in readies {
            for env in &r.messages {
                if let Message::VoteResp {
                    granted: true,
                    term,
                } = env.msg
                {
                    let hs = r.hard_state.expect("vote persisted with its response");
                    assert_eq!(hs.vote, Some(env.to), "{id:?}");
                    assert_eq!(hs.term, term);
                }
            }
        }
    }
}

#[test]
fn rejoining_node_does_not_depose_a_healthy_leader() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let term = net.nodes[&l].status().term;
    let f = (1..=3).map(NodeId).find(|id| *id != l).unwrap();
    net.isolate(f.0);
    net.advance(Duration::from_secs(5));
    // Cut off, it kept pre-voting without raising its term (PreVote).
    assert_eq!(net.nodes[&f].status().term, term);
    net.cut.clear();
    net.advance(Duration::from_secs(2));
    assert_eq!(net.leaders(), vec![l]);
    assert_eq!(net.nodes[&l].status().term, term, "no election happened");
    assert_eq!(net.nodes[&f].leader(), Some(l));
}

#[test]
fn a_node_in_lease_ignores_higher_term_votes() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let f = (1..=3).map(NodeId).find(|id| *id != l).unwrap();
    let term = net.nodes[&f].status().term;
    let now = net.now;
    let r = net.nodes.get_mut(&f).unwrap();
    r.step(
        now,
        NodeId(99),
        Message::Vote {
            term: Term(term.0 + 5),
            last_index: Index(1000),
            last_term: Term(term.0 + 4),
            transfer: false,
        },
    );
    assert_eq!(r.status().term, term, "term unchanged");
    assert!(
        r.take_ready().is_none_or(|rd| rd.messages.is_empty()),
        "no answer"
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    net.isolate(l.0);
    net.advance(Duration::from_secs(2));
    assert_ne!(net.nodes[&l].role(), Role::Leader, "stepped down");
    let others = net.leaders();
    assert_eq!(others.len(), 1);
    assert_ne!(others[0], l);
    // The old leader cannot commit anything meanwhile.
    assert!(net.nodes.get_mut(&l).unwrap().propose(vec![1]).is_err());
}

#[test]
fn minority_cannot_commit_majority_can_and_they_converge() {
    let mut net = Net::new(5, Config::default());
    let l = elect(&mut net);
    // Put the leader in the minority with one follower.
    let mut ids: Vec<NodeId> = (1..=5).map(NodeId).filter(|i| *i != l).collect();
    let buddy = ids.remove(0);
    for a in [l, buddy] {
        for b in &ids {
            net.cut.push((a, *b));
            net.cut.push((*b, a));
        }
    }
    let stuck = net
        .nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"minority".to_vec())
        .unwrap();
    net.settle();
    net.advance(Duration::from_secs(3));
    assert!(
        net.nodes[&l].status().commit < stuck,
        "minority did not commit"
    );
    let new = net
        .leaders()
        .into_iter()
        .find(|x| ids.contains(x))
        .expect("majority elected");
    let ok = net
        .nodes
        .get_mut(&new)
        .unwrap()
        .propose(b"majority".to_vec())
        .unwrap();
    net.settle();
    net.advance(Duration::from_millis(500));
    assert!(net.nodes[&new].status().commit >= ok);
    net.cut.clear();
    net.advance(Duration::from_secs(2));
    let commits: Vec<Index> = net.nodes.values().map(|r| r.status().commit).collect();
    assert!(commits.iter().all(|c| *c == commits[0]), "{commits:?}");
    for applied in net.applied.values() {
        assert!(!applied
            .iter()
            .any(|e| e.payload == Payload::Command(b"minority".to_vec())));
    }
}

#[test]
fn membership_changes_one_at_a_time() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let r = net.nodes.get_mut(&l).unwrap();
    r.propose_config(ConfigChange::AddLearner(NodeId(4)))
        .unwrap();
    assert_eq!(
        r.propose_config(ConfigChange::AddVoter(NodeId(4))),
        Err(ProposeError::ConfigPending)
    );
    net.settle();
    net.advance(Duration::from_millis(300));
    let r = net.nodes.get_mut(&l).unwrap();
    assert!(r.membership().learners.contains(&NodeId(4)));
    assert_eq!(
        r.propose_config(ConfigChange::AddLearner(NodeId(4))),
        Err(ProposeError::Config(
            super::types::ConfigError::AlreadyMember(NodeId(4))
        ))
    );
}

/// Every node restarts from its disk with the snapshot the cluster began with and, after
/// it, the change that added the third voter. No node knows the change is committed
/// (the commit index is not persisted), yet the latest configuration in the log is the
/// one to elect with: a whole cluster rebooted (a power cut) must find a leader.
#[test]
fn a_restarted_cluster_elects_with_a_voter_change_after_its_snapshot() {
    let mut net = Net::new(3, Config::default());
    let now = net.now;
    let snap = snapshot_of(&[NodeId(1), NodeId(2)]);
    let entries = vec![
        Entry {
            term: Term(2),
            index: Index(2),
            payload: Payload::Noop,
        },
        Entry {
            term: Term(2),
            index: Index(3),
            payload: Payload::Config(ConfigChange::AddVoter(NodeId(3))),
        },
    ];
    let hard = HardState {
        term: Term(2),
        vote: None,
    };
    for id in 1..=3 {
        let r = Raft::restore(
            NodeId(id),
            Config::default(),
            hard,
            snap.clone(),
            entries.clone(),
            now,
            id,
        );
        assert_eq!(r.membership().voters.len(), 3);
        net.nodes.insert(NodeId(id), r);
    }
    let l = elect(&mut net);
    let i = net
        .nodes
        .get_mut(&l)
        .unwrap()
        .propose(b"x".to_vec())
        .unwrap();
    net.settle();
    net.advance(Duration::from_millis(300));
    for id in 1..=3 {
        assert!(
            net.applied[&NodeId(id)].iter().any(|e| e.index == i),
            "node {id} applied the write"
        );
    }
}

/// Hands what `from` has to say to `to` only; the rest is lost.
fn deliver(net: &mut Net, from: NodeId, to: NodeId) {
    let mut out = Vec::new();
    while let Some(mut rd) = net.nodes.get_mut(&from).unwrap().take_ready() {
        out.append(&mut rd.messages);
    }
    let now = net.now;
    for env in out.into_iter().filter(|e| e.to == to) {
        net.nodes.get_mut(&to).unwrap().step(now, from, env.msg);
    }
}

/// A new leader proposes no membership change before an entry of its own term commits
/// (the errata to single-server changes in the Raft thesis): a change appended before
/// that could be overwritten by a candidate elected under an older, uncommitted
/// configuration. Candidates may then use the latest configuration in their log.
#[test]
fn a_new_leader_changes_no_voters_before_its_term_commits() {
    let mut net = Net::new(3, Config::default());
    net.now += Duration::from_secs(5);
    let now = net.now;
    let (a, b) = (NodeId(1), NodeId(2));
    net.nodes.get_mut(&a).unwrap().handle_timeout(now);
    deliver(&mut net, a, b); // pre-vote
    deliver(&mut net, b, a); // granted: a campaigns
    deliver(&mut net, a, b); // vote
    deliver(&mut net, b, a); // granted: a leads, its no-op not yet acknowledged
    let r = net.nodes.get_mut(&a).unwrap();
    assert_eq!(r.role(), Role::Leader);
    assert!(r.config_pending());
    assert_eq!(
        r.propose_config(ConfigChange::AddLearner(NodeId(9))),
        Err(ProposeError::ConfigPending)
    );
    deliver(&mut net, a, b); // the no-op
    deliver(&mut net, b, a); // acknowledged: committed
    let r = net.nodes.get_mut(&a).unwrap();
    assert!(!r.config_pending());
    assert!(r
        .propose_config(ConfigChange::AddLearner(NodeId(9)))
        .is_ok());
}

#[test]
fn leadership_transfer_hands_over() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let to = (1..=3).map(NodeId).find(|id| *id != l).unwrap();
    let now = net.now;
    net.nodes
        .get_mut(&l)
        .unwrap()
        .transfer_leadership(now, to)
        .unwrap();
    assert_eq!(
        net.nodes.get_mut(&l).unwrap().propose(vec![]),
        Err(ProposeError::Transferring)
    );
    net.settle();
    net.advance(Duration::from_millis(200));
    assert_eq!(net.leaders(), vec![to]);
    assert!(net
        .log
        .iter()
        .any(|(f, t, m)| *f == l && *t == to && matches!(m, Message::TimeoutNow { .. })));
}

#[test]
fn lagging_follower_gets_a_chunked_snapshot() {
    let cfg = Config {
        snapshot_chunk_bytes: 100,
        ..Config::default()
    };
    let mut net = Net::new(3, cfg);
    let l = elect(&mut net);
    let lag = (1..=3).map(NodeId).find(|id| *id != l).unwrap();
    net.isolate(lag.0);
    for i in 0..50u8 {
        net.nodes.get_mut(&l).unwrap().propose(vec![i; 10]).unwrap();
        net.settle();
    }
    net.advance(Duration::from_millis(300));
    let r = net.nodes.get_mut(&l).unwrap();
    let applied = r.status().applied;
    r.compact(applied, vec![0xAB; 1000]);
    assert!(r.log_len() < 5);
    net.cut.clear();
    net.advance(Duration::from_secs(1));
    let snaps: Vec<_> = net.readies[&lag]
        .iter()
        .filter_map(|r| r.snapshot.as_ref())
        .collect();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].data, vec![0xAB; 1000]);
    let chunks = net
        .log
        .iter()
        .filter(|(_, t, m)| *t == lag && matches!(m, Message::Snapshot { .. }))
        .count();
    assert!(chunks >= 10, "sent in 100-byte chunks: {chunks}");
    assert_eq!(
        net.nodes[&lag].status().commit,
        net.nodes[&l].status().commit
    );
}

#[test]
fn reads_wait_for_a_quorum_round() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let others: Vec<NodeId> = (1..=3).map(NodeId).filter(|i| *i != l).collect();
    for o in &others {
        net.cut.push((*o, l));
    }
    net.nodes.get_mut(&l).unwrap().read_index(5);
    net.settle();
    let reads: Vec<_> = net.readies[&l]
        .iter()
        .flat_map(|r| r.reads.clone())
        .collect();
    assert!(reads.is_empty(), "no confirmation without acknowledgements");
    net.cut.clear();
    net.advance(Duration::from_millis(150));
    let reads: Vec<_> = net.readies[&l]
        .iter()
        .flat_map(|r| r.reads.clone())
        .collect();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].result.is_ok());
}

#[test]
fn hostile_messages_do_not_panic() {
    let mut net = Net::new(3, Config::default());
    let l = elect(&mut net);
    let now = net.now;
    let term = net.nodes[&l].status().term;
    let r = net.nodes.get_mut(&l).unwrap();
    let junk = [
        Message::AppendResp {
            term,
            index: Index(u64::MAX),
            success: true,
            round: u64::MAX,
        },
        Message::AppendResp {
            term,
            index: Index(0),
            success: false,
            round: 0,
        },
        Message::SnapshotResp {
            term,
            offset: u64::MAX,
            done: true,
            index: Index(u64::MAX),
            round: 1,
        },
        Message::PreVoteResp {
            term: Term(u64::MAX),
            granted: true,
        },
    ];
    for m in junk {
        r.step(now, NodeId(2), m);
        r.step(now, NodeId(42), Message::TimeoutNow { term });
    }
    let f = (1..=3).map(NodeId).find(|id| *id != l).unwrap();
    let r = net.nodes.get_mut(&f).unwrap();
    let bad_entries = vec![Entry {
        term,
        index: Index(1_000_000),
        payload: Payload::Noop,
    }];
    r.step(
        now,
        l,
        Message::Append {
            term,
            prev_index: Index(5),
            prev_term: term,
            entries: bad_entries,
            commit: Index(u64::MAX),
            round: 0,
        },
    );
    r.step(
        now,
        l,
        Message::Snapshot {
            term,
            meta: SnapshotMeta::default(),
            offset: 7,
            data: vec![1, 2, 3],
            done: true,
            round: 0,
        },
    );
    net.settle();
    net.advance(Duration::from_secs(1));
    assert_eq!(net.leaders().len(), 1);
}
