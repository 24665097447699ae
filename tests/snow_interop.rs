//! Interoperability with the `snow` Noise library: swarmlet's endpoint against a snow
//! peer in both roles, then transport messages both ways. The test plays the snow side
//! through swarmlet's datagram framing (indexes, MACs), so what is checked is the real
//! handshake and the real session crypto the endpoint uses.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code

use std::net::SocketAddr;
use std::time::Instant;

use swarmlet::transport::noise::{PROLOGUE, PROTOCOL_NAME};
use swarmlet::transport::wire::{self, Fragment, INIT_NOISE_LEN, RESPONSE_NOISE_LEN};
use swarmlet::transport::{Config, Endpoint, Event, PeerKey, Psk};

const PSK: Psk = [0x5a; 32];

fn snow_builder(local_secret: &[u8; 32]) -> snow::Builder<'static> {
    let params = std::str::from_utf8(PROTOCOL_NAME).unwrap().parse().unwrap();
    // Leak the key so the builder can borrow it for 'static; tests only.
    let key: &'static [u8; 32] = Box::leak(Box::new(*local_secret));
    let psk: &'static [u8; 32] = Box::leak(Box::new(PSK));
    snow::Builder::new(params)
        .prologue(PROLOGUE)
        .unwrap()
        .psk(2, psk)
        .unwrap()
        .local_private_key(key)
        .unwrap()
}

fn snow_public(secret: &[u8; 32]) -> PeerKey {
    PeerKey(swarmlet::transport::noise::public_of(&x25519_secret(
        secret,
    )))
}

fn x25519_secret(secret: &[u8; 32]) -> x25519_dalek::StaticSecret {
    x25519_dalek::StaticSecret::from(*secret)
}

fn fragment_plaintext(msg_id: u32, bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    Fragment {
        msg_id,
        index: 0,
        count: 1,
        bytes,
    }
    .write_header(&mut p);
    p.extend_from_slice(bytes);
    p
}

fn data_datagram(receiver: u32, counter: u64, sealed: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    wire::data_header(&mut d, receiver, counter);
    d.extend_from_slice(sealed);
    d
}

/// swarmlet's initiation payload: timestamp, then the PSK id (0: member).
fn init_payload(ts: u64) -> Vec<u8> {
    let mut p = ts.to_be_bytes().to_vec();
    p.push(0);
    p
}

