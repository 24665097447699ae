//! Bugs the control simulation found, each reduced to a few inputs of one core and the
//! effects it must (or must not) produce. The seed that found each is in its comment.

use std::net::SocketAddr;
use std::time::Instant;

use crate::api::Request;
use crate::cluster::{
    self, ClusterSpec, ClusterState, Command, NodeRecord, NodeRole, NodeStatus, Tokens,
};
use crate::control::{
    Control, Effect, Identity, Input, ManagerAddr, Membership, PeerMsg, RaftView,
};
use crate::raft::{Index, NodeId, Role, Term};
use crate::transport::PeerKey;

fn identity(k: u8) -> Identity {
    let key = PeerKey([k; 32]);
    Identity {
        id: cluster::node_id(&key),
        key,
        hostname: format!("node-{k}"),
        labels: vec![],
        listen: None,
        advertise: None,
    }
}

fn addr(k: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, k], 2377))
}

fn manager_addr(k: u8) -> ManagerAddr {
    let me = identity(k);
    (me.id, me.key, addr(k))
}

fn membership(me: u8, managers: &[u8]) -> Membership {
    Membership {
        cluster_id: [7; 16],
        role: NodeRole::Manager,
        listen: addr(me),
        advertise: addr(me),
        managers: managers.iter().map(|k| manager_addr(*k)).collect(),
    }
}

/// A follower manager (node 2) of the leader node 1, as it is after a (re)start.
fn follower(seed: u8) -> Control {
    let mut c = Control::new(identity(2), Some(membership(2, &[1, 2])), [seed; 32]);
    c.resume();
    let view = RaftView {
        role: Role::Follower,
        leader: Some(identity(1).id),
        term: Term(3),
        voters: [identity(1).id, identity(2).id].into_iter().collect(),
        ..RaftView::default()
    };
    c.handle(Instant::now(), Input::Raft(view));
    while c.poll_effect().is_some() {}
    c
}

/// The id a follower's CLI request is forwarded to the leader under.
fn forwarded_id(c: &mut Control) -> u64 {
    c.handle(
        Instant::now(),
        Input::Api {
            id: 1,
            req: Request::NodeList,
        },
    );
    let mut ids = Vec::new();
    while let Some(e) = c.poll_effect() {
        if let Effect::Send {
            msg: PeerMsg::ApiForward { id, .. },
            to,
        } = e
        {
            assert_eq!(to, identity(1).key);
            ids.push(id);
        }
    }
    assert_eq!(ids.len(), 1, "one request forwarded");
    ids[0]
}

/// SIM_SEED=9: a manager that restarted numbered its forwarded requests from 1 again,
/// and the leader, which remembers answers by (asker, id) to serve repeats, handed it
/// the answers of its previous life: `node ls` was answered "Successfully rotated
/// manager join token.", or with a list of nodes minutes old.
#[test]
fn a_restarted_manager_does_not_reuse_forwarded_request_ids() {
    let before = forwarded_id(&mut follower(1));
    let after = forwarded_id(&mut follower(2));
    assert_ne!(
        before, after,
        "the restarted node's first forward reuses an id"
    );
}

fn record(k: u8, role: NodeRole, status: NodeStatus) -> NodeRecord {
    let me = identity(k);
    NodeRecord {
        id: me.id,
        key: me.key,
        addr: addr(k),
        hostname: me.hostname,
        role,
        availability: cluster::Availability::Active,
        labels: Default::default(),
        status,
    }
}

fn two_node_state(status: NodeStatus) -> ClusterState {
    let mut state = ClusterState::new(
        [7; 16],
        Tokens {
            worker: [1; 16],
            manager: [2; 16],
        },
        ClusterSpec::default(),
    );
    for rec in [
        record(1, NodeRole::Manager, NodeStatus::Ready),
        record(2, NodeRole::Manager, status),
    ] {
        state.apply(&Command::AddNode(rec)).unwrap();
    }
    state
}

fn proposals(c: &mut Control) -> Vec<Command> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_effect() {
        if let Effect::Propose { cmd, .. } = e {
            out.push(cmd);
        }
    }
    out
}

