//! The shard's answers to the control plane (`crate::control`): listings and changes for the
//! admin API, reload, tracing, and the steps of a graceful shutdown. Each answer is built from
//! this shard's own state; the admin thread merges the shards' answers.

use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytestring::ByteString;
use serde_json::{json, Value};

use super::link::Close;
use super::{SessionSlot, Shard};
use crate::banned::Ban;
use crate::codec::{Packet, QoS, ReasonCode, SubOptions};
use crate::control::{Reply, Request};
use crate::session::{Message, Subscription};
use crate::topic::{matches, validate_filter};

/// Rows one shard puts in a listing (clients, subscriptions, topics, retained): the listing is
/// built on the shard's thread, so its size bounds how long the shard's other clients wait.
/// A client or topic is still found by name however many there are.
const MAX_LISTED: usize = 10_000;

fn client_json(slot: &SessionSlot, detail: bool) -> Value {
    let s = &slot.session;
    let mut v = json!({
        "clientid": s.client_id.to_string(),
        "connected": slot.link.is_some(),
        "proto_ver": s.protocol.level(),
        "ipaddress": slot.link.as_ref().map(|l| l.peer.to_string()),
        "subscriptions": s.subscriptions.len(),
        "inflight": s.inflight.len(),
        "queued": s.queue.len(),
        "dropped": s.dropped,
        "expiry_interval": s.expiry_interval,
    });
    if detail {
        let username = slot.link.as_ref().and_then(|l| {
            l.extras
                .borrow()
                .as_ref()
                .and_then(|e| e.auth.as_ref()?.username.clone())
        });
        v["username"] = json!(username);
        v["keepalive"] = json!(slot.link.as_ref().map(|l| l.keep_alive.get()));
        v["topics"] = json!(s
            .subscriptions
            .keys()
            .map(|k| k.to_string())
            .collect::<Vec<_>>());
    }
    v
}

fn subs_json(slot: &SessionSlot) -> Vec<Value> {
    slot.session
        .subscriptions
        .iter()
        .map(|(f, sub)| {
            json!({
                "clientid": slot.session.client_id.to_string(),
                "topic": f.to_string(),
                "qos": sub.options.qos as u8,
            })
        })
        .collect()
}

fn message_json(m: &Message, payload: bool) -> Value {
    let mut v = json!({
        "topic": m.topic.to_string(),
        "qos": m.qos as u8,
        "payload_bytes": m.payload.len(),
        "from": m.origin.to_string(),
    });
    if payload {
        v["payload"] = json!(String::from_utf8_lossy(&m.payload));
    }
    v
}

