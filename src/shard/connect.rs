//! CONNECT and the life of a session across shards. A client id has a home shard that records
//! which shard owns its session. A CONNECT claims the id at home; home grants it at once, or
//! asks the current owner to close the old connection and hand the session over (takeover).
//! When a session ends, its owner tells home. Wills and session expiry are timed here too.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::capabilities;
use super::link::{Close, ConnLink, LinkState};
use super::waiting::Successor;
use super::{SessionSlot, Shard, TimerKind};
use crate::auth::checker::{Check, Verdict};
use crate::codec::{AckType, ConnAck, Connect, Packet, Properties, Protocol, ReasonCode, Will};
use crate::ring::{Grant, XMsg};
use crate::session::{owned, Message, OutState, Outgoing, Session};

impl Shard {
    pub(super) fn on_connect(
        &mut self,
        link: &Rc<ConnLink>,
        mut c: Box<Connect>,
    ) -> Result<(), Close> {
        link.protocol.set(c.protocol);
        let v5 = c.protocol.is_v5();
        if let Some(reason) = link.refusal.get() {
            return Err(Close::new(
                reason,
                "connection refused: over a limit or overloaded",
            ));
        }
        if c.properties
            .as_ref()
            .is_some_and(|p| p.authentication_method.is_some())
        {
            return Err(Close::new(
                ReasonCode::BadAuthenticationMethod,
                "no authentication method is configured",
            ));
        }
        if c.client_id.is_empty() {
            if !(v5 || (c.clean_start && c.protocol == Protocol::V311)) {
                return Err(Close::new(
                    ReasonCode::ClientIdentifierNotValid,
                    "empty client id",
                ));
            }
            self.next_assigned_id += 1;
            let id = format!("ringmq-{}-{}", self.id, self.next_assigned_id);
            c.client_id = ByteString::from(id);
            if v5 {
                let p = c.properties.get_or_insert_with(Box::default);
                p.assigned_client_identifier = Some(c.client_id.clone());
            }
        } else if c.client_id.len() > self.cfg.mqtt.max_client_id_len {
            return Err(Close::new(
                ReasonCode::ClientIdentifierNotValid,
                "client id too long",
            ));
        }
        c.client_id = owned(&c.client_id);
        let cert_user = link
            .extras
            .borrow()
            .as_ref()
            .and_then(|e| e.cert_user.as_deref().map(ByteString::from));
        if let Some(u) = &cert_user {
            c.username = Some(u.clone());
        }
        if let Some(close) = self.refuse_banned(link, &c.client_id, c.username.as_deref()) {
            return Err(close);
        }
        let quick = self.auth.authenticate(
            c.username.as_deref(),
            c.password.as_deref(),
            cert_user.is_some(),
        );
        match quick {
            Some(Ok(())) => self.admit_connect(link, c),
            Some(Err(reason)) => Err(self.auth_failed(link, &c, reason)),
            None => self.check_password(link, c),
        }
    }

    /// Hands the password to a checker thread; the CONNECT waits, unread further, for
    /// [`Shard::password_checked`]. Refused as busy when too many already wait.
    fn check_password(&mut self, link: &Rc<ConnLink>, c: Box<Connect>) -> Result<(), Close> {
        let token = self.token();
        let check = Check {
            token,
            auth: self.auth.clone(),
            username: c.username.as_deref().unwrap_or_default().to_string(),
            password: c.password.as_deref().unwrap_or_default().to_vec(),
        };
        let max = self.cfg.auth.max_pending_checks;
        if !self.waiting.check_password(link, check, max) {
            self.stats.refused(crate::stats::Refusal::PasswordQueue);
            return Err(Close::new(
                ReasonCode::ServerBusy,
                "too many password checks waiting",
            ));
        }
        *link.connect.borrow_mut() = Some(c);
        Ok(())
    }

    /// A checker thread's verdict on a waiting CONNECT: it goes on, or is refused.
    pub(super) fn password_checked(&mut self, v: Verdict, link: Rc<ConnLink>) {
        let connect = link.connect.borrow_mut().take();
        let Some(c) = connect.filter(|_| !link.is_closing()) else {
            return;
        };
        link.state.set(LinkState::New);
        let result = if v.ok {
            self.admit_connect(&link, c)
        } else {
            Err(self.auth_failed(&link, &c, ReasonCode::BadUserNameOrPassword))
        };
        if let Err(close) = result {
            super::conn::refuse(self, &link, close);
        }
        // Packets behind the CONNECT are read once the state moves on; wake the task to see it.
        link.wake();
    }

