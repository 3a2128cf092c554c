//! The store's keys and values. Values are postcard (serde, compact, no schema on disk beyond
//! the field order); deadlines are wall-clock milliseconds since the Unix epoch, since an
//! `Instant` means nothing after a restart and the time the broker was down must count.
//!
//! Keyspaces: `sessions` (client id -> the session's record), `queue` (client id, epoch, seq
//! -> one delivery with its message), `flight` (the same key -> the packet id it was sent
//! with, and whether PUBREC came), `retained` (topic -> message), `delayed` (id -> a delayed
//! publish with its wall-clock deadline), `banned` (kind/value -> a ban), `meta` (the last time the broker was known alive).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::codec::{Props, Protocol, QoS, Will};
use crate::session::{Delivery, Inflight, Message, OutState, Session, SubIds, Subscription};

/// Milliseconds since the Unix epoch, now.
pub fn wall_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time of `at`, seen from `now` (which is `wall` on the wall clock).
pub fn to_wall(at: Instant, now: Instant, wall: u64) -> u64 {
    match at.checked_duration_since(now) {
        Some(ahead) => wall.saturating_add(ahead.as_millis() as u64),
        None => wall.saturating_sub(now.duration_since(at).as_millis() as u64),
    }
}

/// The `Instant` of a wall-clock time, seen from `now` (which is `wall` on the wall clock).
pub fn from_wall(at: u64, now: Instant, wall: u64) -> Instant {
    if at >= wall {
        now + Duration::from_millis(at - wall)
    } else {
        now.checked_sub(Duration::from_millis(wall - at))
            .unwrap_or(now)
    }
}

/// A session's own record: everything but its deliveries.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredSession {
    pub protocol: Protocol,
    pub expiry_interval: u32,
    pub subscriptions: Vec<(ByteString, Subscription)>,
    pub will: Option<Will>,
    pub inbound_qos2: Vec<u16>,
    pub epoch: u64,
    pub dropped: u64,
    /// When an offline session expires; None while connected (or when it never expires).
    pub expires_at: Option<u64>,
    /// When an offline session's delayed will is due.
    pub will_at: Option<u64>,
    /// Connected when written: after a crash the session went offline when the broker died.
    pub connected: bool,
}

impl StoredSession {
    /// The record of `s` (whose log says its epoch) with its offline deadlines.
    pub fn of(
        s: &Session,
        epoch: u64,
        connected: bool,
        deadlines: (Option<Instant>, Option<Instant>),
        now: Instant,
        wall: u64,
    ) -> StoredSession {
        StoredSession {
            protocol: s.protocol,
            expiry_interval: s.expiry_interval,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(f, sub)| (f.clone(), *sub))
                .collect(),
            will: s.will.as_deref().cloned(),
            inbound_qos2: s.inbound_qos2.clone(),
            epoch,
            dropped: s.dropped,
            expires_at: deadlines.0.map(|t| to_wall(t, now, wall)),
            will_at: deadlines.1.map(|t| to_wall(t, now, wall)),
            connected,
        }
    }

    /// The session it describes, without its deliveries.
    pub fn session(&self, client_id: ByteString) -> Session {
        let mut s = Session::new(client_id, self.protocol);
        s.expiry_interval = self.expiry_interval;
        s.subscriptions = self.subscriptions.iter().cloned().collect();
        s.will = self.will.clone().map(Box::new);
        s.inbound_qos2 = self.inbound_qos2.clone();
        s.dropped = self.dropped;
        s
    }
}

/// A message as kept: the routed message's fields with a wall-clock expiry.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub props: Props,
    pub expires_at: Option<u64>,
    pub origin: ByteString,
}

impl StoredMessage {
    pub fn of(m: &Message, now: Instant, wall: u64) -> StoredMessage {
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            props: m.props.clone(),
            expires_at: m.expires_at.map(|t| to_wall(t, now, wall)),
            origin: m.origin.clone(),
        }
    }

    /// The message, or None when it expired while it was kept.
    pub fn message(self, now: Instant, wall: u64) -> Option<Message> {
        if self.expires_at.is_some_and(|t| t <= wall) {
            return None;
        }
        Some(Message {
            topic: self.topic,
            payload: self.payload,
            qos: self.qos,
            retain: self.retain,
            props: self.props,
            expires_at: self.expires_at.map(|t| from_wall(t, now, wall)),
            origin: self.origin,
        })
    }
}

/// A delayed publish (`$delayed/{seconds}/{topic}`) held until its wall-clock deadline, in a
/// shard's memory and in the `delayed` keyspace (key: its id, big-endian).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DelayedMessage {
    /// When it is published, in wall-clock milliseconds.
    pub publish_at: u64,
    /// The target topic (without the `$delayed/{seconds}/` prefix).
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The publish's properties; a message expiry interval counts from the release.
    pub props: Props,
    pub origin: ByteString,
}

impl DelayedMessage {
    /// The message to route once it is due.
    pub fn message(&self, now: Instant) -> Message {
        Message::new(
            self.topic.clone(),
            self.payload.clone(),
            self.qos,
            self.retain,
            self.props.as_deref(),
            self.origin.clone(),
            now,
        )
    }
}

/// One delivery of a session's queue (or window).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoredDelivery {
    pub msg: StoredMessage,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: SubIds,
    pub group: Option<ByteString>,
}

impl StoredDelivery {
    pub fn of(d: &Delivery, now: Instant, wall: u64) -> StoredDelivery {
        StoredDelivery {
            msg: StoredMessage::of(&d.msg, now, wall),
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids.clone(),
            group: d.group.clone(),
        }
    }

