//! The shard's side of the store: the batch of this commit window (one ticket), the actions that
//! wait for a ticket to be stored, and the publishes that also wait for other shards.
//!
//! A QoS 1/2 publish is acknowledged only once everything it created is in the journal: the
//! queue entries of persistent sessions on this shard and on the others, and a retained copy.
//! This shard's part is in its open batch; another shard that queues it for a persistent
//! session answers `XMsg::Stored` once its own batch is stored (chosen over journaling the
//! message once with its targets here: the publishing shard does not know the other shards'
//! sessions, and each session's records stay with the shard that owns it, so a takeover moves
//! them with no rewrite). A publish that reaches no persistent session anywhere costs nothing.
//!
//! Acknowledgements leave in the order the publishes came (MQTT-4.6.0-2): each waits in its
//! connection's ack queue until it and everything before it is decided.
//!
//! A publish whose only kept effect on a shard is deliveries to persistent sessions owes the
//! store nothing once every one of them is acknowledged by its subscriber before the shard
//! collected it for the store (the commit window): the message was delivered, and no record
//! of it is ever written. Such a publish is an obligation (`Owed`): released, as stored, by
//! the last of those acknowledgements, or by its ticket when one came too late. With online
//! persistent subscribers the publisher's PUBACK so waits for them, not for the disk.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use ahash::AHashMap;

use super::link::ConnLink;
use crate::codec::{AckType, QoS, ReasonCode};
use crate::control::Reply;
use crate::session::Session;
use crate::store::{Batch, Op, StoreLink};

use super::remote::Answers;

/// An acknowledgement that waits for the store: its packet (PUBACK, PUBREC, or PUBCOMP, which
/// waits for the inbound QoS 2 id's removal to be stored: a stale id after a crash would make
/// the client's next message with it look like a duplicate), id and the reason it carries once
/// stored.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub kind: AckType,
    pub packet_id: u16,
    pub reason: ReasonCode,
}

impl Ack {
    /// The acknowledgement of a publish at `qos` with `reason` (None at QoS 0).
    pub fn of(qos: QoS, packet_id: Option<u16>, reason: ReasonCode) -> Option<Ack> {
        let kind = match qos {
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => AckType::PubAck,
            QoS::ExactlyOnce => AckType::PubRec,
        };
        Some(Ack {
            kind,
            packet_id: packet_id?,
            reason,
        })
    }
}

/// An acknowledgement waiting in a connection's ack queue.
pub struct AckSlot {
    id: u64,
    ack: Ack,
    /// None while undecided; then whether what it acknowledges was stored.
    stored: Option<bool>,
}

/// Where a waiting acknowledgement is: its connection and its id there.
pub struct AckRef {
    link: Rc<ConnLink>,
    id: u64,
}

/// What a decided obligation or ticket sends on.
enum Release {
    Ack(AckRef),
    /// Answer another shard's publish.
    Reply {
        shard: usize,
        token: u64,
    },
    /// The local part of a publish that also waits for other shards.
    Local(u64),
    /// Answer another node's forwarded publish (its frame `seq` on that connection).
    Peer {
        to: Rc<Answers>,
        seq: u64,
    },
}

/// A publish waiting only on deliveries to persistent sessions made under its obligation id.
struct Owed {
    /// Deliveries not yet acknowledged.
    left: u32,
    /// The ticket that releases it if they are not acknowledged before it is sent.
    ticket: u64,
    release: Release,
}

/// What a publish being routed made that needs the store, when all of it was deliveries to
/// persistent sessions under obligation `ob` (which `end` hands to the acknowledgement).
#[derive(Debug, Clone, Copy)]
pub struct Owing {
    ob: u64,
    puts: u32,
}

/// What a stored (or failed) ticket releases.
enum Deferred {
    /// An acknowledgement or an answer to another shard or node.
    Release(Release),
    /// A SUBACK waiting (among others) for the store.
    SubAck(u64),
    /// The answer to an admin request whose change the store keeps.
    Control(SyncSender<Reply>, Reply),
    /// An obligation, unless its deliveries were all acknowledged first.
    Owed(u64),
}

/// A publish waiting for other shards (and maybe this shard's ticket).
struct Pending {
    remaining: u32,
    failed: bool,
    release: Release,
}