    fn auth_failed(&self, link: &ConnLink, c: &Connect, reason: ReasonCode) -> Close {
        self.stats.auth_failures.inc();
        let username = c.username.as_deref().unwrap_or("");
        tracing::info!(client = %c.client_id, peer = %link.peer, username, ?reason, "authentication failed");
        Close::new(reason, "authentication failed")
    }

    /// The rest of a CONNECT once its credentials passed: the will's topic, then the claim at
    /// the client id's home shard.
    fn admit_connect(&mut self, link: &Rc<ConnLink>, mut c: Box<Connect>) -> Result<(), Close> {
        self.authorize_will(link, &c)?;
        if let Some(w) = &mut c.will {
            capabilities::refuse_will(&self.cfg.mqtt, w)?;
            if !self.topic_within_limits(&w.topic) {
                return Err(Close::new(
                    ReasonCode::TopicNameInvalid,
                    "will topic over mqtt.max_topic_levels or max_topic_length",
                ));
            }
            w.topic = owned(&w.topic);
            w.payload = bytes::Bytes::copy_from_slice(&w.payload);
        }
        link.keep_alive
            .set(self.cfg.mqtt.server_keep_alive.unwrap_or(c.keep_alive));
        let token = self.token();
        self.waiting.claim(token, link.clone());
        let home = self.home_of(&c.client_id);
        let msg = XMsg::Claim {
            client_id: c.client_id.clone(),
            shard: self.id,
            token,
            clean_start: c.clean_start,
        };
        *link.connect.borrow_mut() = Some(c);
        self.send(home, msg);
        Ok(())
    }

    /// Keeps the identity on the link for later ACL checks when it will be needed, and checks
    /// the will's topic against the ACL.
    fn authorize_will(&mut self, link: &ConnLink, c: &Connect) -> Result<(), Close> {
        let username = c.username.as_deref();
        if username.is_some() || self.auth.has_acl() {
            let ident = crate::auth::ClientAuth::new(username.map(str::to_string), link.peer.ip());
            link.extras().auth = Some(ident);
        }
        if let Some(w) = &c.will {
            let topic = w.topic.clone();
            if topic.starts_with('$')
                || !self.authorize(link, &c.client_id, crate::auth::Action::Publish, &topic)
            {
                self.stats.acl_denied.inc();
                tracing::info!(client = %c.client_id, peer = %link.peer, %topic, "will topic not authorized");
                return Err(Close::new(
                    ReasonCode::NotAuthorized,
                    "will topic not authorized",
                ));
            }
        }
        Ok(())
    }

    /// CONNACK with an error, for a connection closed before its CONNECT succeeded: v5 clients
    /// get the reason; v3 clients the return code where one names the reason, else no CONNACK
    /// (a malformed packet or a first packet that is not CONNECT).
    pub(super) fn refuse_connect(&mut self, link: &ConnLink, reason: ReasonCode) {
        use ReasonCode::*;
        self.stats.connects_refused.inc();
        let v3_has_code = matches!(
            reason,
            UnsupportedProtocolVersion
                | ClientIdentifierNotValid
                | ServerUnavailable
                | ServerBusy
                | QuotaExceeded
                | ConnectionRateExceeded
                | Banned
                | BadUserNameOrPassword
                | NotAuthorized
                | BadAuthenticationMethod
        );
        if link.protocol.get().is_v5() || v3_has_code {
            link.send(&Packet::ConnAck(ConnAck {
                session_present: false,
                reason,
                properties: None,
            }));
        }
    }