impl Shard {
    pub(super) fn control(&mut self, req: Request) -> Reply {
        let now = Instant::now();
        match req {
            Request::Status => Ok(self.status_json()),
            Request::Clients(None) => Ok(Value::Array(
                self.sessions
                    .iter()
                    .take(MAX_LISTED)
                    .map(|(_, s)| client_json(s, false))
                    .collect(),
            )),
            Request::Clients(Some(id)) => Ok(self
                .session_of(&id)
                .map_or(Value::Null, |k| client_json(&self.sessions[k], true))),
            Request::Kick(id) => {
                let Some(key) = self.session_of(&id) else {
                    return Ok(Value::Null);
                };
                if let Some(link) = &self.sessions[key].link {
                    tracing::info!(client = %id, peer = %link.peer, "kicked by the admin");
                    link.close(Close::new(
                        ReasonCode::AdministrativeAction,
                        "kicked by the admin",
                    ));
                }
                Ok(json!({ "kicked": id }))
            }
            Request::Subscriptions(None) => Ok(Value::Array(
                self.sessions
                    .iter()
                    .flat_map(|(_, s)| subs_json(s))
                    .take(MAX_LISTED)
                    .collect(),
            )),
            Request::Subscriptions(Some(id)) => Ok(Value::Array(
                self.session_of(&id)
                    .map(|k| subs_json(&self.sessions[k]))
                    .unwrap_or_default(),
            )),
            Request::Subscribe {
                client,
                filter,
                qos,
            } => self.admin_subscribe(&client, &filter, qos),
            Request::Unsubscribe { client, filter } => {
                let Some(key) = self.session_of(&client) else {
                    return Ok(Value::Null);
                };
                let removed = self.remove_subscription(key, &filter, None);
                Ok(json!({ "clientid": client, "topic": filter, "removed": removed }))
            }
            Request::Topics => {
                let mut topics: Vec<&str> = self
                    .sessions
                    .iter()
                    .flat_map(|(_, s)| s.session.subscriptions.keys().map(|k| &**k))
                    .take(MAX_LISTED)
                    .collect();
                topics.sort_unstable();
                topics.dedup();
                Ok(json!(topics))
            }
            Request::Retained(topic) => {
                let filter = topic.as_deref().unwrap_or("#");
                let mut out = Vec::new();
                let mut add = |m: &Arc<Message>, payload: bool| {
                    if out.len() < MAX_LISTED {
                        out.push(message_json(m, payload));
                    }
                };
                self.retained
                    .for_each_match(filter, |m| add(m, topic.is_some()));
                if topic.is_none() {
                    self.retained.for_each_match("$SYS/#", |m| add(m, false));
                }
                Ok(Value::Array(out))
            }
            Request::CleanRetained(topic) => {
                let before = self.retained.len();
                self.clean_retained(topic.as_deref(), now);
                Ok(json!({ "removed": before - self.retained.len() }))
            }
            Request::Banned => Ok(Value::Array(
                self.bans
                    .iter()
                    .take(MAX_LISTED)
                    .map(|b| b.json())
                    .collect(),
            )),
            Request::Ban(ban) => {
                let row = ban.json();
                if !self.ban(ban) {
                    return Err(format!("{} bans are held already", crate::banned::MAX_BANS));
                }
                Ok(row)
            }
            Request::Unban(kind, value) => Ok(if self.unban(kind, &value) {
                json!({ "removed": Ban::key(kind, &value) })
            } else {
                Value::Null
            }),
            Request::Delayed => Ok(self.list_delayed(MAX_LISTED)),
            Request::CancelDelayed(id) => Ok(self.cancel_delayed(&id)),
            Request::Reload(cfg, auth, tls) => {
                // Matched by name, and only while address and type stay: the sockets stay bound
                // as they were at start (a changed listener waits for a restart).
                let mut fresh: AHashMap<String, super::Listener> =
                    super::Listener::for_shard(&cfg, &tls, self.shards)
                        .into_iter()
                        .map(|l| (l.name.clone(), l))
                        .collect();
                for mine in &mut self.listeners {
                    match fresh.remove(&mine.name) {
                        Some(new)
                            if new.cfg.bind == mine.cfg.bind && new.cfg.kind == mine.cfg.kind =>
                        {
                            *mine = new
                        }
                        _ => {}
                    }
                }
                self.cfg = cfg;
                self.auth = auth;
                Ok(json!({ "reloaded": true }))
            }
            Request::Trace(set) => {
                self.trace = set;
                Ok(json!({ "tracing": &*self.trace }))
            }
            Request::Drain => {
                self.accepting = false;
                let mut wills = 0;
                let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let Some(slot) = self.sessions.get_mut(key) else {
                        continue;
                    };
                    let due = slot.link.is_some() || slot.will_at().is_some();
                    if let Some(will) = slot.session.will.take().filter(|_| due) {
                        slot.set_will_at(None);
                        slot.session.meta_changed();
                        let origin = slot.session.client_id.clone();
                        self.publish_will(*will, origin, now);
                        self.touch(key);
                        wills += 1;
                    }
                }
                Ok(json!({ "wills": wills }))
            }
            Request::Close => {
                let mut closed = 0;
                for (_, conn) in &self.conns {
                    conn.link.close(Close::new(
                        ReasonCode::ServerShuttingDown,
                        "server shutting down",
                    ));
                    closed += 1;
                }
                Ok(json!({ "closed": closed }))
            }
            Request::Persist => Ok(self.persist()),
        }
    }

    /// The slot of the session `client_id` has on this shard.
    fn session_of(&self, client_id: &str) -> Option<usize> {
        self.sessions.find(client_id)
    }

    fn status_json(&self) -> Value {
        let occupancy = self.mesh.occupancy_by_shard();
        json!({
            "shard": self.id,
            "driver": crate::driver::current().name(),
            "connections": self.conns.len(),
            "sessions": self.sessions.len(),
            "subscriptions": self.stats.subscriptions.get(),
            "retained": self.retained.len(),
            "loop_lag_us": self.stats.loop_lag_us.get(),
            "overloaded": self.stats.overloaded.get() == 1,
            "ring_occupancy": occupancy,
        })
    }

    /// Adds a subscription to a session as if its client had sent SUBSCRIBE (no SUBACK, and no
    /// retained messages).
    fn admin_subscribe(&mut self, client: &str, filter: &str, qos: u8) -> Reply {
        let Some(key) = self.session_of(client) else {
            return Ok(Value::Null);
        };
        validate_filter(filter).map_err(|e| format!("bad topic filter {filter:?}: {e}"))?;
        let qos = QoS::from_u8(qos).ok_or("qos must be 0, 1 or 2")?;
        let filter = ByteString::from(filter);
        let sub = Subscription {
            options: SubOptions::qos(qos),
            id: None,
        };
        self.add_subscription(key, &filter, sub, None);
        Ok(json!({ "clientid": client, "topic": filter.to_string(), "qos": qos as u8 }))
    }

    /// Removes one retained topic, or all retained messages, from this shard's replica.
    pub(super) fn clean_retained(&mut self, topic: Option<&str>, now: Instant) {
        let mut topics: Vec<ByteString> = Vec::new();
        self.retained
            .for_each_match(topic.unwrap_or("#"), |m| topics.push(m.topic.clone()));
        for t in topics {
            let empty = Message::new(
                t,
                bytes::Bytes::new(),
                QoS::AtMostOnce,
                true,
                None,
                ByteString::new(),
                now,
            );
            let empty = Arc::new(empty);
            if self.id == 0 {
                self.journal_retained(&empty);
            }
            self.retained.set(empty);
        }
        self.stats.retained.set(self.retained.len() as i64);
    }

    /// Logs a packet from a traced client.
    pub(super) fn trace_packet(&self, key: usize, packet: &Packet) {
        let Some(slot) = self.sessions.get(key) else {
            return;
        };
        let id = &slot.session.client_id;
        if !self.trace.clients.iter().any(|c| c.as_str() == &**id) {
            return;
        }
        match packet {
            Packet::Publish(p) => {
                tracing::info!(target: "ringmq::trace", client = %id, topic = %p.topic, qos = p.qos as u8, retain = p.retain, bytes = p.payload.len(), "PUBLISH in")
            }
            Packet::Subscribe(s) => {
                tracing::info!(target: "ringmq::trace", client = %id, filters = ?s.filters.iter().map(|(f, _)| &**f).collect::<Vec<_>>(), "SUBSCRIBE")
            }
            other => {
                tracing::info!(target: "ringmq::trace", client = %id, packet = other.type_code(), "packet in")
            }
        }
    }

    /// Logs a publish whose topic a traced filter matches.
    pub(super) fn trace_publish(&self, msg: &Message) {
        if let Some(f) = self.trace.topics.iter().find(|f| matches(f, &msg.topic)) {
            tracing::info!(target: "ringmq::trace", filter = %f, topic = %msg.topic, from = %msg.origin, qos = msg.qos as u8, bytes = msg.payload.len(), "publish");
        }
    }
}