/// What the shard does once the store has answered.
pub enum Done {
    /// Send this acknowledgement (a refusal when not stored; then a QoS 2 id is released).
    Ack {
        link: Rc<ConnLink>,
        ack: Ack,
        stored: bool,
    },
    Reply {
        shard: usize,
        token: u64,
        stored: bool,
    },
    /// The store answered for the SUBACK with this token.
    SubAck { token: u64, stored: bool },
    /// Answer frame `seq` of another node's forwarding connection.
    Peer {
        to: Rc<Answers>,
        seq: u64,
        stored: bool,
    },
    /// Send this answer to an admin request (an error when its change was not stored).
    Control {
        to: SyncSender<Reply>,
        answer: Reply,
        stored: bool,
    },
}

/// The publish being routed now: how many other shards must confirm it, and what it made here.
struct Publishing {
    token: Option<u64>,
    remote: u32,
    produced: u64,
    /// Its obligation id, and the deliveries to persistent sessions it made under it.
    ob: u64,
    puts: u32,
}

/// How an acknowledgement is to wait.
pub enum Wait {
    /// Nothing was stored: it goes now (behind any waiting before it).
    Now,
    /// A session record changed: this shard's open ticket must be stored first.
    Record,
    /// Deliveries were made: the ticket that will carry them must be stored first (the next
    /// one: deliveries wait a window before they are collected), or (`owed`) only they.
    Ticket { owed: Option<Owing> },
    /// Other shards must confirm (token), and this shard's part when `local` (as for Ticket).
    Shards {
        token: u64,
        remote: u32,
        local: bool,
        owed: Option<Owing>,
    },
}

pub struct Durable {
    shard: usize,
    /// The way to the storage thread (None once closed at shutdown).
    link: Option<StoreLink>,
    /// Sessions are journaled as they change; false with `durability.mode = "off"`, where
    /// only the shutdown writes.
    journaled: bool,
    open: Vec<Op>,
    /// How long the open batch (and the sessions' logs) is held before it is sent: a delivery
    /// made and acknowledged within it never reaches the store (`durability.commit_window_us`).
    hold: Duration,
    /// Since when it is held (None while nothing waits).
    held_since: Option<Instant>,
    /// The hold's timer task, while it waits for a hold to begin; `timed` once it has the
    /// current one.
    timer: Option<Waker>,
    timed: bool,
    /// The open batch's ticket; every lower one was sent.
    ticket: u64,
    /// What waits for a ticket, in ticket order.
    deferred: VecDeque<(u64, Deferred)>,
    /// Of them, those at the open ticket that still wait for it (an obligation released
    /// early does not): with none, and no changes, there is no batch to send.
    waiting_open: usize,
    /// What waits for the ticket after the open one (the publishes whose deliveries the open
    /// batch does not take yet), and how many of them still wait.
    next: Vec<Deferred>,
    waiting_next: usize,
    /// Obligations not yet released, by id.
    owed: AHashMap<u64, Owed>,
    /// A list for what a decision releases, lent out and given back (see `take_list`).
    list: Vec<Done>,
    next_ob: u64,
    pending: AHashMap<u64, Pending>,
    results: Vec<(u64, bool)>,
    /// Deliveries to persistent sessions (and retained changes) made so far.
    produced: u64,
    publishing: Option<Publishing>,
    next_token: u64,
    next_ack: u64,
    next_epoch: u64,
}

impl Durable {
    pub fn new(shard: usize, link: StoreLink, journaled: bool, hold: Duration) -> Durable {
        Durable {
            shard,
            link: Some(link),
            journaled,
            open: Vec::new(),
            hold,
            held_since: None,
            timer: None,
            timed: false,
            ticket: 1,
            deferred: VecDeque::new(),
            waiting_open: 0,
            next: Vec::new(),
            waiting_next: 0,
            owed: AHashMap::new(),
            list: Vec::new(),
            next_ob: 0,
            pending: AHashMap::new(),
            results: Vec::new(),
            produced: 0,
            publishing: None,
            next_token: 0,
            next_ack: 0,
            // Epochs differ between shards (the low 16 bits) and between runs (the wall clock,
            // and `number_above` where it went back).
            next_epoch: crate::store::record::wall_now() << 16 | (shard as u64 & 0xffff),
        }
    }

    /// Whether persistent sessions are journaled as they change.
    pub fn journaled(&self) -> bool {
        self.journaled && self.link.is_some()
    }

    /// Numbers new session lives above `floor`, the largest epoch already in the store.
    pub fn number_above(&mut self, floor: u64) {
        let shard = self.next_epoch & 0xffff;
        if self.next_epoch >> 16 <= floor >> 16 {
            self.next_epoch = ((floor >> 16) + 1) << 16 | shard;
        }
    }