    pub(super) fn on_claim(
        &mut self,
        client_id: ByteString,
        shard: usize,
        token: u64,
        clean_start: bool,
        now: Instant,
    ) {
        let wall = crate::store::record::wall_now();
        if self.homes.flapping(&client_id, &self.cfg.limits, now) {
            let until = wall.saturating_add(self.cfg.limits.flapping_ban.saturating_mul(1000));
            let kind = crate::banned::BanKind::ClientId;
            if let Ok(ban) =
                crate::banned::Ban::new(kind, &client_id, "flapping", wall, Some(until))
            {
                self.ban(ban);
            }
        }
        if self.bans.banned_id(&client_id, wall) {
            let refused = Some(ReasonCode::Banned);
            let g = Grant {
                client_id,
                token,
                session: None,
                refused,
                confirm: None,
            };
            self.send(shard, XMsg::Grant(g));
            return;
        }
        // A persistent session this node does not hold may be on another node: its CONNECT
        // waits for the registry.
        let resumes = !clean_start && self.remote.is_some() && !self.homes.holds(&client_id);
        let epoch = self.cluster_claim(&client_id, resumes);
        match self.homes.claim(client_id.clone(), shard, token, epoch) {
            None if resumes => self.park_resume(client_id, epoch, shard, token),
            None => self.send(
                shard,
                XMsg::Grant(Grant {
                    client_id,
                    token,
                    session: None,
                    refused: None,
                    confirm: None,
                }),
            ),
            Some(owner) => self.send(
                owner,
                XMsg::Takeover {
                    client_id,
                    shard,
                    token,
                    clean_start,
                },
            ),
        }
    }

    pub(super) fn on_takeover(
        &mut self,
        client_id: ByteString,
        shard: usize,
        token: u64,
        clean_start: bool,
    ) {
        let now = Instant::now();
        let session = if let Some(key) = self.sessions.find(&client_id) {
            self.take_session(key, clean_start, now)
        } else {
            if let Some(old) = self.waiting.claiming(&client_id, token) {
                let by = Successor {
                    shard,
                    token,
                    clean_start,
                };
                self.waiting.supersede(old, by);
                return;
            }
            None
        };
        let session = if clean_start {
            None
        } else {
            session.map(Box::new)
        };
        self.send(
            shard,
            XMsg::Grant(Grant {
                client_id,
                token,
                session,
                refused: None,
                confirm: None,
            }),
        );
    }

    /// Removes a session for a takeover: closes its connection (v5: 0x8E) and publishes its
    /// will unless the session continues on the new connection within the will delay. A session
    /// with expiry 0 (clean session) lasts only as long as its connection (MQTT-3.1.2-6), so it
    /// ends here whatever the new connection asked for.
    pub(super) fn take_session(
        &mut self,
        key: usize,
        clean_start: bool,
        now: Instant,
    ) -> Option<Session> {
        let slot = self.remove_session(key);
        let mut session = slot.session;
        if let Some(link) = slot.link {
            link.state.set(LinkState::Closed);
            link.close(Close::new(
                ReasonCode::SessionTakenOver,
                "session taken over",
            ));
        }
        let ends = clean_start || session.expiry_interval == 0;
        if let Some(will) = session.will.take() {
            if ends || will_delay(&will) == 0 {
                self.publish_will(*will, session.client_id.clone(), now);
            }
        }
        if ends {
            self.redispatch_shared(&mut session, now);
            self.release_exclusives(&session);
            self.journal_end(&session);
            return None;
        }
        session.meta_changed();
        self.journal_departure(&mut session);
        Some(session)
    }

