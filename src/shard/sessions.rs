//! The shard's sessions: a slot per session (connected or not), the index from client id to
//! slot, and the will and expiry timers of offline sessions. A slot key is reused once its
//! session ends, so anything that keeps a key past the current call keeps the slot's claim
//! token with it and checks it (timers do; so do SUBACKs waiting for other shards).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use super::client_index::ClientIndex;
use super::link::ConnLink;
use crate::session::Session;

/// A session and, while it is connected, its connection.
pub struct SessionSlot {
    pub session: Session,
    pub link: Option<Rc<ConnLink>>,
    /// The claim token this session was granted with; timers and releases carry it.
    pub token: u64,
    /// When the session expires and its delayed will is due, once disconnected. Boxed: a
    /// connected session has neither, and every session pays for the field.
    offline: Option<Box<OfflineTimers>>,
    /// Listed in the table's dirty list (its store log waits to be collected).
    listed: bool,
}

#[derive(Default)]
struct OfflineTimers {
    expires_at: Option<Instant>,
    will_at: Option<Instant>,
}

impl SessionSlot {
    pub fn new(session: Session, link: Option<Rc<ConnLink>>, token: u64) -> SessionSlot {
        SessionSlot {
            session,
            link,
            token,
            offline: None,
            listed: false,
        }
    }

    /// Both offline deadlines: (expiry, will).
    pub fn deadlines(&self) -> (Option<Instant>, Option<Instant>) {
        (self.expires_at(), self.will_at())
    }

    /// When the session expires, once disconnected.
    pub fn expires_at(&self) -> Option<Instant> {
        self.offline.as_ref()?.expires_at
    }

    /// When the will is due, once disconnected with a will delay.
    pub fn will_at(&self) -> Option<Instant> {
        self.offline.as_ref()?.will_at
    }

    pub fn set_expires_at(&mut self, at: Instant) {
        self.offline.get_or_insert_with(Box::default).expires_at = Some(at);
    }

    pub fn set_will_at(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.offline.get_or_insert_with(Box::default).will_at = Some(at);
        } else if let Some(timers) = self.offline.as_mut() {
            timers.will_at = None;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    Will,
    Expiry,
}

#[derive(Default)]
pub(super) struct SessionTable {
    slots: Slab<SessionSlot>,
    by_client: ClientIndex,
    timers: BinaryHeap<Reverse<(Instant, TimerKind, usize, u64)>>,
    /// Stored sessions with changes the store has not heard yet.
    dirty: Vec<usize>,
}

impl SessionTable {
    pub fn get(&self, key: usize) -> Option<&SessionSlot> {
        self.slots.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut SessionSlot> {
        self.slots.get_mut(key)
    }

    /// Lists a stored session whose log has something for the store; true when the list was
    /// empty (the pump must be woken to collect it).
    pub fn touch(&mut self, key: usize) -> bool {
        let Some(slot) = self.slots.get_mut(key) else {
            return false;
        };
        if slot.listed || !slot.session.stored.as_ref().is_some_and(|l| l.is_dirty()) {
            return false;
        }
        slot.listed = true;
        self.dirty.push(key);
        self.dirty.len() == 1
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The next listed slot and its key, unlisted (a key whose slot was reused meanwhile
    /// yields that slot, whose log is collected just the same; one whose slot is gone is
    /// skipped).
    pub fn pop_dirty(&mut self) -> Option<(usize, &mut SessionSlot)> {
        while let Some(key) = self.dirty.pop() {
            if self.slots.get(key).is_some_and(|s| s.listed) {
                let slot = self.slots.get_mut(key)?;
                slot.listed = false;
                return Some((key, slot));
            }
        }
        None
    }

    pub fn iter(&self) -> slab::Iter<'_, SessionSlot> {
        self.slots.iter()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `client_id`'s session.
    pub fn find(&self, client_id: &str) -> Option<usize> {
        self.by_client.get(&self.slots, client_id)
    }

    /// The slot of `client_id`'s session when it is held under claim `token`.
    pub fn held(&self, client_id: &str, token: u64) -> Option<usize> {
        self.find(client_id)
            .filter(|k| self.slots.get(*k).is_some_and(|s| s.token == token))
    }

    /// Stores a session and indexes its client id; its key.
    pub fn insert(&mut self, slot: SessionSlot) -> usize {
        let key = self.slots.insert(slot);
        self.by_client.insert(&self.slots, key);
        key
    }

    /// Takes a session out (its timers lapse: they check the slot's token).
    pub fn remove(&mut self, key: usize) -> SessionSlot {
        let slot = self.slots.remove(key);
        self.by_client.remove(&slot.session.client_id, key);
        slot
    }

    /// Arms a timer for the session in slot `key` granted with `token`.
    pub fn schedule(&mut self, at: Instant, kind: TimerKind, key: usize, token: u64) {
        self.timers.push(Reverse((at, kind, key, token)));
    }

    /// The next timer due by `now`, taken.
    pub fn next_due(&mut self, now: Instant) -> Option<(TimerKind, usize, u64)> {
        let Reverse((at, kind, key, token)) = self.timers.peek().copied()?;
        if at > now {
            return None;
        }
        self.timers.pop();
        Some((kind, key, token))
    }
}

impl std::ops::Index<usize> for SessionTable {
    type Output = SessionSlot;

    fn index(&self, key: usize) -> &SessionSlot {
        &self.slots[key]
    }
}
