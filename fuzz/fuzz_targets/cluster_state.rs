//! The replicated cluster state and its commands as a manager decodes them from a Raft
//! snapshot and from committed entries, applied one after the other; and join tokens
//! as a user types them. A state and a command that decode encode to themselves;
//! `apply` accepts exactly what `validate` accepts (every replica must agree); a
//! token that parses prints as a token that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmlet::cluster::token::JoinToken;
use swarmlet::cluster::{ClusterSpec, ClusterState, Command, Tokens};
use swarmlet_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = JoinToken::parse(s) {
            assert_eq!(JoinToken::parse(&t.to_string()), Ok(t));
        }
    }
    let _ = ClusterState::decode(data);
    let _ = Command::decode(data);

    let empty = ClusterState::new(
        [7; 16],
        Tokens {
            worker: [1; 16],
            manager: [2; 16],
        },
        ClusterSpec::default(),
    );
    // The format's version byte, so that mutations reach the decoders.
    let version = empty.encode()[0];
    let mut input = Input(data);
    let mut state = match input.byte() % 2 {
        0 => empty,
        _ => {
            let mut b = vec![version];
            b.extend_from_slice(input.chunk());
            match ClusterState::decode(&b) {
                Ok(s) => s,
                Err(_) => return,
            }
        }
    };
    assert_eq!(ClusterState::decode(&state.encode()).as_ref(), Ok(&state));
    while !input.is_empty() {
        let mut b = vec![version];
        b.extend_from_slice(input.short());
        let Ok(cmd) = Command::decode(&b) else {
            continue;
        };
        assert_eq!(Command::decode(&cmd.encode()).as_ref(), Ok(&cmd));
        let valid = state.validate(&cmd);
        let before = state.clone();
        let applied = state.apply(&cmd);
        assert_eq!(
            valid.is_ok(),
            applied.is_ok(),
            "{cmd:?}: {valid:?} vs {applied:?}"
        );
        if applied.is_err() {
            assert_eq!(state, before, "a refused command changes nothing");
        }
        assert_eq!(ClusterState::decode(&state.encode()).as_ref(), Ok(&state));
    }
});
