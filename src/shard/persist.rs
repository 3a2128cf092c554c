//! What outlives the process, seen from a shard: the sessions and retained messages read back
//! at start (this shard's share: the sessions whose client id is homed here, so the shard count
//! may change between runs), each tick's changes collected from the stored sessions into the
//! store batch, the store's answers carried out, and at shutdown the last batch (with
//! `durability.mode = "off"`, everything: memory only until then).

use std::sync::Arc;

use bytestring::ByteString;

use super::durable::{send_ack, Done, Durable};
use super::link::LinkState;
use super::{SessionSlot, Shard, TimerKind};
use crate::codec::{AckType, QoS};
use crate::ring::XMsg;
use crate::session::{Message, OutState, Session, StoreLog};
use crate::store::record::DelayedMessage;
use crate::store::{Op, RestoredSession};

/// One shard's part of what was kept.
pub struct Restore {
    /// Every restored subscription's filter with its session's home shard.
    pub interest: Arc<[(ByteString, usize)]>,
    pub sessions: Vec<RestoredSession>,
    pub retained: Arc<[Arc<Message>]>,
    /// The largest epoch in the store.
    pub max_epoch: u64,
    /// This shard's share of the kept delayed publishes, by id.
    pub delayed: Vec<(u64, DelayedMessage)>,
    /// The largest delayed publish id in the store.
    pub max_delayed_id: u64,
    /// The bans in force (every shard holds them all).
    pub banned: Arc<[crate::banned::Ban]>,
    /// The `$exclusive/` filters this shard arbitrates that a kept session holds, with its
    /// client id: the hold outlives the restart as the session does.
    pub exclusive: Vec<(ByteString, ByteString)>,
}

impl Shard {
    /// Loads the kept retained messages and this shard's share of the kept sessions.
    pub(super) fn restore(&mut self, saved: Restore) {
        self.durable.number_above(saved.max_epoch);
        for (filter, shard) in saved.interest.iter() {
            if *shard != self.id {
                self.router.apply_interest(filter, *shard, true);
            }
        }
        for m in saved.retained.iter() {
            self.retained.set(m.clone());
        }
        self.stats.retained.set(self.retained.len() as i64);
        self.restore_delayed(saved.delayed, saved.max_delayed_id);
        for ban in saved.banned.iter() {
            self.bans.insert(ban.clone());
        }
        self.exclusive.extend(saved.exclusive);
        let restored = saved.sessions.len();
        for r in saved.sessions {
            let mut session = r.session;
            if self.durable.journaled() {
                session.stored = Some(Box::new(StoreLog::new(r.epoch, r.last_seq)));
            }
            let key = self.adopt(session);
            let Some(slot) = self.sessions.get_mut(key) else {
                continue;
            };
            let token = slot.token;
            if let Some(at) = r.expires_at {
                slot.set_expires_at(at);
            }
            slot.set_will_at(r.will_at);
            let timers = [
                (r.expires_at, TimerKind::Expiry),
                (r.will_at, TimerKind::Will),
            ];
            for (at, kind) in timers {
                if let Some(at) = at {
                    self.sessions.schedule(at, kind, key, token);
                }
            }
            self.touch(key);
        }
        if restored > 0 {
            tracing::debug!(shard = self.id, sessions = restored, "restored sessions");
        }
    }

    /// Takes a kept session into the table, homed and subscribed; its key.
    fn adopt(&mut self, session: Session) -> usize {
        let token = self.token();
        let client_id = session.client_id.clone();
        let key = self.insert_session(SessionSlot::new(session, None, token));
        self.cluster_restored(&client_id);
        self.homes.claim(client_id, self.id, token, 0);
        self.resubscribe(key);
        key
    }

    /// The session in `key` has something for the store: it is collected at the end of the
    /// tick (the pump is woken for it).
    pub(super) fn touch(&mut self, key: usize) {
        if self.sessions.touch(key) {
            self.mesh.wake_pump();
        }
    }

    /// A session that starts being kept in the store (persistent, journaled store).
    pub(super) fn start_storing(&mut self, session: &mut Session) {
        if self.durable.journaled() && session.expiry_interval > 0 && session.stored.is_none() {
            session.keep_stored(self.durable.epoch());
        }
    }

    /// A retained message set or cleared here: the store hears of it with this tick.
    pub(super) fn journal_retained(&mut self, m: &Arc<Message>) {
        if !self.durable.journaled() {
            return;
        }
        self.durable.push(if m.payload.is_empty() {
            Op::Unretain(m.topic.clone())
        } else {
            Op::Retain(m.clone())
        });
        self.durable.produced();
        self.mesh.wake_pump();
    }

    /// A session ended: its records go.
    pub(super) fn journal_end(&mut self, session: &Session) {
        if let Some(log) = &session.stored {
            self.journal_end_of(session.client_id.clone(), log.epoch);
        }
    }

    /// The records of `client_id`'s session life `epoch` go.
    pub(super) fn journal_end_of(&mut self, client_id: ByteString, epoch: u64) {
        self.durable.push(Op::EndSession { client_id, epoch });
        self.mesh.wake_pump();
    }

    /// A session leaves for another shard: what it owes the store goes now, and the batch with
    /// it, so that the store hears the new shard's changes after these.
    pub(super) fn journal_departure(&mut self, session: &mut Session) {
        self.durable.collect(session, false, (None, None), true);
        self.flush_store_now(false);
    }

    /// Sends what waits for the store once it has been held for the commit window.
    pub(super) fn flush_store(&mut self) {
        let waiting = self.store_waiting();
        if self.durable.hold_over(waiting) {
            self.flush_store_now(false);
        }
    }