fn committed(c: &mut Control, index: u64, cmd: &Command) {
    let payload = crate::raft::Payload::Command(cmd.encode());
    let index = Index(index);
    c.handle(Instant::now(), Input::Committed { index, payload });
}

/// SIM_SEED=1 and 2: a manager that was down while another led is marked Down; when it
/// leads itself later, nobody marks it Ready again (the leader reported the status of
/// every node but itself), and `node ls` shows the leader Down for ever.
#[test]
fn a_leader_marked_down_while_away_marks_itself_ready() {
    let now = Instant::now();
    let mut c = follower(1);
    let data = two_node_state(NodeStatus::Down).encode();
    c.handle(
        now,
        Input::Snapshot {
            index: Index(9),
            data,
            from_leader: false,
        },
    );
    let view = RaftView {
        role: Role::Leader,
        leader: Some(identity(2).id),
        term: Term(4),
        voters: [identity(1).id, identity(2).id].into_iter().collect(),
        term_committed: true,
        ..RaftView::default()
    };
    c.handle(now, Input::Raft(view));
    let ready = Command::SetStatus {
        id: identity(2).id,
        status: NodeStatus::Ready,
    };
    assert!(
        proposals(&mut c).contains(&ready),
        "the new leader proposes its own record Ready"
    );
}

/// SIM_SEED=3 and 6: a node that (re)started learnt of members that were dead or had left
/// only as news it ignored (it kept only members it could see alive). Made leader, it
/// had no word on them, so their records stayed Ready for ever. It now knows what the
/// others know.
#[test]
fn a_fresh_gossip_member_learns_who_is_dead_or_gone() {
    use crate::gossip::{Config, Event, Gossip, Message, Status, Update};
    let now = Instant::now();
    let (me, peer, dead, gone) = (NodeId(1), NodeId(2), NodeId(3), NodeId(4));
    let mut g = Gossip::new(Config::default(), me, vec![], now, 1);
    let update = |id, status| Update {
        id,
        incarnation: 2,
        status,
        from: peer,
        meta: vec![],
    };
    let members = vec![
        update(peer, Status::Alive),
        update(dead, Status::Dead),
        update(gone, Status::Left),
    ];
    let sync = Message::Sync { members };
    g.handle_message(now, peer, sync);
    assert_eq!(g.status_of(dead), Some(Status::Dead));
    assert_eq!(g.status_of(gone), Some(Status::Left));
    let events: Vec<Event> = std::iter::from_fn(|| g.poll_event()).collect();
    assert!(events.contains(&Event::Dead { id: dead }), "{events:?}");
    assert!(events.contains(&Event::Left { id: gone }), "{events:?}");
}

/// A leader of the state of `two_node_state` plus worker node 5, with gossip's `word` on
/// node 5 given first.
fn leader_with_worker(word: Option<Input>) -> Control {
    let now = Instant::now();
    let mut c = follower(4);
    let mut state = two_node_state(NodeStatus::Ready);
    state
        .apply(&Command::AddNode(record(
            5,
            NodeRole::Worker,
            NodeStatus::Ready,
        )))
        .unwrap();
    c.handle(
        now,
        Input::Snapshot {
            index: Index(9),
            data: state.encode(),
            from_leader: false,
        },
    );
    if let Some(w) = word {
        c.handle(now, w);
    }
    let view = RaftView {
        role: Role::Leader,
        leader: Some(identity(2).id),
        term: Term(4),
        voters: [identity(1).id, identity(2).id].into_iter().collect(),
        term_committed: true,
        ..RaftView::default()
    };
    c.handle(now, Input::Raft(view));
    c
}

/// SIM_SEED=7: the leader forgot gossip's word on a node when the node was removed, and
/// gossip does not repeat itself while nothing changes: the node, dead, joined again
/// (its record Ready) and stayed Ready for ever.
#[test]
fn a_node_added_again_gets_the_status_gossip_knows() {
    let id = identity(5).id;
    let dead = Input::Gossip(crate::gossip::Event::Dead { id });
    let mut c = leader_with_worker(Some(dead));
    let down = Command::SetStatus {
        id,
        status: NodeStatus::Down,
    };
    assert!(proposals(&mut c).contains(&down));
    committed(&mut c, 10, &down);
    committed(&mut c, 11, &Command::RemoveNode(id));
    let _ = proposals(&mut c);
    let again = Command::AddNode(record(5, NodeRole::Worker, NodeStatus::Ready));
    committed(&mut c, 12, &again);
    assert!(
        proposals(&mut c).contains(&down),
        "the node, dead by gossip, is marked Down as it comes back into the state"
    );
}

