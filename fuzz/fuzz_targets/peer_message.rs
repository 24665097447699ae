//! Whatever a peer sends reaches a manager's whole control stack (control core, Raft,
//! gossip) as a member, as a token holder, or as a stranger: it must never panic, and a
//! message that decodes encodes back to the same bytes' meaning.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use swarmlet::api::Request;
use swarmlet::cluster::{node_id, token::TokenRole};
use swarmlet::control::{
    Bound, Identity, Io, PeerMsg, RaftLog, Stack, StackConfig, PSK_MANAGER, PSK_WORKER,
};
use swarmlet::transport::{PeerKey, PskId};

fn ident(n: u8) -> Identity {
    let key = PeerKey([n; 32]);
    Identity {
        id: node_id(&key),
        key,
        hostname: format!("n{n}"),
        labels: vec![],
        listen: None,
        advertise: None,
    }
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 2377))
}

/// Carries out the stack's IO at once: binds succeed, logs open empty, writes are
/// durable immediately.
fn pump(s: &mut Stack, now: Instant) {
    while let Some(io) = s.poll_io() {
        match io {
            Io::Bind { listen, .. } => s.bound(
                now,
                Ok(Bound {
                    listen,
                    advertise: addr(1),
                }),
            ),
            Io::OpenLog => s.log_opened(now, RaftLog::default()),
            Io::Persist { job, .. } => s.persisted(now, job),
            _ => {}
        }
    }
}

/// A one-manager cluster that node 2 joined as a manager.
fn leader(now: Instant) -> Stack {
    let mut s = Stack::new(ident(1), None, StackConfig::default(), [7; 32]);
    let init = Request::Init {
        listen: Some(addr(1)),
        advertise: Some(addr(1)),
        snapshot_interval: Some(16),
        pools: None,
    };
    s.handle_api(now, 1, init);
    pump(&mut s, now);
    let join = PeerMsg::JoinRequest {
        role: TokenRole::Manager,
        hostname: "n2".into(),
        advertise: addr(2),
        labels: vec![],
    };
    s.handle_message(now, PeerKey([2; 32]), Some(PSK_MANAGER), &join.encode());
    pump(&mut s, now);
    s
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = PeerMsg::decode(data) {
        assert_eq!(PeerMsg::decode(&m.encode()).ok(), Some(m));
    }
    let Some((&who, rest)) = data.split_first() else {
        return;
    };
    let now = Instant::now();
    let mut s = leader(now);
    let (from, psk) = match who % 4 {
        0 => (PeerKey([2; 32]), Some(PskId::MEMBER)),
        1 => (PeerKey([3; 32]), Some(PSK_WORKER)),
        2 => (PeerKey([2; 32]), None),
        _ => (PeerKey([4; 32]), Some(PskId::MEMBER)),
    };
    // The same bytes twice (a duplicate), with timers running in between.
    s.handle_message(now, from, psk, rest);
    pump(&mut s, now);
    let later = now + Duration::from_millis(u64::from(who) * 40);
    s.handle_timeout(later);
    pump(&mut s, later);
    s.handle_message(later, from, psk, rest);
    pump(&mut s, later);
    let _ = s.info();
});
