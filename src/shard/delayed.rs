//! Delayed publish, as EMQX has it: a PUBLISH to `$delayed/{seconds}/{topic}` is held and
//! published to `{topic}` that many seconds later, with its QoS, retain flag and properties.
//!
//! The shard that receives it holds it, in a map sorted by wall-clock deadline swept by the
//! shard's once-a-second sweep: no timer crosses shards, nothing blocks, and a due message is
//! routed like any publish made on that shard at that moment (so it reaches every shard's
//! subscribers and the retained store as usual). Deadlines are wall-clock milliseconds, since
//! they must mean the same after a restart.
//!
//! With the store journaled, a held message is in the `delayed` keyspace before its PUBACK or
//! PUBREC leaves (it counts as something the publish produced, so the acknowledgement waits for
//! this tick's ticket, as a retained message's does), and its record goes in the batch of the
//! tick that releases or cancels it. At a restart the kept ones are shared out among the shards
//! by id; those whose deadline passed while the broker was down go out at the first sweep. A
//! crash in the instant between a release and the store hearing of it loses the copies queued
//! for persistent sessions on other shards (their batches are not this one).
//!
//! Ids are unique across shards and restarts: the shard's start time in wall-clock milliseconds
//! shifted left 16 bits with the shard in the low bits, counted up in steps of 2^16 and numbered
//! above the largest id read back (as session epochs are).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use serde_json::{json, Value};

use super::inbound::refusal;
use super::link::ConnLink;
use super::Shard;
use crate::codec::ReasonCode;
use crate::config::DelayedConfig;
use crate::stats::Refusal;
use crate::store::record::{wall_now, DelayedMessage};
use crate::store::Op;

const PREFIX: &str = "$delayed/";

/// What a PUBLISH's topic asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target<'a> {
    /// A topic like any other.
    Plain,
    /// `$delayed/{secs}/{topic}`.
    Delayed { secs: u64, topic: &'a str },
    /// A `$delayed/` topic that does not say how long or where (or asks too long).
    Bad(&'static str),
}

/// Reads a publish topic for a delayed publish (with delayed publishing on).
pub(super) fn target<'a>(topic: &'a str, cfg: &DelayedConfig) -> Target<'a> {
    let Some(rest) = topic.strip_prefix(PREFIX).filter(|_| cfg.enabled) else {
        return Target::Plain;
    };
    let Some((secs, to)) = rest.split_once('/') else {
        return Target::Bad("no target topic after the delay");
    };
    let all_digits = !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit());
    let Some(secs) = secs.parse::<u64>().ok().filter(|_| all_digits) else {
        return Target::Bad("the delay is not a number of seconds");
    };
    if secs > cfg.max_delay {
        return Target::Bad("the delay is over delayed.max_delay");
    }
    if to.is_empty() || to.starts_with('$') {
        return Target::Bad("the target topic is empty or a $ topic");
    }
    Target::Delayed { secs, topic: to }
}

/// One shard's delayed publishes, by deadline.
pub(super) struct DelayedSet {
    by_due: BTreeMap<(u64, u64), Arc<DelayedMessage>>,
    due_of: AHashMap<u64, u64>,
    next_id: u64,
}

impl DelayedSet {
    pub fn new(shard: usize) -> DelayedSet {
        DelayedSet {
            by_due: BTreeMap::new(),
            due_of: AHashMap::new(),
            next_id: wall_now() << 16 | (shard as u64 & 0xffff),
        }
    }

    /// Numbers new ids above `floor`, the largest one read back.
    pub fn number_above(&mut self, floor: u64) {
        if self.next_id >> 16 <= floor >> 16 {
            self.next_id = ((floor >> 16) + 1) << 16 | (self.next_id & 0xffff);
        }
    }

    /// Holds a new delayed publish; its id.
    pub fn hold(&mut self, m: Arc<DelayedMessage>) -> u64 {
        self.next_id += 1 << 16;
        let id = self.next_id;
        self.insert(id, m);
        id
    }

    /// Holds a delayed publish read back from the store.
    pub fn insert(&mut self, id: u64, m: Arc<DelayedMessage>) {
        self.due_of.insert(id, m.publish_at);
        self.by_due.insert((m.publish_at, id), m);
    }

    /// Takes one publish whose deadline is at or before `wall`, earliest first.
    pub fn take_due(&mut self, wall: u64) -> Option<(u64, Arc<DelayedMessage>)> {
        let entry = self.by_due.first_entry()?;
        if entry.key().0 > wall {
            return None;
        }
        let ((_, id), m) = entry.remove_entry();
        self.due_of.remove(&id);
        Some((id, m))
    }

    /// Removes a held publish; whether it was here.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.due_of.remove(&id) {
            Some(at) => self.by_due.remove(&(at, id)).is_some(),
            None => false,
        }
    }

    /// Every held publish, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<DelayedMessage>)> {
        self.by_due.iter().map(|((_, id), m)| (*id, m))
    }
}

/// A delayed publish as the API lists it (its id in hex: JSON numbers lose the low bits).
fn delayed_json(id: u64, m: &DelayedMessage, wall: u64) -> Value {
    json!({
        "id": format!("{id:x}"),
        "topic": m.topic.to_string(),
        "qos": m.qos as u8,
        "retain": m.retain,
        "from": m.origin.to_string(),
        "payload_bytes": m.payload.len(),
        "publish_at_ms": m.publish_at,
        "delay_left_ms": m.publish_at.saturating_sub(wall),
    })
}