    pub fn delivery(self, seq: u64, now: Instant, wall: u64) -> Option<Delivery> {
        Some(Delivery {
            msg: Arc::new(self.msg.message(now, wall)?),
            qos: self.qos,
            retain: self.retain,
            sub_ids: self.sub_ids,
            group: self.group,
            seq,
            owed: None,
        })
    }
}

/// Where a sent delivery stands: its packet id, and whether PUBREC came (QoS 2).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Flight {
    pub pid: u16,
    pub released: bool,
}

impl Flight {
    /// Puts a delivery read back (from the store, or from another node) where it stood: in
    /// the window with its packet id when it had been sent, else at the end of the queue.
    pub fn place(flight: Option<Flight>, d: Delivery, s: &mut Session) {
        match flight {
            Some(f) => {
                let state = if f.released {
                    OutState::Released
                } else {
                    OutState::Published
                };
                s.inflight.restore(f.pid, Inflight { delivery: d, state });
            }
            None => s.queue.push_back(d),
        }
    }
}

/// A persistent session handed to another node of the cluster (a client took it over
/// there): its record, then its deliveries, the window's with their flight state first.
#[derive(Debug, Serialize, Deserialize)]
pub struct MovedSession {
    pub record: StoredSession,
    pub deliveries: Vec<(StoredDelivery, Option<Flight>)>,
}

impl MovedSession {
    pub fn of(s: &Session, now: Instant, wall: u64) -> MovedSession {
        let window = s.inflight.iter().map(|(pid, f)| {
            let flight = Flight {
                pid,
                released: f.state == OutState::Released,
            };
            (StoredDelivery::of(&f.delivery, now, wall), Some(flight))
        });
        let queue = s
            .queue
            .iter()
            .map(|d| (StoredDelivery::of(d, now, wall), None));
        MovedSession {
            record: StoredSession::of(s, 0, false, (None, None), now, wall),
            deliveries: window.chain(queue).collect(),
        }
    }

    /// The session again, without what expired on the way; and how many messages expired.
    pub fn session(self, client_id: ByteString, now: Instant, wall: u64) -> (Session, u64) {
        let mut s = self.record.session(client_id);
        let mut expired = 0;
        for (d, flight) in self.deliveries {
            match d.delivery(0, now, wall) {
                Some(d) => Flight::place(flight, d, &mut s),
                None => expired += 1,
            }
        }
        s.after_restore();
        (s, expired)
    }
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these types to a Vec cannot fail: no maps with non-string keys, no
    // unsupported types; an empty value would be refused at decode and the record skipped.
    postcard::to_allocvec(v).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Option<T> {
    postcard::from_bytes(b).ok()
}

/// A delivery's queue record: the delivery, then the flight state it was stored with when it
/// was sent at once (the `flight` keyspace holds any later state, which wins). A record
/// without one (queued, or written by an earlier version) ends after the delivery.
pub fn encode_delivery(d: &StoredDelivery, flight: Option<Flight>) -> Vec<u8> {
    let mut v = encode(d);
    if let Some(f) = flight {
        v.extend_from_slice(&encode(&f));
    }
    v
}

/// Reads a queue record back: the delivery and the flight state stored inside it, if any.
pub fn decode_delivery(b: &[u8]) -> Option<(StoredDelivery, Option<Flight>)> {
    let (d, rest) = postcard::take_from_bytes::<StoredDelivery>(b).ok()?;
    let flight = if rest.is_empty() {
        None
    } else {
        Some(decode::<Flight>(rest)?)
    };
    Some((d, flight))
}

/// A delivery's key: see `delivery_key`.
pub type DeliveryKey = [u8; 16];

/// The key prefix of one session life's deliveries: its epoch, which no other session life
/// shares (its session record names it), so the keys stay 16 bytes whatever the client id.
pub fn session_prefix(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

/// The key of one delivery: its session life's epoch and its sequence number (big-endian, so
/// keys sort in queue order).
pub fn delivery_key(epoch: u64, seq: u64) -> DeliveryKey {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&epoch.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Reads a delivery key back: (epoch, seq).
pub fn parse_delivery_key(k: &[u8]) -> Option<(u64, u64)> {
    let (epoch, seq) = k.split_first_chunk::<8>()?;
    Some((
        u64::from_be_bytes(*epoch),
        u64::from_be_bytes(seq.try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_queue_order_and_read_back() {
        let a = delivery_key(7, 2);
        let b = delivery_key(7, 10);
        let other = delivery_key(8, 1);
        assert!(a < b && b < other);
        assert!(!other.starts_with(&session_prefix(7)));
        assert_eq!(parse_delivery_key(&b), Some((7, 10)));
        assert_eq!(parse_delivery_key(&b[..b.len() - 1]), None);
    }

    #[test]
    fn wall_clock_round_trips_and_expired_messages_stay_gone() {
        let now = Instant::now();
        let wall = 1_000_000;
        let later = now + Duration::from_secs(5);
        assert_eq!(to_wall(later, now, wall), 1_005_000);
        assert_eq!(from_wall(1_005_000, now, wall), later);
        let m = Message::new(
            "t".into(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            Some(&crate::codec::Properties {
                message_expiry_interval: Some(1),
                ..Default::default()
            }),
            "o".into(),
            now,
        );
        let kept = StoredMessage::of(&m, now, wall);
        let bytes = encode(&kept);
        let back: StoredMessage = decode(&bytes).expect("decodes");
        assert!(
            back.message(now, wall + 2000).is_none(),
            "expired meanwhile"
        );
        let back: StoredMessage = decode(&bytes).expect("decodes");
        assert_eq!(&back.message(now, wall).expect("alive").payload[..], b"x");
    }
}
