//! `$SYS/brokers/<node>/...`: broker statistics published (retained, as Mosquitto does) every
//! `sys.interval` seconds by shard 0 from every shard's counters, and client connected and
//! disconnected events published by the shard that saw them, and alarm events (shard 0)
//! (`sys_broker` adds Mosquitto's `$SYS/broker/...` names on the same timer). Clients cannot
//! publish to `$SYS` (the inbound path refuses every `$` topic but `$delayed/`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;

use super::sys_broker::BrokerTree;
use super::Shard;
use crate::codec::{Connect, QoS};
use crate::session::Message;

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

impl Shard {
    fn sys_publish(&mut self, suffix: &str, payload: String, retain: bool, now: Instant) {
        let topic = format!("$SYS/brokers/{}/{suffix}", self.cfg.broker.node_name);
        self.sys_publish_to(topic, payload, retain, now);
    }

    /// Publishes on a `$SYS` topic, unless it is over the topic limits.
    pub(super) fn sys_publish_to(
        &mut self,
        topic: String,
        payload: String,
        retain: bool,
        now: Instant,
    ) {
        if !self.topic_within_limits(&topic) {
            // A long client id (or one with many `/`) can make an event topic over the limits
            // (max_topic_length is at most what a packet can carry: check-config says so).
            tracing::debug!(
                len = topic.len(),
                "$SYS topic over max_topic_length or max_topic_levels: not published"
            );
            self.stats.refused(crate::stats::Refusal::SysTopic);
            return;
        }
        let msg = Message::new(
            ByteString::from(topic),
            Bytes::from(payload),
            QoS::AtMostOnce,
            retain,
            None,
            ByteString::from_static("$SYS"),
            now,
        );
        self.publish_message(Arc::new(msg), now);
    }

    /// Publishes the broker-wide statistics (shard 0 only).
    fn publish_sys_stats(&mut self, now: Instant) {
        let g = self.global.clone();
        let (msgs_in, msgs_out) = g.messages();
        let values: [(&str, String); 12] = [
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("uptime", g.started.elapsed().as_secs().to_string()),
            ("shards", self.shards.to_string()),
            ("clients/connected", g.sum(|s| &s.connections).to_string()),
            ("sessions/count", g.sum(|s| &s.sessions).to_string()),
            (
                "subscriptions/count",
                g.sum(|s| &s.subscriptions).to_string(),
            ),
            ("retained/count", self.retained.len().to_string()),
            ("messages/received", msgs_in.to_string()),
            ("messages/sent", msgs_out.to_string()),
            (
                "messages/dropped",
                g.stats
                    .iter()
                    .map(|s| s.dropped_total())
                    .sum::<i64>()
                    .to_string(),
            ),
            ("bytes/received", g.sum(|s| &s.bytes_in).to_string()),
            ("bytes/sent", g.sum(|s| &s.bytes_out).to_string()),
        ];
        for (suffix, v) in values {
            self.sys_publish(suffix, v, true, now);
        }
    }

    /// `$SYS/brokers/<node>/clients/<id>/connected|disconnected`, as JSON.
    pub(super) fn client_event(
        &mut self,
        client_id: &str,
        peer: SocketAddr,
        connected: bool,
        connect: Option<&Connect>,
        now: Instant,
    ) {
        if !self.cfg.sys.client_events || client_id.contains(['+', '#']) {
            return;
        }
        let ts = unix_ms(SystemTime::now());
        let payload = match connect {
            Some(c) => serde_json::json!({
                "clientid": client_id,
                "username": c.username.as_deref(),
                "ipaddress": peer.ip().to_string(),
                "port": peer.port(),
                "proto_ver": c.protocol.level(),
                "keepalive": c.keep_alive,
                "clean_start": c.clean_start,
                "ts": ts,
            }),
            None => serde_json::json!({
                "clientid": client_id,
                "ipaddress": peer.ip().to_string(),
                "ts": ts,
            }),
        };
        let event = if connected {
            "connected"
        } else {
            "disconnected"
        };
        self.sys_publish(
            &format!("clients/{client_id}/{event}"),
            payload.to_string(),
            false,
            now,
        );
    }
}

/// Shard 0's `$SYS` timer.
pub(super) async fn publisher(shard: Rc<RefCell<Shard>>) {
    if shard.borrow().id != 0 {
        return;
    }
    let mut last = Instant::now();
    let mut tree = BrokerTree::default();
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        let mut sh = shard.borrow_mut();
        if !sh.accepting {
            return;
        }
        let now = Instant::now();
        for (suffix, payload) in sh.global.alarms.take_events() {
            sh.sys_publish(suffix, payload, false, now);
        }
        let interval = sh.cfg.sys.interval;
        if interval > 0 && now.duration_since(last) >= Duration::from_secs(interval) {
            last = now;
            sh.publish_sys_stats(now);
            sh.publish_broker_tree(&mut tree, now);
        }
    }
}