    /// Collects every touched session's changes (`all` of them, or the records and the
    /// deliveries aged a window) and sends the batch to the storage thread. A session with
    /// deliveries left for the next batch stays listed.
    pub(super) fn flush_store_now(&mut self, all: bool) {
        let mut left = Vec::new();
        while let Some((key, slot)) = self.sessions.pop_dirty() {
            let (connected, deadlines) = (slot.link.is_some(), slot.deadlines());
            self.durable
                .collect(&mut slot.session, connected, deadlines, all);
            if slot.session.stored.as_ref().is_some_and(|l| l.is_dirty()) {
                left.push(key);
            }
        }
        self.durable.flush();
        for key in left {
            self.touch(key);
        }
    }

    /// Whether anything waits for the store: a change, or an acknowledgement.
    fn store_waiting(&self) -> bool {
        self.durable.flush_due() || self.sessions.has_dirty()
    }

    /// Whether the pump has store work: answers to carry out, a hold to start or end.
    pub(super) fn store_due(&self) -> bool {
        self.durable.answered() || self.durable.hold_due(self.store_waiting())
    }

    /// Another shard's publish was delivered here (between `durable.begin` and this) with a
    /// confirmation token: it is answered once what it queued for persistent sessions is
    /// stored or acknowledged (at once when it queued nothing).
    pub(super) fn confirm_stored(&mut self, confirm: Option<u64>) {
        let Some(token) = confirm else {
            return;
        };
        let (shard, from) = (super::token_shard(token), self.id);
        debug_assert_ne!(shard, from, "a shard confirms only others' publishes");
        match self.durable.reply_when_stored(shard, token) {
            Some(done) => self.carry_out(done),
            None => self.mesh.wake_pump(),
        }
    }

    /// The subscriber of session `key` ended delivery flow `pid` (`expect`ed in that state, at
    /// `qos`): a publish waiting only on such deliveries may be acknowledged now.
    pub(super) fn complete_flow(&mut self, key: usize, pid: u16, expect: OutState, qos: QoS) {
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        let done = slot.session.complete(pid, expect, qos);
        if slot.session.stored.is_some() {
            self.touch(key);
        }
        if let Some(ob) = done.and_then(|c| c.owed) {
            self.release_with(|durable, out| durable.delivered(ob, out));
        }
    }

    /// Another shard confirmed (or failed) its part of a publish of this shard's.
    pub(super) fn stored_elsewhere(&mut self, token: u64, stored: bool) {
        self.release_with(|durable, out| durable.settle(token, stored, out));
    }

    /// Carries out what the store's answers release: acknowledgements (refusals for what it
    /// could not keep) and answers to other shards.
    pub(super) fn store_answered(&mut self) {
        if self.durable.answered() {
            self.release_with(Durable::take_done);
        }
    }

    /// Lets `f` decide what waited on the store (into the list it is given), then carries that
    /// out. The list is the store state's own, kept between calls: the acknowledgement path,
    /// taken for every message, allocates nothing.
    fn release_with(&mut self, f: impl FnOnce(&mut Durable, &mut Vec<Done>)) {
        let mut done = self.durable.take_list();
        f(&mut self.durable, &mut done);
        for d in done.drain(..) {
            self.carry_out(d);
        }
        self.durable.give_list(done);
    }

    pub(super) fn carry_out(&mut self, d: Done) {
        {
            match d {
                Done::Ack { link, ack, stored } => {
                    if !stored && ack.kind == AckType::PubRec {
                        if let LinkState::Active(key) = link.state.get() {
                            if let Some(slot) = self.sessions.get_mut(key) {
                                slot.session.release_inbound(ack.packet_id);
                            }
                        }
                    }
                    send_ack(&link, ack, stored);
                }
                Done::Reply {
                    shard,
                    token,
                    stored,
                } => self.send(shard, XMsg::Stored { token, stored }),
                Done::SubAck { token, stored } => self.reply_answered(token, stored),
                Done::Peer { to, seq, stored } => to.done(seq, stored),
                Done::Control { to, answer, stored } => {
                    let answer = answer.and_then(|v| {
                        stored
                            .then_some(v)
                            .ok_or_else(|| "the store could not keep the change".to_string())
                    });
                    let _ = to.send(answer);
                }
            }
        }
    }

    /// The last batch at shutdown; with the store not journaled, every persistent session and
    /// (from shard 0) every retained message, written now.
    pub(super) fn persist(&mut self) -> serde_json::Value {
        let snapshot = !self.durable.journaled();
        let mut sessions = 0;
        let mut retained = 0;
        if snapshot {
            let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
            for key in keys {
                let epoch = self.durable.epoch();
                let Some(slot) = self.sessions.get_mut(key) else {
                    continue;
                };
                if slot.session.expiry_interval == 0 {
                    continue;
                }
                slot.session.keep_stored(epoch);
                sessions += 1;
                let deadlines = slot.deadlines();
                self.durable
                    .collect(&mut slot.session, false, deadlines, true);
            }
            if self.id == 0 {
                let mut all = Vec::new();
                self.retained.for_each_match("#", |m| all.push(m.clone()));
                retained = all.len();
                for m in all {
                    self.durable.push(Op::Retain(m));
                }
            }
            self.snapshot_delayed();
            if self.id == 0 {
                let bans: Vec<_> = self.bans.iter().cloned().map(Arc::new).collect();
                for ban in bans {
                    self.durable.push(Op::Ban(ban));
                }
            }
        } else {
            sessions = self
                .sessions
                .iter()
                .filter(|(_, s)| s.session.stored.is_some())
                .count();
        }
        self.flush_store_now(true);
        self.durable.close();
        serde_json::json!({ "sessions": sessions, "retained": retained })
    }
}