impl Shard {
    /// Holds a delayed publish if `delayed.max_messages` allows; the reason its acknowledgement
    /// carries (a v3 client, which cannot hear a refusal, gets success and the message is
    /// dropped, counted).
    pub(super) fn hold_delayed(&mut self, link: &ConnLink, m: DelayedMessage) -> ReasonCode {
        if !self.global.hold_delayed(self.cfg.delayed.max_messages) {
            self.stats.refused(Refusal::DelayedFull);
            tracing::debug!(client = %m.origin, peer = %link.peer, topic = %m.topic, "delayed publish refused: delayed.max_messages held");
            return refusal(link, ReasonCode::QuotaExceeded);
        }
        let m = Arc::new(m);
        let id = self.delayed.hold(m.clone());
        if self.durable.journaled() {
            self.durable.push(Op::Delay(id, m));
            self.durable.produced();
            self.mesh.wake_pump();
        }
        ReasonCode::Success
    }

    /// Publishes every held message whose deadline has come (from the sweep).
    pub(super) fn release_delayed(&mut self, now: Instant) {
        let wall = wall_now();
        while let Some((id, m)) = self.delayed.take_due(wall) {
            self.forget_delayed(id);
            self.stats.delayed_published.inc();
            self.publish_message(Arc::new(m.message(now)), now);
        }
    }

    /// A held publish is gone: its place and its record.
    fn forget_delayed(&mut self, id: u64) {
        self.global.release_delayed();
        if self.durable.journaled() {
            self.durable.push(Op::Undelay(id));
            self.mesh.wake_pump();
        }
    }

    /// Cancels the held publish `id` if this shard holds it (null when not).
    pub(super) fn cancel_delayed(&mut self, id: &str) -> Value {
        let Some(id) = u64::from_str_radix(id, 16)
            .ok()
            .filter(|&id| self.delayed.cancel(id))
        else {
            return Value::Null;
        };
        self.forget_delayed(id);
        tracing::info!(
            id = format!("{id:x}"),
            "delayed publish cancelled by the admin"
        );
        json!({ "cancelled": format!("{id:x}") })
    }

    /// The held publishes, earliest first, at most `max`.
    pub(super) fn list_delayed(&self, max: usize) -> Value {
        let wall = wall_now();
        let rows = self.delayed.iter().take(max);
        Value::Array(rows.map(|(id, m)| delayed_json(id, m, wall)).collect())
    }

    /// Takes the kept delayed publishes of this shard's share (ids above `max_id` from now).
    pub(super) fn restore_delayed(&mut self, kept: Vec<(u64, DelayedMessage)>, max_id: u64) {
        self.delayed.number_above(max_id);
        self.global.restore_delayed(kept.len());
        for (id, m) in kept {
            self.delayed.insert(id, Arc::new(m));
        }
    }

    /// Every held publish, for the shutdown's snapshot of an unjournaled store.
    pub(super) fn snapshot_delayed(&mut self) {
        let held: Vec<_> = self.delayed.iter().map(|(id, m)| (id, m.clone())).collect();
        for (id, m) in held {
            self.durable.push(Op::Delay(id, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn cfg() -> DelayedConfig {
        DelayedConfig {
            max_delay: 100,
            ..DelayedConfig::default()
        }
    }

    #[test]
    fn delayed_topics_are_read_and_bad_ones_named() {
        let c = cfg();
        assert_eq!(target("a/b", &c), Target::Plain);
        assert_eq!(target("$SYS/x", &c), Target::Plain);
        assert_eq!(
            target("$delayed/10/a/b", &c),
            Target::Delayed {
                secs: 10,
                topic: "a/b"
            }
        );
        assert_eq!(
            target("$delayed/0/t", &c),
            Target::Delayed {
                secs: 0,
                topic: "t"
            }
        );
        for bad in [
            "$delayed/10",
            "$delayed/x/t",
            "$delayed/+5/t",
            "$delayed//t",
            "$delayed/101/t",
            "$delayed/5/",
            "$delayed/5/$SYS/x",
        ] {
            assert!(matches!(target(bad, &c), Target::Bad(_)), "{bad}");
        }
        let off = DelayedConfig {
            enabled: false,
            ..cfg()
        };
        assert_eq!(target("$delayed/10/t", &off), Target::Plain);
    }

    fn msg(at: u64) -> Arc<DelayedMessage> {
        Arc::new(DelayedMessage {
            publish_at: at,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            props: None,
            origin: "c".into(),
        })
    }

    #[test]
    fn due_messages_come_out_in_deadline_order_and_cancelled_ones_never() {
        let mut s = DelayedSet::new(3);
        let late = s.hold(msg(300));
        let early = s.hold(msg(100));
        let gone = s.hold(msg(200));
        assert_eq!(late & 0xffff, 3, "the shard is in the low bits");
        assert!(s.cancel(gone));
        assert!(!s.cancel(gone));
        assert!(s.take_due(99).is_none());
        assert_eq!(s.take_due(250).map(|(id, _)| id), Some(early));
        assert!(s.take_due(250).is_none());
        assert_eq!(s.take_due(300).map(|(id, _)| id), Some(late));
        assert_eq!(s.iter().count(), 0);
    }

    #[test]
    fn ids_are_numbered_above_those_read_back() {
        let mut s = DelayedSet::new(1);
        let floor = (wall_now() + 1_000_000) << 16 | 7;
        s.number_above(floor);
        assert!(s.hold(msg(1)) > floor);
    }
}
