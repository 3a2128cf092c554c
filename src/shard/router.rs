//! What a shard knows to route a publish: its own subscribers (a trie of plain filters, and
//! the members of each shared group on this shard) and its replica of the interest table
//! (which shards have subscribers to which filters). It answers who should get a message; the
//! shard hands the deliveries to sessions and the forwards to the mesh.

use ahash::AHashMap;
use bytestring::ByteString;
use smallvec::SmallVec;

use std::cell::Cell;

use super::interest::{Interest, ShardSet};
use super::strategy::{Choice, Index};
use super::SubEntry;
use crate::topic::{parse_shared, routing_filter, Levels, Trie};

/// The members of one shared subscription group on this shard (oldest first), and whose turn
/// is next.
#[derive(Default)]
struct SharedGroup {
    members: SmallVec<[SubEntry; 2]>,
    turn: Cell<usize>,
}

/// The shared groups a publish matches, each with the shard whose turn it is.
pub(super) type GroupTargets = SmallVec<[(ByteString, Option<usize>); 2]>;

/// What indexing a subscription changed.
pub(super) struct Indexed {
    /// The session had no entry for the filter before.
    pub new: bool,
    /// The shard had no subscriber to the filter before: other shards must hear of it.
    pub first: bool,
}

#[derive(Default)]
pub(super) struct Router {
    subs: Trie<SmallVec<[SubEntry; 2]>>,
    shared: AHashMap<ByteString, SharedGroup>,
    interest: Interest,
    /// Reused by every local delivery to collect matching subscriptions.
    scratch: Vec<SubEntry>,
}

impl Router {
    /// The shards (and remote nodes) with plain subscribers matching `topic` (this one
    /// included; none looked up without `plain`), and the shared groups (full `$share/...`
    /// filters) matching it anywhere, each with the member whose turn it is (taken in the same
    /// walk; among those below `within` when given).
    pub fn targets(
        &self,
        topic: &Levels<'_>,
        choice: &Choice,
        plain: bool,
        within: Option<usize>,
    ) -> (ShardSet, GroupTargets) {
        let mut shards = ShardSet::default();
        if plain {
            self.interest
                .plain
                .for_each_match(topic, |s| shards.union(s));
        }
        let mut groups = GroupTargets::new();
        self.interest.shared.for_each_match(topic, |g| {
            groups.extend(
                g.iter()
                    .map(|(name, route)| (name.clone(), route.pick_shard(choice, within))),
            );
        });
        (shards, groups)
    }

    /// The member (shard or remote node) of `group` that `choice` picks, among those below
    /// `within` when given; `None` when it has none.
    pub fn group_shard(
        &self,
        group: &ByteString,
        choice: &Choice,
        within: Option<usize>,
    ) -> Option<usize> {
        let Some(Ok((_, inner))) = parse_shared(group) else {
            return None;
        };
        self.interest
            .shared
            .get(inner)?
            .get(group)?
            .pick_shard(choice, within)
    }

    /// Member `member` (a remote node's slot) has no interest in anything any more.
    pub fn forget_member(&mut self, member: usize) {
        self.interest.plain.for_each_slot(|s| s.set(member, false));
        self.interest.shared.for_each_slot(|groups| {
            for route in groups.values_mut() {
                route.shards.set(member, false);
            }
            groups.retain(|_, route| !route.shards.is_empty());
        });
    }

    /// The local member of `group` to deliver to, as `choice` picks it: round robin and
    /// random take, from the one picked, the first that is `ready`, else the one picked;
    /// `None` when it has none here.
    pub fn pick_member(
        &self,
        group: &ByteString,
        choice: &Choice,
        ready: impl Fn(&SubEntry) -> bool,
    ) -> Option<SubEntry> {
        let g = self.shared.get(group)?;
        let n = g.members.len();
        if n == 0 {
            return None;
        }
        match choice.member(n, &g.turn) {
            Index::Exactly(i) => Some(g.members[i]),
            Index::FirstReadyFrom(start) => {
                let turn = |i: usize| g.members[(start + i) % n];
                (0..n).map(turn).find(|e| ready(e)).or(Some(turn(0)))
            }
        }
    }

    /// This shard's subscriptions matching `topic`, grouped by session. Hand the vector back
    /// with [`Router::recycle`].
    pub fn local_matches(&mut self, topic: &Levels<'_>) -> Vec<SubEntry> {
        let mut hits = std::mem::take(&mut self.scratch);
        let mut filters = 0;
        self.subs.for_each_match(topic, |entries| {
            filters += 1;
            hits.extend(entries.iter().copied());
        });
        // One filter holds each session once: only several can name a session twice.
        if filters > 1 {
            hits.sort_unstable_by_key(|e| e.session);
        }
        hits
    }

    pub fn recycle(&mut self, mut hits: Vec<SubEntry>) {
        hits.clear();
        self.scratch = hits;
    }

    /// Shard `shard` gained its first or lost its last subscriber to `filter`.
    pub fn apply_interest(&mut self, filter: &ByteString, shard: usize, add: bool) {
        self.interest.apply(filter, shard, add);
    }

    /// Adds (or replaces) a session's entry for `filter`, in the trie or its shared group.
    pub fn index(&mut self, filter: &ByteString, entry: SubEntry) -> Indexed {
        if parse_shared(filter).is_some() {
            let group = self.shared.entry(filter.clone()).or_default();
            let new = upsert(&mut group.members, entry);
            Indexed {
                new,
                first: group.members.len() == 1,
            }
        } else {
            let slot = self.subs.entry(routing_filter(filter));
            let new = upsert(slot, entry);
            Indexed {
                new,
                first: slot.len() == 1,
            }
        }
    }

    /// Removes session `key`'s entry for `filter`: (whether it had one, whether the shard now
    /// has no subscriber to the filter left).
    pub fn unindex(&mut self, key: usize, filter: &ByteString) -> (bool, bool) {
        if parse_shared(filter).is_some() {
            let Some(group) = self.shared.get_mut(filter) else {
                return (false, false);
            };
            let before = group.members.len();
            group.members.retain(|e| e.session != key);
            let removed = group.members.len() < before;
            let last = group.members.is_empty();
            if last {
                self.shared.remove(filter);
            }
            (removed, last)
        } else {
            let mut removed = false;
            let last = self
                .subs
                .update(
                    routing_filter(filter),
                    |v| {
                        let before = v.len();
                        v.retain(|e| e.session != key);
                        removed = v.len() < before;
                        v.is_empty()
                    },
                    |v| v.is_empty(),
                )
                .unwrap_or(false);
            (removed, last)
        }
    }

    /// Nothing is left of any shared group, here or in the interest replica.
    #[cfg(test)]
    pub fn no_shared_groups(&self) -> bool {
        self.shared.is_empty() && self.interest.shared.is_empty()
    }
}

/// Adds or replaces the session's entry; true when it is new.
fn upsert(v: &mut SmallVec<[SubEntry; 2]>, entry: SubEntry) -> bool {
    match v.iter_mut().find(|e| e.session == entry.session) {
        Some(e) => {
            *e = entry;
            false
        }
        None => {
            v.push(entry);
            true
        }
    }
}
