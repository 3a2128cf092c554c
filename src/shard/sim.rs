//! Several shards driven by hand on one thread, for tests: each step delivers one shard's ring
//! and self-queue messages, so a test decides the order in which cross-shard messages land and
//! places each client on the shard it chooses (no sockets, no runtime, no kernel hashing).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::link::{ConnLink, LinkState};
use super::{Boot, Listener, Shard};
use crate::auth::Auth;
use crate::codec::{decode, encode, Connect, Packet, Protocol};
use crate::config::Config;
use crate::control::Queue;
use crate::ring::Inbox;
use crate::stats::Shared;

pub(super) struct Sim {
    pub shards: Vec<Shard>,
    inboxes: Vec<Inbox>,
    /// The store under the shards (memory only: `durability.mode = "off"`), in its own dir.
    _store: (crate::store::Writer, tempfile::TempDir),
}

impl Sim {
    pub fn new(n: usize, mut cfg: Config) -> Sim {
        cfg.durability.mode = crate::config::DurabilityMode::Off;
        let cfg = Arc::new(cfg);
        let auth = Arc::new(Auth::load(&cfg).expect("auth"));
        let shared = Arc::new(Shared::new(n, cfg.listeners.len()));
        let tls = crate::tls::configs(&cfg).expect("tls");
        let mut shards = Vec::new();
        let mut inboxes = Vec::new();
        let mesh = crate::ring::mesh(n, 1024);
        let bells = mesh[0].1.bells();
        let checks = crate::auth::checker::spawn(n, 1, 16, bells.clone()).expect("checker thread");
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::store::Store::open(dir.path(), &cfg.durability).expect("store");
        let (writer, links) = crate::store::spawn(store, &cfg.durability, bells, Arc::default())
            .expect("store thread");
        let ends = mesh.into_iter().zip(checks).zip(links);
        for (id, (((outbox, inbox), checks), store)) in ends.enumerate() {
            let boot = Boot {
                id,
                shards: n,
                cfg: cfg.clone(),
                auth: auth.clone(),
                shared: shared.clone(),
                control: Arc::new(Queue::new(id, inbox.bells())),
                listeners: Listener::for_shard(&cfg, &tls, n),
                checks,
                driver: crate::config::Driver::Epoll,
                store,
                cluster: None,
            };
            shards.push(Shard::new(boot, outbox));
            inboxes.push(inbox);
        }
        Sim {
            shards,
            inboxes,
            _store: (writer, dir),
        }
    }

    /// Handles what shard `i` has received (its rings and its own queue) once and retries its
    /// backlog, as its pump would; false if nothing was waiting.
    pub fn step(&mut self, i: usize) -> bool {
        let mut batch = Vec::new();
        self.inboxes[i].drain(usize::MAX, &mut batch);
        let sh = &mut self.shards[i];
        sh.mesh.take_own(&mut batch);
        let moved = !batch.is_empty();
        for msg in batch {
            sh.handle_xmsg(msg, Instant::now());
        }
        let backlogged = sh.mesh.blocked();
        sh.unblock();
        moved || backlogged
    }

    /// Steps every shard until no message is left anywhere.
    pub fn settle(&mut self) {
        loop {
            let moved: Vec<bool> = (0..self.shards.len()).map(|i| self.step(i)).collect();
            if !moved.contains(&true) {
                return;
            }
        }
    }

    /// A client id whose home is shard `home`.
    pub fn id_homed_at(&self, home: usize, prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|id| super::home_of(id, self.shards.len()) == home)
            .expect("some id is homed there")
    }

    /// A connection on shard `shard` that has sent CONNECT (not yet granted: step or settle).
    pub fn connect(&mut self, shard: usize, c: Connect) -> Rc<ConnLink> {
        let link = Rc::new(ConnLink::new(
            "127.0.0.1:40000".parse().expect("addr"),
            Instant::now(),
            0,
        ));
        link.protocol.set(c.protocol);
        let r = self.shards[shard].handle(&link, Packet::Connect(Box::new(c)), Instant::now());
        assert!(r.is_ok(), "CONNECT refused");
        link
    }

    /// A client homed at and connected on `shard`, its CONNACK taken.
    pub fn client(&mut self, shard: usize, prefix: &str, protocol: Protocol) -> Rc<ConnLink> {
        let id = self.id_homed_at(shard, prefix);
        let link = self.connect(shard, connect(protocol, &id));
        self.settle();
        Sim::received(&link);
        link
    }

    /// How many PUBLISH packets the broker has written to `link`'s client so far (taken).
    pub fn publishes(link: &ConnLink) -> usize {
        Sim::received(link)
            .into_iter()
            .filter(|p| matches!(p, Packet::Publish(_)))
            .count()
    }

    /// Hands shard `shard` a packet from `link`'s client.
    pub fn send(&mut self, shard: usize, link: &Rc<ConnLink>, p: Packet) {
        // Through the encoder and decoder, as a packet from the wire would come.
        let mut buf = BytesMut::new();
        encode(&p, link.protocol.get(), &mut buf);
        let p = decode(&mut buf, link.protocol.get(), usize::MAX)
            .expect("decodes")
            .expect("whole");
        let r = self.shards[shard].handle(link, p, Instant::now());
        assert!(r.is_ok(), "packet refused");
    }

    /// The connection's network connection closes.
    pub fn close(&mut self, shard: usize, link: &ConnLink) {
        self.shards[shard].connection_closed(link, Instant::now());
        link.state.set(LinkState::Closed);
    }

    /// Takes what the broker has written to `link`'s client so far, decoded.
    pub fn received(link: &ConnLink) -> Vec<Packet> {
        let mut out = link.out.borrow_mut();
        let mut bytes = BytesMut::new();
        for s in out.slices() {
            bytes.extend_from_slice(&s);
        }
        out.advance(bytes.len());
        let mut packets = Vec::new();
        while let Some(p) = decode(&mut bytes, link.protocol.get(), usize::MAX).expect("valid") {
            packets.push(p);
        }
        packets
    }
}

/// A CONNECT for `id` with clean start.
pub fn connect(protocol: Protocol, id: &str) -> Connect {
    Connect::new(protocol, id, true, 60)
}
