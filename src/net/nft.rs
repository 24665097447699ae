//! A small nf_tables client over netlink: the tables, chains, maps and rules the load
//! balancer needs, written as nf_tables messages of our own (no `nft` binary, no C
//! library: the ones that exist are GPL and would not link into this binary).
//!
//! Changes go in batches, which the kernel applies atomically: a service's backends are
//! swapped in one step, never half. Every message asks for an acknowledgement and
//! [`Nft::commit`] reads them all, so an error names the message the kernel refused.
//! Nothing is read back from the kernel (parsing rules is most of `nft`): callers keep
//! what they programmed and rebuild a table from scratch when they are unsure.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

// Netlink and nfnetlink framing (linux/netlink.h, linux/netfilter/nfnetlink.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

// nf_tables messages (linux/netfilter/nf_tables.h).
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

/// Address families of nf_tables (NFPROTO_*).
pub const NFPROTO_IPV4: u8 = 2;

/// The largest answer the kernel sends for one message (an error echoes the request).
const RECV_BUF: usize = 64 * 1024;

/// How long to wait for the kernel's answer to a batch (it answers in microseconds).
const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A batch longer than this is refused before it is sent: the kernel takes batches up
/// to its socket buffer, and a thousand services' worth of updates is about a quarter
/// of this.
pub const MAX_BATCH: usize = 4 * 1024 * 1024;

/// What the kernel charges a socket's receive buffer for one acknowledgement (a small
/// datagram's whole allocation), with room to spare.
const ANSWER_TRUESIZE: usize = 2048;

/// Netfilter hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// What a base chain is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Filter,
    Nat,
}

/// Where a chain hangs, for a base chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub hook: Hook,
    pub priority: i32,
    pub kind: ChainType,
}

/// The 16-byte registers an expression reads and writes (NFT_REG_1 ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Verdict = 0,
    /// 16 bytes; its first 4 are also the 32-bit register 0 (NFT_REG32_00).
    R1 = 1,
    R2 = 2,
    /// The 32-bit register after R1's first word (NFT_REG32_01): the second field of a
    /// concatenation loaded into R1.
    R1b = 9,
}

/// Verdicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// A set's or map's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Ipv4,
    /// A 32-bit number (a round-robin slot).
    Integer,
    /// Transport protocol . port, each field padded to 4 bytes.
    ProtoPort,
}

/// A map's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapData {
    Verdict,
    Ipv4,
    /// IPv4 address . port (8 bytes).
    Ipv4Port,
}

/// A map element's value (`None` for an element of a plain set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    None,
    Verdict(Verdict),
    Bytes(Vec<u8>),
}

/// The expressions rules are made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of the network (IP) header.
    NetworkHeader { offset: u32, len: u32, dreg: Reg },
    /// Loads `len` bytes at `offset` of the transport header.
    TransportHeader { offset: u32, len: u32, dreg: Reg },
    /// Loads the transport protocol number (one byte).
    L4Proto { dreg: Reg },
    /// Loads the name of the interface the packet leaves by (16 bytes, NUL-padded).
    OifName { dreg: Reg },
    /// Loads the name of the interface the packet came in by (empty for one this host
    /// sent).
    IifName { dreg: Reg },
    /// Loads the routing type of the destination address (`fib daddr type`): 2 is
    /// local (RTN_LOCAL), as a host-order u32.
    FibDaddrType { dreg: Reg },
    /// `meta mark set` from a register.
    MarkSet { sreg: Reg },
    /// Loads the connection's status bits (`ct status`, a host-order u32).
    CtStatus { dreg: Reg },
    /// `reg = reg & mask` (a bitwise expression with no xor).
    And { reg: Reg, mask: Vec<u8> },
    /// Stops the rule unless the register equals `data`.
    Eq { sreg: Reg, data: Vec<u8> },
    /// Stops the rule if the register equals `data`.
    Neq { sreg: Reg, data: Vec<u8> },
    /// Puts `data` in a register.
    Immediate { dreg: Reg, data: Vec<u8> },
    /// Ends the rule with a verdict.
    Verdict(Verdict),
    /// `numgen inc mod modulus` (round robin) into a register.
    Numgen { modulus: u32, dreg: Reg },
    /// Looks the register up in a named map (or set, with no `dreg`); no match stops the
    /// rule. A verdict map's match is the rule's verdict.
    Lookup {
        set: String,
        sreg: Reg,
        dreg: Option<Reg>,
    },
    /// Destination NAT to the IPv4 address in `addr` (and port in `port`).
    Dnat { addr: Reg, port: Option<Reg> },
    /// Source NAT to the outgoing interface's address.
    Masquerade,
    /// Refuse with ICMP port unreachable.
    Reject,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused a message of the batch (none of it applied).
    #[error("nftables: {what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables: {0}")]
    Protocol(String),
}

