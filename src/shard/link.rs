//! The link between a connection task and the shard: the bytes waiting to be written, the
//! connection's state in the CONNECT handshake, its keep-alive clock and a close request. The
//! shard writes into it from any task on the thread and wakes the connection's task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::codec::{
    encode, put_ack, put_publish_header, AckType, Connect, Packet, Protocol, PublishRef, ReasonCode,
};

/// Payloads at least this big are written by reference rather than copied.
const BY_REFERENCE: usize = 1024;
/// What a header buffer starts with: a window of 16 acknowledgements, without growing four
/// times on the way from a few bytes.
const HEAD_START: usize = 64;
/// A header buffer this size or more is kept once written out, up to `HEAD_KEPT_MAX`: a busy
/// link does not reallocate at every flush, an idle one (a CONNACK, a PINGRESP) holds nothing.
const HEAD_KEPT_MIN: usize = 256;
const HEAD_KEPT_MAX: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// TCP is up, no CONNECT yet.
    New,
    /// CONNECT received; its password is with a checker thread under this token.
    Authenticating(u64),
    /// CONNECT received; waiting for the home shard's grant with this token.
    Claiming(u64),
    /// Connected to the session in this slot.
    Active(usize),
    /// Closing or closed: nothing more is read or routed to it.
    Closed,
}

impl LinkState {
    /// Its CONNECT waits for a password verdict or a grant: nothing more is read meanwhile.
    pub fn awaits_connect(self) -> bool {
        matches!(self, LinkState::Claiming(_) | LinkState::Authenticating(_))
    }
}

/// Bytes queued for the socket: encoded headers in `head`, payloads by reference in `chunks`.
#[derive(Default)]
pub struct OutBuf {
    chunks: VecDeque<Bytes>,
    head: BytesMut,
    len: usize,
}

impl OutBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal_head(&mut self) {
        if !self.head.is_empty() {
            self.chunks.push_back(self.head.split().freeze());
        }
    }

    /// The header buffer, given its starting room if it has none.
    fn head(&mut self) -> &mut BytesMut {
        if self.head.capacity() == 0 {
            self.head.reserve(HEAD_START);
        }
        &mut self.head
    }

    pub fn packet(&mut self, p: &Packet, protocol: Protocol) {
        let before = self.head.len();
        encode(p, protocol, self.head());
        self.len += self.head.len() - before;
    }

    /// A publish acknowledgement without properties (see [`put_ack`]).
    pub fn ack(&mut self, kind: AckType, packet_id: u16, reason: ReasonCode, protocol: Protocol) {
        let before = self.head.len();
        put_ack(self.head(), kind, packet_id, reason, protocol.is_v5());
        self.len += self.head.len() - before;
    }

    pub fn publish(&mut self, p: &PublishRef<'_>, protocol: Protocol) {
        let before = self.head.len();
        put_publish_header(self.head(), p, protocol);
        self.len += self.head.len() - before + p.payload.len();
        if p.payload.len() >= BY_REFERENCE {
            self.seal_head();
            self.chunks.push_back(p.payload.clone());
        } else {
            self.head.extend_from_slice(p.payload);
        }
    }

    /// Up to 64 slices of what is queued, in order; on the stack (a flush allocates nothing).
    pub fn slices(&self) -> SmallVec<[IoSlice<'_>; 64]> {
        let mut v: SmallVec<[IoSlice<'_>; 64]> = self
            .chunks
            .iter()
            .take(63)
            .map(|c| IoSlice::new(c))
            .collect();
        if self.chunks.len() <= 63 && !self.head.is_empty() {
            v.push(IoSlice::new(&self.head));
        }
        v
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.head.advance(n);
                break;
            };
            if front.len() > n {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
        // Nothing queued: a buffer that only ever held a few small packets (an idle client's
        // CONNACK, PINGRESP) is let go, and one a busy client grew is kept up to 16 KiB. The
        // written bytes are reclaimed first: `capacity` counts only the room after them, and a
        // buffer filled near its end looked small and was let go.
        if self.len == 0 {
            let kept = self.head.try_reclaim(HEAD_KEPT_MIN)
                && (HEAD_KEPT_MIN..=HEAD_KEPT_MAX).contains(&self.head.capacity());
            if !kept {
                self.head = BytesMut::new();
            }
        }
    }
}

/// Milliseconds since the process started, wrapping every 49 days: a link's clocks only measure
/// spans far shorter than that, and take 4 bytes each instead of an `Instant`'s 16.
fn millis(now: Instant) -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    wrapped_millis(now.saturating_duration_since(epoch))
}

/// `span` in milliseconds with the wrap described above, in 32-bit arithmetic (`as_millis`
/// works in 128 bits).
fn wrapped_millis(span: Duration) -> u32 {
    (span.as_secs() as u32)
        .wrapping_mul(1000)
        .wrapping_add(span.subsec_millis())
}

/// A time as a link's clocks keep it, taken once for many links (the sweep's, over every
/// connection).
#[derive(Debug, Clone, Copy)]
pub struct Stamp(u32);

