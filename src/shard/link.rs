//! The link between a connection task and the shard: the bytes waiting to be written, the
//! connection's state in the CONNECT handshake, its keep-alive clock and a close request. The
//! shard writes into it from any task on the thread and wakes the connection's task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::task::Waker;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::codec::{encode, put_publish_header, Connect, Packet, Protocol, Publish, ReasonCode};

/// Payloads at least this big are written by reference rather than copied.
const BY_REFERENCE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// TCP is up, no CONNECT yet.
    New,
    /// CONNECT received; waiting for the home shard's grant with this token.
    Claiming(u64),
    /// Connected to the session in this slot.
    Active(usize),
    /// Closing or closed: nothing more is read or routed to it.
    Closed,
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

    pub fn packet(&mut self, p: &Packet, protocol: Protocol) {
        let before = self.head.len();
        encode(p, protocol, &mut self.head);
        self.len += self.head.len() - before;
    }

    pub fn publish(&mut self, p: &Publish, protocol: Protocol) {
        let before = self.head.len();
        put_publish_header(&mut self.head, p, protocol);
        self.len += self.head.len() - before + p.payload.len();
        if p.payload.len() >= BY_REFERENCE {
            self.seal_head();
            self.chunks.push_back(p.payload.clone());
        } else {
            self.head.extend_from_slice(&p.payload);
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
        if self.len == 0 && self.head.capacity() > 16 * 1024 {
            self.head = BytesMut::new();
        }
    }
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
    pub rate: Option<super::limits::RateLimiter>,
}

pub struct ConnLink {
    pub peer: SocketAddr,
    pub state: Cell<LinkState>,
    pub protocol: Cell<Protocol>,
    pub out: RefCell<OutBuf>,
    /// Set by the shard: the task writes a DISCONNECT (v5, when connected) and closes.
    pub close: RefCell<Option<Close>>,
    /// The CONNECT waiting for its grant.
    pub connect: RefCell<Option<Box<Connect>>>,
    /// A successful CONNACK went out: a v5 client is told why it is closed.
    pub connacked: Cell<bool>,
    pub keep_alive: Cell<u16>,
    pub last_seen: Cell<Instant>,
    pub opened: Instant,
    /// The listener (index in the configuration) the connection came in on.
    pub listener: usize,
    /// Set at accept when a limit or overload means the CONNECT will be refused with this.
    pub refusal: Cell<Option<ReasonCode>>,
    /// What only some connections need, allocated on first use (idle connections stay small).
    pub extras: RefCell<Option<Box<Extras>>>,
    /// Until when reading pauses: a v3 client over its publish rate is read more slowly.
    pub throttle: Cell<Option<Instant>>,
    waker: RefCell<Option<Waker>>,
}

impl ConnLink {
    pub fn new(peer: SocketAddr, now: Instant, listener: usize) -> ConnLink {
        ConnLink {
            peer,
            state: Cell::new(LinkState::New),
            protocol: Cell::new(Protocol::V311),
            out: RefCell::default(),
            close: RefCell::new(None),
            connect: RefCell::new(None),
            connacked: Cell::new(false),
            keep_alive: Cell::new(0),
            last_seen: Cell::new(now),
            opened: now,
            listener,
            refusal: Cell::new(None),
            extras: RefCell::new(None),
            throttle: Cell::new(None),
            waker: RefCell::new(None),
        }
    }

    pub fn register(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    pub fn send(&self, p: &Packet) {
        self.out.borrow_mut().packet(p, self.protocol.get());
        self.wake();
    }

    pub fn send_publish(&self, p: &Publish) {
        self.out.borrow_mut().publish(p, self.protocol.get());
        self.wake();
    }

    /// Asks the task to close; the first reason wins.
    pub fn close(&self, close: Close) {
        let mut slot = self.close.borrow_mut();
        if slot.is_none() {
            *slot = Some(close);
        }
        drop(slot);
        self.wake();
    }

    /// The link's extras, created on first use.
    pub fn extras(&self) -> std::cell::RefMut<'_, Extras> {
        std::cell::RefMut::map(self.extras.borrow_mut(), |e| {
            &mut **e.get_or_insert_with(Box::default)
        })
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
    use crate::codec::QoS;

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
        out.publish(&small, Protocol::V311);
        out.publish(&big, Protocol::V311);
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
}
