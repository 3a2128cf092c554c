//! A topic trie: one node per filter level, `+` and `#` as their own branches, and a slot of
//! type `S` where a filter ends. The shard keeps one with its subscribers and one with the
//! interest of every shard; both match a name in one walk, cost bound by the name's levels and
//! the wildcards met, not by the number of filters. Children are keyed by the level's hash
//! from [`Levels`], so a name split and hashed once serves every trie it is matched in; a node
//! with a few children keeps them in a list of exactly that size (see `Children`).

use hashbrown::HashTable;

use super::levels::{level_hash, Level, Levels};

/// Children this many or fewer are a list; more, a hash table.
const FEW: usize = 4;

/// A node's children, each with its level's hash: a short list searched in order while there
/// are few (most levels of a device tree have one or two children, and a hash table's smallest
/// allocation holds four entries and their control bytes), a hash table once there are more.
#[derive(Debug)]
enum Children<S> {
    Few(Vec<(u64, Box<str>, Node<S>)>),
    Many(HashTable<(u64, Box<str>, Node<S>)>),
}

impl<S> Children<S> {
    fn is_empty(&self) -> bool {
        match self {
            Children::Few(v) => v.is_empty(),
            Children::Many(t) => t.is_empty(),
        }
    }

    fn get(&self, level: &str, hash: u64) -> Option<&Node<S>> {
        let same = |(h, k, _): &&(u64, Box<str>, Node<S>)| *h == hash && &**k == level;
        match self {
            Children::Few(v) => v.iter().find(same),
            Children::Many(t) => t.find(hash, |e| same(&e)),
        }
        .map(|(_, _, n)| n)
    }

    fn get_mut(&mut self, level: &str, hash: u64) -> Option<&mut Node<S>> {
        let same = |(h, k, _): &(u64, Box<str>, Node<S>)| *h == hash && &**k == level;
        match self {
            Children::Few(v) => v.iter_mut().find(|e| same(e)),
            Children::Many(t) => t.find_mut(hash, |e| same(e)),
        }
        .map(|(_, _, n)| n)
    }

    fn get_or_insert(&mut self, level: &str, hash: u64) -> &mut Node<S> {
        if let Children::Few(v) = self {
            if v.len() == FEW && !v.iter().any(|(h, k, _)| *h == hash && &**k == level) {
                let mut t = HashTable::with_capacity(FEW + 1);
                for e in v.drain(..) {
                    t.insert_unique(e.0, e, |e| e.0);
                }
                *self = Children::Many(t);
            }
        }
        match self {
            Children::Few(v) => {
                let i = match v.iter().position(|(h, k, _)| *h == hash && &**k == level) {
                    Some(i) => i,
                    None => {
                        // Grown one at a time: a list is never wider than what it holds.
                        v.reserve_exact(1);
                        v.push((hash, level.into(), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].2
            }
            Children::Many(t) => {
                let entry = t.entry(hash, |(h, k, _)| *h == hash && &**k == level, |e| e.0);
                &mut entry
                    .or_insert_with(|| (hash, level.into(), Node::default()))
                    .into_mut()
                    .2
            }
        }
    }

    fn remove(&mut self, level: &str, hash: u64) {
        match self {
            Children::Few(v) => {
                v.retain(|(h, k, _)| !(*h == hash && &**k == level));
                v.shrink_to_fit();
            }
            Children::Many(t) => {
                if let Ok(e) = t.find_entry(hash, |(h, k, _)| *h == hash && &**k == level) {
                    e.remove();
                }
            }
        }
    }

    fn nodes_mut(&mut self) -> impl Iterator<Item = &mut Node<S>> {
        let (few, many) = match self {
            Children::Few(v) => (Some(v.iter_mut()), None),
            Children::Many(t) => (None, Some(t.iter_mut())),
        };
        let few = few.into_iter().flatten();
        few.chain(many.into_iter().flatten()).map(|(_, _, n)| n)
    }
}

#[derive(Debug)]
struct Node<S> {
    children: Children<S>,
    plus: Option<Box<Node<S>>>,
    /// The slot of the filter ending in `#` at this level.
    hash: Option<S>,
    /// The slot of the filter ending exactly here.
    value: Option<S>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Self {
            children: Children::Few(Vec::new()),
            plus: None,
            hash: None,
            value: None,
        }
    }
}

impl<S> Node<S> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.value.is_none()
    }

    fn child(&self, level: &str, hash: u64) -> Option<&Node<S>> {
        self.children.get(level, hash)
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<S>> {
        self.children.get_mut(level, level_hash(level))
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<S> {
        self.children.get_or_insert(level, level_hash(level))
    }

    fn remove_child(&mut self, level: &str) {
        self.children.remove(level, level_hash(level));
    }
}

#[derive(Debug)]
pub struct Trie<S> {
    root: Node<S>,
    len: usize,
}

impl<S> Default for Trie<S> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<S: Default> Trie<S> {
    /// The slot for `filter`, created empty when missing.
    pub fn entry(&mut self, filter: &str) -> &mut S {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                if node.hash.is_none() {
                    self.len += 1;
                }
                return node.hash.get_or_insert_with(S::default);
            }
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                l => node.child_or_insert(l),
            };
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(S::default)
    }
}

