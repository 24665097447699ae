//! The wire format of the embedded DNS server each container reaches at 127.0.0.11:53, as
//! Docker's: it answers the names the swarm owns (services, tasks) and forwards the rest
//! to the host's resolvers. Pure: bytes in, bytes out. The shell owns the socket, the
//! table of names, the upstream sockets and the forwarding state.
//!
//! How one datagram from a container flows through the shell:
//!
//! 1. [`parse_query`]. On an error, [`error_reply_for`] gives FORMERR (or NOTIMP) when the
//!    header can be read and the datagram is a query; otherwise it is dropped.
//! 2. A name the swarm owns: [`Query::answer_a`] for A (or ANY), [`Query::nodata`] for
//!    any other type, [`Query::nxdomain`] for a name under the swarm's that is unknown.
//! 3. Any other name: the datagram is forwarded as received (so the client's flags, EDNS
//!    options and the case of its name reach the upstream) under an id of the shell's own
//!    ([`rewrite_id`]) to a server from [`parse_resolv_conf`]. The upstream's reply is
//!    matched to the pending query by [`packet_id`], checked with [`Query::check_reply`],
//!    given back the client's id and passed on unchanged. [`Query::servfail`] when no
//!    upstream answers.
//!
//! Plain DNS over UDP only (RFC 1035): every reply this module builds fits in 512 bytes,
//! and an EDNS OPT record in a query is ignored and none is sent back, which tells the
//! client this server speaks no EDNS, so it expects no more than 512 bytes from it.
//! A query's one name has no earlier name to point at, so compression pointers in it are
//! refused outright: no pointer is ever followed, and no loop of pointers is possible.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Bytes of the fixed header (RFC 1035 4.1.1).
pub const HEADER_LEN: usize = 12;
/// Largest message over UDP without EDNS (RFC 1035 2.3.4); every reply built here fits.
pub const UDP_MAX: usize = 512;
/// Longest name on the wire, length bytes and the final zero included (RFC 1035 2.3.4).
/// A label's 63-byte limit needs no check of its own: its length byte has only six bits.
const MAX_NAME_WIRE: usize = 255;
/// Longest question: the longest name, then its type and class.
const MAX_QUESTION_LEN: usize = MAX_NAME_WIRE + 4;
/// One A record as answered: a pointer to the question's name (2), type (2), class (2),
/// TTL (4), data length (2), the address (4).
const A_RECORD_LEN: usize = 16;
/// Most A records in one answer (15): what fits in 512 bytes after the header and the
/// longest possible question, so no reply needs TC (which sends the client to ask again
/// over TCP). Fixed rather than per name, so every name gets the same count; for a
/// larger set the shell should shuffle the addresses per query, so that clients still
/// spread over all of them.
pub const MAX_A_RECORDS: usize = (UDP_MAX - HEADER_LEN - MAX_QUESTION_LEN) / A_RECORD_LEN;

// The query types and the class the shell tells apart (RFC 1035 3.2.2, 3.2.3, 3.2.4;
// RFC 3596 for AAAA).
pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

/// Most upstream servers taken from resolv.conf: glibc's MAXNS, the number its resolver
/// ever consults, so a container sees the upstreams a host process would.
pub const MAX_NAMESERVERS: usize = 3;
/// The port upstream servers listen on; resolv.conf has no way to name another.
pub const DNS_PORT: u16 = 53;

// Header flags (RFC 1035 4.1.1): the third byte, then the fourth.
const QR: u8 = 0x80;
const OPCODE_MASK: u8 = 0x78;
const AA: u8 = 0x04;
const RD: u8 = 0x01;
const RA: u8 = 0x80;

// Response codes (RFC 1035 4.1.1).
const RCODE_NOERROR: u8 = 0;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// The top two bits of a label's length byte: 00 a plain label, 11 a compression pointer,
/// the others extended label types (RFC 6891 5) that no query needs.
const LABEL_KIND: u8 = 0xC0;
const POINTER: u8 = 0xC0;
/// A compression pointer to offset 12, where the echoed question's name starts.
const TO_QUESTION: [u8; 2] = [POINTER, 12];

