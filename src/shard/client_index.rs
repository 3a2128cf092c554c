//! The shard's sessions by client id. A map from id to slot would keep a second copy of every
//! id (32 bytes of `ByteString` plus its entry); this table keeps only the slot key (8 bytes)
//! and reads the id from the session itself, which matters with a million idle sessions.

use ahash::RandomState;
use hashbrown::HashTable;
use slab::Slab;

use super::SessionSlot;

#[derive(Default)]
pub struct ClientIndex {
    table: HashTable<usize>,
    hasher: RandomState,
}

impl ClientIndex {
    fn hash(&self, client_id: &str) -> u64 {
        self.hasher.hash_one(client_id)
    }

    /// The slot of the session with this client id.
    pub fn get(&self, sessions: &Slab<SessionSlot>, client_id: &str) -> Option<usize> {
        self.table
            .find(self.hash(client_id), |&k| {
                id_of(sessions, k) == Some(client_id)
            })
            .copied()
    }

    /// Indexes the session in slot `key` (already in `sessions`), replacing any other slot
    /// indexed under the same id.
    pub fn insert(&mut self, sessions: &Slab<SessionSlot>, key: usize) {
        let Some(client_id) = id_of(sessions, key) else {
            return;
        };
        let hash = self.hash(client_id);
        let same = |&k: &usize| k != key && id_of(sessions, k) == Some(client_id);
        if let Some(slot) = self.table.find_mut(hash, same) {
            *slot = key;
            return;
        }
        let hasher = &self.hasher;
        self.table.insert_unique(hash, key, |&k| {
            hasher.hash_one(id_of(sessions, k).unwrap_or_default())
        });
    }

    /// Forgets slot `key`, whose session had `client_id`, unless another slot replaced it.
    pub fn remove(&mut self, client_id: &str, key: usize) {
        if let Ok(entry) = self.table.find_entry(self.hash(client_id), |&k| k == key) {
            entry.remove();
        }
    }
}

fn id_of(sessions: &Slab<SessionSlot>, key: usize) -> Option<&str> {
    sessions.get(key).map(|s| &*s.session.client_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Protocol;
    use crate::session::Session;

    fn add(sessions: &mut Slab<SessionSlot>, index: &mut ClientIndex, id: &str) -> usize {
        let session = Session::new(id.into(), Protocol::V5);
        let key = sessions.insert(SessionSlot::new(session, None, 0));
        index.insert(sessions, key);
        key
    }

    #[test]
    fn a_takeover_replaces_the_slot_and_the_old_slot_leaving_keeps_it() {
        let mut sessions = Slab::new();
        let mut index = ClientIndex::default();
        let old = add(&mut sessions, &mut index, "a");
        let b = add(&mut sessions, &mut index, "b");
        assert_eq!(index.get(&sessions, "a"), Some(old));
        let new = add(&mut sessions, &mut index, "a");
        assert_eq!(index.get(&sessions, "a"), Some(new));
        sessions.remove(old);
        index.remove("a", old);
        assert_eq!(index.get(&sessions, "a"), Some(new));
        for i in 0..1000 {
            add(&mut sessions, &mut index, &format!("c{i}"));
        }
        assert_eq!(
            index.get(&sessions, "b"),
            Some(b),
            "found after the table grew"
        );
        let c = index
            .get(&sessions, "c999")
            .map(|k| &*sessions[k].session.client_id);
        assert_eq!(c, Some("c999"));
        sessions.remove(new);
        index.remove("a", new);
        assert_eq!(index.get(&sessions, "a"), None);
        assert_eq!(index.get(&sessions, "nobody"), None);
    }
}