impl<S> Trie<S> {
    /// Number of filters held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, filter: &str) -> Option<&S> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.hash.as_ref();
            }
            node = match level {
                "+" => node.plus.as_deref()?,
                l => node.child(l, level_hash(l))?,
            };
        }
        node.value.as_ref()
    }

    /// Applies `f` to the slot of `filter`; when it then satisfies `empty`, the slot and the
    /// nodes left without filters are removed. Returns what `f` returned, `None` if no slot.
    pub fn update<R>(
        &mut self,
        filter: &str,
        f: impl FnOnce(&mut S) -> R,
        empty: impl Fn(&S) -> bool,
    ) -> Option<R> {
        let levels: Vec<&str> = filter.split('/').collect();
        let (result, removed) = update_at(&mut self.root, &levels, f, &empty);
        if removed {
            self.len -= 1;
        }
        result
    }

    /// Calls `f` with every filter's slot.
    pub fn for_each_slot(&mut self, mut f: impl FnMut(&mut S)) {
        fn visit<S>(node: &mut Node<S>, f: &mut impl FnMut(&mut S)) {
            node.hash
                .iter_mut()
                .chain(node.value.iter_mut())
                .for_each(&mut *f);
            for child in node.children.nodes_mut() {
                visit(child, f);
            }
            if let Some(plus) = node.plus.as_deref_mut() {
                visit(plus, f);
            }
        }
        visit(&mut self.root, &mut f);
    }

    /// Calls `f` with the slot of every filter that matches the name split in `name`.
    /// Wildcards at the first level never match a name that starts with `$`.
    pub fn for_each_match(&self, name: &Levels<'_>, mut f: impl FnMut(&S)) {
        if self.len > 0 {
            walk(&self.root, name.levels(), name.dollar(), &mut f);
        }
    }
}

fn walk<S>(node: &Node<S>, rest: &[Level<'_>], dollar: bool, f: &mut impl FnMut(&S)) {
    let wild_ok = !dollar;
    if let Some(h) = &node.hash {
        if wild_ok {
            f(h);
        }
    }
    let Some((level, rest)) = rest.split_first() else {
        if let Some(v) = &node.value {
            f(v);
        }
        return;
    };
    if let Some(child) = node.child(level.name, level.hash) {
        walk(child, rest, false, f);
    }
    if wild_ok {
        if let Some(plus) = &node.plus {
            walk(plus, rest, false, f);
        }
    }
}

/// Returns (f's result, whether the slot was removed). Prunes emptied nodes on the way back.
fn update_at<S, R>(
    node: &mut Node<S>,
    levels: &[&str],
    f: impl FnOnce(&mut S) -> R,
    empty: &impl Fn(&S) -> bool,
) -> (Option<R>, bool) {
    let Some((&level, rest)) = levels.split_first() else {
        return apply(&mut node.value, f, empty);
    };
    if level == "#" && rest.is_empty() {
        return apply(&mut node.hash, f, empty);
    }
    let (result, removed) = if level == "+" {
        let Some(child) = node.plus.as_deref_mut() else {
            return (None, false);
        };
        let out = update_at(child, rest, f, empty);
        if child.is_empty() {
            node.plus = None;
        }
        out
    } else {
        let Some(child) = node.child_mut(level) else {
            return (None, false);
        };
        let out = update_at(child, rest, f, empty);
        if child.is_empty() {
            node.remove_child(level);
        }
        out
    };
    (result, removed)
}

fn apply<S, R>(
    slot: &mut Option<S>,
    f: impl FnOnce(&mut S) -> R,
    empty: &impl Fn(&S) -> bool,
) -> (Option<R>, bool) {
    let Some(s) = slot.as_mut() else {
        return (None, false);
    };
    let r = f(s);
    if empty(s) {
        *slot = None;
        return (Some(r), true);
    }
    (Some(r), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = String> {
        // More than `FEW` values at a level: nodes turn from lists into tables.
        prop_oneof![
            4 => Just("a".to_string()),
            4 => Just("b".to_string()),
            1 => Just("c".to_string()),
            1 => Just("d".to_string()),
            1 => Just("e".to_string()),
            1 => Just("f".to_string()),
            2 => Just("$s".to_string()),
            2 => Just(String::new())
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut ls, hash)| {
                if hash {
                    ls.push("#".into());
                }
                ls.join("/")
            })
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|ls| ls.join("/"))
    }

    proptest! {
        #[test]
        fn trie_matches_brute_force(filters in prop::collection::vec(filter(), 0..40), names in prop::collection::vec(name(), 1..10), remove in prop::collection::vec(any::<prop::sample::Index>(), 0..5)) {
            let mut trie: Trie<Vec<usize>> = Trie::default();
            let mut live: Vec<(usize, String)> = filters.iter().cloned().enumerate().collect();
            for (i, f) in &live {
                trie.entry(f).push(*i);
            }
            for idx in remove {
                if live.is_empty() { break; }
                let (i, f) = live.remove(idx.index(live.len()));
                trie.update(&f, |v| v.retain(|x| *x != i), |v| v.is_empty());
            }
            let distinct: std::collections::HashSet<&String> = live.iter().map(|(_, f)| f).collect();
            prop_assert_eq!(trie.len(), distinct.len());
            for n in &names {
                let mut got = Vec::new();
                Levels::with(n, |l| trie.for_each_match(l, |v| got.extend(v.iter().copied())));
                got.sort();
                let mut want: Vec<usize> = live.iter().filter(|(_, f)| super::super::matches(f, n)).map(|(i, _)| *i).collect();
                want.sort();
                prop_assert_eq!(got, want, "name {}", n);
            }
        }
    }
}