impl Stamp {
    pub fn of(now: Instant) -> Stamp {
        Stamp(millis(now))
    }
}

/// From `then` to `now`, across the wrap; zero when `then` is the later (`now` is a clock read
/// before it, such as the shard's last sweep).
fn since(now: u32, then: u32) -> Duration {
    let span = now.wrapping_sub(then);
    Duration::from_millis(u64::from(if span > u32::MAX / 2 { 0 } else { span }))
}

/// Why the shard closes a connection.
#[derive(Debug, Clone)]
pub struct Close {
    pub reason: ReasonCode,
    pub why: String,
}

impl Close {
    pub fn new(reason: ReasonCode, why: impl Into<String>) -> Close {
        Close {
            reason,
            why: why.into(),
        }
    }
}

/// The cold part of a link.
#[derive(Default)]
pub struct Extras {
    /// Username and address for ACL checks, with their cache.
    pub auth: Option<crate::auth::ClientAuth>,
    /// The name a verified client certificate vouches for (TLS with peer_cert_as_username).
    pub cert_user: Option<Box<str>>,
    /// Publish-rate buckets (with `[limits]` rates set).
    pub rate: Option<super::rate::RateLimiter>,
    /// Until when reading pauses: a v3 client over its publish rate is read more slowly.
    pub throttle: Option<Instant>,
    /// Acknowledgements waiting for the store, in the order their packets came.
    pub acks: VecDeque<super::durable::AckSlot>,
}

/// Shared by the connection's task and the shard, one per connection: kept small (fields a
/// connection rarely needs are boxed) because every idle connection holds one.
pub struct ConnLink {
    pub peer: SocketAddr,
    pub state: Cell<LinkState>,
    pub protocol: Cell<Protocol>,
    /// A successful CONNACK went out: a v5 client is told why it is closed.
    pub connacked: Cell<bool>,
    /// Listed among the mesh's blocked readers, waiting for a full ring to drain.
    pub ring_waiting: Cell<bool>,
    pub keep_alive: Cell<u16>,
    /// Set at accept when a limit or overload means the CONNECT will be refused with this.
    pub refusal: Cell<Option<ReasonCode>>,
    /// The listener (index in the configuration) the connection came in on.
    listener: u16,
    pub out: RefCell<OutBuf>,
    /// Set by the shard: the task writes a DISCONNECT (v5, when connected) and closes.
    close: Cell<Option<Box<Close>>>,
    /// The CONNECT waiting for its grant.
    pub connect: RefCell<Option<Box<Connect>>>,
    /// When the connection opened, until it is granted its session; from then on, when its
    /// client was last heard from (the keep-alive clock). In `millis`.
    last_seen: Cell<u32>,
    /// When something last happened on it besides its client sending (output, a resume from
    /// hibernation), in `millis`.
    last_active: Cell<u32>,
    /// What only some connections need, allocated on first use (idle connections stay small).
    pub extras: RefCell<Option<Box<Extras>>>,
    waker: Cell<Option<Waker>>,
}

impl ConnLink {
    /// `listener` is below `config::MAX_LISTENERS`, which the configuration enforces.
    pub fn new(peer: SocketAddr, now: Instant, listener: usize) -> ConnLink {
        ConnLink {
            peer,
            state: Cell::new(LinkState::New),
            protocol: Cell::new(Protocol::V311),
            connacked: Cell::new(false),
            ring_waiting: Cell::new(false),
            keep_alive: Cell::new(0),
            refusal: Cell::new(None),
            listener: u16::try_from(listener).unwrap_or(u16::MAX),
            out: RefCell::default(),
            close: Cell::new(None),
            connect: RefCell::new(None),
            last_seen: Cell::new(millis(now)),
            last_active: Cell::new(millis(now)),
            extras: RefCell::new(None),
            waker: Cell::new(None),
        }
    }

    pub fn register(&self, waker: &Waker) {
        let current = self.waker.take();
        self.waker.set(match current {
            Some(w) if w.will_wake(waker) => Some(w),
            _ => Some(waker.clone()),
        });
    }

    /// Wakes the task once: the waker is used up, and the task registers again when it next
    /// waits. A burst of sends to one connection (every delivery and acknowledgement of a read
    /// wakes it) costs one wake, not one each.
    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub fn send(&self, p: &Packet) {
        self.out.borrow_mut().packet(p, self.protocol.get());
        self.wake();
    }

    /// Sends a publish acknowledgement without properties, written without a packet built.
    pub fn send_ack(&self, kind: AckType, packet_id: u16, reason: ReasonCode) {
        let protocol = self.protocol.get();
        self.out.borrow_mut().ack(kind, packet_id, reason, protocol);
        self.wake();
    }

    pub fn send_publish(&self, p: &PublishRef<'_>) {
        self.out.borrow_mut().publish(p, self.protocol.get());
        self.wake();
    }