    /// A new epoch for a session that starts being stored: unique among every session life
    /// in the store (its deliveries' keys carry nothing else).
    pub fn epoch(&mut self) -> u64 {
        self.next_epoch += 1 << 16;
        self.next_epoch
    }

    pub fn push(&mut self, op: Op) {
        self.open.push(op);
    }

    /// Adds a session's waiting changes to the open batch: all of them, or its record and
    /// the deliveries aged a window.
    pub fn collect(
        &mut self,
        session: &mut Session,
        connected: bool,
        deadlines: (Option<Instant>, Option<Instant>),
        all: bool,
    ) {
        crate::store::session_ops(session, connected, deadlines, all, &mut self.open);
    }

    /// Something this tick stored for the publish being routed (a persistent delivery, a
    /// retained change).
    pub fn produced(&mut self) {
        self.produced += 1;
    }

    /// Starts routing a publish that will be acknowledged (or confirmed to another shard).
    pub fn begin(&mut self) {
        if self.journaled() {
            self.next_ob += 1;
            self.publishing = Some(Publishing {
                token: None,
                remote: 0,
                produced: self.produced,
                ob: self.next_ob,
                puts: 0,
            });
        }
    }

    /// The obligation id of the publish being routed: a delivery to a persistent session
    /// carries it (see [`Durable::produced_put`]).
    pub fn owed(&self) -> Option<u64> {
        self.publishing.as_ref().map(|p| p.ob)
    }

    /// The publish being routed put a delivery in a persistent session's log under its
    /// obligation id.
    pub fn produced_put(&mut self) {
        self.produced += 1;
        if let Some(p) = self.publishing.as_mut() {
            p.puts += 1;
        }
    }

    /// The confirmation token for a copy of the publish being routed that goes to another
    /// shard, if it needs one.
    pub fn confirm(&mut self) -> Option<u64> {
        let p = self.publishing.as_mut()?;
        p.remote += 1;
        if p.token.is_none() {
            self.next_token += 1;
            p.token = Some((self.shard as u64) << 48 | self.next_token);
        }
        p.token
    }

    /// Ends routing the publish: how its acknowledgement waits.
    pub fn end(&mut self) -> Wait {
        let Some(p) = self.publishing.take() else {
            return Wait::Now;
        };
        let made = self.produced - p.produced;
        let local = made > 0;
        let owed = (local && made == u64::from(p.puts)).then_some(Owing {
            ob: p.ob,
            puts: p.puts,
        });
        match p.token {
            Some(token) => Wait::Shards {
                token,
                remote: p.remote,
                local,
                owed,
            },
            None if local => Wait::Ticket { owed },
            None => Wait::Now,
        }
    }

    /// Queues `d` for the open ticket.
    fn defer(&mut self, d: Deferred) {
        self.deferred.push_back((self.ticket, d));
        self.waiting_open += 1;
    }

    /// Queues `release` for the ticket that will carry the deliveries made now (the next),
    /// as an obligation when `owed` says it is one.
    fn defer_release(&mut self, release: Release, owed: Option<Owing>) {
        let d = match owed {
            Some(o) => {
                let ticket = self.ticket + 1;
                self.owed.insert(
                    o.ob,
                    Owed {
                        left: o.puts,
                        ticket,
                        release,
                    },
                );
                Deferred::Owed(o.ob)
            }
            None => Deferred::Release(release),
        };
        self.next.push(d);
        self.waiting_next += 1;
    }

    /// A delivery made under obligation `ob` was acknowledged before the store heard of it:
    /// once all of them were, the obligation is released as stored.
    pub fn delivered(&mut self, ob: u64, out: &mut Vec<Done>) {
        let Some(o) = self.owed.get_mut(&ob) else {
            return;
        };
        o.left = o.left.saturating_sub(1);
        if o.left > 0 {
            return;
        }
        let Some(o) = self.owed.remove(&ob) else {
            return;
        };
        if o.ticket == self.ticket {
            self.waiting_open = self.waiting_open.saturating_sub(1);
        } else if o.ticket == self.ticket + 1 {
            self.waiting_next = self.waiting_next.saturating_sub(1);
        }
        self.release(o.release, true, out);
    }

    fn release(&mut self, r: Release, stored: bool, out: &mut Vec<Done>) {
        match r {
            Release::Ack(ack) => decide(ack, stored, out),
            Release::Reply { shard, token } => out.push(Done::Reply {
                shard,
                token,
                stored,
            }),
            Release::Local(token) => self.settle(token, stored, out),
            Release::Peer { to, seq } => out.push(Done::Peer { to, seq, stored }),
        }
    }