/// What a datagram or an upstream's reply can be refused for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("dns message cut short")]
    Truncated,
    #[error("dns message is a response, not a query")]
    NotAQuery,
    #[error("dns opcode {0} not supported, only standard queries")]
    Opcode(u8),
    #[error("dns message with {0} questions, expected 1")]
    QuestionCount(u16),
    #[error("dns query carries {answers} answer and {authority} authority records")]
    UnexpectedRecords { answers: u16, authority: u16 },
    #[error("compression pointer in a question's name")]
    CompressedName,
    #[error("dns label type {0:#04x} not supported")]
    LabelType(u8),
    #[error("dns name longer than {MAX_NAME_WIRE} bytes")]
    NameTooLong,
    #[error("byte {0:#04x} not allowed in a dns name")]
    NameByte(u8),
    #[error("upstream reply has id {got}, expected {want}")]
    ReplyId { got: u16, want: u16 },
    #[error("upstream reply is a query, not a response")]
    NotAReply,
    #[error("upstream reply does not answer the question for {0}")]
    ReplyQuestion(String),
}

/// A standard query with its one question, as [`parse_query`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// RD, echoed in every reply (RFC 1035 4.1.1).
    pub recursion_desired: bool,
    /// Lowercase, labels joined by dots, no trailing dot; empty for the root. Printable
    /// ASCII only, so the shell can compare and log it as it is.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question as received (name in the client's case, type, class), echoed in every
    /// reply: a resolver that randomises the case of its names (DNS 0x20) checks it.
    question: Vec<u8>,
}

impl Query {
    /// The answer for a name the swarm owns: A records for up to [`MAX_A_RECORDS`] of
    /// `addrs` (the rest left out, so the reply fits in 512 bytes), each with `ttl`
    /// seconds. Class IN: the shell answers only questions of class IN (or ANY) this way.
    pub fn answer_a(&self, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
        self.reply(RCODE_NOERROR, true, addrs, ttl)
    }

    /// NOERROR and no records: the name is the swarm's, but it has no record of the type
    /// asked (AAAA, MX, ...). Unlike NXDOMAIN, it tells the client the name exists.
    pub fn nodata(&self) -> Vec<u8> {
        self.reply(RCODE_NOERROR, true, &[], 0)
    }

    /// NXDOMAIN: no such name, said with authority.
    pub fn nxdomain(&self) -> Vec<u8> {
        self.reply(RCODE_NXDOMAIN, true, &[], 0)
    }

    /// SERVFAIL: the name was to be forwarded and no upstream answered (or none is known).
    /// Not authoritative: the server only relays for such names.
    pub fn servfail(&self) -> Vec<u8> {
        self.reply(RCODE_SERVFAIL, false, &[], 0)
    }

    /// REFUSED: a question the server will neither answer nor forward (a class other than
    /// IN for a name it owns, say).
    pub fn refused(&self) -> Vec<u8> {
        self.reply(RCODE_REFUSED, false, &[], 0)
    }

    /// Whether `reply`, from an upstream this query was forwarded to under `sent_id`,
    /// answers it: that id, a response to a standard query, and one question with the same
    /// name (in any case), type and class. Anything else is a stale or spoofed datagram
    /// and is dropped.
    pub fn check_reply(&self, reply: &[u8], sent_id: u16) -> Result<(), DnsError> {
        let header = reply
            .first_chunk::<HEADER_LEN>()
            .ok_or(DnsError::Truncated)?;
        let id = u16::from_be_bytes([header[0], header[1]]);
        if id != sent_id {
            return Err(DnsError::ReplyId {
                got: id,
                want: sent_id,
            });
        }
        if header[2] & QR == 0 {
            return Err(DnsError::NotAReply);
        }
        let opcode = (header[2] & OPCODE_MASK) >> 3;
        if opcode != 0 {
            return Err(DnsError::Opcode(opcode));
        }
        let questions = u16::from_be_bytes([header[4], header[5]]);
        if questions != 1 {
            return Err(DnsError::QuestionCount(questions));
        }
        let q = read_question(reply)?;
        if q.name != self.name || q.qtype != self.qtype || q.qclass != self.qclass {
            return Err(DnsError::ReplyQuestion(self.name.clone()));
        }
        Ok(())
    }

