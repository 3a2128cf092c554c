//! Retained messages: a tree of topic names (not filters) so that a new subscription's filter
//! finds its retained messages by walking only the branches it matches. Every shard holds a
//! replica whose messages are shared by `Arc` across shards, so a replica costs an index only.
//! Messages with a message expiry interval are also indexed by deadline, so the shard's sweep
//! purges the expired ones without walking the tree.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytestring::ByteString;

use crate::session::Message;

#[derive(Default)]
struct Node {
    children: AHashMap<Box<str>, Node>,
    msg: Option<Arc<Message>>,
}

#[derive(Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
    /// (deadline, topic) of every message that expires.
    expiring: BTreeSet<(Instant, ByteString)>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `msg` under its topic, or clears the topic when the payload is empty.
    pub fn set(&mut self, msg: Arc<Message>) {
        let levels: Vec<&str> = msg.topic.split('/').collect();
        if msg.payload.is_empty() {
            if let Some(old) = remove(&mut self.root, &levels) {
                self.len -= 1;
                self.unindex(&old);
            }
            return;
        }
        let mut node = &mut self.root;
        for l in &levels {
            node = node.children.entry((*l).into()).or_default();
        }
        if let Some(at) = msg.expires_at {
            self.expiring.insert((at, msg.topic.clone()));
        }
        match node.msg.replace(msg) {
            Some(old) => self.unindex(&old),
            None => self.len += 1,
        }
    }

    fn unindex(&mut self, old: &Message) {
        if let Some(at) = old.expires_at {
            self.expiring.remove(&(at, old.topic.clone()));
        }
    }

    /// Removes every message whose expiry has come; their topics.
    pub fn purge_expired(&mut self, now: Instant) -> Vec<ByteString> {
        let mut gone = Vec::new();
        while let Some(first) = self.expiring.first().filter(|(at, _)| *at <= now) {
            let topic = first.1.clone();
            self.expiring.pop_first();
            let levels: Vec<&str> = topic.split('/').collect();
            if remove(&mut self.root, &levels).is_some() {
                self.len -= 1;
            }
            gone.push(topic);
        }
        gone
    }

    /// Calls `f` with every retained message whose topic matches `filter`.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&Arc<Message>)) {
        let levels: Vec<&str> = filter.split('/').collect();
        walk(&self.root, &levels, true, &mut f);
    }
}

fn remove(node: &mut Node, levels: &[&str]) -> Option<Arc<Message>> {
    let Some((first, rest)) = levels.split_first() else {
        return node.msg.take();
    };
    let child = node.children.get_mut(*first)?;
    let removed = remove(child, rest);
    if child.msg.is_none() && child.children.is_empty() {
        node.children.remove(*first);
    }
    removed
}

fn walk(node: &Node, levels: &[&str], top: bool, f: &mut impl FnMut(&Arc<Message>)) {
    let Some((first, rest)) = levels.split_first() else {
        if let Some(m) = &node.msg {
            f(m);
        }
        return;
    };
    match *first {
        "#" => all(node, top, f),
        "+" => {
            for (name, child) in &node.children {
                if !(top && name.starts_with('$')) {
                    walk(child, rest, false, f);
                }
            }
        }
        name => {
            if let Some(child) = node.children.get(name) {
                walk(child, rest, false, f);
            }
        }
    }
}

/// Everything at and below `node` (`#` also matches the parent level itself).
fn all(node: &Node, top: bool, f: &mut impl FnMut(&Arc<Message>)) {
    if let Some(m) = &node.msg {
        f(m);
    }
    for (name, child) in &node.children {
        if !(top && name.starts_with('$')) {
            all(child, false, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;

    fn msg(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        expiring(topic, payload, None, Instant::now())
    }

    fn expiring(
        topic: &str,
        payload: &'static [u8],
        secs: Option<u32>,
        now: Instant,
    ) -> Arc<Message> {
        let props = crate::codec::Properties {
            message_expiry_interval: secs,
            ..Default::default()
        };
        let m = Message::new(
            topic.into(),
            Bytes::from_static(payload),
            crate::codec::QoS::AtMostOnce,
            true,
            Some(&props),
            "c".into(),
            now,
        );
        Arc::new(m)
    }

    #[test]
    fn expired_messages_are_purged_and_replaced_ones_kept() {
        let mut s = RetainedStore::default();
        let now = Instant::now();
        s.set(expiring("a/short", b"1", Some(1), now));
        s.set(expiring("a/long", b"2", Some(100), now));
        s.set(expiring("a/none", b"3", None, now));
        s.set(expiring("a/replaced", b"4", Some(1), now));
        s.set(expiring("a/replaced", b"5", None, now));
        s.set(expiring("a/cleared", b"6", Some(1), now));
        s.set(expiring("a/cleared", b"", None, now));
        assert!(s.purge_expired(now).is_empty());
        let later = now + std::time::Duration::from_secs(2);
        assert_eq!(s.purge_expired(later), ["a/short"]);
        assert_eq!(topics(&s, "a/#"), ["a/long", "a/none", "a/replaced"]);
        assert_eq!(s.len(), 3);
        assert!(s.purge_expired(later).is_empty());
    }

    fn topics(s: &RetainedStore, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.for_each_match(filter, |m| out.push(m.topic.to_string()));
        out.sort();
        out
    }

    #[test]
    fn set_replace_clear_and_match() {
        let mut s = RetainedStore::default();
        s.set(msg("a/b", b"1"));
        s.set(msg("a/c", b"2"));
        s.set(msg("a", b"3"));
        s.set(msg("$SYS/x", b"4"));
        s.set(msg("a/b", b"5"));
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/+"), ["a/b", "a/c"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/c"]);
        assert_eq!(topics(&s, "#"), ["a", "a/b", "a/c"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/x"]);
        assert_eq!(topics(&s, "+/x"), Vec::<String>::new());
        s.set(msg("a/b", b""));
        assert_eq!(s.len(), 3);
        assert_eq!(topics(&s, "a/b"), Vec::<String>::new());
    }
}
