//! What a connected client sends: PUBLISH (with topic aliases and exactly-once QoS 2), the
//! acknowledgements of our QoS 1/2 flows, SUBSCRIBE/UNSUBSCRIBE with retained delivery, PING
//! and DISCONNECT. Every protocol violation becomes a `Close` with its v5 reason code.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;

use super::capabilities;
use super::delayed::{self, Target};
use super::durable::{Ack, Wait};
use super::link::{Close, ConnLink, LinkState};
use super::{SessionSlot, Shard};
use crate::auth::Action;
use crate::codec::*;
use crate::session::{owned, Delivery, Message, OutState, SubIds, Subscription};
use crate::store::record::{wall_now, DelayedMessage};
use crate::topic::{parse_exclusive, parse_shared, routing_filter, Rewriter, Rewriting};

/// A SUBACK waiting until every other shard has applied the interest its subscriptions added,
/// so that a message published anywhere after the client sees its SUBACK reaches it; or an
/// UNSUBACK waiting until the arbiters of its `$exclusive/` filters have let go of them, so
/// that another client told of it may take them.
pub(super) struct PendingReply {
    key: usize,
    /// The slot's claim token when the SUBSCRIBE arrived: the slot may hold another client's
    /// session by the time every shard has answered.
    slot_token: u64,
    /// The SUBACK or UNSUBACK; `None` for the auto-subscriptions of a CONNECT, of which only
    /// the retained messages wait.
    reply: Option<Packet>,
    retained: Vec<(ByteString, SubOptions)>,
    sub_id: Option<u32>,
    /// The other shards' interest acknowledgements it waits for, and the store's (one, for a
    /// stored session: a SUBACK promises the subscription survives a crash), or the arbiters'.
    waiting: usize,
    /// The store could not keep the subscriptions: every filter is refused (0x80).
    refused: bool,
    /// `$exclusive/` subscriptions waiting for their arbiter (one more each in `waiting`).
    claims: Vec<ExclusiveClaim>,
}

impl PendingReply {
    /// A reply (`None` for the auto-subscriptions of a CONNECT, of which only the retained
    /// messages wait) for session `key`, whose slot holds `slot_token`, after `waiting`
    /// answers; no retained messages yet ([`PendingReply::with_retained`]).
    pub(super) fn new(key: usize, slot_token: u64, reply: Option<Packet>, waiting: usize) -> Self {
        PendingReply {
            key,
            slot_token,
            reply,
            retained: Vec::new(),
            sub_id: None,
            waiting,
            refused: false,
            claims: Vec::new(),
        }
    }

    /// The retained messages to deliver once it completes.
    pub(super) fn with_retained(mut self, retained: Vec<(ByteString, SubOptions)>) -> Self {
        self.retained = retained;
        self
    }
}

/// An exclusive subscription of a SUBSCRIBE, made once its arbiter grants it.
struct ExclusiveClaim {
    /// Its place among the SUBACK's reasons.
    index: usize,
    filter: ByteString,
    client_id: ByteString,
    sub: Subscription,
}

/// The SUBACK reason for a subscription granted at `qos`.
fn granted(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}

/// The reason a refused publish's acknowledgement carries: `code` for v5; success for v3,
/// which has no way to hear a refusal (the message is dropped).
pub(super) fn refusal(link: &ConnLink, code: ReasonCode) -> ReasonCode {
    if link.protocol.get().is_v5() {
        code
    } else {
        ReasonCode::Success
    }
}

fn within_limits(topic: &str, max_length: usize, max_levels: usize) -> bool {
    // Levels counted as separators plus one: a byte scan, not a string splitter (every publish).
    topic.len() <= max_length && topic.bytes().filter(|&b| b == b'/').count() < max_levels
}

/// The filter a subscription matches names with: a shared or exclusive one's inner filter.
pub(super) fn inner_filter(filter: &str) -> &str {
    parse_shared(filter)
        .and_then(Result::ok)
        .map_or(routing_filter(filter), |(_, f)| f)
}

