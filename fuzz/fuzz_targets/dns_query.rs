//! Datagrams as a container sends them to the embedded DNS server: the query parser, the
//! error reply for what it refuses, and, for whatever parses, every reply: each fits in
//! 512 bytes, carries the query's id and answers its question.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use swarmlet::net::dns::{self, UDP_MAX};

fuzz_target!(|data: &[u8]| {
    if let Some(reply) = dns::error_reply_for(data) {
        assert_eq!(dns::packet_id(&reply), dns::packet_id(data));
    }
    let Ok(q) = dns::parse_query(data) else {
        return;
    };
    // Addresses from the input's bytes, more than fit in one answer.
    let addrs: Vec<Ipv4Addr> = data
        .chunks(4)
        .map(|c| Ipv4Addr::from(u32::from_be_bytes(c.try_into().unwrap_or([0; 4]))))
        .cycle()
        .take(40)
        .collect();
    for reply in [
        q.answer_a(&addrs, 600),
        q.nodata(),
        q.nxdomain(),
        q.servfail(),
        q.refused(),
    ] {
        assert!(reply.len() <= UDP_MAX, "reply of {} bytes", reply.len());
        assert_eq!(dns::packet_id(&reply), Some(q.id));
        q.check_reply(&reply, q.id)
            .expect("a reply answers its own question");
    }
    // Forwarding: the datagram under another id is the same query.
    let mut forwarded = data.to_vec();
    dns::rewrite_id(&mut forwarded, !q.id).expect("a parsed query has an id");
    let again = dns::parse_query(&forwarded).expect("only the id changed");
    assert_eq!((again.id, &again.name), (!q.id, &q.name));
    let _ = q.check_reply(data, q.id);
});
