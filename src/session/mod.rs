//! Per-client MQTT session state, free of sockets and runtimes: subscriptions, the outbound
//! QoS 1/2 window with packet-id allocation, the bounded offline queue, inbound QoS 2 state,
//! topic aliases and the will. The shard feeds it events and writes what it returns. A session
//! holds only `Send` data so it can move between shards on a takeover.

mod message;
mod outgoing;
mod stored;
mod window;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::codec::{Protocol, QoS, SubOptions, Will};

pub use message::{owned, Message};
pub use outgoing::{Outgoing, Written};
pub use stored::{DeliveryOp, StoreLog};
pub use window::Window;

/// Subscription identifiers attached to one delivery.
pub type SubIds = SmallVec<[u32; 1]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub options: SubOptions,
    pub id: Option<u32>,
}

/// A message waiting for (or in) the outbound window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: SubIds,
    /// The shared subscription (full `$share/...` filter) it was dispatched through, so it can
    /// go to another member if this session ends before acknowledging it.
    pub group: Option<ByteString>,
    /// Its key in the store (per session, from 1); 0 while not stored.
    #[serde(default)]
    pub seq: u64,
    /// The publish whose acknowledgement waits for this delivery to be stored (the shard's
    /// obligation id), while the publish is still owed one: acknowledged by the subscriber
    /// before it was collected for the store, the delivery releases that wait instead.
    #[serde(skip)]
    pub owed: Option<u64>,
}

/// A delivery flow ended by the subscriber's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completed {
    /// The obligation it answered to, when it ended before the store heard of it.
    pub owed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inflight {
    pub delivery: Delivery,
    pub state: OutState,
}

/// What the session says to do with a delivery.
pub enum Admit {
    /// Send now: a QoS 0 delivery, or the flow the window took it into.
    Send(Outgoing),
    Queued,
    Dropped,
}

/// The configured bounds on what a session queues, passed in rather than stored so that a
/// session read back from disk follows the configuration of the day.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_queued: usize,
    /// Payload bytes the queue may hold (0: no limit).
    pub max_queued_bytes: usize,
    pub queue_qos0: bool,
}

/// The topic aliases of one connection, both ways.
#[derive(Debug, Default)]
pub struct Aliases {
    pub out: AHashMap<ByteString, u16>,
    pub inbound: AHashMap<u16, ByteString>,
}

/// Everything but the connection-bound aliases serializes, so sessions can be written to disk
/// and read back.
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    pub client_id: ByteString,
    pub protocol: Protocol,
    /// Seconds the session outlives its connection; `u32::MAX` never expires.
    pub expiry_interval: u32,
    pub subscriptions: BTreeMap<ByteString, Subscription>,
    /// Boxed: most sessions have none, and idle sessions should stay small.
    pub will: Option<Box<Will>>,
    /// Packet ids of inbound QoS 2 messages awaiting PUBREL (at most the receive maximum).
    pub inbound_qos2: Vec<u16>,
    /// The client's receive maximum: our outbound window.
    pub send_window: u16,
    /// The largest packet the client accepts.
    pub max_packet_size: u32,
    pub alias_max_out: u16,
    /// Topic aliases of the current connection, allocated on first use.
    #[serde(skip)]
    pub aliases: Option<Box<Aliases>>,
    pub inflight: Window,
    pub queue: VecDeque<Delivery>,
    /// Payload bytes in `queue` (derived: recounted after a restore).
    #[serde(skip)]
    queued_bytes: usize,
    /// QoS 0 messages in `queue`: a new one waits behind them (in order), not behind QoS 1/2.
    #[serde(skip)]
    queued_qos0: usize,
    next_pid: u16,
    /// Messages dropped for this client (queue full, too large, expired).
    pub dropped: u64,
    /// What the store has yet to hear, for a session the store keeps (None: memory only).
    #[serde(skip)]
    pub stored: Option<Box<StoreLog>>,
}