    /// Sends an acknowledgement, or queues it on its connection until it and those before it
    /// are decided.
    pub fn enqueue_ack(&mut self, link: &Rc<ConnLink>, ack: Ack, wait: Wait) {
        let stored = matches!(wait, Wait::Now).then_some(true);
        if stored.is_some() && !has_waiting(link) {
            send_ack(link, ack, true);
            return;
        }
        self.next_ack += 1;
        let id = self.next_ack;
        link.extras().acks.push_back(AckSlot { id, ack, stored });
        let at = AckRef {
            link: link.clone(),
            id,
        };
        // Behind an undecided one (a decided front is always sent at once): it goes with it.
        if !matches!(wait, Wait::Now) {
            self.wait_for(Release::Ack(at), wait);
        }
    }

    /// Answers frame `seq` of another node's forwarding connection once its publish is decided
    /// (now, when `wait` says so).
    pub fn answer_peer(&mut self, to: Rc<Answers>, seq: u64, wait: Wait) -> Option<Done> {
        if matches!(wait, Wait::Now) {
            return Some(Done::Peer {
                to,
                seq,
                stored: true,
            });
        }
        self.wait_for(Release::Peer { to, seq }, wait);
        None
    }

    /// Queues `release` for what `wait` says (not `Wait::Now`).
    fn wait_for(&mut self, release: Release, wait: Wait) {
        match wait {
            Wait::Now => {}
            Wait::Record => self.defer(Deferred::Release(release)),
            Wait::Ticket { owed } => self.defer_release(release, owed),
            Wait::Shards {
                token,
                remote,
                local,
                owed,
            } => {
                let remaining = remote + u32::from(local);
                if local {
                    self.defer_release(Release::Local(token), owed);
                }
                self.pending.insert(
                    token,
                    Pending {
                        remaining,
                        failed: false,
                        release,
                    },
                );
            }
        }
    }

    /// Tells `token` on `shard` that what this tick made is stored, once the batch that
    /// carries it is (the next: a session's deliveries logged now are collected with it).
    pub fn reply_with_batch(&mut self, shard: usize, token: u64) {
        self.wait_for(Release::Reply { shard, token }, Wait::Ticket { owed: None });
    }

    /// The SUBACK with `token` waits for this tick's batch.
    pub fn when_stored(&mut self, token: u64) {
        self.defer(Deferred::SubAck(token));
    }

    /// An empty list to collect what a decision releases into; give it back when done.
    pub fn take_list(&mut self) -> Vec<Done> {
        std::mem::take(&mut self.list)
    }

    pub fn give_list(&mut self, list: Vec<Done>) {
        self.list = list;
    }

    /// An admin request's answer waits for this tick's batch (which holds its change).
    pub fn answer_when_stored(&mut self, to: SyncSender<Reply>, answer: Reply) {
        self.defer(Deferred::Control(to, answer));
    }

    /// Ends routing another shard's publish that came with a confirmation token (begun with
    /// [`Durable::begin`]): it is answered once what it created here is stored, or its
    /// deliveries acknowledged (now, when it created nothing).
    pub fn reply_when_stored(&mut self, shard: usize, token: u64) -> Option<Done> {
        let wait = self.end();
        if matches!(wait, Wait::Now) {
            return Some(Done::Reply {
                shard,
                token,
                stored: true,
            });
        }
        self.wait_for(Release::Reply { shard, token }, wait);
        None
    }