/// A batch of changes, applied all or nothing.
pub struct Batch {
    buf: Vec<u8>,
    family: u8,
    /// What each message does, by its sequence number's offset: for errors.
    what: Vec<String>,
    /// Sets made so far (their batch ids).
    sets: u32,
}

impl Batch {
    pub fn new(family: u8) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            family,
            what: Vec::new(),
            sets: 0,
        };
        b.control(NFNL_MSG_BATCH_BEGIN);
        b
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    /// Makes the table if it is not there.
    pub fn add_table(&mut self, table: &str) {
        let m = self.begin(NFT_MSG_NEWTABLE, NLM_F_CREATE, format!("add table {table}"));
        self.str_attr(1, table); // NFTA_TABLE_NAME
        self.end(m);
    }

    pub fn del_table(&mut self, table: &str) {
        let m = self.begin(NFT_MSG_DELTABLE, 0, format!("delete table {table}"));
        self.str_attr(1, table);
        self.end(m);
    }

    /// Makes a chain (a base chain with `base`) if it is not there.
    pub fn add_chain(&mut self, table: &str, chain: &str, base: Option<BaseChain>) {
        let m = self.begin(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            format!("add chain {table} {chain}"),
        );
        self.str_attr(1, table); // NFTA_CHAIN_TABLE
        self.str_attr(3, chain); // NFTA_CHAIN_NAME
        if let Some(b) = base {
            let hook = self.nest(4); // NFTA_CHAIN_HOOK
            self.be32_attr(1, b.hook as u32); // NFTA_HOOK_HOOKNUM
            self.be32_attr(2, b.priority as u32); // NFTA_HOOK_PRIORITY: two's complement
            self.end_nest(hook);
            let kind = match b.kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            };
            self.str_attr(7, kind); // NFTA_CHAIN_TYPE
        }
        self.end(m);
    }

    /// Removes every rule of a chain.
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        let m = self.begin(NFT_MSG_DELRULE, 0, format!("flush chain {table} {chain}"));
        self.str_attr(1, table); // NFTA_RULE_TABLE
        self.str_attr(2, chain); // NFTA_RULE_CHAIN
        self.end(m);
    }

    pub fn del_chain(&mut self, table: &str, chain: &str) {
        let m = self.begin(NFT_MSG_DELCHAIN, 0, format!("delete chain {table} {chain}"));
        self.str_attr(1, table);
        self.str_attr(3, chain);
        self.end(m);
    }

    /// Appends a rule to a chain.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        let m = self.begin(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE,
            format!("add rule to {table} {chain}"),
        );
        self.str_attr(1, table); // NFTA_RULE_TABLE
        self.str_attr(2, chain); // NFTA_RULE_CHAIN
        let list = self.nest(4); // NFTA_RULE_EXPRESSIONS
        for e in exprs {
            let elem = self.nest(1); // NFTA_LIST_ELEM
            self.expr(e);
            self.end_nest(elem);
        }
        self.end_nest(list);
        self.end(m);
    }

    /// Makes a named map (keys of `key_len` bytes) if it is not there.
    pub fn add_map(&mut self, table: &str, map: &str, key: KeyType, data: MapData) {
        let m = self.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            format!("add map {table} {map}"),
        );
        self.str_attr(1, table); // NFTA_SET_TABLE
        self.str_attr(2, map); // NFTA_SET_NAME
        self.be32_attr(3, 0x8); // NFTA_SET_FLAGS: NFT_SET_MAP
        self.key(key);
        match data {
            MapData::Verdict => self.be32_attr(6, 0xffff_ff00), // NFT_DATA_VERDICT
            MapData::Ipv4 => {
                self.be32_attr(6, 7); // TYPE_IPADDR, for `nft list`
                self.be32_attr(7, 4); // NFTA_SET_DATA_LEN
            }
            MapData::Ipv4Port => {
                self.be32_attr(6, 7 << 6 | 13); // ipv4_addr . inet_service
                self.be32_attr(7, 8);
            }
        }
        self.set_id();
        self.end(m);
    }

    /// Makes a named set of keys of `key_len` bytes if it is not there.
    pub fn add_set(&mut self, table: &str, set: &str, key: KeyType) {
        let m = self.begin(
            NFT_MSG_NEWSET,
            NLM_F_CREATE,
            format!("add set {table} {set}"),
        );
        self.str_attr(1, table); // NFTA_SET_TABLE
        self.str_attr(2, set); // NFTA_SET_NAME
        self.be32_attr(3, 0); // NFTA_SET_FLAGS
        self.key(key);
        self.set_id();
        self.end(m);
    }

    /// The key's type (only `nft list` reads it) and length.
    fn key(&mut self, key: KeyType) {
        let (ty, len) = match key {
            KeyType::Ipv4 => (7, 4),    // TYPE_IPADDR
            KeyType::Integer => (4, 4), // TYPE_INTEGER
            // Concatenations: 6 bits per type, as nft numbers them.
            KeyType::ProtoPort => (12 << 6 | 13, 8), // inet_proto . inet_service
        };
        self.be32_attr(4, ty); // NFTA_SET_KEY_TYPE
        self.be32_attr(5, len); // NFTA_SET_KEY_LEN
    }

    /// NFTA_SET_ID: names a set within its batch (unique per batch).
    fn set_id(&mut self) {
        self.sets = self.sets.wrapping_add(1);
        self.be32_attr(10, self.sets);
    }

    /// What each message does, in order.
    pub fn what(&self) -> &[String] {
        &self.what
    }

    pub fn del_map(&mut self, table: &str, map: &str) {
        let m = self.begin(NFT_MSG_DELSET, 0, format!("delete map {table} {map}"));
        self.str_attr(1, table);
        self.str_attr(2, map);
        self.end(m);
    }

    /// Adds (or, with `replace`, overwrites) elements of a map.
    pub fn set_elems(&mut self, table: &str, map: &str, elems: &[(Vec<u8>, Value)]) {
        if elems.is_empty() {
            return;
        }
        let m = self.begin(
            NFT_MSG_NEWSETELEM,
            NLM_F_CREATE,
            format!("add to map {table} {map}"),
        );
        self.str_attr(1, table); // NFTA_SET_ELEM_LIST_TABLE
        self.str_attr(2, map); // NFTA_SET_ELEM_LIST_SET
        let list = self.nest(3); // NFTA_SET_ELEM_LIST_ELEMENTS
        for (key, value) in elems {
            let e = self.nest(1); // NFTA_LIST_ELEM
            let k = self.nest(1); // NFTA_SET_ELEM_KEY
            self.bytes_attr(1, key); // NFTA_DATA_VALUE
            self.end_nest(k);
            if *value != Value::None {
                let d = self.nest(2); // NFTA_SET_ELEM_DATA
                self.value(value);
                self.end_nest(d);
            }
            self.end_nest(e);
        }
        self.end_nest(list);
        self.end(m);
    }

    /// Removes elements of a map by key; with no keys, every element.
    pub fn del_elems(&mut self, table: &str, map: &str, keys: &[Vec<u8>]) {
        let m = self.begin(
            NFT_MSG_DELSETELEM,
            0,
            format!("remove from map {table} {map}"),
        );
        self.str_attr(1, table);
        self.str_attr(2, map);
        if !keys.is_empty() {
            let list = self.nest(3);
            for key in keys {
                let e = self.nest(1);
                let k = self.nest(1);
                self.bytes_attr(1, key);
                self.end_nest(k);
                self.end_nest(e);
            }
            self.end_nest(list);
        }
        self.end(m);
    }

    fn expr(&mut self, e: &Expr) {
        let name = match e {
            Expr::NetworkHeader { .. } | Expr::TransportHeader { .. } => "payload",
            Expr::L4Proto { .. }
            | Expr::OifName { .. }
            | Expr::IifName { .. }
            | Expr::MarkSet { .. } => "meta",
            Expr::FibDaddrType { .. } => "fib",
            Expr::CtStatus { .. } => "ct",
            Expr::And { .. } => "bitwise",
            Expr::Eq { .. } | Expr::Neq { .. } => "cmp",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Lookup { .. } => "lookup",
            Expr::Dnat { .. } => "nat",
            Expr::Masquerade => "masq",
            Expr::Reject => "reject",
        };
        self.str_attr(1, name); // NFTA_EXPR_NAME
        let data = self.nest(2); // NFTA_EXPR_DATA
        match e {
            Expr::NetworkHeader { offset, len, dreg }
            | Expr::TransportHeader { offset, len, dreg } => {
                let base = match e {
                    Expr::NetworkHeader { .. } => 1, // NFT_PAYLOAD_NETWORK_HEADER
                    _ => 2,                          // NFT_PAYLOAD_TRANSPORT_HEADER
                };
                self.be32_attr(1, *dreg as u32); // NFTA_PAYLOAD_DREG
                self.be32_attr(2, base); // NFTA_PAYLOAD_BASE
                self.be32_attr(3, *offset); // NFTA_PAYLOAD_OFFSET
                self.be32_attr(4, *len); // NFTA_PAYLOAD_LEN
            }
            Expr::L4Proto { dreg } => {
                self.be32_attr(1, *dreg as u32); // NFTA_META_DREG
                self.be32_attr(2, 16); // NFTA_META_KEY: NFT_META_L4PROTO
            }
            Expr::OifName { dreg } => {
                self.be32_attr(1, *dreg as u32);
                self.be32_attr(2, 7); // NFT_META_OIFNAME
            }
            Expr::IifName { dreg } => {
                self.be32_attr(1, *dreg as u32);
                self.be32_attr(2, 6); // NFT_META_IIFNAME
            }
            Expr::MarkSet { sreg } => {
                self.be32_attr(2, 3); // NFTA_META_KEY: NFT_META_MARK
                self.be32_attr(3, *sreg as u32); // NFTA_META_SREG
            }
            Expr::CtStatus { dreg } => {
                self.be32_attr(1, *dreg as u32); // NFTA_CT_DREG
                self.be32_attr(2, 2); // NFTA_CT_KEY: NFT_CT_STATUS
            }
            Expr::And { reg, mask } => {
                self.be32_attr(1, *reg as u32); // NFTA_BITWISE_SREG
                self.be32_attr(2, *reg as u32); // NFTA_BITWISE_DREG
                self.be32_attr(3, u32::try_from(mask.len()).unwrap_or(u32::MAX)); // _LEN
                let m = self.nest(4); // NFTA_BITWISE_MASK
                self.bytes_attr(1, mask);
                self.end_nest(m);
                let x = self.nest(5); // NFTA_BITWISE_XOR
                self.bytes_attr(1, &vec![0; mask.len()]);
                self.end_nest(x);
            }
            Expr::FibDaddrType { dreg } => {
                self.be32_attr(1, *dreg as u32); // NFTA_FIB_DREG
                self.be32_attr(2, 3); // NFTA_FIB_RESULT: NFT_FIB_RESULT_ADDRTYPE
                self.be32_attr(3, 1 << 1); // NFTA_FIB_FLAGS: NFTA_FIB_F_DADDR
            }
            Expr::Eq { sreg, data } | Expr::Neq { sreg, data } => {
                let op = match e {
                    Expr::Eq { .. } => 0, // NFT_CMP_EQ
                    _ => 1,               // NFT_CMP_NEQ
                };
                self.be32_attr(1, *sreg as u32); // NFTA_CMP_SREG
                self.be32_attr(2, op); // NFTA_CMP_OP
                let d = self.nest(3); // NFTA_CMP_DATA
                self.bytes_attr(1, data); // NFTA_DATA_VALUE
                self.end_nest(d);
            }
            Expr::Immediate { dreg, data } => {
                self.be32_attr(1, *dreg as u32); // NFTA_IMMEDIATE_DREG
                let d = self.nest(2); // NFTA_IMMEDIATE_DATA
                self.bytes_attr(1, data);
                self.end_nest(d);
            }
            Expr::Verdict(v) => {
                self.be32_attr(1, Reg::Verdict as u32);
                let d = self.nest(2);
                self.verdict(v);
                self.end_nest(d);
            }
            Expr::Numgen { modulus, dreg } => {
                self.be32_attr(1, *dreg as u32); // NFTA_NG_DREG
                self.be32_attr(2, *modulus); // NFTA_NG_MODULUS
                self.be32_attr(3, 0); // NFTA_NG_TYPE: NFT_NG_INCREMENTAL
            }
            Expr::Lookup { set, sreg, dreg } => {
                self.str_attr(1, set); // NFTA_LOOKUP_SET
                self.be32_attr(2, *sreg as u32); // NFTA_LOOKUP_SREG
                if let Some(d) = dreg {
                    self.be32_attr(3, *d as u32); // NFTA_LOOKUP_DREG
                }
            }
            Expr::Dnat { addr, port } => {
                self.be32_attr(1, 1); // NFTA_NAT_TYPE: NFT_NAT_DNAT
                self.be32_attr(2, u32::from(NFPROTO_IPV4)); // NFTA_NAT_FAMILY
                self.be32_attr(3, *addr as u32); // NFTA_NAT_REG_ADDR_MIN
                if let Some(p) = port {
                    self.be32_attr(5, *p as u32); // NFTA_NAT_REG_PROTO_MIN
                }
            }
            Expr::Masquerade => {}
            Expr::Reject => {
                // The ip family's reject knows only ICMP and TCP reset (it drops silently
                // on the family-neutral ICMPX types); a TCP SYN answered with port
                // unreachable fails at once with ECONNREFUSED.
                self.be32_attr(1, 0); // NFTA_REJECT_TYPE: NFT_REJECT_ICMP_UNREACH
                self.u8_attr(2, 3); // NFTA_REJECT_ICMP_CODE: ICMP_PORT_UNREACH
            }
        }
        self.end_nest(data);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::None => {}
            Value::Bytes(b) => self.bytes_attr(1, b), // NFTA_DATA_VALUE
            Value::Verdict(v) => self.verdict(v),
        }
    }

    /// NFTA_DATA_VERDICT { NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN }.
    fn verdict(&mut self, v: &Verdict) {
        let n = self.nest(2); // NFTA_DATA_VERDICT
        let (code, chain): (i32, Option<&str>) = match v {
            Verdict::Drop => (0, None),
            Verdict::Accept => (1, None),
            Verdict::Jump(c) => (-3, Some(c)),
            Verdict::Goto(c) => (-4, Some(c)),
            Verdict::Return => (-5, None),
        };
        self.be32_attr(1, code as u32); // two's complement, as the kernel reads it
        if let Some(c) = chain {
            self.str_attr(2, c);
        }
        self.end_nest(n);
    }

    /// Starts a message; returns where its header is.
    fn begin(&mut self, kind: u16, flags: u16, what: String) -> usize {
        self.what.push(what);
        let seq = u32::try_from(self.what.len()).unwrap_or(u32::MAX);
        let at = self.buf.len();
        let ty = NFNL_SUBSYS_NFTABLES << 8 | kind;
        self.header(ty, NLM_F_REQUEST | NLM_F_ACK | flags, seq);
        self.buf.extend_from_slice(&[self.family, 0, 0, 0]); // nfgenmsg
        at
    }

    fn header(&mut self, ty: u16, flags: u16, seq: u32) {
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel's
    }

    fn end(&mut self, at: usize) {
        let len = u32::try_from(self.buf.len() - at).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Batch begin or end: a bare nfgenmsg whose resource id names the subsystem.
    fn control(&mut self, ty: u16) {
        let at = self.buf.len();
        let seq = if ty == NFNL_MSG_BATCH_BEGIN {
            0
        } else {
            u32::MAX
        };
        self.header(ty, NLM_F_REQUEST, seq);
        self.buf.push(0); // AF_UNSPEC
        self.buf.push(0);
        self.buf
            .extend_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.end(at);
    }

    fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn str_attr(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    fn be32_attr(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    fn u8_attr(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    fn bytes_attr(&mut self, ty: u16, v: &[u8]) {
        self.attr(ty, v);
    }

    fn nest(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end_nest(&mut self, at: usize) {
        let len = u16::try_from(self.buf.len() - at).unwrap_or(u16::MAX);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The finished batch: its bytes and the number of messages that will be answered.
    fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        self.control(NFNL_MSG_BATCH_END);
        (self.buf, self.what)
    }
}

/// A netfilter netlink socket in one network namespace.
pub struct Nft {
    sock: Socket,
    buf: Vec<u8>,
}

impl Nft {
    /// A socket in the calling thread's network namespace (see `rtnl::in_netns`).
    pub fn open() -> Result<Nft, NftError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
        sock.bind_auto().map_err(NftError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Socket)?;
        let _ = sock.set_ext_ack(true);
        // The kernel answers at once; a missing answer must end in an error, not a hang.
        rustix::net::sockopt::set_socket_timeout(
            sock.as_fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(ANSWER_TIMEOUT),
        )
        .map_err(|e| NftError::Socket(e.into()))?;
        Ok(Nft {
            sock,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Makes the socket's buffers hold a batch of `bytes` (the kernel takes a batch in
    /// one datagram) and its `answers` acknowledgements (each a small datagram the
    /// kernel charges about a kilobyte for), as `nft` does; the defaults (about 200
    /// KiB) hold a few hundred services' worth. Needs CAP_NET_ADMIN, which changing
    /// nf_tables needs anyway.
    fn fit(&mut self, bytes: usize, answers: usize) -> Result<(), NftError> {
        use rustix::net::sockopt;
        let fd = self.sock.as_fd();
        let send = bytes.saturating_mul(2);
        if sockopt::socket_send_buffer_size(fd).is_ok_and(|have| have < send) {
            sockopt::set_socket_send_buffer_size_force(fd, send)
                .map_err(|e| NftError::Socket(e.into()))?;
        }
        let recv = answers.saturating_add(1).saturating_mul(ANSWER_TRUESIZE);
        if sockopt::socket_recv_buffer_size(fd).is_ok_and(|have| have < recv) {
            sockopt::set_socket_recv_buffer_size_force(fd, recv)
                .map_err(|e| NftError::Socket(e.into()))?;
        }
        Ok(())
    }

    /// Sends a batch and waits for the kernel's answer to every message in it. The
    /// kernel applies a batch whole or not at all; the first refusal is returned.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NftError> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.len() > MAX_BATCH {
            return Err(NftError::Protocol(format!(
                "batch of {} bytes is over the {MAX_BATCH}-byte limit",
                batch.len()
            )));
        }
        let (bytes, what) = batch.finish();
        self.fit(bytes.len(), what.len())?;
        // Answers a timed-out earlier commit never read would be taken for this one's.
        while self
            .sock
            .recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT)
            .is_ok()
        {}
        self.sock.send(&bytes, 0).map_err(NftError::Socket)?;
        let mut answered = 0usize;
        let mut failed: Option<NftError> = None;
        // One answer per message, an ACK or an error: the kernel goes through the whole
        // batch to report every refusal, then applies it only if there was none.
        while answered < what.len() {
            let mut filled = &mut self.buf[..];
            let n = self.sock.recv(&mut filled, 0).map_err(NftError::Socket)?;
            let n = n.min(self.buf.len());
            let mut at = 0;
            while at + NLMSG_HDRLEN <= n {
                let h = &self.buf[at..n];
                let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let ty = u16::from_ne_bytes([h[4], h[5]]);
                let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if len < NLMSG_HDRLEN || len > h.len() {
                    return Err(NftError::Protocol(format!(
                        "malformed answer of {len} bytes"
                    )));
                }
                if ty == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
                    answered += 1;
                    let code = i32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
                    if code != 0 && failed.is_none() {
                        let i = usize::try_from(seq).unwrap_or(0).saturating_sub(1);
                        let mut what = what
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("message {seq}"));
                        // The kernel's word for an expression it has no module for.
                        if code == -libc::ENOENT && what.starts_with("add rule") {
                            what.push_str(
                                " (an nf_tables expression module the kernel lacks gives this: nft_nat, nft_numgen, nft_fib_ipv4, nft_reject_ipv4, nft_masq)",
                            );
                        }
                        failed = Some(NftError::Kernel {
                            what,
                            source: io::Error::from_raw_os_error(code.saturating_neg()),
                        });
                    }
                } else if ty == NLMSG_DONE {
                    answered = what.len();
                }
                at += (len + 3) & !3;
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A table kept in step with a desired value by the one writer that owns it: what the
/// kernel holds as far as the writer knows, `None` until built or after a failed commit
/// (the next sync then rebuilds the table from scratch, whatever is there).
pub struct Synced<T> {
    nft: Nft,
    held: Option<T>,
}

/// What a `Synced` table holds: made equal to what is wanted by copying only what differs,
/// so a change to one entry of thousands allocates for that entry alone.
pub trait Mirror: Clone {
    fn mirror(&mut self, want: &Self);
}

impl<K: Ord + Clone, V: PartialEq + Clone> Mirror for BTreeMap<K, V> {
    fn mirror(&mut self, want: &Self) {
        let mut gone = Vec::new();
        let mut set = Vec::new();
        for (k, _, now) in diff(self, want) {
            match now {
                None => gone.push(k.clone()),
                Some(v) => set.push((k.clone(), v.clone())),
            }
        }
        for k in gone {
            self.remove(&k);
        }
        self.extend(set);
    }
}

/// The keys whose entries differ between two maps, with what each holds, in key order:
/// one walk over both (no lookups), so comparing thousands of entries costs microseconds.
pub fn diff<'a, K: Ord, V: PartialEq>(
    have: &'a BTreeMap<K, V>,
    want: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, Option<&'a V>, Option<&'a V>)> {
    let mut h = have.iter().peekable();
    let mut w = want.iter().peekable();
    std::iter::from_fn(move || loop {
        let step = match (h.peek(), w.peek()) {
            (None, None) => return None,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((hk, _)), Some((wk, _))) => hk.cmp(wk),
        };
        match step {
            Ordering::Less => {
                let (k, v) = h.next()?;
                return Some((k, Some(v), None));
            }
            Ordering::Greater => {
                let (k, v) = w.next()?;
                return Some((k, None, Some(v)));
            }
            Ordering::Equal => {
                let ((k, old), (_, new)) = (h.next()?, w.next()?);
                if old != new {
                    return Some((k, Some(old), Some(new)));
                }
            }
        }
    })
}

impl<T: Mirror> Synced<T> {
    pub fn new(nft: Nft) -> Synced<T> {
        Synced { nft, held: None }
    }

    /// Makes the kernel hold `want`. `plan` gets what is held (`None`: build it all)
    /// and returns the batch and how many entries it changes; returns that number.
    pub fn sync(
        &mut self,
        want: &T,
        plan: impl FnOnce(Option<&T>) -> (Batch, usize),
    ) -> Result<usize, NftError> {
        let (batch, changed) = plan(self.held.as_ref());
        if changed == 0 && self.held.is_some() {
            return Ok(0);
        }
        match self.nft.commit(batch) {
            Ok(()) => {
                match &mut self.held {
                    Some(held) => held.mirror(want),
                    None => self.held = Some(want.clone()),
                }
                Ok(changed)
            }
            Err(e) => {
                self.held = None;
                Err(e)
            }
        }
    }

    /// Removes the table, there or not.
    pub fn clear(&mut self, table: &str) -> Result<(), NftError> {
        let mut b = Batch::new(NFPROTO_IPV4);
        // Adding first makes the delete succeed whether or not the table is there.
        b.add_table(table);
        b.del_table(table);
        self.nft.commit(b)?;
        self.held = None;
        Ok(())
    }
}

/// Where a guard chain hangs: before conntrack (-200), so it sees a datagram's
/// destination as sent, not as NAT turns it back.
pub const GUARD_HOOK: Hook = Hook::Prerouting;
pub const GUARD_PRIORITY: i32 = -300;

/// Loads the first byte of the IPv4 source (`at` 12) or destination (`at` 16) address
/// and stops the rule unless it is 127 (the loopback network).
fn in_loopback_net(at: u32) -> [Expr; 2] {
    [
        Expr::NetworkHeader {
            offset: at,
            len: 1,
            dreg: Reg::R1,
        },
        Expr::Eq {
            sreg: Reg::R1,
            data: vec![127],
        },
    ]
}

/// `iifname <ifname> ip daddr 127.0.0.0/8 drop` and the same for `ip saddr`: what
/// arrives by a bridge with `route_localnet` on may neither reach the node's loopback
/// services nor pass for one of the node's own loopback clients (a forged source). Two
/// rules.
pub fn loopback_guard(ifname: &str) -> [Vec<Expr>; 2] {
    [16, 12].map(|at| {
        let mut e = vec![
            Expr::IifName { dreg: Reg::R1 },
            Expr::Eq {
                sreg: Reg::R1,
                data: ifname_bytes(ifname),
            },
        ];
        e.extend(in_loopback_net(at));
        e.push(Expr::Verdict(Verdict::Drop));
        e
    })
}

/// `ip saddr 127.0.0.0/8 oifname <ifname> masquerade`: a connection from the node's
/// loopback, sent on to a container on a bridge, gets the bridge's address.
pub fn loopback_masquerade(ifname: &str) -> Vec<Expr> {
    let mut e = in_loopback_net(12).to_vec();
    e.extend([
        Expr::OifName { dreg: Reg::R1 },
        Expr::Eq {
            sreg: Reg::R1,
            data: ifname_bytes(ifname),
        },
        Expr::Masquerade,
    ]);
    e
}

/// IPS_DST_NAT: the connection's destination was translated.
const IPS_DST_NAT: u32 = 1 << 5;

/// `iifname <ifname> oifname <ifname> ct status dnat masquerade`: a connection from a
/// container on a bridge to a port the node publishes, sent back out by the same bridge
/// to another container (hairpin), gets the bridge's address, so the answer comes back
/// through the node rather than straight to the client, which would not know it.
pub fn hairpin_masquerade(ifname: &str) -> Vec<Expr> {
    let by = || Expr::Eq {
        sreg: Reg::R1,
        data: ifname_bytes(ifname),
    };
    vec![
        Expr::IifName { dreg: Reg::R1 },
        by(),
        Expr::OifName { dreg: Reg::R1 },
        by(),
        Expr::CtStatus { dreg: Reg::R1 },
        Expr::And {
            reg: Reg::R1,
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
        },
        Expr::Neq {
            sreg: Reg::R1,
            data: 0u32.to_ne_bytes().to_vec(),
        },
        Expr::Masquerade,
    ]
}

/// An IPv4 address as nf_tables compares it (network order).
pub fn ip_bytes(ip: Ipv4Addr) -> Vec<u8> {
    ip.octets().to_vec()
}

/// Protocol . port as a concatenated key: each field padded to 4 bytes.
pub fn proto_port_key(proto: u8, port: u16) -> Vec<u8> {
    let p = port.to_be_bytes();
    vec![proto, 0, 0, 0, p[0], p[1], 0, 0]
}

/// Address . port as concatenated data.
pub fn ip_port_bytes(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let (o, p) = (ip.octets(), port.to_be_bytes());
    vec![o[0], o[1], o[2], o[3], p[0], p[1], 0, 0]
}

/// An interface name as `meta oifname` loads it: 16 bytes, NUL-padded.
pub fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// A numgen result as a map key: a host-order u32, as the kernel's register holds it.
pub fn index_key(i: u32) -> Vec<u8> {
    i.to_ne_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_walks_both_maps_once_and_mirror_copies_what_differs() {
        let have = BTreeMap::from([(1, "a"), (2, "b"), (4, "d"), (6, "f")]);
        let want = BTreeMap::from([(0, "z"), (2, "b"), (4, "D"), (5, "e")]);
        let got: Vec<_> = diff(&have, &want).collect();
        assert_eq!(
            got,
            [
                (&0, None, Some(&"z")),
                (&1, Some(&"a"), None),
                (&4, Some(&"d"), Some(&"D")),
                (&5, None, Some(&"e")),
                (&6, Some(&"f"), None),
            ]
        );
        assert_eq!(diff(&want, &want).count(), 0);
        let mut held = have.clone();
        held.mirror(&want);
        assert_eq!(held, want);
        let mut held = BTreeMap::new();
        held.mirror(&want);
        assert_eq!(held, want);
    }

    /// Walks a batch's messages: (type, flags, seq, body length).
    fn messages(b: &[u8]) -> Vec<(u16, u16, u32, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(b[at + 4..at + 6].try_into().unwrap());
            let fl = u16::from_ne_bytes(b[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(b[at + 8..at + 12].try_into().unwrap());
            out.push((ty, fl, seq, len));
            assert_eq!(len % 4, 0, "messages are padded");
            at += len;
        }
        assert_eq!(at, b.len());
        out
    }

    #[test]
    fn a_batch_is_framed_by_begin_and_end_and_numbers_its_messages() {
        let mut b = Batch::new(NFPROTO_IPV4);
        assert!(b.is_empty());
        b.add_table("swarmlet");
        b.add_chain(
            "swarmlet",
            "out",
            Some(BaseChain {
                hook: Hook::Output,
                priority: -100,
                kind: ChainType::Nat,
            }),
        );
        b.add_rule("swarmlet", "out", &[Expr::Verdict(Verdict::Accept)]);
        let (bytes, what) = b.finish();
        let m = messages(&bytes);
        assert_eq!(m.len(), 5);
        assert_eq!(m[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(m[4].0, NFNL_MSG_BATCH_END);
        assert_eq!(m[1].0, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE);
        assert_eq!(m[2].0, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN);
        assert_eq!(m[3].0, NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE);
        assert_eq!((m[1].2, m[2].2, m[3].2), (1, 2, 3));
        assert!(m[1..4].iter().all(|x| x.1 & NLM_F_ACK != 0));
        assert_eq!(
            what,
            [
                "add table swarmlet",
                "add chain swarmlet out",
                "add rule to swarmlet out"
            ]
        );
        // The priority goes as its two's complement, big-endian.
        let needle = (-100i32 as u32).to_be_bytes();
        assert!(bytes.windows(4).any(|w| w == needle));
    }

    #[test]
    fn nests_carry_their_length_and_the_nested_flag() {
        let mut b = Batch::new(NFPROTO_IPV4);
        b.set_elems(
            "t",
            "m",
            &[(
                index_key(0),
                Value::Bytes(ip_bytes(Ipv4Addr::new(10, 0, 0, 2))),
            )],
        );
        let (bytes, _) = b.finish();
        let m = messages(&bytes);
        // The element message: header, nfgenmsg, table, set, then the nested list.
        let start = m[0].3;
        let body = &bytes[start + NLMSG_HDRLEN + 4..start + m[1].3];
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < body.len() {
            let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
            let ty = u16::from_ne_bytes([body[at + 2], body[at + 3]]);
            kinds.push(ty);
            if ty & NLA_F_NESTED != 0 {
                assert_eq!(at + len, body.len(), "the list runs to the end");
            }
            at += (len + 3) & !3;
        }
        assert_eq!(kinds, [1, 2, 3 | NLA_F_NESTED]);
    }

    #[test]
    fn an_empty_batch_sends_nothing() {
        let b = Batch::new(NFPROTO_IPV4);
        assert!(b.is_empty());
    }
}