    pub(super) fn on_grant(&mut self, g: Grant) {
        let now = Instant::now();
        if let Some(next) = self.waiting.successor(g.token) {
            if let Some(link) = self.waiting.granted(g.token) {
                link.state.set(LinkState::Closed);
                link.close(Close::new(
                    ReasonCode::SessionTakenOver,
                    "session taken over",
                ));
            }
            let session = if next.clean_start { None } else { g.session };
            self.send(
                next.shard,
                XMsg::Grant(Grant {
                    client_id: g.client_id,
                    token: next.token,
                    session,
                    refused: g.refused,
                    confirm: g.confirm,
                }),
            );
            return;
        }
        if let Some((shard, token)) = g.confirm {
            // The session's records (installed, or kept offline below) go in this tick's batch.
            self.durable.reply_with_batch(shard, token);
        }
        let link = self.waiting.granted(g.token).filter(|l| !l.is_closing());
        let connect = link.as_ref().and_then(|l| l.connect.borrow_mut().take());
        let (Some(link), Some(mut c)) = (link, connect) else {
            self.orphan_grant(g, now);
            return;
        };
        if let Some(reason) = g.refused {
            let why = match reason {
                ReasonCode::Banned => "client id banned",
                _ => "no majority to take the session over",
            };
            tracing::info!(client = %c.client_id, peer = %link.peer, ?reason, "connection refused: {why}");
            self.refuse_connect(&link, reason);
            link.state.set(LinkState::Closed);
            link.close(Close::new(reason, why));
            return;
        }
        let props = c.properties.as_deref();
        let resumed = if c.clean_start { None } else { g.session };
        let session_present = resumed.is_some();
        let mut session = match resumed {
            Some(s) => *s,
            None => Session::new(c.client_id.clone(), c.protocol),
        };
        let m = &self.cfg.mqtt;
        session.expiry_interval = match (c.protocol, props) {
            (Protocol::V5, p) => p
                .and_then(|p| p.session_expiry_interval)
                .unwrap_or(0)
                .min(m.max_session_expiry),
            _ if c.clean_start => 0,
            _ => m.session_expiry_v3,
        };
        session.attach(
            c.protocol,
            props
                .and_then(|p| p.receive_maximum)
                .unwrap_or(u16::MAX)
                .min(m.max_inflight),
            props
                .and_then(|p| p.maximum_packet_size)
                .unwrap_or(u32::MAX),
            props
                .and_then(|p| p.topic_alias_maximum)
                .unwrap_or(0)
                .min(m.outbound_topic_aliases),
        );
        session.will = c.will.take().map(Box::new);
        self.start_storing(&mut session);
        session.meta_changed();
        let key = self.insert_session(SessionSlot::new(session, Some(link.clone()), g.token));
        self.touch(key);
        if session_present {
            self.resubscribe(key);
        }
        link.state.set(LinkState::Active(key));
        link.heard(now);
        link.connacked.set(true);
        let properties = if c.protocol.is_v5() {
            Some(Box::new(self.connack_props(&c)))
        } else {
            None
        };
        link.send(&Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }));
        tracing::debug!(client = %c.client_id, peer = %link.peer, session_present, "connected");
        self.client_event(&c.client_id, link.peer, true, Some(&c), now);
        self.resend_inflight(key, now);
        self.auto_subscribe(key, &link, &c.client_id, c.username.as_deref(), now);
        self.pump_session(key, now);
    }

    /// What a v5 CONNACK tells the client about this broker.
    fn connack_props(&self, c: &Connect) -> Properties {
        let m = &self.cfg.mqtt;
        let asked = c.properties.as_deref();
        let mut p = Properties {
            receive_maximum: Some(m.receive_maximum),
            maximum_packet_size: Some(m.max_packet_size),
            topic_alias_maximum: Some(m.topic_alias_maximum),
            assigned_client_identifier: asked.and_then(|p| p.assigned_client_identifier.clone()),
            server_keep_alive: m.server_keep_alive,
            ..Properties::default()
        };
        capabilities::announce(m, &mut p);
        let want = asked.and_then(|p| p.session_expiry_interval).unwrap_or(0);
        if want > m.max_session_expiry {
            p.session_expiry_interval = Some(m.max_session_expiry);
        }
        p
    }

    /// A grant whose connection is gone: keep a continuing session offline, or end the claim.
    fn orphan_grant(&mut self, g: Grant, now: Instant) {
        match g.session {
            Some(mut s) if s.expiry_interval > 0 => {
                self.start_storing(&mut s);
                s.meta_changed();
                let key = self.insert_session(SessionSlot::new(*s, None, g.token));
                self.resubscribe(key);
                self.schedule_expiry(key, now);
                self.touch(key);
            }
            other => {
                if let Some(s) = other {
                    self.release_exclusives(&s);
                }
                let home = self.home_of(&g.client_id);
                self.send(
                    home,
                    XMsg::Release {
                        client_id: g.client_id,
                        token: g.token,
                    },
                );
            }
        }
    }

    /// Re-sends unacknowledged messages of a resumed session: PUBLISH with DUP, or PUBREL.
    fn resend_inflight(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(link) = slot.link.clone() else {
            return;
        };
        let flows: Vec<(u16, OutState)> = slot
            .session
            .inflight
            .iter()
            .map(|(p, f)| (p, f.state))
            .collect();
        for (pid, state) in flows {
            match state {
                OutState::Published => {
                    let Some(slot) = self.sessions.get_mut(key) else {
                        return;
                    };
                    let flow = Outgoing::Flow(pid);
                    let written = slot
                        .session
                        .write(&flow, true, now, |p| link.send_publish(p));
                    self.stats.count_written(&written);
                }
                OutState::Released => {
                    link.send_ack(AckType::PubRel, pid, ReasonCode::Success);
                }
            }
        }
    }

    pub(super) fn schedule_expiry(&mut self, key: usize, now: Instant) {
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        let secs = slot.session.expiry_interval;
        if secs == u32::MAX {
            return;
        }
        let at = now + Duration::from_secs(u64::from(secs));
        slot.set_expires_at(at);
        let token = slot.token;
        self.sessions.schedule(at, TimerKind::Expiry, key, token);
    }

    /// The connection task ended: the session goes offline (or ends), and its will is due.
    pub(super) fn connection_closed(&mut self, link: &ConnLink, now: Instant) {
        let state = link.state.replace(LinkState::Closed);
        match state {
            LinkState::Active(key) => {
                let Some(slot) = self.sessions.get_mut(key) else {
                    return;
                };
                slot.link = None;
                slot.session.trim();
                let dropped = slot.session.dropped;
                tracing::info!(client = %slot.session.client_id, peer = %link.peer, dropped, "disconnected");
                let id = slot.session.client_id.clone();
                self.client_event(&id, link.peer, false, None, now);
                let Some(slot) = self.sessions.get_mut(key) else {
                    return;
                };
                if slot.session.expiry_interval == 0 {
                    self.end_session(key, now);
                    return;
                }
                let delay = slot.session.will.as_deref().map(will_delay);
                match delay {
                    Some(0) => {
                        if let Some(will) = slot.session.will.take() {
                            let origin = slot.session.client_id.clone();
                            self.publish_will(*will, origin, now);
                        }
                    }
                    Some(d) => {
                        let at = now
                            + Duration::from_secs(u64::from(d.min(slot.session.expiry_interval)));
                        slot.set_will_at(Some(at));
                        let token = slot.token;
                        self.sessions.schedule(at, TimerKind::Will, key, token);
                    }
                    None => {}
                }
                self.schedule_expiry(key, now);
                if let Some(slot) = self.sessions.get_mut(key) {
                    slot.session.meta_changed();
                }
                self.touch(key);
            }
            other => self.waiting.forget(other),
        }
    }

    /// Ends a session: its will (if still pending) is published, its subscriptions removed,
    /// its shared-subscription messages given to other members, and home is told.
    pub(super) fn end_session(&mut self, key: usize, now: Instant) {
        let slot = self.remove_session(key);
        let mut session = slot.session;
        if let Some(will) = session.will.take() {
            self.publish_will(*will, session.client_id.clone(), now);
        }
        self.redispatch_shared(&mut session, now);
        self.release_exclusives(&session);
        self.journal_end(&session);
        let home = self.home_of(&session.client_id);
        self.send(
            home,
            XMsg::Release {
                client_id: session.client_id,
                token: slot.token,
            },
        );
    }

    pub(super) fn insert_session(&mut self, slot: SessionSlot) -> usize {
        let key = self.sessions.insert(slot);
        self.stats.sessions.inc();
        key
    }

    fn remove_session(&mut self, key: usize) -> SessionSlot {
        let slot = self.sessions.remove(key);
        self.stats.sessions.dec();
        let filters: Vec<ByteString> = slot.session.subscriptions.keys().cloned().collect();
        for f in filters {
            self.unindex_subscription(key, &f);
        }
        slot
    }

    pub(super) fn publish_will(&mut self, will: Will, origin: ByteString, now: Instant) {
        let msg = Message::new(
            will.topic,
            will.payload,
            will.qos,
            will.retain,
            will.properties.as_deref(),
            origin,
            now,
        );
        self.stats.wills.inc();
        self.publish_message(Arc::new(msg), now);
    }
}

fn will_delay(w: &Will) -> u32 {
    w.properties
        .as_ref()
        .and_then(|p| p.will_delay_interval)
        .unwrap_or(0)
}
