//! Routing a publish: retained store first, then once to each other shard whose interest
//! matches, then to this shard's own subscribers (one copy per session at the highest granted
//! QoS, with every matching subscription identifier), then to one member of each matching
//! shared group, picked across shards and then among a shard's members by the configured
//! strategy (`strategy`).

use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::strategy::Choice;
use super::{Shard, SubEntry};
use crate::codec::QoS;
use crate::ring::XMsg;
use crate::session::{Admit, Delivery, Message, Outgoing, Session, SubIds, Subscription, Written};
use crate::stats::DropReason;
use crate::store::record::{wall_now, StoredMessage};
use crate::store::Op;
use crate::topic::Levels;

impl Shard {
    /// Stores a retained message (and tells every replica), then routes the message.
    pub(super) fn publish_message(&mut self, msg: Arc<Message>, now: Instant) {
        if !self.trace.topics.is_empty() {
            self.trace_publish(&msg);
        }
        if msg.retain && self.may_retain(&msg) {
            let stored = Arc::new(msg.compacted());
            self.report_retained(&stored);
            self.journal_retained(&stored);
            self.retained.set(stored.clone());
            self.stats.retained.set(self.retained.len() as i64);
            self.mesh.broadcast(|| XMsg::Retain(stored.clone()));
        }
        self.route(msg, now);
    }

    /// The retained-message limits: payload size, and the count for a topic not yet stored.
    fn may_retain(&self, msg: &Message) -> bool {
        let m = &self.cfg.mqtt;
        if msg.payload.is_empty() || msg.topic.starts_with('$') {
            return true;
        }
        if m.max_retained_payload > 0 && msg.payload.len() > m.max_retained_payload {
            tracing::info!(topic = %msg.topic, bytes = msg.payload.len(), "retained payload over mqtt.max_retained_payload: not retained");
            return false;
        }
        if m.max_retained_messages > 0 && self.retained.len() >= m.max_retained_messages {
            let mut exists = false;
            self.retained.for_each_match(&msg.topic, |_| exists = true);
            if !exists {
                tracing::info!(topic = %msg.topic, "mqtt.max_retained_messages reached: not retained");
                return false;
            }
        }
        true
    }

    /// Purges this replica's expired retained messages (from the sweep); shard 0 counts them
    /// and tells the store, which removes a kept one only if it expired too.
    pub(super) fn purge_retained(&mut self, now: Instant) {
        let gone = self.retained.purge_expired(now);
        if gone.is_empty() {
            return;
        }
        self.stats.retained.set(self.retained.len() as i64);
        if self.id != 0 {
            return;
        }
        self.stats.retained_expired.add(gone.len() as i64);
        if self.durable.journaled() {
            for topic in gone {
                self.durable.push(Op::ExpireRetained(topic));
            }
            self.mesh.wake_pump();
        }
    }

    fn route(&mut self, msg: Arc<Message>, now: Instant) {
        self.route_within(msg, now, false);
    }

    /// Routes a publish another node forwarded: to this node's shards only.
    pub(super) fn route_local(&mut self, msg: Arc<Message>, now: Instant) {
        self.route_within(msg, now, true);
    }

    /// Routes to this node's shards and (unless `local`) to the remote nodes with
    /// subscribers, once each.
    fn route_within(&mut self, msg: Arc<Message>, now: Instant, local: bool) {
        let choice = self.choice(&msg);
        // Alone, the shard needs no interest table to know where plain subscribers are: its
        // own trie says. With others, it walks its trie only if the table says it has some.
        let alone = self.shards == 1 && self.remote.is_none();
        let within = local.then_some(self.shards);
        let groups = Levels::with(&msg.topic, |levels| {
            let (targets, groups) = self.router.targets(levels, &choice, !alone, within);
            let me = self.id;
            for t in targets.iter().filter(|t| *t != me) {
                if t < self.shards {
                    let confirm = self.durable.confirm();
                    self.send(
                        t,
                        XMsg::Publish {
                            msg: msg.clone(),
                            confirm,
                        },
                    );
                } else if !local {
                    let confirm = self.durable.confirm();
                    self.forward(t - self.shards, &msg, None, confirm, now);
                }
            }
            if alone || targets.contains(self.id) {
                self.deliver_matches(&msg, levels, now);
            }
            groups
        });
        for (group, shard) in groups {
            self.dispatch_shared(group, shard, msg.clone(), now);
        }
    }

    /// Forwards to the remote node in `slot` (for one member of `group` there, when given);
    /// `confirm`: the token the publish's acknowledgement waits on.
    fn forward(
        &self,
        slot: usize,
        msg: &Message,
        group: Option<ByteString>,
        confirm: Option<u64>,
        now: Instant,
    ) {
        if let Some(remote) = &self.remote {
            let stored = StoredMessage::of(msg, now, wall_now());
            remote.forward(slot, stored, group.map(|g| g.to_string()), confirm);
        }
    }