/// SIM_SEED=6: a node died, then every manager restarted; their gossip had never heard
/// of it, so no event ever said it was dead, and it stayed Ready for ever. A leader marks
/// Down what gossip has not heard of within the grace period.
#[test]
fn a_leader_marks_down_a_node_gossip_never_heard_of() {
    let start = Instant::now();
    let mut c = leader_with_worker(None);
    let down = Command::SetStatus {
        id: identity(5).id,
        status: NodeStatus::Down,
    };
    assert!(!proposals(&mut c).contains(&down), "not at once");
    let mut now = start;
    while now < start + crate::control::UNHEARD_GRACE * 2 {
        now = c
            .poll_timeout()
            .expect("the leader looks again later")
            .max(now);
        c.handle_timeout(now);
        if proposals(&mut c).contains(&down) {
            assert!(now >= start + crate::control::UNHEARD_GRACE);
            return;
        }
    }
    panic!("never marked Down");
}

fn alive(k: u8) -> Input {
    let me = identity(k);
    let meta = crate::control::GossipMeta {
        key: me.key,
        addr: addr(k),
        manager: None,
    };
    Input::Gossip(crate::gossip::Event::Alive {
        id: me.id,
        meta: meta.encode(),
    })
}

/// SIM_SEED=3 and 12: a removed node that keeps running still gossips with the workers,
/// and refutes the suspicion of the managers that dropped it; each refutation reached
/// them as "alive" and made them its peer again, and the leader accepted its messages.
#[test]
fn a_manager_does_not_take_a_removed_node_back_from_gossip() {
    let mut c = follower(1);
    let data = two_node_state(NodeStatus::Ready).encode();
    c.handle(
        Instant::now(),
        Input::Snapshot {
            index: Index(9),
            data,
            from_leader: false,
        },
    );
    while c.poll_effect().is_some() {}
    let removed = identity(5).key;
    c.handle(Instant::now(), alive(5));
    assert!(
        !c.admits(&removed),
        "a node outside the state is admitted from gossip"
    );
    while let Some(e) = c.poll_effect() {
        assert!(
            !matches!(e, Effect::SetPeer { key, .. } if key == removed),
            "a node outside the state becomes a transport peer"
        );
    }
}

/// SIM_SEED=13: a worker learns its peers from gossip, among them a node removed later.
/// Promoted, it got its first state from the leader's snapshot, which removed nothing
/// (there was no older state to compare with), so it went on admitting the removed node.
#[test]
fn a_promoted_worker_forgets_peers_its_first_state_does_not_hold() {
    let now = Instant::now();
    let mut worker_ship = membership(2, &[1]);
    worker_ship.role = NodeRole::Worker;
    let mut c = Control::new(identity(2), Some(worker_ship), [3; 32]);
    c.resume();
    c.handle(now, alive(5));
    assert!(
        c.admits(&identity(5).key),
        "a worker admits what gossip shows"
    );
    let promoted = PeerMsg::Promoted {
        managers: vec![manager_addr(1), manager_addr(2)],
    };
    c.handle(
        now,
        Input::Peer {
            from: identity(1).key,
            psk: None,
            msg: promoted,
        },
    );
    let data = two_node_state(NodeStatus::Ready).encode();
    c.handle(
        now,
        Input::Snapshot {
            index: Index(9),
            data,
            from_leader: true,
        },
    );
    let mut forgot = false;
    while let Some(e) = c.poll_effect() {
        forgot |= e == Effect::RemovePeer(identity(5).key);
    }
    assert!(forgot, "the transport forgets the removed node");
    assert!(!c.admits(&identity(5).key));
}