impl Session {
    pub fn new(client_id: ByteString, protocol: Protocol) -> Session {
        Session {
            client_id,
            protocol,
            expiry_interval: 0,
            subscriptions: BTreeMap::new(),
            will: None,
            inbound_qos2: Vec::new(),
            send_window: 1,
            max_packet_size: u32::MAX,
            alias_max_out: 0,
            aliases: None,
            inflight: Window::default(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            queued_qos0: 0,
            next_pid: 0,
            dropped: 0,
            stored: None,
        }
    }

    /// From now on the store hears of every change; what the session already holds is written
    /// as new records (a session read from an older version's files, or one that just became
    /// persistent).
    pub fn keep_stored(&mut self, epoch: u64) {
        let mut log = StoreLog::new(epoch, 0);
        // What they were owed to was decided without them (they were not stored then).
        for (pid, f) in self.inflight.iter_mut() {
            f.delivery.owed = None;
            f.delivery.seq = log.next_seq();
            log.push(DeliveryOp::Put {
                seq: f.delivery.seq,
                delivery: f.delivery.clone(),
                pid: Some(pid),
            });
            if f.state == OutState::Released {
                log.push(DeliveryOp::Released {
                    seq: f.delivery.seq,
                    pid,
                });
            }
        }
        for d in self.queue.iter_mut() {
            d.owed = None;
            d.seq = log.next_seq();
            log.push(DeliveryOp::Put {
                seq: d.seq,
                delivery: d.clone(),
                pid: None,
            });
        }
        self.stored = Some(Box::new(log));
    }

    /// The session record (not its deliveries) changed: subscriptions, will, expiry, inbound
    /// QoS 2 ids.
    pub fn meta_changed(&mut self) {
        if let Some(log) = self.stored.as_mut() {
            log.mark_meta();
        }
    }

    /// Recounts what a session read back from the store holds: the packet-id counter after
    /// the id sent last, the queue's bytes and QoS 0 messages.
    pub fn after_restore(&mut self) {
        self.next_pid = self.inflight.last_pid().unwrap_or(0);
        self.recount_queue();
    }

    /// Recounts the queue's payload bytes and QoS 0 messages after it changed in bulk.
    fn recount_queue(&mut self) {
        self.queued_bytes = self.queue.iter().map(|d| d.msg.payload.len()).sum();
        self.queued_qos0 = self
            .queue
            .iter()
            .filter(|d| d.qos == QoS::AtMostOnce)
            .count();
    }

    /// The store need not hear of delivery `seq` again; true when its `Put` had not been
    /// collected (and so never reaches the store).
    fn log_del(&mut self, seq: u64) -> bool {
        self.stored.as_mut().is_some_and(|log| log.del(seq))
    }

    /// Ends the in-flight delivery `pid`.
    fn finish(&mut self, pid: u16) -> Completed {
        match self.inflight.remove(pid) {
            Some(f) => self.ended(f),
            None => Completed { owed: None },
        }
    }

    /// A flow taken out of the window ended: its log entry goes.
    fn ended(&mut self, f: Inflight) -> Completed {
        let uncollected = self.log_del(f.delivery.seq);
        Completed {
            owed: f.delivery.owed.filter(|_| uncollected),
        }
    }

    /// Resets what belongs to a connection rather than the session: its outbound window (the
    /// client's receive maximum, capped by the caller's configuration), limits and aliases.
    pub fn attach(
        &mut self,
        protocol: Protocol,
        send_window: u16,
        max_packet: u32,
        alias_max: u16,
    ) {
        self.protocol = protocol;
        self.send_window = send_window.max(1);
        self.max_packet_size = max_packet;
        self.alias_max_out = alias_max;
        self.aliases = None;
    }

    /// Lets go of the room an empty window and an empty queue keep from when they were busy:
    /// its connection went idle or away.
    pub fn trim(&mut self) {
        self.inflight.trim();
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// Forgets an inbound QoS 2 packet id on PUBREL; false if it was not awaiting one.
    pub fn release_inbound(&mut self, pid: u16) -> bool {
        match self.inbound_qos2.iter().position(|p| *p == pid) {
            Some(i) => {
                self.inbound_qos2.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn window_open(&self) -> bool {
        self.inflight.len() < usize::from(self.send_window)
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            if !self.inflight.contains(self.next_pid) {
                return self.next_pid;
            }
        }
    }

    /// Decides what happens to a delivery. `online` is whether a connection can take it now.
    pub fn admit(&mut self, d: Delivery, online: bool, limits: &SessionLimits) -> Admit {
        if d.qos == QoS::AtMostOnce {
            // Behind queued QoS 0 messages it waits its turn (MQTT-4.6.0-6: in order within a
            // QoS); QoS 1/2 messages waiting for the window do not hold it back.
            if online && self.queued_qos0 == 0 {
                return Admit::Send(Outgoing::Once(d));
            }
            if !limits.queue_qos0 {
                self.dropped += 1;
                return Admit::Dropped;
            }
        } else if online && self.queue.is_empty() && self.window_open() {
            let pid = self.alloc_pid();
            let mut d = d;
            if let Some(log) = self.stored.as_mut() {
                d.seq = log.next_seq();
                log.push(DeliveryOp::Put {
                    seq: d.seq,
                    delivery: d.clone(),
                    pid: Some(pid),
                });
            }
            self.inflight.push(
                pid,
                Inflight {
                    delivery: d,
                    state: OutState::Published,
                },
            );
            return Admit::Send(Outgoing::Flow(pid));
        }
        self.enqueue(d, limits)
    }

    fn enqueue(&mut self, d: Delivery, limits: &SessionLimits) -> Admit {
        let len = d.msg.payload.len();
        let max_bytes = limits.max_queued_bytes;
        if self.queue.len() >= limits.max_queued
            || (max_bytes > 0 && self.queued_bytes + len > max_bytes)
        {
            self.dropped += 1;
            return Admit::Dropped;
        }
        let mut kept = if d.msg.payload.len() < 4096 {
            Delivery {
                msg: Arc::new(d.msg.compacted()),
                ..d
            }
        } else {
            d
        };
        if let Some(log) = self.stored.as_mut() {
            kept.seq = log.next_seq();
            log.push(DeliveryOp::Put {
                seq: kept.seq,
                delivery: kept.clone(),
                pid: None,
            });
        }
        self.queued_qos0 += usize::from(kept.qos == QoS::AtMostOnce);
        self.queue.push_back(kept);
        self.queued_bytes += len;
        Admit::Queued
    }

    fn pop_queued(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(d.msg.payload.len());
        self.queued_qos0 -= usize::from(d.qos == QoS::AtMostOnce);
        Some(d)
    }

    /// Takes the next queued delivery that fits the window, allocating its packet id.
    pub fn next_queued(&mut self, now: Instant) -> Option<Outgoing> {
        loop {
            let front = self.queue.front()?;
            if front.msg.is_expired(now) {
                if let Some(d) = self.pop_queued() {
                    self.log_del(d.seq);
                }
                self.dropped += 1;
                continue;
            }
            if front.qos == QoS::AtMostOnce {
                let d = self.pop_queued()?;
                self.log_del(d.seq);
                return Some(Outgoing::Once(d));
            }
            if !self.window_open() {
                return None;
            }
            let d = self.pop_queued()?;
            let pid = self.alloc_pid();
            if let Some(log) = self.stored.as_mut().filter(|_| d.seq > 0) {
                log.push(DeliveryOp::Sent { seq: d.seq, pid });
            }
            self.inflight.push(
                pid,
                Inflight {
                    delivery: d,
                    state: OutState::Published,
                },
            );
            return Some(Outgoing::Flow(pid));
        }
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2 after PUBREL) ends a flow; `None` if no such flow.
    pub fn complete(&mut self, pid: u16, expect: OutState, qos: QoS) -> Option<Completed> {
        let f = self
            .inflight
            .remove_if(pid, |f| f.state == expect && f.delivery.qos == qos)?;
        Some(self.ended(f))
    }

    /// PUBREC: the flow moves on to PUBREL; false if no such flow.
    pub fn received(&mut self, pid: u16) -> bool {
        match self.inflight.get_mut(pid) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                f.state = OutState::Released;
                let seq = f.delivery.seq;
                if let Some(log) = self.stored.as_mut().filter(|_| seq > 0) {
                    log.push(DeliveryOp::Released { seq, pid });
                }
                true
            }
            _ => false,
        }
    }

    /// What the session still owes its client: the window's messages not yet received (those
    /// waiting for PUBCOMP were), in the order sent, then the queue in order.
    pub fn into_owed(self) -> Vec<Delivery> {
        let unreceived = self.inflight.into_iter().map(|(_, f)| f);
        let unreceived = unreceived.filter(|f| f.state == OutState::Published);
        unreceived.map(|f| f.delivery).chain(self.queue).collect()
    }

    /// Takes every delivery that came through a shared subscription and is not yet
    /// acknowledged, for dispatch to another member.
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut out: Vec<Delivery> = Vec::new();
        self.inflight.retain(|_, f| {
            if f.delivery.group.is_some() && f.state == OutState::Published {
                out.push(f.delivery.clone());
                return false;
            }
            true
        });
        self.queue.retain(|d| {
            if d.group.is_some() {
                out.push(d.clone());
                return false;
            }
            true
        });
        self.recount_queue();
        for d in &out {
            self.log_del(d.seq);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::outgoing::alias_for;
    use super::*;
    use crate::codec::Will;
    use bytes::Bytes;

    const LIMITS: SessionLimits = SessionLimits {
        max_queued: 3,
        max_queued_bytes: 0,
        queue_qos0: false,
    };

    /// A v5 session whose client allows 2 messages in flight.
    fn session(id: &str) -> Session {
        let mut s = Session::new(id.into(), Protocol::V5);
        s.attach(Protocol::V5, 2, u32::MAX, 0);
        s
    }

    pub(super) fn delivery(qos: QoS) -> Delivery {
        let now = Instant::now();
        let msg = Message::new(
            "t".into(),
            Bytes::from_static(b"x"),
            qos,
            false,
            None,
            "p".into(),
            now,
        );
        Delivery {
            msg: Arc::new(msg),
            qos,
            retain: false,
            sub_ids: SubIds::new(),
            group: None,
            seq: 0,
            owed: None,
        }
    }

    /// What the store would be handed: each op's kind and seq.
    fn logged(s: &mut Session) -> Vec<(&'static str, u64)> {
        let log = s.stored.as_mut().expect("stored");
        log.drain_ops(true)
            .map(|op| match op {
                DeliveryOp::Put { seq, pid, .. } => {
                    (if pid.is_some() { "put-sent" } else { "put" }, seq)
                }
                DeliveryOp::Sent { seq, .. } => ("sent", seq),
                DeliveryOp::Released { seq, .. } => ("released", seq),
                DeliveryOp::Del { seq } => ("del", seq),
            })
            .collect()
    }

    /// A delivery made and done with before the shard collects the log leaves nothing in it;
    /// one collected before it is done with is deleted in the store; one sent after it was
    /// logged queued goes as sent.
    #[test]
    fn a_delivery_done_with_before_it_is_collected_never_reaches_the_store() {
        let mut s = session("c");
        s.keep_stored(1);
        let limits = SessionLimits {
            max_queued: 10,
            ..LIMITS
        };
        let Admit::Send(Outgoing::Flow(first)) = s.admit(delivery(QoS::AtLeastOnce), true, &limits)
        else {
            panic!("sent at once");
        };
        let Admit::Send(Outgoing::Flow(second)) =
            s.admit(delivery(QoS::ExactlyOnce), true, &limits)
        else {
            panic!("sent at once");
        };
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &limits),
            Admit::Queued
        ));
        assert!(s
            .complete(first, OutState::Published, QoS::AtLeastOnce)
            .is_some());
        assert!(s.received(second));
        assert!(s
            .complete(second, OutState::Released, QoS::ExactlyOnce)
            .is_some());
        // The third is sent now that the window has room: its Put says so.
        assert!(s.next_queued(Instant::now()).is_some());
        assert_eq!(logged(&mut s), [("put-sent", 3)]);
        let third = s.inflight.last_pid().expect("in flight");
        assert!(s
            .complete(third, OutState::Published, QoS::AtLeastOnce)
            .is_some());
        assert_eq!(logged(&mut s), [("del", 3)]);
    }