    /// A reply: the header, the question as received, then the A records, each naming
    /// the question's name by a pointer to offset 12.
    fn reply(&self, rcode: u8, authoritative: bool, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
        let addrs = &addrs[..addrs.len().min(MAX_A_RECORDS)];
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.question.len() + addrs.len() * A_RECORD_LEN);
        out.extend_from_slice(&self.id.to_be_bytes());
        let aa = if authoritative { AA } else { 0 };
        let rd = if self.recursion_desired { RD } else { 0 };
        out.extend_from_slice(&[QR | aa | rd, RA | rcode]);
        // Counts: one question, the answers (filled in below), no authority or additional.
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&self.question);
        let mut answers: u16 = 0;
        for addr in addrs {
            out.extend_from_slice(&TO_QUESTION);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&addr.octets());
            // At most MAX_A_RECORDS (15): no overflow.
            answers += 1;
        }
        out[6..8].copy_from_slice(&answers.to_be_bytes());
        debug_assert!(out.len() <= UDP_MAX, "reply of {} bytes", out.len());
        out
    }
}

/// Reads a query off a datagram from a container. Only the header and the question are
/// read: the additional section (an EDNS OPT record) and bytes past the question are
/// ignored, as they do not change the answer.
pub fn parse_query(packet: &[u8]) -> Result<Query, DnsError> {
    let header = packet
        .first_chunk::<HEADER_LEN>()
        .ok_or(DnsError::Truncated)?;
    if header[2] & QR != 0 {
        return Err(DnsError::NotAQuery);
    }
    let opcode = (header[2] & OPCODE_MASK) >> 3;
    if opcode != 0 {
        return Err(DnsError::Opcode(opcode));
    }
    let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    if count(4) != 1 {
        return Err(DnsError::QuestionCount(count(4)));
    }
    if count(6) != 0 || count(8) != 0 {
        return Err(DnsError::UnexpectedRecords {
            answers: count(6),
            authority: count(8),
        });
    }
    let q = read_question(packet)?;
    Ok(Query {
        id: u16::from_be_bytes([header[0], header[1]]),
        recursion_desired: header[2] & RD != 0,
        name: q.name,
        qtype: q.qtype,
        qclass: q.qclass,
        // In bounds: read_question read every byte up to q.end.
        question: packet[HEADER_LEN..q.end].to_vec(),
    })
}

/// The reply to a datagram [`parse_query`] refused: FORMERR, or NOTIMP for an opcode other
/// than a standard query, with the datagram's id and no question (it could not be read).
/// None when even the header is cut short or the datagram is itself a response: answering
/// a response could start two servers bouncing errors at each other for good.
pub fn error_reply_for(packet: &[u8]) -> Option<Vec<u8>> {
    let header = packet.first_chunk::<HEADER_LEN>()?;
    if header[2] & QR != 0 {
        return None;
    }
    let rcode = if header[2] & OPCODE_MASK == 0 {
        RCODE_FORMERR
    } else {
        RCODE_NOTIMP
    };
    let mut out = vec![0; HEADER_LEN];
    out[..2].copy_from_slice(&header[..2]);
    out[2] = QR | (header[2] & (OPCODE_MASK | RD));
    out[3] = RA | rcode;
    Some(out)
}

/// The id of a DNS message; None when it is shorter than an id.
pub fn packet_id(packet: &[u8]) -> Option<u16> {
    packet.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

/// Sets the id of a DNS message: a forwarded query's to the shell's own, its reply's back
/// to the client's.
pub fn rewrite_id(packet: &mut [u8], id: u16) -> Result<(), DnsError> {
    let b = packet.first_chunk_mut::<2>().ok_or(DnsError::Truncated)?;
    *b = id.to_be_bytes();
    Ok(())
}

/// The nameservers of a resolv.conf, as the upstreams to forward to: the first
/// [`MAX_NAMESERVERS`] distinct ones, on port 53. Loopback and unspecified addresses are
/// skipped: inside the container's namespace they would reach the container itself
/// (Docker skips them too). So are addresses with a zone (`fe80::1%eth0`), which name an
/// interface of the host, and lines that do not parse. Comments need no handling of
/// their own: a line starting with `#` or `;` never reads `nameserver`, and, as in glibc,
/// one may follow the address directly.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let addr = word.split(['#', ';']).next().unwrap_or_default();
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        // ::ffff:127.0.0.1 is 127.0.0.1.
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        let server = SocketAddr::new(ip, DNS_PORT);
        if !servers.contains(&server) {
            servers.push(server);
        }
        if servers.len() == MAX_NAMESERVERS {
            break;
        }
    }
    servers
}

