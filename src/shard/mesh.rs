//! This shard's side of the ring mesh: the rings to every other shard, what waits for a full
//! one (the backlog, and the connections that stopped reading meanwhile), and the queue of
//! messages the shard sends itself (a client id homed here). Everything the shard sends to a
//! shard, itself included, goes through [`Mesh::send`], in order.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use super::link::ConnLink;
use crate::ring::{Outbox, XMsg};
use crate::stats::Stats;

pub(super) struct Mesh {
    id: usize,
    outbox: Outbox,
    /// Messages for a shard whose ring was full, in order; while any wait, reading stops.
    backlog: Vec<VecDeque<XMsg>>,
    /// Messages in all of `backlog` (asked on every read and publish: kept, not summed).
    backlogged: usize,
    /// Connections waiting for the backlog to drain, each listed once (its `ring_waiting`).
    blocked_readers: Vec<Rc<ConnLink>>,
    /// Messages this shard sends itself.
    self_queue: VecDeque<XMsg>,
    /// Shards pushed to since their doorbell was last rung (the pump rings them once per pass:
    /// one fence per batch, not per message).
    unrung: Vec<usize>,
    /// The pump, while it sleeps.
    pump_waker: Option<Waker>,
    stats: Arc<Stats>,
}

impl Mesh {
    pub fn new(id: usize, shards: usize, outbox: Outbox, stats: Arc<Stats>) -> Mesh {
        Mesh {
            id,
            outbox,
            backlog: (0..shards).map(|_| VecDeque::new()).collect(),
            backlogged: 0,
            blocked_readers: Vec::new(),
            self_queue: VecDeque::new(),
            unrung: Vec::new(),
            pump_waker: None,
            stats,
        }
    }

    fn shards(&self) -> usize {
        self.backlog.len()
    }

    /// Sends to a shard (itself included) in order; a full ring queues the message here and
    /// makes connections stop reading until it drains.
    pub fn send(&mut self, to: usize, msg: XMsg) {
        if to == self.id {
            self.self_queue.push_back(msg);
            self.wake_pump();
            return;
        }
        if !self.backlog[to].is_empty() {
            self.backlog[to].push_back(msg);
            self.backlogged += 1;
            return;
        }
        self.push(to, msg);
    }

    /// Pushes to another shard's ring (or its backlog when full), to be rung with the batch.
    fn push(&mut self, to: usize, msg: XMsg) {
        if let Err(msg) = self.outbox.push(to, msg) {
            self.stats.ring_full.inc();
            tracing::debug!(
                from = self.id,
                to,
                "ring full: pausing reads until it drains"
            );
            self.backlog[to].push_back(msg);
            self.backlogged += 1;
            self.wake_pump();
        } else if !self.unrung.contains(&to) {
            self.unrung.push(to);
            self.wake_pump();
        }
    }

    /// Rings the doorbell of every shard pushed to since the last time (the pump, each pass).
    pub fn ring_bells(&mut self) {
        for to in self.unrung.drain(..) {
            self.outbox.ring(to);
        }
    }

    /// Sends a message made by `make` to every other shard.
    pub fn broadcast(&mut self, make: impl Fn() -> XMsg) {
        for to in 0..self.shards() {
            if to != self.id {
                self.send(to, make());
            }
        }
    }

    /// Wakes the pump (work waits for it: its own messages, a batch for the store).
    pub fn wake_pump(&mut self) {
        if let Some(w) = self.pump_waker.take() {
            w.wake();
        }
    }

    /// Messages wait for a full ring: connections stop reading.
    pub fn blocked(&self) -> bool {
        self.backlogged > 0
    }

    /// The backlogs hold `max` messages: new publishes are refused.
    pub fn backlog_full(&self, max: usize) -> bool {
        self.backlogged >= max
    }

    /// Messages waiting for shard `to`'s ring.
    #[cfg(test)]
    pub fn backlog_len(&self, to: usize) -> usize {
        self.backlog[to].len()
    }

    /// Moves what the rings now take out of the backlog.
    pub fn retry_backlog(&mut self) {
        for to in 0..self.shards() {
            let before = self.backlog[to].len();
            while let Some(msg) = self.backlog[to].pop_front() {
                if let Err(msg) = self.outbox.push(to, msg) {
                    self.backlog[to].push_front(msg);
                    break;
                }
                self.backlogged -= 1;
            }
            if self.backlog[to].len() < before {
                self.outbox.ring(to);
            }
        }
    }

    /// Wakes the connections that stopped reading for a full ring (their wait is over).
    pub fn wake_readers(&mut self) {
        for link in self.blocked_readers.drain(..) {
            link.ring_waiting.set(false);
            link.wake();
        }
    }

    /// Lists a connection that stopped reading for a full ring, once however often it polls;
    /// it is woken through its link when the backlog drains.
    pub fn wait_for_ring(&mut self, link: &Rc<ConnLink>) {
        if !link.ring_waiting.replace(true) {
            self.blocked_readers.push(link.clone());
        }
    }

    /// Appends the messages this shard sent itself to `out`.
    pub fn take_own(&mut self, out: &mut Vec<XMsg>) {
        out.extend(self.self_queue.drain(..));
    }

    /// The oldest message this shard sent itself.
    pub fn pop_own(&mut self) -> Option<XMsg> {
        self.self_queue.pop_front()
    }

    /// Work is waiting for the pump (its own messages, doorbells to ring, a backlog to retry).
    pub fn pump_due(&self) -> bool {
        !self.self_queue.is_empty() || !self.unrung.is_empty() || self.blocked()
    }

    /// The pump goes to sleep; a message to itself or a full ring wakes it.
    pub fn sleep_pump(&mut self, waker: Waker) {
        self.pump_waker = Some(waker);
    }

    /// Messages waiting in each of this shard's outbound rings, by destination.
    pub fn occupancy_by_shard(&self) -> Vec<usize> {
        (0..self.shards())
            .map(|to| self.outbox.occupancy(to))
            .collect()
    }

    /// Messages waiting in this shard's outbound rings.
    pub fn occupancy(&self) -> usize {
        self.occupancy_by_shard().iter().sum()
    }
}
