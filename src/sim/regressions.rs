//! Bugs the control simulation found, each reduced to a few inputs of one core and the
//! effects it must (or must not) produce. The seed that found each is in its comment.

use std::net::SocketAddr;
use std::time::Instant;

use crate::api::Request;
use crate::cluster::{self, NodeRole};
use crate::control::{
    Control, Effect, Identity, Input, ManagerAddr, Membership, PeerMsg, RaftView,
};
use crate::raft::{Role, Term};
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