/// SIM_SEED=2: a worker promoted right after the leader took a snapshot got that snapshot
/// first: a state in which it is a worker and a configuration without it. It took that
/// for a demotion and stopped Raft, while the leader made it a voter: with two voters
/// the cluster had lost its quorum for good.
#[test]
fn a_promoted_worker_does_not_take_an_older_snapshot_for_a_demotion() {
    let now = Instant::now();
    let mut ship = membership(2, &[1]);
    ship.role = NodeRole::Worker;
    let mut c = Control::new(identity(2), Some(ship), [5; 32]);
    c.resume();
    let promoted = PeerMsg::Promoted {
        managers: vec![manager_addr(1), manager_addr(2)],
    };
    let from = identity(1).key;
    c.handle(
        now,
        Input::Peer {
            from,
            psk: None,
            msg: promoted,
        },
    );
    while c.poll_effect().is_some() {}
    // The leader's snapshot from before the promotion: node 2 a worker, one voter.
    let mut state = two_node_state(NodeStatus::Ready);
    state
        .apply(&Command::SetRole {
            id: identity(2).id,
            role: NodeRole::Worker,
        })
        .unwrap();
    c.handle(
        now,
        Input::Snapshot {
            index: Index(17),
            data: state.encode(),
            from_leader: true,
        },
    );
    let view = RaftView {
        role: Role::Follower,
        leader: Some(identity(1).id),
        term: Term(3),
        voters: [identity(1).id].into_iter().collect(),
        ..RaftView::default()
    };
    c.handle(now, Input::Raft(view));
    while let Some(e) = c.poll_effect() {
        assert_ne!(
            e,
            Effect::StopRaft,
            "stepped down on a state older than its promotion"
        );
    }
    assert!(matches!(c.state(), crate::control::NodeState::Manager(_)));
}

/// SIM_SEED=212: a manager removed while it was down came back with its old log and
/// campaigned with its old configuration, which still named a node that had since been
/// removed and had joined again, its log empty. That node knew the campaigner from gossip
/// and voted for it: two leaders in one term, each with a majority of its configuration.
/// Vote requests are now heard only from managers (of the state, the membership file,
/// or Raft's configuration).
#[test]
fn a_fresh_manager_votes_only_for_managers_it_knows() {
    use crate::control::{GossipMeta, Io, RaftLog, Stack, StackConfig};
    use crate::gossip::{Message, Status, Update};
    use crate::transport::PskId;
    let now = Instant::now();
    // Node 2 has just joined as a manager through node 1: its log is empty.
    let ship = membership(2, &[1, 2]);
    let mut s = Stack::new(identity(2), Some(ship), StackConfig::default(), [9; 32]);
    s.resume(now);
    let drain = |s: &mut Stack| {
        let mut sent = Vec::new();
        while let Some(io) = s.poll_io() {
            match io {
                Io::OpenLog => s.log_opened(now, RaftLog::default()),
                Io::Persist { job, .. } => s.persisted(now, job),
                Io::Send { to, .. } => sent.push(to),
                _ => {}
            }
        }
        sent
    };
    drain(&mut s);
    // Node 1 gossips that node 5, a member, is alive.
    let five = identity(5);
    let meta = GossipMeta {
        key: five.key,
        addr: addr(5),
        manager: Some(false),
    };
    let update = Update {
        id: five.id,
        incarnation: 1,
        status: Status::Alive,
        from: identity(1).id,
        meta: meta.encode(),
    };
    let sync = PeerMsg::Gossip(Message::Sync {
        members: vec![update],
    });
    s.handle_message(now, identity(1).key, Some(PskId::MEMBER), &sync.encode());
    drain(&mut s);
    assert!(s.control().admits(&five.key), "node 5 is a member we know");
    let vote = PeerMsg::Raft(crate::raft::Message::Vote {
        term: Term(7),
        last_index: Index(10),
        last_term: Term(3),
        transfer: false,
    });
    s.handle_message(now, five.key, Some(PskId::MEMBER), &vote.encode());
    let sent = drain(&mut s);
    assert!(!sent.contains(&five.key), "answered node 5's vote request");
    let voted = s.raft().and_then(|r| r.hard_state().vote);
    assert_ne!(voted, Some(five.id), "voted for a node that is no manager");
}