    /// A shared group's message another node forwarded: to one member on this node.
    pub(super) fn dispatch_local_shared(
        &mut self,
        group: ByteString,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let shard = self
            .router
            .group_shard(&group, &self.choice(&msg), Some(self.shards));
        self.dispatch_shared(group, shard, msg, now);
    }

    /// Sends a message to the shared group's member whose turn it is (a shard, or a remote
    /// node; `None`: it has none).
    fn dispatch_shared(
        &mut self,
        group: ByteString,
        shard: Option<usize>,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let Some(shard) = shard else {
            self.stats.dropped(DropReason::NoMember);
            return;
        };
        if shard == self.id {
            self.deliver_shared_local(&group, msg, now);
        } else if shard >= self.shards {
            let confirm = self.durable.confirm();
            self.forward(shard - self.shards, &msg, Some(group), confirm, now);
        } else {
            let confirm = self.durable.confirm();
            self.send(
                shard,
                XMsg::Shared {
                    group,
                    msg,
                    confirm,
                },
            );
        }
    }

    /// How shared groups pick the member for `msg` (`mqtt.shared_subscription_strategy`).
    fn choice(&self, msg: &Message) -> Choice {
        Choice::new(self.cfg.mqtt.shared_subscription_strategy, msg, &self.rng)
    }

    /// Delivers to one member of a local shared group, as the strategy picks it.
    pub(super) fn deliver_shared_local(
        &mut self,
        group: &ByteString,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let limit = self.cfg.mqtt.max_outbound_bytes;
        let sessions = &self.sessions;
        let ready = |e: &SubEntry| {
            sessions
                .get(e.session)
                .and_then(|s| s.link.as_ref())
                .is_some_and(|l| l.out.borrow().len() < limit)
        };
        let choice = self.choice(&msg);
        let Some(member) = self.router.pick_member(group, &choice, ready) else {
            self.stats.dropped(DropReason::NoMember);
            return;
        };
        let d = Delivery {
            qos: msg.qos.min(member.options.qos),
            retain: member.options.retain_as_published && msg.retain,
            sub_ids: member.id.into_iter().collect(),
            group: Some(group.clone()),
            seq: 0,
            owed: None,
            msg,
        };
        self.deliver_to(member.session, d, now);
    }

    /// Delivers to this shard's own subscribers: one copy per session.
    pub(super) fn deliver_local(&mut self, msg: &Arc<Message>, now: Instant) {
        Levels::with(&msg.topic, |levels| self.deliver_matches(msg, levels, now));
    }

    /// Delivers to this shard's own subscribers of the name split in `levels`.
    fn deliver_matches(&mut self, msg: &Arc<Message>, levels: &Levels<'_>, now: Instant) {
        let hits = self.router.local_matches(levels);
        let mut i = 0;
        while i < hits.len() {
            let key = hits[i].session;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut sub_ids = SubIds::new();
            while i < hits.len() && hits[i].session == key {
                let e = hits[i];
                i += 1;
                // Only no-local subscriptions pay for comparing client ids.
                if e.options.no_local
                    && self
                        .sessions
                        .get(key)
                        .is_some_and(|s| s.session.client_id == msg.origin)
                {
                    continue;
                }
                qos = Some(qos.map_or(e.options.qos, |q| q.max(e.options.qos)));
                retain |= e.options.retain_as_published && msg.retain;
                sub_ids.extend(e.id);
            }
            if let Some(q) = qos {
                let d = Delivery {
                    msg: msg.clone(),
                    qos: msg.qos.min(q),
                    retain,
                    sub_ids,
                    group: None,
                    seq: 0,
                    owed: None,
                };
                self.deliver_to(key, d, now);
            }
        }
        self.router.recycle(hits);
    }

    /// Hands one delivery to a session: written now, queued, or dropped (and counted).
    pub(super) fn deliver_to(&mut self, key: usize, mut d: Delivery, now: Instant) {
        let limit = self.cfg.mqtt.max_outbound_bytes;
        let limits = self.limits();
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        if d.msg.is_expired(now) {
            return;
        }
        let link = slot.link.clone().filter(|l| l.out.borrow().len() < limit);
        let stored = slot.session.stored.is_some();
        if stored {
            d.owed = self.durable.owed();
        }
        match slot.session.admit(d, link.is_some(), &limits) {
            Admit::Send(out) => {
                let session = &mut slot.session;
                let written =
                    link.map(|link| session.write(&out, false, now, |p| link.send_publish(p)));
                // A flow ended as too large took its log entry along: nothing waits for it.
                let dropped = written == Some(Written::TooLarge);
                if stored && matches!(out, Outgoing::Flow(_)) && !dropped {
                    self.durable.produced_put();
                }
                if let Some(written) = written {
                    self.stats.count_written(&written);
                }
            }
            Admit::Queued => {
                if stored {
                    self.durable.produced_put();
                }
                // Queued behind earlier messages while the connection has room: they move now.
                if link.is_some() {
                    self.pump_session(key, now);
                }
            }
            Admit::Dropped => self.stats.dropped_for(&slot.session.client_id),
        }
        if stored {
            self.touch(key);
        }
    }