fn counter_of(d: &[u8]) -> u64 {
    u64::from_le_bytes(d[6..14].try_into().unwrap())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn swarmlet_initiator_with_snow_responder() {
    let now = Instant::now();
    let snow_secret = [0x22u8; 32];
    let snow_key = snow_public(&snow_secret);
    let mut ours = Endpoint::new(Config::default(), [0x11; 32], [1; 32], now, 5);
    let our_key = ours.public_key();
    let snow_addr = addr("127.0.0.1:9000");
    ours.set_peer(snow_key, snow_addr, PSK).unwrap();
    ours.send(now, snow_key, b"hello from swarmlet").unwrap();

    // Our initiation: check its MAC, unwrap it, hand the Noise message to snow.
    let init = ours.poll_transmit().unwrap();
    assert_eq!(init.dest, snow_addr);
    assert!(wire::mac1_valid(&init.data, &wire::mac1_key(&snow_key.0)));
    let our_index = u32::from_le_bytes(init.data[2..6].try_into().unwrap());
    let mut snow_hs = snow_builder(&snow_secret).build_responder().unwrap();
    let mut payload = [0u8; 64];
    let n = snow_hs
        .read_message(&init.data[6..6 + INIT_NOISE_LEN], &mut payload)
        .unwrap();
    assert_eq!(n, 9, "timestamp and PSK id");
    assert_eq!(snow_hs.get_remote_static().unwrap(), &our_key.0);

    // snow's response, framed for us.
    let mut noise = [0u8; 128];
    let n = snow_hs.write_message(&[], &mut noise).unwrap();
    assert_eq!(n, RESPONSE_NOISE_LEN);
    let snow_index = 0x0102_0304;
    let mut resp = wire::response_header(snow_index, our_index);
    resp.extend_from_slice(&noise[..n]);
    wire::reserve_macs(&mut resp);
    wire::seal_macs(&mut resp, &wire::mac1_key(&our_key.0), None);
    let mut policy = |_: &PeerKey, _: SocketAddr| None;
    ours.handle_datagram(now, snow_addr, &mut resp, &mut policy);
    assert_eq!(ours.poll_event(), Some(Event::Connected { peer: snow_key }));
    assert!(ours.is_connected(&snow_key));

    // Our queued message now leaves as transport data; snow decrypts it.
    let snow_tx = snow_hs.into_stateless_transport_mode().unwrap();
    let data = ours.poll_transmit().unwrap();
    assert_eq!(
        u32::from_le_bytes(data.data[2..6].try_into().unwrap()),
        snow_index
    );
    let mut plain = vec![0u8; 2048];
    let n = snow_tx
        .read_message(counter_of(&data.data), &data.data[14..], &mut plain)
        .unwrap();
    assert_eq!(
        plain[..n],
        fragment_plaintext(0, b"hello from swarmlet")[..]
    );

    // And snow writes to us.
    let mut sealed = vec![0u8; 2048];
    let body = fragment_plaintext(0, b"hello from snow");
    let n = snow_tx.write_message(0, &body, &mut sealed).unwrap();
    let mut d = data_datagram(our_index, 0, &sealed[..n]);
    ours.handle_datagram(now, snow_addr, &mut d, &mut policy);
    assert_eq!(
        ours.poll_event(),
        Some(Event::Message {
            peer: snow_key,
            data: b"hello from snow".to_vec()
        })
    );
    // A second snow message with a later counter, and a replay of the first.
    let n = snow_tx
        .write_message(7, &fragment_plaintext(1, b"again"), &mut sealed)
        .unwrap();
    let mut d2 = data_datagram(our_index, 7, &sealed[..n]);
    ours.handle_datagram(now, snow_addr, &mut d2, &mut policy);
    let n = snow_tx.write_message(0, &body, &mut sealed).unwrap();
    let mut replay = data_datagram(our_index, 0, &sealed[..n]);
    ours.handle_datagram(now, snow_addr, &mut replay, &mut policy);
    let msgs: Vec<_> = std::iter::from_fn(|| ours.poll_event()).collect();
    assert_eq!(
        msgs,
        vec![Event::Message {
            peer: snow_key,
            data: b"again".to_vec()
        }]
    );
    assert_eq!(ours.stats().replayed, 1);
}

#[test]
fn snow_initiator_with_swarmlet_responder() {
    let now = Instant::now();
    let snow_secret = [0x33u8; 32];
    let snow_key = snow_public(&snow_secret);
    let mut ours = Endpoint::new(Config::default(), [0x44; 32], [2; 32], now, 5);
    let our_key = ours.public_key();
    let snow_addr = addr("127.0.0.1:9100");

    let mut snow_hs = snow_builder(&snow_secret)
        .remote_public_key(&our_key.0)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut noise = [0u8; 256];
    let n = snow_hs
        .write_message(&init_payload(1_000), &mut noise)
        .unwrap();
    assert_eq!(n, INIT_NOISE_LEN);
    let snow_index = 0x0a0b_0c0d;
    let mut init = wire::init_header(snow_index);
    init.extend_from_slice(&noise[..n]);
    wire::reserve_macs(&mut init);
    wire::seal_macs(&mut init, &wire::mac1_key(&our_key.0), None);

    let mut asked = Vec::new();
    let mut policy = |k: &PeerKey, _: SocketAddr| {
        asked.push(*k);
        Some(PSK)
    };
    ours.handle_datagram(now, snow_addr, &mut init, &mut policy);
    assert_eq!(asked, vec![snow_key], "the policy saw snow's static key");

    let resp = ours.poll_transmit().unwrap();
    assert_eq!(resp.dest, snow_addr);
    assert!(wire::mac1_valid(&resp.data, &wire::mac1_key(&snow_key.0)));
    let our_index = u32::from_le_bytes(resp.data[2..6].try_into().unwrap());
    assert_eq!(
        u32::from_le_bytes(resp.data[6..10].try_into().unwrap()),
        snow_index
    );
    let mut payload = [0u8; 64];
    let n = snow_hs
        .read_message(&resp.data[10..10 + RESPONSE_NOISE_LEN], &mut payload)
        .unwrap();
    assert_eq!(n, 0);
    let snow_tx = snow_hs.into_stateless_transport_mode().unwrap();

    // snow speaks first, which also confirms the session at our side.
    let mut sealed = vec![0u8; 2048];
    let n = snow_tx
        .write_message(0, &fragment_plaintext(0, b"hi swarmlet"), &mut sealed)
        .unwrap();
    let mut d = data_datagram(our_index, 0, &sealed[..n]);
    let mut policy = |_: &PeerKey, _: SocketAddr| Some(PSK);
    ours.handle_datagram(now, snow_addr, &mut d, &mut policy);
    assert_eq!(ours.poll_event(), Some(Event::Connected { peer: snow_key }));
    assert_eq!(
        ours.poll_event(),
        Some(Event::Message {
            peer: snow_key,
            data: b"hi swarmlet".to_vec()
        })
    );

    ours.send(now, snow_key, b"hi snow").unwrap();
    let out = ours.poll_transmit().unwrap();
    assert_eq!(
        u32::from_le_bytes(out.data[2..6].try_into().unwrap()),
        snow_index
    );
    let mut plain = vec![0u8; 2048];
    let n = snow_tx
        .read_message(counter_of(&out.data), &out.data[14..], &mut plain)
        .unwrap();
    assert_eq!(plain[..n], fragment_plaintext(0, b"hi snow")[..]);
}

#[test]
fn snow_with_wrong_psk_is_refused_by_swarmlet() {
    let now = Instant::now();
    let snow_secret = [0x55u8; 32];
    let mut ours = Endpoint::new(Config::default(), [0x66; 32], [3; 32], now, 5);
    let our_key = ours.public_key();
    let mut snow_hs = snow_builder(&snow_secret)
        .remote_public_key(&our_key.0)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut noise = [0u8; 256];
    let n = snow_hs.write_message(&init_payload(1), &mut noise).unwrap();
    let mut init = wire::init_header(9);
    init.extend_from_slice(&noise[..n]);
    wire::reserve_macs(&mut init);
    wire::seal_macs(&mut init, &wire::mac1_key(&our_key.0), None);
    // Our side believes the PSK is different: the response it sends fails at snow.
    let mut policy = |_: &PeerKey, _: SocketAddr| Some([0u8; 32]);
    ours.handle_datagram(now, addr("127.0.0.1:1"), &mut init, &mut policy);
    let resp = ours.poll_transmit().unwrap();
    let mut payload = [0u8; 64];
    assert!(snow_hs
        .read_message(&resp.data[10..10 + RESPONSE_NOISE_LEN], &mut payload)
        .is_err());
}