/// SIM_SEED=12 (and 52 of the first 500 seeds): a manager that missed the entries of its
/// own demotion (down or cut off meanwhile) never learnt it: the leader no longer
/// replicates to a non-voter, so it campaigned with its old configuration for ever, a
/// manager by its own account and a worker by the cluster's. The leader now answers such
/// a campaign with `Demoted`; only a manager it knows can make it step down.
#[test]
fn a_manager_that_missed_its_demotion_steps_down_when_told() {
    let now = Instant::now();
    let demoted = |c: &mut Control, from: u8| {
        let from = identity(from).key;
        c.handle(
            now,
            Input::Peer {
                from,
                psk: None,
                msg: PeerMsg::Demoted,
            },
        );
        let mut stopped = false;
        while let Some(e) = c.poll_effect() {
            stopped |= e == Effect::StopRaft;
        }
        stopped
    };
    let mut c = follower(6);
    assert!(!demoted(&mut c, 9), "a stranger cannot demote a manager");
    assert!(matches!(c.state(), crate::control::NodeState::Manager(_)));
    assert!(demoted(&mut c, 1), "the leader can");
    assert!(matches!(c.state(), crate::control::NodeState::Worker(_)));
    assert_eq!(c.membership().map(|m| m.role), Some(NodeRole::Worker));
}

/// SIM_SEED=1 (and 22 of the first 500 seeds): a joiner sent its request once; when the
/// answer was lost (or a manager said "no leader right now", or lost the leadership
/// before the entry committed), it gave up, and the cluster kept a node that never
/// came: a manager whose vote nobody cast. Now it asks again every second until its
/// timeout, transient refusals only make it wait, and a manager that finds the joiner
/// already in the state accepts it again.
#[test]
fn a_joiner_asks_again_and_a_known_joiner_is_accepted_again() {
    use crate::cluster::token::{JoinToken, TokenRole};
    use crate::control::{Bound, PSK_WORKER};
    let now = Instant::now();
    let five = identity(5);
    let token = JoinToken {
        role: TokenRole::Worker,
        manager: identity(1).key,
        secret: [1; 16],
    };
    let mut j = Control::new(five.clone(), None, [7; 32]);
    let req = Request::Join {
        token: token.to_string(),
        manager: addr(1),
        listen: None,
        advertise: None,
    };
    j.handle(now, Input::Api { id: 1, req });
    let bound = Bound {
        listen: addr(5),
        advertise: addr(5),
    };
    j.handle(now, Input::Bound(Ok(bound)));
    let requests = |c: &mut Control| {
        std::iter::from_fn(|| c.poll_effect())
            .filter(|e| {
                matches!(
                    e,
                    Effect::Send {
                        msg: PeerMsg::JoinRequest { .. },
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(requests(&mut j), 1);
    let wait = PeerMsg::JoinWait("no leader is elected right now".into());
    let from = identity(1).key;
    j.handle(
        now,
        Input::Peer {
            from,
            psk: Some(PSK_WORKER),
            msg: wait,
        },
    );
    assert!(
        matches!(j.state(), crate::control::NodeState::Joining(_)),
        "waits"
    );
    let later = j.poll_timeout().expect("a join has a timer");
    assert!(later <= now + crate::control::JOIN_RETRY);
    j.handle_timeout(later);
    assert_eq!(requests(&mut j), 1, "asked again");

    // The leader already added node 5 (its first answer was lost).
    let mut l = leader_with_worker(None);
    let _ = proposals(&mut l);
    let msg = PeerMsg::JoinRequest {
        role: TokenRole::Worker,
        hostname: five.hostname.clone(),
        advertise: addr(5),
        labels: vec![],
    };
    l.handle(
        now,
        Input::Peer {
            from: five.key,
            psk: Some(PSK_WORKER),
            msg,
        },
    );
    let answers: Vec<Effect> = std::iter::from_fn(|| l.poll_effect()).collect();
    assert!(
        answers.iter().any(|e| matches!(
            e,
            Effect::Send { to, msg: PeerMsg::JoinAccepted { role: NodeRole::Worker, .. } } if *to == five.key
        )),
        "accepted again: {answers:?}"
    );
    assert!(
        !answers.iter().any(|e| matches!(e, Effect::Propose { .. })),
        "not added twice"
    );
}