/// `filter` with its inner filter (see [`inner_filter`]) replaced by `inner`.
fn with_inner(filter: &str, inner: &str) -> ByteString {
    let prefix = &filter[..filter.len() - inner_filter(filter).len()];
    ByteString::from(format!("{prefix}{inner}"))
}

fn protocol_error(why: &str) -> Close {
    Close::new(ReasonCode::ProtocolError, why)
}

impl Shard {
    /// Handles one decoded packet from `link`, read at `now`.
    pub(super) fn handle(
        &mut self,
        link: &Rc<ConnLink>,
        packet: Packet,
        now: Instant,
    ) -> Result<(), Close> {
        let key = match (link.state.get(), packet) {
            (LinkState::New, Packet::Connect(c)) => return self.on_connect(link, c),
            (LinkState::New, _) => return Err(protocol_error("first packet is not CONNECT")),
            (LinkState::Active(_), Packet::Connect(_)) => {
                return Err(protocol_error("second CONNECT"))
            }
            (LinkState::Active(key), p) => (key, p),
            _ => return Ok(()),
        };
        let (key, packet) = key;
        if !self.trace.clients.is_empty() {
            self.trace_packet(key, &packet);
        }
        match packet {
            Packet::Publish(p) => self.on_publish(key, link, p, now),
            Packet::PubAck(a) => {
                self.complete_flow(key, a.packet_id, OutState::Published, QoS::AtLeastOnce);
                self.pump_session(key, now);
                Ok(())
            }
            Packet::PubRec(a) => {
                let known = if a.reason.is_error() {
                    self.complete_flow(key, a.packet_id, OutState::Published, QoS::ExactlyOnce);
                    None
                } else {
                    self.with_session(key, |s| s.received(a.packet_id))
                };
                if let Some(known) = known {
                    let reason = if known {
                        ReasonCode::Success
                    } else {
                        ReasonCode::PacketIdentifierNotFound
                    };
                    link.send_ack(AckType::PubRel, a.packet_id, reason);
                }
                self.pump_session(key, now);
                Ok(())
            }
            Packet::PubRel(a) => {
                let (known, stored) = self
                    .with_session(key, |s| {
                        let known = s.release_inbound(a.packet_id);
                        if known {
                            s.meta_changed();
                        }
                        (known, s.stored.is_some())
                    })
                    .unwrap_or((false, false));
                let reason = if known {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                let wait = if known && stored {
                    Wait::Record
                } else {
                    Wait::Now
                };
                let ack = Ack {
                    kind: AckType::PubComp,
                    packet_id: a.packet_id,
                    reason,
                };
                self.durable.enqueue_ack(link, ack, wait);
                Ok(())
            }
            Packet::PubComp(a) => {
                self.complete_flow(key, a.packet_id, OutState::Released, QoS::ExactlyOnce);
                self.pump_session(key, now);
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(key, link, s, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(key, link, u),
            Packet::PingReq => {
                link.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(key, link, d),
            Packet::Auth(_) => Err(protocol_error("AUTH without an authentication method")),
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(protocol_error("a packet only a server sends")),
        }
    }

    /// One answer a pending reply waits for came: a shard applied new interest or an arbiter
    /// let go (or the store kept the subscriptions, `stored`); the reply goes once all have.
    pub(super) fn reply_answered(&mut self, token: u64, stored: bool) {
        let Some(p) = self.pending_replies.get_mut(&token) else {
            return;
        };
        p.waiting -= 1;
        p.refused |= !stored;
        if p.waiting == 0 {
            if let Some(p) = self.pending_replies.remove(&token) {
                self.complete_reply(p, Instant::now());
            }
        }
    }

    /// The arbiter of an `$exclusive/` filter answered a SUBSCRIBE's claim: the subscription
    /// is made (and its interest waited for like any other), or refused with 0x97.
    pub(super) fn exclusive_answered(&mut self, token: u64, filter: ByteString, granted_: bool) {
        let Some(p) = self.pending_replies.get_mut(&token) else {
            return;
        };
        let Some(i) = p.claims.iter().position(|c| c.filter == filter) else {
            return;
        };
        let claim = p.claims.swap_remove(i);
        let (key, slot_token) = (p.key, p.slot_token);
        let alive = self
            .sessions
            .get(key)
            .is_some_and(|s| s.token == slot_token);
        let made = if granted_ && alive {
            self.add_subscription(key, &filter, claim.sub, Some(token))
        } else {
            None
        };
        if granted_ && made.is_none() {
            // Granted to a session that is gone: free it again.
            self.release_exclusive(&filter, &claim.client_id, None);
        }
        let answers = made.map_or(0, |(_, first)| self.interest_answers(usize::from(first)));
        // The subscription joins this tick's batch, later than the one the SUBSCRIBE waited
        // for: a kept session's SUBACK waits for this one too.
        let stored = made.is_some()
            && self
                .sessions
                .get(key)
                .is_some_and(|s| s.session.stored.is_some());
        if stored {
            self.durable.when_stored(token);
        }
        let Some(p) = self.pending_replies.get_mut(&token) else {
            return;
        };
        p.waiting += usize::from(stored);
        if let Some((existed, _)) = made {
            let options = claim.sub.options;
            if let Some(Packet::SubAck(suback)) = p.reply.as_mut() {
                suback.reasons[claim.index] = granted(options.qos);
            }
            p.waiting += answers;
            if options.wants_retained(existed) {
                p.retained.push((filter, options));
            }
        }
        self.reply_answered(token, true);
    }

    /// Sends the SUBACK, then the retained messages the subscription asked for.
    fn complete_reply(&mut self, mut p: PendingReply, now: Instant) {
        let Some(link) = self
            .sessions
            .get(p.key)
            .filter(|s| s.token == p.slot_token)
            .and_then(|s| s.link.clone())
        else {
            return;
        };
        if p.refused {
            if let Some(Packet::SubAck(suback)) = p.reply.as_mut() {
                suback.reasons.fill(ReasonCode::UnspecifiedError);
            }
            p.retained.clear();
        }
        if let Some(reply) = p.reply {
            link.send(&reply);
        }
        for (filter, options) in p.retained {
            self.deliver_retained(p.key, &filter, options, p.sub_id, now);
        }
    }

    /// Delivers the retained messages matching a new subscription to session `key`.
    pub(super) fn deliver_retained(
        &mut self,
        key: usize,
        filter: &str,
        options: SubOptions,
        sub_id: Option<u32>,
        now: Instant,
    ) {
        let mut found = Vec::new();
        self.retained
            .for_each_match(routing_filter(filter), |m| found.push(m.clone()));
        for msg in found {
            if msg.is_expired(now) {
                continue;
            }
            let qos = msg.qos.min(options.qos);
            let sub_ids: SubIds = sub_id.into_iter().collect();
            self.deliver_to(
                key,
                Delivery {
                    msg,
                    qos,
                    retain: true,
                    sub_ids,
                    group: None,
                    seq: 0,
                    owed: None,
                },
                now,
            );
        }
    }

    /// Whether a topic name or filter is within `mqtt.max_topic_levels` and `max_topic_length`.
    pub(super) fn topic_within_limits(&self, topic: &str) -> bool {
        let m = &self.cfg.mqtt;
        within_limits(topic, m.max_topic_length, m.max_topic_levels)
    }

    /// Asks the ACL (through the client's cache) whether `client_id` on `link` may do `action`.
    pub(super) fn authorize(
        &self,
        link: &ConnLink,
        client_id: &str,
        action: Action,
        topic: &str,
    ) -> bool {
        if !self.auth.has_acl() {
            return true;
        }
        let mut extras = link.extras();
        let ident = extras
            .auth
            .get_or_insert_with(|| crate::auth::ClientAuth::new(None, link.peer.ip()));
        ident.authorize(
            &self.auth,
            client_id,
            action,
            topic,
            self.cfg.auth.acl_cache_size,
        )
    }

    /// What the first rewrite rule matching `topic` makes of it for this client, if it
    /// changes it.
    fn rewritten(
        &self,
        link: &ConnLink,
        client_id: &str,
        what: Rewriting,
        topic: &str,
    ) -> Option<String> {
        if self.cfg.rewrite.is_empty() {
            return None;
        }
        let extras = link.extras();
        let username = extras.auth.as_ref().and_then(|a| a.username.as_deref());
        Rewriter {
            client_id,
            username,
        }
        .apply(&self.cfg.rewrite, what, topic)
    }

    /// A client's packet ids are one space for PUBLISH, SUBSCRIBE and UNSUBSCRIBE: one still held
    /// by an unreleased inbound QoS 2 message is in use (SUBACK/UNSUBACK 0x91).
    fn packet_id_in_use(&self, key: usize, pid: u16) -> bool {
        self.sessions
            .get(key)
            .is_some_and(|s| s.session.inbound_qos2.contains(&pid))
    }

    fn with_session<R>(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut crate::session::Session) -> R,
    ) -> Option<R> {
        let slot: &mut SessionSlot = self.sessions.get_mut(key)?;
        let r = f(&mut slot.session);
        if slot.session.stored.is_some() {
            self.touch(key);
        }
        Some(r)
    }

    fn on_publish(
        &mut self,
        key: usize,
        link: &Rc<ConnLink>,
        p: Publish,
        now: Instant,
    ) -> Result<(), Close> {
        let m = &self.cfg.mqtt;
        let (alias_max, receive_max) = (m.topic_alias_maximum, m.receive_maximum);
        #[cfg(debug_assertions)]
        crate::fault::panic_on_topic(&p.topic);
        if p.properties
            .as_ref()
            .is_some_and(|pr| !pr.subscription_identifiers.is_empty())
        {
            return Err(protocol_error(
                "PUBLISH from a client with a subscription identifier",
            ));
        }
        capabilities::refuse_publish(m, p.qos, p.retain)?;
        let max_topic_length = self.cfg.mqtt.max_topic_length;
        let max_topic_levels = self.cfg.mqtt.max_topic_levels;
        let Some(slot) = self.sessions.get_mut(key) else {
            return Ok(());
        };
        let session = &mut slot.session;
        let mut topic = p.topic;
        if let Some(alias) = p.properties.as_ref().and_then(|pr| pr.topic_alias) {
            if alias == 0 || alias > alias_max {
                return Err(Close::new(
                    ReasonCode::TopicAliasInvalid,
                    "topic alias above the maximum",
                ));
            }
            let aliases = session.aliases.get_or_insert_with(Box::default);
            if topic.is_empty() {
                topic = aliases
                    .inbound
                    .get(&alias)
                    .cloned()
                    .ok_or_else(|| protocol_error("unknown topic alias"))?;
            } else {
                aliases.inbound.insert(alias, owned(&topic));
            }
        }
        if !within_limits(&topic, max_topic_length, max_topic_levels) {
            return Err(Close::new(
                ReasonCode::TopicNameInvalid,
                "topic name over mqtt.max_topic_levels or max_topic_length",
            ));
        }
        let ack = |reason: ReasonCode| Ack::of(p.qos, p.packet_id, reason);
        let client_id = session.client_id.clone();
        let (allowed, delay, target) = match delayed::target(&topic, &self.cfg.delayed) {
            Target::Plain => {
                let target = self.rewritten(link, &client_id, Rewriting::Publish, &topic);
                let may = |t: &str| {
                    !t.starts_with('$') && self.authorize(link, &client_id, Action::Publish, t)
                };
                (
                    may(&topic) && target.as_deref().is_none_or(may),
                    None,
                    target,
                )
            }
            Target::Delayed { secs, topic: to } => {
                let ok = self.authorize(link, &client_id, Action::Publish, &topic)
                    && self.authorize(link, &client_id, Action::Publish, to);
                (ok, Some((secs, ByteString::from(to))), None)
            }
            Target::Bad(why) => {
                tracing::debug!(client = %client_id, peer = %link.peer, %topic, why, "delayed publish refused");
                if let Some(a) = ack(refusal(link, ReasonCode::TopicNameInvalid)) {
                    self.durable.enqueue_ack(link, a, Wait::Now);
                }
                return Ok(());
            }
        };
        if !allowed {
            self.stats.acl_denied.inc();
            // Debug, not info: a client can send these as fast as it can write, and the
            // counter (ringmq_acl_denied_total) says how many there were.
            tracing::debug!(client = %client_id, peer = %link.peer, %topic, "publish not authorized");
            if let Some(a) = ack(refusal(link, ReasonCode::NotAuthorized)) {
                self.durable.enqueue_ack(link, a, Wait::Now);
            }
            return Ok(());
        }
        if let Some(t) = target {
            topic = t.into();
        }
        self.charge_publish(link, p.payload.len(), now)?;
        let duplicate = match (p.qos, p.packet_id) {
            (QoS::ExactlyOnce, Some(id)) => self
                .sessions
                .get(key)
                .is_some_and(|s| s.session.inbound_qos2.contains(&id)),
            _ => false,
        };
        if duplicate {
            // Taken already: answered again, whatever the rings hold (MQTT-4.3.3), behind the
            // first answer if that one still waits for the store.
            if let Some(a) = ack(ReasonCode::Success) {
                self.durable.enqueue_ack(link, a, Wait::Now);
            }
            return Ok(());
        }
        if self.mesh.backlog_full(self.cfg.broker.max_ring_backlog) {
            return self.refuse_for_backlog(link, &client_id, ack(ReasonCode::QuotaExceeded));
        }
        let Some(slot) = self.sessions.get_mut(key) else {
            return Ok(());
        };
        let session = &mut slot.session;
        if ack(ReasonCode::Success).is_some() {
            self.durable.begin();
        }
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            if session.inbound_qos2.len() >= usize::from(receive_max) {
                self.durable.end();
                return Err(Close::new(
                    ReasonCode::ReceiveMaximumExceeded,
                    "too many unreleased QoS 2 messages",
                ));
            }
            session.inbound_qos2.push(id);
            if session.stored.is_some() {
                // The id is part of what the PUBREC promises.
                session.meta_changed();
                self.durable.produced();
                self.touch(key);
            }
        }
        self.stats.msgs_in[p.qos as usize].inc();
        let reason = match delay {
            Some((secs, to)) if secs > 0 => {
                let held = DelayedMessage {
                    publish_at: wall_now().saturating_add(secs * 1000),
                    topic: to,
                    payload: bytes::Bytes::copy_from_slice(&p.payload),
                    qos: p.qos,
                    retain: p.retain,
                    props: p.properties,
                    origin: client_id,
                };
                self.hold_delayed(link, held)
            }
            now_to => {
                let msg = Message::new(
                    now_to.map_or(topic, |(_, to)| to),
                    p.payload,
                    p.qos,
                    p.retain,
                    p.properties.as_deref(),
                    client_id,
                    now,
                );
                self.publish_message(Arc::new(msg), now);
                ReasonCode::Success
            }
        };
        if let (true, QoS::ExactlyOnce, Some(id)) = (reason.is_error(), p.qos, p.packet_id) {
            if let Some(slot) = self.sessions.get_mut(key) {
                slot.session.release_inbound(id);
            }
        }
        if let Some(a) = ack(reason) {
            let wait = self.durable.end();
            self.durable.enqueue_ack(link, a, wait);
        }
        Ok(())
    }

    /// A publish while a ring backlog is at its bound: nothing is acknowledged that was not
    /// routed. v5 gets 0x97 in its PUBACK/PUBREC, a v3 QoS 1/2 publisher (which has no way to
    /// hear "not taken") is disconnected, QoS 0 is dropped; each is counted.
    fn refuse_for_backlog(
        &mut self,
        link: &Rc<ConnLink>,
        client_id: &str,
        nack: Option<Ack>,
    ) -> Result<(), Close> {
        self.stats.refused(crate::stats::Refusal::Backlog);
        tracing::debug!(client = %client_id, peer = %link.peer, "publish refused: ring backlog full");
        match nack {
            Some(a) if link.protocol.get().is_v5() => self.durable.enqueue_ack(link, a, Wait::Now),
            Some(_) => {
                return Err(Close::new(
                    ReasonCode::ServerBusy,
                    "ring backlog full: QoS 1/2 publish not taken",
                ))
            }
            None => {}
        }
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        key: usize,
        link: &ConnLink,
        s: Subscribe,
        now: Instant,
    ) -> Result<(), Close> {
        if self.packet_id_in_use(key, s.packet_id) {
            let reasons = vec![ReasonCode::PacketIdentifierInUse; s.filters.len()];
            link.send(&Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reasons,
                properties: None,
            }));
            return Ok(());
        }
        let sub_id = s
            .properties
            .as_ref()
            .and_then(|p| p.subscription_identifiers.first().copied());
        capabilities::refuse_subscription_id(&self.cfg.mqtt, sub_id)?;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained: Vec<(ByteString, SubOptions)> = Vec::new();
        let token = self.token();
        let mut new_interest = 0;
        let mut claims = Vec::new();
        let max_subs = self.cfg.mqtt.max_subscriptions;
        for (filter, mut options) in s.filters {
            let filter = owned(&filter);
            if !self.topic_within_limits(&filter) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            if let Some(refused) = capabilities::refuse_filter(&self.cfg.mqtt, &filter) {
                reasons.push(refused);
                continue;
            }
            options.qos = capabilities::granted(&self.cfg.mqtt, options.qos);
            let client_id = self
                .sessions
                .get(key)
                .map(|s| s.session.client_id.clone())
                .unwrap_or_default();
            let inner = inner_filter(&filter);
            let target = self.rewritten(link, &client_id, Rewriting::Subscribe, inner);
            let may = |f: &str| self.authorize(link, &client_id, Action::Subscribe, f);
            if !(may(inner) && target.as_deref().is_none_or(may)) {
                self.stats.acl_denied.inc();
                tracing::debug!(client = %client_id, peer = %link.peer, %filter, "subscription not authorized");
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            let filter = match target {
                Some(t) => with_inner(&filter, &t),
                None => filter,
            };
            // A rewritten filter is held to the same limits as the one sent.
            if !self.topic_within_limits(&filter) {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let full = self.sessions.get(key).is_some_and(|s| {
                max_subs > 0
                    && s.session.subscriptions.len() >= max_subs
                    && !s.session.subscriptions.contains_key(&filter)
            });
            if full {
                tracing::debug!(client = %client_id, %filter, "mqtt.max_subscriptions reached");
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let shared = parse_shared(&filter).is_some();
            if shared && options.no_local {
                return Err(protocol_error("no local on a shared subscription"));
            }
            let sub = Subscription {
                options,
                id: sub_id,
            };
            let held = self
                .sessions
                .get(key)
                .is_some_and(|s| s.session.subscriptions.contains_key(&filter));
            if parse_exclusive(&filter).is_some() && !held {
                self.claim_exclusive(&filter, &client_id, token);
                claims.push(ExclusiveClaim {
                    index: reasons.len(),
                    filter,
                    client_id: client_id.clone(),
                    sub,
                });
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let Some((existed, first)) = self.add_subscription(key, &filter, sub, Some(token))
            else {
                return Ok(());
            };
            new_interest += usize::from(first);
            reasons.push(granted(options.qos));
            if options.wants_retained(existed) && !shared {
                retained.push((filter, options));
            }
        }
        let suback = SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: None,
        };
        let slot = self.sessions.get(key);
        let stored = slot.is_some_and(|s| s.session.stored.is_some());
        if stored {
            self.durable.when_stored(token);
        }
        let waiting = self.interest_answers(new_interest) + usize::from(stored) + claims.len();
        let mut pending = self
            .pending_reply(key, Some(Packet::SubAck(suback)), waiting)
            .with_retained(retained);
        pending.sub_id = sub_id;
        pending.claims = claims;
        self.complete_or_wait(token, pending, now);
        Ok(())
    }

    /// A reply for session `key` (as it is now) after `waiting` answers.
    pub(super) fn pending_reply(
        &self,
        key: usize,
        reply: Option<Packet>,
        waiting: usize,
    ) -> PendingReply {
        let slot_token = self.sessions.get(key).map_or(0, |s| s.token);
        PendingReply::new(key, slot_token, reply, waiting)
    }

    /// Completes a (un)subscription now, or once everything it waits for has answered.
    pub(super) fn complete_or_wait(&mut self, token: u64, pending: PendingReply, now: Instant) {
        if pending.waiting == 0 {
            self.complete_reply(pending, now);
        } else {
            self.pending_replies.insert(token, pending);
        }
    }

    fn on_unsubscribe(&mut self, key: usize, link: &ConnLink, u: Unsubscribe) -> Result<(), Close> {
        if self.packet_id_in_use(key, u.packet_id) {
            let reasons = vec![ReasonCode::PacketIdentifierInUse; u.filters.len()];
            link.send(&Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                reasons,
                properties: None,
            }));
            return Ok(());
        }
        let mut reasons = Vec::with_capacity(u.filters.len());
        let token = self.token();
        let mut releases = 0;
        let client_id = self
            .sessions
            .get(key)
            .map(|s| s.session.client_id.clone())
            .unwrap_or_default();
        for filter in u.filters {
            let target = self.rewritten(
                link,
                &client_id,
                Rewriting::Subscribe,
                inner_filter(&filter),
            );
            let filter = match target {
                Some(t) => with_inner(&filter, &t),
                None => filter,
            };
            if self.remove_subscription(key, &filter, Some(token)) {
                releases += usize::from(parse_exclusive(&filter).is_some());
                reasons.push(ReasonCode::Success);
            } else {
                reasons.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        let unsuback = UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: None,
        };
        let pending = self.pending_reply(key, Some(Packet::UnsubAck(unsuback)), releases);
        self.complete_or_wait(token, pending, Instant::now());
        Ok(())
    }

    fn on_disconnect(&mut self, key: usize, link: &ConnLink, d: Disconnect) -> Result<(), Close> {
        let new_expiry = d
            .properties
            .as_ref()
            .and_then(|p| p.session_expiry_interval);
        let max = self.cfg.mqtt.max_session_expiry;
        let Some(slot) = self.sessions.get_mut(key) else {
            return Ok(());
        };
        if let Some(e) = new_expiry {
            if slot.session.expiry_interval == 0 && e != 0 {
                return Err(protocol_error(
                    "session expiry set on DISCONNECT after 0 at CONNECT",
                ));
            }
            slot.session.expiry_interval = e.min(max);
        }
        if d.reason != ReasonCode::DisconnectWithWill {
            slot.session.will = None;
        }
        slot.session.meta_changed();
        self.touch(key);
        link.close(Close::new(ReasonCode::Success, "client disconnected"));
        Ok(())
    }
}