    /// Asks the task to close; the first reason wins.
    pub fn close(&self, close: Close) {
        let current = self.close.take();
        self.close.set(current.or_else(|| Some(Box::new(close))));
        self.wake();
    }

    pub fn is_closing(&self) -> bool {
        let current = self.close.take();
        let closing = current.is_some();
        self.close.set(current);
        closing
    }

    /// Why the connection is closing, once it is.
    pub fn close_reason(&self) -> Option<Close> {
        let current = self.close.take();
        let reason = current.as_deref().cloned();
        self.close.set(current);
        reason
    }

    /// Its client was heard from (or it was granted its session) at `now`.
    pub fn heard(&self, now: Instant) {
        self.last_seen.set(millis(now));
    }

    /// Something happened on it at `now` (output, a resume): it is not idle.
    pub fn touch(&self, now: Instant) {
        self.last_active.set(millis(now));
    }

    /// How long since it opened (before its grant) or its client was last heard from.
    pub fn silent_for(&self, now: Stamp) -> Duration {
        since(now.0, self.last_seen.get())
    }

    /// How long since any traffic either way (or a resume).
    pub fn idle_for(&self, now: Stamp) -> Duration {
        self.silent_for(now)
            .min(since(now.0, self.last_active.get()))
    }

    pub fn listener(&self) -> usize {
        usize::from(self.listener)
    }

    /// The link's extras, created on first use.
    pub fn extras(&self) -> std::cell::RefMut<'_, Extras> {
        std::cell::RefMut::map(self.extras.borrow_mut(), |e| {
            &mut **e.get_or_insert_with(Box::default)
        })
    }

    /// The pause a v3 client over its publish rate is due, taken.
    pub fn take_throttle(&self) -> Option<Instant> {
        self.extras.borrow_mut().as_mut()?.throttle.take()
    }

    pub fn throttled(&self) -> bool {
        self.extras
            .borrow()
            .as_ref()
            .is_some_and(|e| e.throttle.is_some())
    }

    pub fn session(&self) -> Option<usize> {
        match self.state.get() {
            LinkState::Active(key) => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Publish, QoS};

    /// Spans cross the wrap; a span that ends before it starts (a clock read earlier than the
    /// link's own) is none, not 49 days.
    #[test]
    fn spans_cross_the_wrap_and_never_run_backwards() {
        assert_eq!(since(1_500, 500), Duration::from_secs(1));
        assert_eq!(since(499, u32::MAX - 500), Duration::from_secs(1));
        assert_eq!(since(500, 1_500), Duration::ZERO);
        for span in [
            0,
            999,
            1_000,
            4_294_967_295,
            4_294_967_296,
            123_456_789_012_345,
        ] {
            let span = Duration::from_millis(span) + Duration::from_micros(999);
            assert_eq!(wrapped_millis(span), span.as_millis() as u32);
        }
    }

    #[test]
    fn outbuf_keeps_order_across_copied_and_referenced_payloads() {
        let mut out = OutBuf::default();
        let small = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: None,
            payload: Bytes::from_static(b"ab"),
        };
        let big = Publish {
            payload: Bytes::from(vec![7u8; 2000]),
            ..small.clone()
        };
        out.publish(&small.as_out(), Protocol::V311);
        out.publish(&big.as_out(), Protocol::V311);
        out.packet(&Packet::PingResp, Protocol::V311);
        let total = out.len();
        let flat: Vec<u8> = out.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(flat.len(), total);
        assert_eq!(&flat[..7], &[0x30, 5, 0, 1, b't', b'a', b'b']);
        assert_eq!(&flat[flat.len() - 2..], &[0xd0, 0]);
        out.advance(10);
        let rest: Vec<u8> = out.slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(rest, flat[10..]);
        out.advance(total - 10);
        assert!(out.is_empty());
    }

    /// Written out, a header buffer a busy link grew stays for the next flush, even when it
    /// was filled to its end; one that only held a few small packets is let go.
    #[test]
    fn outbuf_keeps_a_grown_header_buffer_and_lets_a_small_one_go() {
        let mut out = OutBuf::default();
        let ack = Packet::PubAck(crate::codec::PubResp::new(1, ReasonCode::Success));
        out.packet(&ack, Protocol::V311);
        assert_eq!(
            out.head.capacity(),
            HEAD_START,
            "starts with room for a window of acks"
        );
        out.advance(out.len());
        assert_eq!(out.head.capacity(), 0, "a few small packets: let go");
        while out.len() < 1024 {
            out.packet(&ack, Protocol::V311);
        }
        let allocated = out.head.capacity();
        while out.head.capacity() - out.head.len() >= 16 {
            out.packet(&Packet::PingResp, Protocol::V311);
        }
        assert_eq!(out.head.capacity(), allocated);
        let at = out.head.as_ptr();
        out.advance(out.len());
        assert_eq!(
            out.head.capacity(),
            allocated,
            "filled near its end, kept whole"
        );
        out.packet(&ack, Protocol::V311);
        assert_eq!(out.head.as_ptr(), at, "the next flush writes into it");
    }
}
