//! The interest table: which shards have at least one subscriber to a filter. Every shard keeps a
//! replica, changed only when a filter's count on some shard goes 0 -> 1 or 1 -> 0, so a publish
//! is matched once here and forwarded once to each interested shard.

use ahash::AHashMap;
use bytestring::ByteString;
use smallvec::SmallVec;

use super::strategy::Choice;
use crate::topic::{parse_shared, routing_filter, Trie};

/// A set of shard ids as a bit set (two words cover 128 shards without allocating).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardSet(SmallVec<[u64; 2]>);

impl ShardSet {
    pub fn set(&mut self, shard: usize, on: bool) {
        let (word, bit) = (shard / 64, shard % 64);
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        if on {
            self.0[word] |= 1 << bit;
        } else {
            self.0[word] &= !(1 << bit);
        }
    }

    pub fn union(&mut self, other: &ShardSet) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The members below `n` (this node's shards, without the remote nodes after them).
    pub fn below(&self, n: usize) -> ShardSet {
        let mut s = self.clone();
        for (i, w) in s.0.iter_mut().enumerate() {
            let first = i * 64;
            if first >= n {
                *w = 0;
            } else if n - first < 64 {
                *w &= (1u64 << (n - first)) - 1;
            }
        }
        s
    }

    pub fn contains(&self, shard: usize) -> bool {
        self.0
            .get(shard / 64)
            .is_some_and(|w| w & (1 << (shard % 64)) != 0)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(i, w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i * 64 + b)
        })
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The `n`-th member (modulo the size), for round-robin choices.
    pub fn nth(&self, n: usize) -> Option<usize> {
        let len = self.len();
        (len > 0).then(|| self.iter().nth(n % len)).flatten()
    }
}

/// Where one shared group has members, and whose turn it is next. The turn lives with the
/// group, so it goes when the group goes: group names are the clients' to choose.
#[derive(Debug, Default)]
pub struct SharedRoute {
    pub shards: ShardSet,
    /// A `Cell`: a publish takes the turn through a shared borrow of the trie, so matching
    /// it needs no path allocation.
    turn: std::cell::Cell<usize>,
}

impl SharedRoute {
    /// The shard (or remote node) with members that `choice` picks, among those below
    /// `within` when given (a publish another node forwarded picks among this node's shards);
    /// `None` when there is none.
    pub(super) fn pick_shard(&self, choice: &Choice, within: Option<usize>) -> Option<usize> {
        let set = match within {
            Some(n) => std::borrow::Cow::Owned(self.shards.below(n)),
            None => std::borrow::Cow::Borrowed(&self.shards),
        };
        let n = set.len();
        (n > 0)
            .then(|| set.nth(choice.shard(n, &self.turn)))
            .flatten()
    }
}

/// Shared groups matching a filter: full `$share/group/filter` -> where it has members and
/// whose turn it is.
pub type Groups = AHashMap<ByteString, SharedRoute>;

#[derive(Default)]
pub struct Interest {
    pub plain: Trie<ShardSet>,
    pub shared: Trie<Groups>,
}

impl Interest {
    pub fn apply(&mut self, filter: &ByteString, shard: usize, add: bool) {
        match parse_shared(filter) {
            Some(Ok((_, inner))) => {
                if add {
                    self.shared
                        .entry(inner)
                        .entry(filter.clone())
                        .or_default()
                        .shards
                        .set(shard, true);
                } else {
                    self.shared.update(
                        inner,
                        |groups| {
                            if let Some(route) = groups.get_mut(filter) {
                                route.shards.set(shard, false);
                                if route.shards.is_empty() {
                                    groups.remove(filter);
                                }
                            }
                        },
                        |groups| groups.is_empty(),
                    );
                }
            }
            Some(Err(_)) => {}
            None => {
                let filter = routing_filter(filter);
                if add {
                    self.plain.entry(filter).set(shard, true);
                } else {
                    self.plain
                        .update(filter, |s| s.set(shard, false), ShardSet::is_empty);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::Levels;

    #[test]
    fn shard_set_ops() {
        let mut s = ShardSet::default();
        s.set(1, true);
        s.set(70, true);
        assert_eq!(s.iter().collect::<Vec<_>>(), [1, 70]);
        assert!(s.contains(70) && s.contains(1) && !s.contains(2) && !s.contains(200));
        assert_eq!(s.below(70).iter().collect::<Vec<_>>(), [1]);
        assert_eq!(s.below(71).iter().collect::<Vec<_>>(), [1, 70]);
        assert_eq!(s.below(1).len(), 0);
        assert_eq!(s.nth(3), Some(70));
        s.set(70, false);
        assert_eq!(s.len(), 1);
        s.set(1, false);
        assert!(s.is_empty());
    }

    #[test]
    fn interest_tracks_plain_and_shared() {
        let mut i = Interest::default();
        i.apply(&"a/+".into(), 2, true);
        i.apply(&"$share/g/a/#".into(), 1, true);
        let mut shards = ShardSet::default();
        Levels::with("a/b", |l| i.plain.for_each_match(l, |s| shards.union(s)));
        assert_eq!(shards.iter().collect::<Vec<_>>(), [2]);
        let mut groups = Vec::new();
        Levels::with("a/b", |l| {
            i.shared
                .for_each_match(l, |g| groups.extend(g.keys().cloned()))
        });
        assert_eq!(groups, [ByteString::from("$share/g/a/#")]);
        i.apply(&"a/+".into(), 2, false);
        i.apply(&"$share/g/a/#".into(), 1, false);
        assert!(i.plain.is_empty() && i.shared.is_empty());
    }
}
