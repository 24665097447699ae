//! The in-memory log: the entries after the last snapshot. The shell persists every change
//! the core makes (through `Ready`) and, on restart, rebuilds this from disk.
//!
//! Keeping the unsnapshotted log in memory is a deliberate choice for edge clusters: the
//! cluster layer snapshots every few thousand entries, so the log stays small, and the
//! core never has to call back into storage.

use std::collections::VecDeque;

use super::types::{Entry, Index, Membership, Payload, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub struct Log {
    /// The last compacted entry's index, term and the membership after it.
    snapshot: SnapshotMeta,
    /// `entries[i].index == snapshot.index + 1 + i`.
    entries: VecDeque<Entry>,
}

impl Log {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>) -> Self {
        let log = Log {
            snapshot,
            entries: entries.into(),
        };
        log.check();
        log
    }

    /// Panics if the entries are not contiguous after the snapshot: a broken invariant of
    /// our own making, never something a peer can cause (callers validate input).
    fn check(&self) {
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(
                e.index.0,
                self.snapshot.index.0 + 1 + i as u64,
                "log not contiguous"
            );
        }
    }

    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.index.next()
    }

    pub fn last_index(&self) -> Index {
        self.entries.back().map_or(self.snapshot.index, |e| e.index)
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `i`: known for the snapshot point and everything after it.
    pub fn term_at(&self, i: Index) -> Option<Term> {
        if i == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(i).map(|e| e.term)
    }

    pub fn entry(&self, i: Index) -> Option<&Entry> {
        let off = i.0.checked_sub(self.first_index().0)?;
        self.entries.get(usize::try_from(off).ok()?)
    }

    /// Entries from `from` on, at most `max_entries` and about `max_bytes` (always at least
    /// one if any exists, so a big entry still moves).
    pub fn slice(&self, from: Index, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = from;
        while let Some(e) = self.entry(i) {
            bytes += e.size_hint();
            if !out.is_empty() && (out.len() >= max_entries || bytes > max_bytes) {
                break;
            }
            out.push(e.clone());
            i = i.next();
        }
        out
    }

    /// Entries in `(after, upto]`, at most `max`.
    pub fn range(&self, after: Index, upto: Index, max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut i = after.next();
        while i <= upto && out.len() < max {
            match self.entry(i) {
                Some(e) => out.push(e.clone()),
                None => break,
            }
            i = i.next();
        }
        out
    }

    pub fn append(&mut self, e: Entry) {
        assert_eq!(
            e.index,
            self.last_index().next(),
            "append must extend the log"
        );
        self.entries.push_back(e);
    }

    /// Removes the entries at `from` and after.
    pub fn truncate_from(&mut self, from: Index) {
        assert!(
            from > self.snapshot.index,
            "cannot truncate into the snapshot"
        );
        let keep = usize::try_from(from.0 - self.first_index().0).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
    }

    /// Forgets entries up to `meta.index`, which a snapshot now covers.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        assert!(meta.index <= self.last_index(), "compacting past the log");
        assert_eq!(
            self.term_at(meta.index),
            Some(meta.term),
            "snapshot term mismatch"
        );
        while self.entries.front().is_some_and(|e| e.index <= meta.index) {
            self.entries.pop_front();
        }
        self.snapshot = meta;
    }

    /// Replaces the whole log with a received snapshot. (Raft allows keeping a matching
    /// suffix; dropping it keeps the shell's contract simple, "a snapshot replaces the
    /// log", and the leader resends what follows.)
    pub fn install(&mut self, meta: SnapshotMeta) {
        self.entries.clear();
        self.snapshot = meta;
    }

    /// Raft's "at least as up-to-date" rule for granting votes.
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// The first index of the term of the entry at `i` (for fast conflict backoff).
    pub fn first_of_term_at(&self, i: Index) -> Index {
        let Some(t) = self.term_at(i) else { return i };
        let mut j = i;
        while j > self.first_index() && self.term_at(j.prev()) == Some(t) {
            j = j.prev();
        }
        j
    }

    /// The membership in force after the whole log, and the index it came from.
    pub fn membership(&self) -> (Membership, Index) {
        let mut m = self.snapshot.membership.clone();
        let mut at = self.snapshot.index;
        for e in &self.entries {
            if let Payload::Config(c) = &e.payload {
                // Config entries were validated when proposed; a change that does not
                // apply here would mean a corrupted log, which the WAL's CRCs catch.
                if let Ok(next) = m.apply(c) {
                    m = next;
                    at = e.index;
                }
            }
        }
        (m, at)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::{ConfigChange, NodeId};
    use super::*;

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            term: Term(term),
            index: Index(index),
            payload: Payload::Noop,
        }
    }

    #[test]
    fn indexes_terms_and_slices() {
        let mut l = Log::default();
        assert_eq!((l.last_index(), l.last_term()), (Index(0), Term(0)));
        for i in 1..=5 {
            l.append(e(if i < 3 { 1 } else { 2 }, i));
        }
        assert_eq!(l.term_at(Index(0)), Some(Term(0)));
        assert_eq!(l.term_at(Index(4)), Some(Term(2)));
        assert_eq!(l.term_at(Index(6)), None);
        assert_eq!(l.slice(Index(2), 2, 1 << 20).len(), 2);
        assert_eq!(l.slice(Index(2), 10, 1).len(), 1, "at least one entry");
        assert_eq!(l.range(Index(1), Index(3), 10).len(), 2);
        assert_eq!(l.first_of_term_at(Index(5)), Index(3));
        l.truncate_from(Index(4));
        assert_eq!(l.last_index(), Index(3));
        assert!(l.is_up_to_date(Index(3), Term(2)));
        assert!(!l.is_up_to_date(Index(9), Term(1)));
        assert!(l.is_up_to_date(Index(1), Term(3)));
    }

    #[test]
    fn compaction_and_install() {
        let mut l = Log::default();
        for i in 1..=5 {
            l.append(e(1, i));
        }
        l.compact(SnapshotMeta {
            index: Index(3),
            term: Term(1),
            membership: Membership::default(),
        });
        assert_eq!(l.first_index(), Index(4));
        assert_eq!(l.term_at(Index(3)), Some(Term(1)));
        assert_eq!(l.term_at(Index(2)), None);
        assert!(l.entry(Index(3)).is_none());
        l.install(SnapshotMeta {
            index: Index(4),
            term: Term(2),
            membership: Membership::default(),
        });
        assert_eq!((l.last_index(), l.last_term()), (Index(4), Term(2)));
    }

    #[test]
    fn membership_follows_the_log() {
        let a = NodeId(1);
        let b = NodeId(2);
        let mut l = Log::new(
            SnapshotMeta {
                index: Index(1),
                term: Term(1),
                membership: Membership::new([a]),
            },
            vec![],
        );
        l.append(Entry {
            term: Term(1),
            index: Index(2),
            payload: Payload::Config(ConfigChange::AddVoter(b)),
        });
        let (m, at) = l.membership();
        assert!(m.is_voter(b));
        assert_eq!(at, Index(2));
        l.truncate_from(Index(2));
        assert!(!l.membership().0.is_voter(b), "truncation reverts a change");
    }
}
