//! Reassembly of messages split across data datagrams, in bounded memory.
//!
//! A message of up to [`MAX_MESSAGE_SIZE`] bytes travels as `count` fragments; every one
//! but the last carries exactly [`FRAGMENT_PAYLOAD`] bytes, so a fragment's offset is
//! implied by its index. There is no retransmission here: a message missing a fragment
//! when its timer runs out is dropped, and the layer above repeats itself (Raft and gossip
//! are built to). Memory is reserved for a whole message when its first fragment arrives
//! and counted against per-peer and global caps; the oldest partial message gives way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::wire::{Fragment, FRAGMENT_PAYLOAD};

/// Largest message the transport carries: a Raft snapshot chunk or an assignment set
/// for a busy node fits; bigger state is chunked by the layer above.
pub const MAX_MESSAGE_SIZE: usize = 1 << 20;
/// Fragments of the largest message.
pub const MAX_FRAGMENTS: usize = MAX_MESSAGE_SIZE.div_ceil(FRAGMENT_PAYLOAD);
/// Partial messages one peer may have in flight to us at once; a peer sends its big
/// messages (snapshot chunks) one after another, so a few cover reordering.
pub const MAX_PARTIALS_PER_PEER: usize = 4;
/// Memory all partial messages together may reserve: eight maximum-size messages,
/// small next to the RAM of a Pi-class node.
pub const MAX_REASSEMBLY_BYTES: usize = 8 * MAX_MESSAGE_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    #[error("fragment count exceeds the message size limit")]
    TooLarge,
    #[error("fragment length or count inconsistent with its message")]
    Malformed,
}

#[derive(Clone)]
struct Partial {
    buf: Vec<u8>,
    /// Bit per fragment index.
    seen: Vec<u64>,
    got: u16,
    count: u16,
    last_len: usize,
    deadline: Instant,
}

impl Partial {
    fn reserved(&self) -> usize {
        self.buf.len()
    }
}

/// Counters the endpoint folds into its stats.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReassemblyStats {
    pub evicted: u64,
    pub timed_out: u64,
}

/// Partial messages keyed by (peer, message id).
#[derive(Clone)]
pub struct Reassembler<K> {
    partials: BTreeMap<(K, u32), Partial>,
    reserved: usize,
    timeout: Duration,
    pub stats: ReassemblyStats,
}

impl<K: Ord + Copy> Reassembler<K> {
    pub fn new(timeout: Duration) -> Self {
        Reassembler {
            partials: BTreeMap::new(),
            reserved: 0,
            timeout,
            stats: ReassemblyStats::default(),
        }
    }

    /// Adds a fragment; returns the whole message once its last fragment is in.
    pub fn insert(
        &mut self,
        now: Instant,
        peer: K,
        f: Fragment<'_>,
    ) -> Result<Option<Vec<u8>>, FragmentError> {
        let count = usize::from(f.count);
        if count > MAX_FRAGMENTS {
            return Err(FragmentError::TooLarge);
        }
        let is_last = f.index + 1 == f.count;
        let len_ok = if is_last {
            f.bytes.len() <= FRAGMENT_PAYLOAD && (count == 1 || !f.bytes.is_empty())
        } else {
            f.bytes.len() == FRAGMENT_PAYLOAD
        };
        if !len_ok {
            self.remove(&(peer, f.msg_id));
            return Err(FragmentError::Malformed);
        }
        if count == 1 {
            return Ok(Some(f.bytes.to_vec()));
        }
        let key = (peer, f.msg_id);
        if !self.partials.contains_key(&key) {
            self.make_room(peer, count * FRAGMENT_PAYLOAD);
            self.reserved += count * FRAGMENT_PAYLOAD;
            self.partials.insert(
                key,
                Partial {
                    buf: vec![0; count * FRAGMENT_PAYLOAD],
                    seen: vec![0; count.div_ceil(64)],
                    got: 0,
                    count: f.count,
                    last_len: 0,
                    deadline: now + self.timeout,
                },
            );
        }
        let p = self
            .partials
            .get_mut(&key)
            .expect("invariant: inserted above");
        if p.count != f.count {
            self.remove(&key);
            return Err(FragmentError::Malformed);
        }
        let i = usize::from(f.index);
        if p.seen[i / 64] & (1 << (i % 64)) != 0 {
            return Ok(None); // a duplicate from an authenticated peer: harmless, ignore
        }
        p.seen[i / 64] |= 1 << (i % 64);
        p.got += 1;
        let off = i * FRAGMENT_PAYLOAD;
        p.buf[off..off + f.bytes.len()].copy_from_slice(f.bytes);
        if is_last {
            p.last_len = f.bytes.len();
        }
        if p.got < p.count {
            return Ok(None);
        }
        let mut p = self.remove(&key).expect("invariant: present");
        p.buf.truncate((count - 1) * FRAGMENT_PAYLOAD + p.last_len);
        Ok(Some(p.buf))
    }