/// The name, type and class of the question at offset 12, and where it ends.
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    end: usize,
}

/// The question at offset 12 of a message whose header has been read. The name must be
/// plain labels of printable ASCII other than the dot, the whole at most 255 bytes on
/// the wire; it comes back lowercase. Each turn of the loop consumes at least one byte
/// of the 255 allowed, so the loop is bounded.
fn read_question(packet: &[u8]) -> Result<Question, DnsError> {
    let mut at = HEADER_LEN;
    // Bytes of the name on the wire so far, length bytes included.
    let mut wire = 0;
    let mut name = String::new();
    loop {
        let len = *packet.get(at).ok_or(DnsError::Truncated)?;
        at += 1;
        match len & LABEL_KIND {
            0 => {}
            POINTER => return Err(DnsError::CompressedName),
            _ => return Err(DnsError::LabelType(len)),
        }
        if len == 0 {
            break;
        }
        let len = usize::from(len);
        // This label (its length byte and bytes) and the final zero must still fit.
        if wire + 1 + len + 1 > MAX_NAME_WIRE {
            return Err(DnsError::NameTooLong);
        }
        wire += 1 + len;
        let label = packet.get(at..at + len).ok_or(DnsError::Truncated)?;
        at += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            // A dot inside a label would read as two labels; anything unprintable could
            // not be logged as it is, and no swarm name has either.
            if b == b'.' || !b.is_ascii_graphic() {
                return Err(DnsError::NameByte(b));
            }
            name.push(char::from(b.to_ascii_lowercase()));
        }
    }
    let tail = packet
        .get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .ok_or(DnsError::Truncated)?;
    Ok(Question {
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        end: at + 4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    const ID: u16 = 0xbeef;
    const TTL: u32 = 600;

    /// A query as a stub resolver sends it: `flags` the third and fourth header bytes,
    /// then one question for `name` (dot-separated labels, written as given).
    fn query_with(flags: u16, name: &str, qtype: u16, qclass: u16) -> Vec<u8> {
        let mut p = ID.to_be_bytes().to_vec();
        p.extend_from_slice(&flags.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&qclass.to_be_bytes());
        p
    }

    /// A standard query with RD set, as glibc sends it.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        query_with(0x0100, name, qtype, CLASS_IN)
    }

    /// A reply read back: header fields, the question's bytes, and the A records.
    #[derive(Debug)]
    struct Decoded {
        id: u16,
        flags: u8,
        rcode: u8,
        counts: [u16; 4],
        question: Vec<u8>,
        answers: Vec<(Ipv4Addr, u32)>,
    }

    fn decode(r: &[u8]) -> Decoded {
        let be = |at: usize| u16::from_be_bytes([r[at], r[at + 1]]);
        let counts = [be(4), be(6), be(8), be(10)];
        let mut at = HEADER_LEN;
        let mut question = Vec::new();
        if counts[0] == 1 {
            while r[at] != 0 {
                at += 1 + usize::from(r[at]);
            }
            at += 5;
            question = r[HEADER_LEN..at].to_vec();
        }
        let mut answers = Vec::new();
        for _ in 0..counts[1] {
            assert_eq!(&r[at..at + 2], &[0xC0, 12], "name points at the question");
            assert_eq!(be(at + 2), TYPE_A);
            assert_eq!(be(at + 4), CLASS_IN);
            let ttl = u32::from_be_bytes(r[at + 6..at + 10].try_into().unwrap());
            assert_eq!(be(at + 10), 4);
            let addr = Ipv4Addr::new(r[at + 12], r[at + 13], r[at + 14], r[at + 15]);
            answers.push((addr, ttl));
            at += A_RECORD_LEN;
        }
        assert_eq!(at, r.len(), "no bytes past the records");
        Decoded {
            id: be(0),
            flags: r[2],
            rcode: r[3] & 0x0F,
            counts,
            question,
            answers,
        }
    }

    fn addrs(n: usize) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| Ipv4Addr::new(10, 0, (i / 256) as u8, (i % 256) as u8))
            .collect()
    }

    /// A name of `labels` 63-byte labels: 64 bytes each on the wire.
    fn long_name(labels: usize, last: usize) -> String {
        let mut parts = vec!["a".repeat(63); labels];
        parts.push("b".repeat(last));
        parts.join(".")
    }

    #[test]
    fn parses_a_standard_query() {
        let q = parse_query(&query("web.mynet", TYPE_A)).unwrap();
        assert_eq!(q.id, ID);
        assert!(q.recursion_desired);
        assert_eq!(q.name, "web.mynet");
        assert_eq!((q.qtype, q.qclass), (TYPE_A, CLASS_IN));

        let q = parse_query(&query_with(0, "db", TYPE_AAAA, 3)).unwrap();
        assert!(!q.recursion_desired);
        assert_eq!((q.name.as_str(), q.qtype, q.qclass), ("db", TYPE_AAAA, 3));
    }

    #[test]
    fn names_come_back_lowercase_and_the_question_as_sent() {
        let packet = query("WeB.MyNet", TYPE_A);
        let q = parse_query(&packet).unwrap();
        assert_eq!(q.name, "web.mynet");
        let r = decode(&q.answer_a(&addrs(1), TTL));
        assert_eq!(
            r.question,
            packet[HEADER_LEN..],
            "0x20 case kept in the echo"
        );
    }

    #[test]
    fn the_root_is_the_empty_name() {
        let q = parse_query(&query("", 2)).unwrap();
        assert_eq!(q.name, "");
        assert_eq!(q.qtype, 2);
    }

    #[test]
    fn edns_and_trailing_bytes_are_ignored() {
        // An OPT record (root name, type 41, 4096-byte payload, no options), as dig adds.
        let mut p = query("web", TYPE_A);
        p[11] = 1;
        p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let q = parse_query(&p).unwrap();
        assert_eq!(q.name, "web");
        // The reply has no OPT: the server speaks no EDNS.
        assert_eq!(decode(&q.nodata()).counts, [1, 0, 0, 0]);

        let mut p = query("web", TYPE_A);
        p.extend_from_slice(b"garbage");
        assert_eq!(parse_query(&p).unwrap().name, "web");
    }

    #[test]
    fn header_errors() {
        assert_eq!(parse_query(&[]), Err(DnsError::Truncated));
        assert_eq!(
            parse_query(&query_with(0x8100, "web", TYPE_A, CLASS_IN)),
            Err(DnsError::NotAQuery)
        );
        // Opcode 2 (STATUS), 5 (UPDATE).
        assert_eq!(
            parse_query(&query_with(0x1000, "web", TYPE_A, CLASS_IN)),
            Err(DnsError::Opcode(2))
        );
        assert_eq!(
            parse_query(&query_with(0x2800, "web", TYPE_A, CLASS_IN)),
            Err(DnsError::Opcode(5))
        );
        for n in [0u16, 2, 0xffff] {
            let mut p = query("web", TYPE_A);
            p[4..6].copy_from_slice(&n.to_be_bytes());
            assert_eq!(parse_query(&p), Err(DnsError::QuestionCount(n)));
        }
        let mut p = query("web", TYPE_A);
        p[7] = 1;
        assert_eq!(
            parse_query(&p),
            Err(DnsError::UnexpectedRecords {
                answers: 1,
                authority: 0
            })
        );
        let mut p = query("web", TYPE_A);
        p[9] = 2;
        assert_eq!(
            parse_query(&p),
            Err(DnsError::UnexpectedRecords {
                answers: 0,
                authority: 2
            })
        );
    }

    #[test]
    fn compression_pointers_are_refused() {
        // "web" then a pointer back to it, and a pointer to itself: neither is followed.
        let mut p = query("web", TYPE_A);
        p.truncate(HEADER_LEN + 4);
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&p), Err(DnsError::CompressedName));
        let mut p = query("", TYPE_A);
        p.truncate(HEADER_LEN);
        p.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_query(&p), Err(DnsError::CompressedName));
    }

    #[test]
    fn extended_label_types_are_refused() {
        for kind in [0x40u8, 0x41, 0x80, 0xBF] {
            let mut p = query("", TYPE_A);
            p[HEADER_LEN] = kind;
            p.extend_from_slice(&[0; 8]);
            assert_eq!(parse_query(&p), Err(DnsError::LabelType(kind)));
        }
    }

    #[test]
    fn names_up_to_255_bytes() {
        // 3 * 64 + 1 + 61 + 1 = 255 bytes on the wire: the longest name.
        let longest = long_name(3, 61);
        let q = parse_query(&query(&longest, TYPE_A)).unwrap();
        assert_eq!(q.name, longest);
        assert_eq!(q.question.len(), MAX_QUESTION_LEN);
        assert_eq!(
            parse_query(&query(&long_name(3, 62), TYPE_A)),
            Err(DnsError::NameTooLong)
        );
        assert_eq!(
            parse_query(&query(&long_name(4, 1), TYPE_A)),
            Err(DnsError::NameTooLong)
        );
    }

    #[test]
    fn bytes_outside_printable_ascii_are_refused() {
        for (name, byte) in [
            ("a b", b' '),
            ("tab\there", b'\t'),
            ("nul\0", 0),
            ("del\x7f", 0x7f),
        ] {
            assert_eq!(
                parse_query(&query(name, TYPE_A)),
                Err(DnsError::NameByte(byte)),
                "{name:?}"
            );
        }
        // A dot inside a label, and a byte above ASCII (0xc3 is the first of "é").
        let mut p = query("a-b", TYPE_A);
        p[HEADER_LEN + 2] = b'.';
        assert_eq!(parse_query(&p), Err(DnsError::NameByte(b'.')));
        assert_eq!(
            parse_query(&query("café", TYPE_A)),
            Err(DnsError::NameByte(0xc3))
        );
        // What a swarm name can hold passes.
        let q = parse_query(&query("_sip._udp.my-svc_1.x", TYPE_A)).unwrap();
        assert_eq!(q.name, "_sip._udp.my-svc_1.x");
    }

    #[test]
    fn every_prefix_of_a_query_is_cut_short() {
        let p = query("tasks.web.mynet", TYPE_A);
        for len in 0..p.len() {
            assert_eq!(parse_query(&p[..len]), Err(DnsError::Truncated), "{len}");
        }
        assert!(parse_query(&p).is_ok());
    }

    #[test]
    fn answer_a_reads_back() {
        let q = parse_query(&query("web", TYPE_A)).unwrap();
        let want = addrs(3);
        let bytes = q.answer_a(&want, TTL);
        let r = decode(&bytes);
        assert_eq!(r.id, ID);
        assert_eq!(r.flags, QR | AA | RD);
        assert_eq!(bytes[3], RA);
        assert_eq!(r.rcode, RCODE_NOERROR);
        assert_eq!(r.counts, [1, 3, 0, 0]);
        let got: Vec<_> = r.answers.iter().map(|&(a, _)| a).collect();
        assert_eq!(got, want);
        assert!(r.answers.iter().all(|&(_, ttl)| ttl == TTL));

        // RD clear in the query, clear in the reply.
        let q = parse_query(&query_with(0, "web", TYPE_A, CLASS_IN)).unwrap();
        assert_eq!(decode(&q.answer_a(&want, TTL)).flags, QR | AA);
    }

    #[test]
    fn answers_are_capped_to_fit_512_bytes() {
        assert_eq!(MAX_A_RECORDS, 15);
        for name in ["web".to_string(), long_name(3, 61)] {
            let q = parse_query(&query(&name, TYPE_A)).unwrap();
            let bytes = q.answer_a(&addrs(1000), TTL);
            assert!(bytes.len() <= UDP_MAX, "{} bytes", bytes.len());
            let r = decode(&bytes);
            assert_eq!(r.counts[1], 15);
            assert_eq!(r.answers.len(), MAX_A_RECORDS);
            assert_eq!(r.answers[14].0, addrs(15)[14], "the first ones, in order");
        }
        // The longest name and one more record would not fit.
        const { assert!(HEADER_LEN + MAX_QUESTION_LEN + (MAX_A_RECORDS + 1) * A_RECORD_LEN > UDP_MAX) };
    }

    #[test]
    fn empty_replies_carry_their_rcode() {
        let q = parse_query(&query("web", TYPE_AAAA)).unwrap();
        for (bytes, rcode, aa) in [
            (q.nodata(), RCODE_NOERROR, AA),
            (q.answer_a(&[], TTL), RCODE_NOERROR, AA),
            (q.nxdomain(), RCODE_NXDOMAIN, AA),
            (q.servfail(), RCODE_SERVFAIL, 0),
            (q.refused(), RCODE_REFUSED, 0),
        ] {
            let r = decode(&bytes);
            assert_eq!(r.id, ID);
            assert_eq!(r.flags, QR | aa | RD);
            assert_eq!(bytes[3] & RA, RA);
            assert_eq!(r.rcode, rcode);
            assert_eq!(r.counts, [1, 0, 0, 0]);
            assert_eq!(r.question, q.question);
        }
    }

    #[test]
    fn error_replies() {
        // Only a header: FORMERR with its id and RD, no question.
        let p = query("web", TYPE_A);
        let r = error_reply_for(&p[..HEADER_LEN]).unwrap();
        assert_eq!(r.len(), HEADER_LEN);
        assert_eq!(packet_id(&r), Some(ID));
        assert_eq!(r[2], QR | RD);
        assert_eq!(r[3], RA | RCODE_FORMERR);
        assert_eq!(&r[4..], &[0; 8]);
        // NOTIFY (opcode 4): NOTIMP, opcode echoed.
        let r = error_reply_for(&query_with(0x2000, "web", 6, CLASS_IN)).unwrap();
        assert_eq!(r[2], QR | 0x20);
        assert_eq!(r[3], RA | RCODE_NOTIMP);
        // Short or a response: dropped.
        for len in 0..HEADER_LEN {
            assert_eq!(error_reply_for(&p[..len]), None);
        }
        assert_eq!(error_reply_for(&query_with(0x8180, "web", 1, 1)), None);
    }

    #[test]
    fn ids_read_and_rewritten() {
        let mut p = query("web", TYPE_A);
        assert_eq!(packet_id(&p), Some(ID));
        rewrite_id(&mut p, 0x0102).unwrap();
        assert_eq!(packet_id(&p), Some(0x0102));
        assert_eq!(&p[..2], &[1, 2]);
        assert_eq!(parse_query(&p).unwrap().name, "web", "the rest untouched");
        assert_eq!(packet_id(&[7]), None);
        assert_eq!(rewrite_id(&mut [7], 1), Err(DnsError::Truncated));
    }

    #[test]
    fn upstream_replies_must_answer_the_question() {
        let q = parse_query(&query("example.com", TYPE_A)).unwrap();
        let sent = 0x4242;
        // An upstream's reply: the query's, answered, under the id it was sent with.
        let mut reply = q.answer_a(&addrs(2), TTL);
        rewrite_id(&mut reply, sent).unwrap();
        assert_eq!(q.check_reply(&reply, sent), Ok(()));
        // The name in another case still answers it.
        let upper = parse_query(&query("EXAMPLE.com", TYPE_A)).unwrap();
        let mut reply = upper.servfail();
        rewrite_id(&mut reply, sent).unwrap();
        assert_eq!(q.check_reply(&reply, sent), Ok(()));

        assert_eq!(
            q.check_reply(&reply, 7),
            Err(DnsError::ReplyId { got: sent, want: 7 })
        );
        let mut not_reply = query("example.com", TYPE_A);
        rewrite_id(&mut not_reply, sent).unwrap();
        assert_eq!(q.check_reply(&not_reply, sent), Err(DnsError::NotAReply));
        for other in [
            query("example.org", TYPE_A),
            query("example.com", TYPE_AAAA),
            query_with(0x0100, "example.com", TYPE_A, 3),
        ] {
            let mut reply = parse_query(&other).unwrap().nxdomain();
            rewrite_id(&mut reply, sent).unwrap();
            assert_eq!(
                q.check_reply(&reply, sent),
                Err(DnsError::ReplyQuestion("example.com".into()))
            );
        }
        // No question (some servers send FORMERR so), or cut short anywhere: dropped.
        let mut bare = error_reply_for(&query("example.com", TYPE_A)).unwrap();
        rewrite_id(&mut bare, sent).unwrap();
        assert_eq!(q.check_reply(&bare, sent), Err(DnsError::QuestionCount(0)));
        let mut opcode = reply.clone();
        opcode[2] |= 0x10;
        assert_eq!(q.check_reply(&opcode, sent), Err(DnsError::Opcode(2)));
        let reply = {
            let mut r = q.nodata();
            rewrite_id(&mut r, sent).unwrap();
            r
        };
        for len in 0..reply.len() {
            assert_eq!(
                q.check_reply(&reply[..len], sent),
                Err(DnsError::Truncated),
                "{len}"
            );
        }
    }

    /// Random datagrams, and valid queries with random bytes changed: nothing panics,
    /// and whatever parses gets replies that fit, echo the id and answer the question.
    #[test]
    fn hostile_bytes_never_panic() {
        let mut rng = ChaCha8Rng::seed_from_u64(53);
        let seed_queries = [
            query("web.mynet", TYPE_A),
            query("", TYPE_ANY),
            query(&long_name(3, 61), TYPE_AAAA),
        ];
        let mut parsed = 0;
        for round in 0..20_000 {
            let packet = if round % 2 == 0 {
                let mut p = vec![0; (rng.next_u32() % 600) as usize];
                rng.fill_bytes(&mut p);
                // Often a plausible header, so the question reader is reached.
                if rng.next_u32() % 2 == 0 && p.len() >= HEADER_LEN {
                    p[2..HEADER_LEN].copy_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
                }
                p
            } else {
                let mut p = seed_queries[round % 3].clone();
                for _ in 0..1 + rng.next_u32() % 4 {
                    let at = rng.next_u32() as usize % p.len();
                    p[at] = rng.next_u32() as u8;
                }
                if rng.next_u32() % 4 == 0 {
                    p.truncate(rng.next_u32() as usize % (p.len() + 1));
                }
                p
            };
            let _ = error_reply_for(&packet);
            let _ = packet_id(&packet);
            let Ok(q) = parse_query(&packet) else {
                continue;
            };
            parsed += 1;
            assert!(q.name.len() < MAX_NAME_WIRE);
            for reply in [
                q.answer_a(&addrs(20), TTL),
                q.nodata(),
                q.nxdomain(),
                q.servfail(),
                q.refused(),
            ] {
                assert!(reply.len() <= UDP_MAX);
                assert_eq!(q.check_reply(&reply, q.id), Ok(()));
            }
            let _ = q.check_reply(&packet, q.id);
        }
        assert!(parsed > 1_000, "only {parsed} of the datagrams parsed");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# generated by NetworkManager
search lan
nameserver 192.168.1.1
;nameserver 9.9.9.9
#nameserver 8.8.8.8
nameserver 2001:4860:4860::8888
nameserver\t1.1.1.1 # cloudflare
options edns0 trust-ad
";
        let want: Vec<SocketAddr> = ["192.168.1.1:53", "[2001:4860:4860::8888]:53", "1.1.1.1:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parse_resolv_conf(text), want);
    }

    #[test]
    fn resolv_conf_skips_loopback_and_what_does_not_parse() {
        let text = "\
nameserver 127.0.0.53
nameserver 127.1.2.3
nameserver ::1
nameserver ::ffff:127.0.0.1
nameserver 0.0.0.0
nameserver ::
nameserver fe80::1%eth0
nameserver
nameserver dns.example
nameservers 4.4.4.4
nameserver 10.0.0.2;comment
nameserver ::ffff:10.0.0.3
";
        let want: Vec<SocketAddr> = ["10.0.0.2:53", "10.0.0.3:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(parse_resolv_conf(text), want);
        assert_eq!(parse_resolv_conf(""), vec![]);
        assert_eq!(parse_resolv_conf("nameserver 127.0.0.11\n"), vec![]);
    }

    #[test]
    fn resolv_conf_keeps_three_distinct() {
        let text = "\
nameserver 10.0.0.1
nameserver 10.0.0.1
nameserver 10.0.0.2
nameserver 127.0.0.1
nameserver 10.0.0.3
nameserver 10.0.0.4
";
        let got = parse_resolv_conf(text);
        assert_eq!(got.len(), MAX_NAMESERVERS);
        let want: Vec<SocketAddr> = ["10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