    #[test]
    fn window_then_queue_then_drop() {
        let mut s = session("c");
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
            Admit::Send(Outgoing::Flow(1))
        ));
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
            Admit::Send(Outgoing::Flow(2))
        ));
        for _ in 0..3 {
            assert!(matches!(
                s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
                Admit::Queued
            ));
        }
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
            Admit::Dropped
        ));
        assert_eq!(s.dropped, 1);
        assert!(s.next_queued(Instant::now()).is_none(), "window full");
        assert!(s
            .complete(1, OutState::Published, QoS::AtLeastOnce)
            .is_some());
        assert!(matches!(
            s.next_queued(Instant::now()),
            Some(Outgoing::Flow(3))
        ));
    }

    #[test]
    fn qos0_waits_behind_queued_qos0() {
        let limits = SessionLimits {
            queue_qos0: true,
            ..LIMITS
        };
        let mut s = session("c");
        assert!(matches!(
            s.admit(delivery(QoS::AtMostOnce), false, &limits),
            Admit::Queued
        ));
        assert!(
            matches!(
                s.admit(delivery(QoS::AtMostOnce), true, &limits),
                Admit::Queued
            ),
            "an online QoS 0 must not overtake the queued one"
        );
        assert_eq!(s.queue.len(), 2);
        assert!(matches!(
            s.next_queued(Instant::now()),
            Some(Outgoing::Once(_))
        ));
        assert!(matches!(
            s.next_queued(Instant::now()),
            Some(Outgoing::Once(_))
        ));
        let mut window_full = session("w");
        for _ in 0..3 {
            window_full.admit(delivery(QoS::AtLeastOnce), true, &limits);
        }
        assert_eq!(window_full.queue.len(), 1, "one QoS 1 waits for the window");
        assert!(
            matches!(
                window_full.admit(delivery(QoS::AtMostOnce), true, &limits),
                Admit::Send(Outgoing::Once(_))
            ),
            "QoS 0 is not held back by QoS 1 waiting for the window"
        );
    }

    #[test]
    fn qos2_flow_and_offline_qos0() {
        let mut s = session("c");
        assert!(matches!(
            s.admit(delivery(QoS::AtMostOnce), false, &LIMITS),
            Admit::Dropped
        ));
        let Admit::Send(Outgoing::Flow(pid)) = s.admit(delivery(QoS::ExactlyOnce), true, &LIMITS)
        else {
            panic!("expected send");
        };
        assert!(
            s.complete(pid, OutState::Released, QoS::ExactlyOnce)
                .is_none(),
            "PUBCOMP before PUBREC"
        );
        assert!(s.received(pid));
        assert!(s
            .complete(pid, OutState::Released, QoS::ExactlyOnce)
            .is_some());
        assert!(s.inflight.is_empty());
    }

    #[test]
    fn packet_ids_skip_zero_and_inflight() {
        let mut s = session("c");
        s.next_pid = u16::MAX - 1;
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
            Admit::Send(Outgoing::Flow(65535))
        ));
        assert!(matches!(
            s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS),
            Admit::Send(Outgoing::Flow(1))
        ));
    }

    #[test]
    fn a_session_survives_serialization() {
        let mut s = session("keep");
        s.expiry_interval = 3600;
        let sub = Subscription {
            options: crate::codec::SubOptions::qos(QoS::ExactlyOnce),
            id: Some(7),
        };
        s.subscriptions.insert("a/+".into(), sub);
        s.will = Some(Box::new(Will {
            topic: "w".into(),
            payload: bytes::Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        }));
        s.inbound_qos2.push(5);
        let Admit::Send(Outgoing::Flow(pid)) = s.admit(delivery(QoS::ExactlyOnce), true, &LIMITS)
        else {
            panic!("expected send");
        };
        assert!(s.received(pid));
        s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS);
        s.admit(delivery(QoS::AtLeastOnce), true, &LIMITS);
        let text = serde_json::to_string(&s).expect("serialize");
        let back: Session = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back.client_id, "keep");
        assert_eq!(back.expiry_interval, 3600);
        assert_eq!(back.subscriptions.get("a/+"), Some(&sub));
        assert_eq!(back.will.as_deref(), s.will.as_deref());
        assert_eq!(back.inbound_qos2, [5]);
        assert_eq!(back.inflight.len(), 2);
        assert_eq!(
            back.inflight.get(pid).map(|f| f.state),
            Some(OutState::Released)
        );
        assert_eq!(back.queue.len(), 1);
        assert_eq!(&back.queue[0].msg.payload[..], b"x");
    }

    #[test]
    fn aliases_assigned_up_to_max() {
        let mut s = session("c");
        s.alias_max_out = 1;
        let mut alias = |topic: &str| alias_for(&mut s.aliases, s.alias_max_out, &topic.into());
        assert_eq!(alias("a"), Some((1, true)));
        assert_eq!(alias("a"), Some((1, false)));
        assert_eq!(alias("b"), None);
    }

    #[test]
    fn aliases_never_wrap_at_the_largest_maximum() {
        let mut s = session("c");
        s.alias_max_out = u16::MAX;
        let mut alias = |topic: &str| alias_for(&mut s.aliases, s.alias_max_out, &topic.into());
        for i in 1..=u32::from(u16::MAX) {
            let topic = format!("t/{i}");
            assert_eq!(alias(&topic), Some((i as u16, true)), "topic {i}");
        }
        assert_eq!(alias("t/65536"), None);
        assert_eq!(alias("t/1"), Some((1, false)));
        assert_eq!(s.aliases.as_ref().map(|a| a.out.len()), Some(65535));
    }
}