    /// One part of a publish waiting for other shards is decided: another shard's answer, or
    /// this shard's own ticket.
    pub fn settle(&mut self, token: u64, stored: bool, out: &mut Vec<Done>) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        p.remaining = p.remaining.saturating_sub(1);
        p.failed |= !stored;
        if p.remaining == 0 {
            if let Some(p) = self.pending.remove(&token) {
                self.release(p.release, !p.failed, out);
            }
        }
    }

    /// Whether what waits (`waiting`: this batch, or sessions' logs) has been held for the
    /// commit window; starts the hold when it was not running.
    pub fn hold_over(&mut self, waiting: bool) -> bool {
        if !waiting {
            return false;
        }
        if self.hold.is_zero() {
            return true;
        }
        match self.held_since {
            Some(since) => since.elapsed() >= self.hold,
            None => {
                self.held_since = Some(Instant::now());
                self.timed = false;
                if let Some(w) = self.timer.take() {
                    w.wake();
                }
                false
            }
        }
    }

    /// Whether the pump has to look at the hold: one must start, or the running one is over.
    pub fn hold_due(&self, waiting: bool) -> bool {
        waiting
            && self
                .held_since
                .is_none_or(|since| since.elapsed() >= self.hold)
    }

    /// For the hold's timer task: ready with the end of a hold it has not timed yet.
    pub fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<Instant> {
        match self.held_since {
            Some(since) if !self.timed => {
                self.timed = true;
                Poll::Ready(since + self.hold)
            }
            _ => {
                self.timer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Sends the open batch to the storage thread (once held for the commit window, and before
    /// a session moves to another shard, so the store hears its changes in order).
    pub fn flush(&mut self) {
        self.held_since = None;
        if !self.flush_due() {
            return;
        }
        let Some(link) = &self.link else {
            return;
        };
        let ops = std::mem::take(&mut self.open);
        let ticket = self.ticket;
        self.ticket += 1;
        // What waited for the next ticket now waits for the open one.
        let open = self.ticket;
        self.deferred.extend(self.next.drain(..).map(|d| (open, d)));
        self.waiting_open = std::mem::take(&mut self.waiting_next);
        if !link.send(Batch {
            shard: self.shard,
            ticket,
            ops,
        }) {
            self.results.push((ticket, false));
        }
    }

    /// Whether the open batch has anything to send: changes, or acknowledgements waiting for
    /// its ticket.
    pub fn flush_due(&self) -> bool {
        !self.open.is_empty() || self.waiting_open > 0 || self.waiting_next > 0
    }

    /// Whether the store has answered.
    pub fn answered(&self) -> bool {
        !self.results.is_empty() || self.link.as_ref().is_some_and(StoreLink::ready)
    }

    /// Takes the store's answers and what they release.
    pub fn take_done(&mut self, out: &mut Vec<Done>) {
        if let Some(link) = &self.link {
            link.take(&mut self.results);
        }
        let mut results = std::mem::take(&mut self.results);
        for &(ticket, stored) in &results {
            while let Some((t, _)) = self.deferred.front() {
                if *t > ticket {
                    break;
                }
                let Some((_, d)) = self.deferred.pop_front() else {
                    break;
                };
                match d {
                    Deferred::Release(r) => self.release(r, stored, out),
                    Deferred::Owed(ob) => {
                        if let Some(o) = self.owed.remove(&ob) {
                            self.release(o.release, stored, out);
                        }
                    }
                    Deferred::SubAck(token) => out.push(Done::SubAck { token, stored }),
                    Deferred::Control(to, answer) => out.push(Done::Control { to, answer, stored }),
                }
            }
        }
        results.clear();
        self.results = results;
    }

    /// Stops journaling (at shutdown, once the last batch is sent): the storage thread ends
    /// when every shard has let go.
    pub fn close(&mut self) {
        self.flush();
        self.link = None;
    }
}

/// Marks an acknowledgement decided and sends what its connection's queue now allows.
fn decide(ack: AckRef, stored: bool, out: &mut Vec<Done>) {
    let mut extras = ack.link.extras();
    if let Some(slot) = extras.acks.iter_mut().find(|s| s.id == ack.id) {
        slot.stored = Some(stored);
    }
    while let Some(stored) = extras.acks.front().and_then(|s| s.stored) {
        if let Some(s) = extras.acks.pop_front() {
            out.push(Done::Ack {
                link: ack.link.clone(),
                ack: s.ack,
                stored,
            });
        }
    }
}

fn has_waiting(link: &ConnLink) -> bool {
    link.extras
        .borrow()
        .as_ref()
        .is_some_and(|e| !e.acks.is_empty())
}

/// An acknowledgement with its reason; for what the store could not keep, 0x80 (v5) or, to a
/// v3 client that has no way to hear of it, a disconnect. A PUBCOMP goes as it is.
pub fn send_ack(link: &ConnLink, ack: Ack, stored: bool) {
    if link.is_closing() {
        return;
    }
    let refused = !stored && ack.kind != AckType::PubComp;
    if refused && !link.protocol.get().is_v5() {
        link.close(super::link::Close::new(
            ReasonCode::UnspecifiedError,
            "the store cannot keep the message",
        ));
        return;
    }
    let reason = if refused {
        ReasonCode::UnspecifiedError
    } else {
        ack.reason
    };
    link.send_ack(ack.kind, ack.packet_id, reason);
}