    /// Moves queued messages into the window while the connection has room.
    pub(super) fn pump_session(&mut self, key: usize, now: Instant) {
        let limit = self.cfg.mqtt.max_outbound_bytes;
        let Some(slot) = self
            .sessions
            .get_mut(key)
            .filter(|s| !s.session.queue.is_empty())
        else {
            return;
        };
        let Some(link) = slot.link.clone() else {
            return;
        };
        while link.out.borrow().len() < limit {
            let Some(out) = slot.session.next_queued(now) else {
                break;
            };
            let written = slot
                .session
                .write(&out, false, now, |p| link.send_publish(p));
            self.stats.count_written(&written);
        }
        if slot.session.stored.is_some() {
            self.touch(key);
        }
    }

    /// Gives a leaving session's unacknowledged shared-subscription messages to other members.
    pub(super) fn redispatch_shared(&mut self, session: &mut Session, now: Instant) {
        for d in session.take_shared() {
            if let Some(group) = d.group {
                let shard = self.router.group_shard(&group, &self.choice(&d.msg), None);
                self.dispatch_shared(group, shard, d.msg, now);
            }
        }
    }

    /// How many answers a reply waits for after `first` filters became this shard's first
    /// interest: one from each other shard and, in a cluster, one once every node routes them.
    pub(super) fn interest_answers(&self, first: usize) -> usize {
        first * (self.shards - 1 + usize::from(self.remote.is_some()))
    }

    /// Applies an interest change here and tells every other shard; with `ack`, each of them
    /// answers (for a SUBACK that waits until the subscription is visible everywhere), and so
    /// does the cluster once every node has the route.
    fn interest_changed(&mut self, filter: &ByteString, add: bool, ack: Option<u64>) {
        self.router.apply_interest(filter, self.id, add);
        if let Some(remote) = &self.remote {
            let filter = filter.to_string();
            let ack = ack.map(|token| (self.id, token));
            remote.report(crate::cluster::Event::Interest { filter, add, ack });
        }
        let shard = self.id;
        self.mesh.broadcast(|| XMsg::Interest {
            filter: filter.clone(),
            shard,
            add,
            ack,
        });
    }

    /// Records a subscription in the session and indexes it: `None` when there is no such
    /// session, else whether the session already had the filter and whether this was the
    /// shard's first interest in it (as [`Shard::index_subscription`]).
    pub(super) fn add_subscription(
        &mut self,
        key: usize,
        filter: &ByteString,
        sub: Subscription,
        ack: Option<u64>,
    ) -> Option<(bool, bool)> {
        let slot = self.sessions.get_mut(key)?;
        let existed = slot
            .session
            .subscriptions
            .insert(filter.clone(), sub)
            .is_some();
        slot.session.meta_changed();
        self.touch(key);
        Some((existed, self.index_subscription(key, filter, sub, ack)))
    }

    /// Removes a subscription from the session and the index; true when it had one. The
    /// arbiter of an `$exclusive/` one answers `ack` once it has let go.
    pub(super) fn remove_subscription(
        &mut self,
        key: usize,
        filter: &str,
        ack: Option<u64>,
    ) -> bool {
        let removed = self
            .sessions
            .get_mut(key)
            .and_then(|s| s.session.subscriptions.remove_entry(filter));
        match removed {
            Some((filter, _)) => {
                if let Some(slot) = self.sessions.get_mut(key) {
                    slot.session.meta_changed();
                    let client_id = slot.session.client_id.clone();
                    self.release_exclusive(&filter, &client_id, ack);
                }
                self.touch(key);
                self.unindex_subscription(key, &filter);
                true
            }
            None => false,
        }
    }

    /// Adds (or replaces) a session's subscription in the trie or its shared group; true when
    /// it is the shard's first interest in the filter (other shards are told, with `ack`).
    pub(super) fn index_subscription(
        &mut self,
        key: usize,
        filter: &ByteString,
        sub: Subscription,
        ack: Option<u64>,
    ) -> bool {
        let entry = SubEntry {
            session: key,
            options: sub.options,
            id: sub.id,
        };
        let done = self.router.index(filter, entry);
        if done.new {
            self.stats.subscriptions.inc();
        }
        if done.first {
            self.interest_changed(filter, true, ack);
        }
        done.first
    }

    pub(super) fn unindex_subscription(&mut self, key: usize, filter: &ByteString) {
        let (removed, last) = self.router.unindex(key, filter);
        if removed {
            self.stats.subscriptions.dec();
        }
        if last {
            self.interest_changed(filter, false, None);
        }
    }

    /// Indexes every subscription of a session that arrived from another shard or came back.
    pub(super) fn resubscribe(&mut self, key: usize) {
        let Some(slot) = self.sessions.get(key) else {
            return;
        };
        let subs: Vec<(ByteString, Subscription)> = slot
            .session
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        for (filter, sub) in subs {
            self.index_subscription(key, &filter, sub, None);
        }
    }
}