    /// Drops partial messages whose time ran out.
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<_> = self
            .partials
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            self.remove(&k);
            self.stats.timed_out += 1;
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.partials.values().map(|p| p.deadline).min()
    }

    /// Forgets everything from `peer` (it left or was removed).
    pub fn forget(&mut self, peer: K) {
        let keys: Vec<_> = self
            .partials
            .range((peer, 0)..=(peer, u32::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }

    pub fn reserved_bytes(&self) -> usize {
        self.reserved
    }

    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    fn remove(&mut self, key: &(K, u32)) -> Option<Partial> {
        let p = self.partials.remove(key)?;
        self.reserved -= p.reserved();
        Some(p)
    }

    /// Evicts the oldest partials until `peer` has room for one more and `need` bytes fit.
    fn make_room(&mut self, peer: K, need: usize) {
        loop {
            let peer_count = self.partials.range((peer, 0)..=(peer, u32::MAX)).count();
            let victim = if peer_count >= MAX_PARTIALS_PER_PEER {
                Self::oldest(self.partials.range((peer, 0)..=(peer, u32::MAX)))
            } else if self.reserved + need > MAX_REASSEMBLY_BYTES {
                Self::oldest(self.partials.iter())
            } else {
                return;
            };
            let Some(k) = victim else { return };
            self.remove(&k);
            self.stats.evicted += 1;
        }
    }

    fn oldest<'a>(it: impl Iterator<Item = (&'a (K, u32), &'a Partial)>) -> Option<(K, u32)>
    where
        K: 'a,
    {
        it.min_by_key(|(_, p)| p.deadline).map(|(k, _)| *k)
    }
}

/// Datagrams a message of `len` bytes travels in (an empty message still takes one).
pub fn fragments_for(len: usize) -> usize {
    len.div_ceil(FRAGMENT_PAYLOAD).max(1)
}

/// Splits `data` into the fragments that carry it, calling `emit` for each.
pub fn split(msg_id: u32, data: &[u8], mut emit: impl FnMut(Fragment<'_>)) {
    debug_assert!(data.len() <= MAX_MESSAGE_SIZE);
    let count = fragments_for(data.len());
    // MAX_MESSAGE_SIZE / FRAGMENT_PAYLOAD is far below u16::MAX; `send` checks the size.
    let count = u16::try_from(count).expect("invariant: message size checked by the caller");
    let mut chunks = data.chunks(FRAGMENT_PAYLOAD);
    for index in 0..count {
        emit(Fragment {
            msg_id,
            index,
            count,
            bytes: chunks.next().unwrap_or(&[]),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(msg_id: u32, data: &[u8]) -> Vec<(u32, u16, u16, Vec<u8>)> {
        let mut v = Vec::new();
        split(msg_id, data, |f| {
            v.push((f.msg_id, f.index, f.count, f.bytes.to_vec()))
        });
        v
    }

    fn feed(
        r: &mut Reassembler<u8>,
        now: Instant,
        peer: u8,
        f: &(u32, u16, u16, Vec<u8>),
    ) -> Result<Option<Vec<u8>>, FragmentError> {
        r.insert(
            now,
            peer,
            Fragment {
                msg_id: f.0,
                index: f.1,
                count: f.2,
                bytes: &f.3,
            },
        )
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn split_sizes() {
        assert_eq!(frags(1, b"").len(), 1);
        assert_eq!(frags(1, &data(FRAGMENT_PAYLOAD)).len(), 1);
        assert_eq!(frags(1, &data(FRAGMENT_PAYLOAD + 1)).len(), 2);
        assert_eq!(frags(1, &data(MAX_MESSAGE_SIZE)).len(), MAX_FRAGMENTS);
    }

    #[test]
    fn reorder_and_duplicates_reassemble() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(3));
        let msg = data(10 * FRAGMENT_PAYLOAD + 17);
        let mut fs = frags(5, &msg);
        fs.reverse();
        fs.swap(2, 7);
        let dup = fs[3].clone();
        let mut out = None;
        for (i, f) in fs.iter().enumerate() {
            if i == 5 {
                assert_eq!(feed(&mut r, now, 1, &dup), Ok(None), "duplicate ignored");
            }
            if let Some(m) = feed(&mut r, now, 1, f).unwrap() {
                out = Some(m);
            }
        }
        assert_eq!(out.as_deref(), Some(&msg[..]));
        assert_eq!(r.reserved_bytes(), 0);
        assert_eq!(r.partial_count(), 0);
    }

    #[test]
    fn lost_fragment_times_out_and_frees_memory() {
        let now = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(3));
        let fs = frags(1, &data(5 * FRAGMENT_PAYLOAD));
        for f in fs.iter().skip(1) {
            assert_eq!(feed(&mut r, now, 1, f), Ok(None));
        }
        assert!(r.reserved_bytes() > 0);
        assert_eq!(r.next_deadline(), Some(now + Duration::from_secs(3)));
        r.expire(now + Duration::from_secs(2));
        assert_eq!(r.partial_count(), 1);
        r.expire(now + Duration::from_secs(3));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.reserved_bytes(), 0);
        assert_eq!(r.stats.timed_out, 1);
        // The late first fragment now starts a fresh partial, never a wrong message.
        assert_eq!(feed(&mut r, now, 1, &fs[0]), Ok(None));
    }

    #[test]
    fn per_peer_limit_evicts_oldest() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(3));
        for id in 0..MAX_PARTIALS_PER_PEER as u32 + 1 {
            let fs = frags(id, &data(2 * FRAGMENT_PAYLOAD));
            let t = t0 + Duration::from_millis(u64::from(id));
            assert_eq!(feed(&mut r, t, 7, &fs[0]), Ok(None));
        }
        assert_eq!(r.partial_count(), MAX_PARTIALS_PER_PEER);
        assert_eq!(r.stats.evicted, 1);
        // Message 0 was the oldest: its second half no longer completes anything.
        let fs0 = frags(0, &data(2 * FRAGMENT_PAYLOAD));
        assert_eq!(feed(&mut r, t0, 7, &fs0[1]), Ok(None));
        // Another peer is unaffected by peer 7's limit.
        let fs = frags(0, &data(2 * FRAGMENT_PAYLOAD));
        assert_eq!(feed(&mut r, t0, 8, &fs[0]), Ok(None));
        assert!(feed(&mut r, t0, 8, &fs[1]).unwrap().is_some());
    }

    #[test]
    fn global_memory_cap_holds() {
        let t0 = Instant::now();
        let mut r = Reassembler::new(Duration::from_secs(3));
        let big = data(MAX_MESSAGE_SIZE);
        for peer in 0..20u8 {
            let fs = frags(1, &big);
            assert_eq!(
                feed(
                    &mut r,
                    t0 + Duration::from_millis(u64::from(peer)),
                    peer,
                    &fs[0]
                ),
                Ok(None)
            );
            assert!(r.reserved_bytes() <= MAX_REASSEMBLY_BYTES);
        }
        assert!(r.stats.evicted >= 12);
    }

    #[test]
    fn malformed_fragments_are_refused() {
        let now = Instant::now();
        let mut r = Reassembler::<u8>::new(Duration::from_secs(3));
        let too_many = Fragment {
            msg_id: 1,
            index: 0,
            count: u16::try_from(MAX_FRAGMENTS + 1).unwrap(),
            bytes: &[0; FRAGMENT_PAYLOAD],
        };
        assert_eq!(r.insert(now, 1, too_many), Err(FragmentError::TooLarge));
        let short_middle = Fragment {
            msg_id: 1,
            index: 0,
            count: 3,
            bytes: &[0; 10],
        };
        assert_eq!(
            r.insert(now, 1, short_middle),
            Err(FragmentError::Malformed)
        );
        let long_last = Fragment {
            msg_id: 1,
            index: 0,
            count: 1,
            bytes: &[0; FRAGMENT_PAYLOAD + 1],
        };
        assert_eq!(r.insert(now, 1, long_last), Err(FragmentError::Malformed));
        // A count that changes midway drops the partial.
        let a = Fragment {
            msg_id: 2,
            index: 0,
            count: 3,
            bytes: &[0; FRAGMENT_PAYLOAD],
        };
        assert_eq!(r.insert(now, 1, a), Ok(None));
        let b = Fragment {
            count: 4,
            index: 1,
            ..a
        };
        assert_eq!(r.insert(now, 1, b), Err(FragmentError::Malformed));
        assert_eq!(r.reserved_bytes(), 0);
    }

    #[test]
    fn empty_message_round_trips() {
        let mut r = Reassembler::<u8>::new(Duration::from_secs(3));
        let fs = frags(3, b"");
        assert_eq!(feed(&mut r, Instant::now(), 1, &fs[0]), Ok(Some(vec![])));
    }
}
