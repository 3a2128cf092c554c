//! The shard mesh: one lock-free SPSC ring (rtrb) per ordered pair of shards, built before the
//! shards start, and one doorbell per shard. A producer pushes a batch, then rings once (a
//! fence and one load); the doorbell wakes the consumer only when it has said it is going to
//! sleep, so a busy consumer costs its producers that load per batch. The wake itself goes
//! through monoio's cross-thread waker, an eventfd write. A full ring hands the message back:
//! the caller applies back-pressure, never blocks.

mod msg;

use std::future::poll_fn;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

pub use msg::{Confirm, Grant, XMsg};

/// Wakes a sleeping shard.
#[derive(Default)]
pub struct Doorbell {
    sleeping: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// Called by a producer after pushing.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// A shard's sending ends: one ring to every other shard.
pub struct Outbox {
    /// `tx[j]`: the ring to shard `j` (`None` for this shard itself).
    tx: Vec<Option<rtrb::Producer<XMsg>>>,
    bells: Arc<[Doorbell]>,
}

/// A shard's receiving ends and its own doorbell.
pub struct Inbox {
    shard: usize,
    /// `rx[i]`: the ring from shard `i`.
    rx: Vec<Option<rtrb::Consumer<XMsg>>>,
    bells: Arc<[Doorbell]>,
}

/// Builds the N x N mesh; `capacity` is each ring's size in messages.
pub fn mesh(n: usize, capacity: usize) -> Vec<(Outbox, Inbox)> {
    let bells: Arc<[Doorbell]> = (0..n).map(|_| Doorbell::default()).collect();
    let mut ends: Vec<(Outbox, Inbox)> = (0..n)
        .map(|shard| {
            let out = Outbox {
                tx: (0..n).map(|_| None).collect(),
                bells: bells.clone(),
            };
            let inbox = Inbox {
                shard,
                rx: (0..n).map(|_| None).collect(),
                bells: bells.clone(),
            };
            (out, inbox)
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                ends[from].0.tx[to] = Some(p);
                ends[to].1.rx[from] = Some(c);
            }
        }
    }
    ends
}

impl Outbox {
    /// Pushes to shard `to` without waking it (see [`Outbox::ring`]); hands the message back
    /// when the ring is full.
    pub fn push(&mut self, to: usize, msg: XMsg) -> Result<(), XMsg> {
        let Some(tx) = self.tx.get_mut(to).and_then(Option::as_mut) else {
            return Err(msg);
        };
        tx.push(msg).map_err(|rtrb::PushError::Full(m)| m)
    }

    /// Rings shard `to`'s doorbell after a batch of pushes: a consumer that went to sleep
    /// before seeing them is woken.
    pub fn ring(&self, to: usize) {
        self.bells[to].ring();
    }

    /// Pushes and rings at once.
    #[cfg(test)]
    pub fn send(&mut self, to: usize, msg: XMsg) -> Result<(), XMsg> {
        self.push(to, msg)?;
        self.ring(to);
        Ok(())
    }

    /// Messages waiting in the ring to `to`, for metrics.
    pub fn occupancy(&self, to: usize) -> usize {
        self.tx
            .get(to)
            .and_then(Option::as_ref)
            .map_or(0, |tx| tx.buffer().capacity() - tx.slots())
    }
}

impl Inbox {
    /// Pops up to `max` messages from each inbound ring into `out`; returns how many.
    pub fn drain(&mut self, max: usize, out: &mut Vec<XMsg>) -> usize {
        let before = out.len();
        for rx in self.rx.iter_mut().flatten() {
            let n = rx.slots().min(max);
            if n == 0 {
                continue;
            }
            if let Ok(chunk) = rx.read_chunk(n) {
                out.extend(chunk);
            }
        }
        out.len() - before
    }

    fn any_pending(&self) -> bool {
        self.rx.iter().flatten().any(|rx| !rx.is_empty())
    }

    /// This shard's doorbells, for other producers (the control queue) to ring.
    pub fn bells(&self) -> Arc<[Doorbell]> {
        self.bells.clone()
    }

    /// Ready when a message may be waiting (or `more` says other work is); otherwise arms the
    /// doorbell and registers `cx`. `more` is checked again after arming, so work signalled by
    /// a `ring` in between is never missed.
    pub fn poll_wait(&self, cx: &mut Context<'_>, more: impl Fn() -> bool) -> Poll<()> {
        let bell = &self.bells[self.shard];
        if self.any_pending() || more() {
            return Poll::Ready(());
        }
        bell.waker.register(cx.waker());
        bell.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.any_pending() || more() {
            bell.sleeping.store(false, Ordering::Relaxed);
            return Poll::Ready(());
        }
        Poll::Pending
    }

    pub async fn wait(&self) {
        poll_fn(|cx| self.poll_wait(cx, || false)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Driver;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn release(token: u64) -> XMsg {
        XMsg::Release {
            client_id: "c".into(),
            token,
        }
    }

    #[test]
    fn full_ring_hands_back_and_drains_in_order() {
        let mut ends = mesh(2, 4);
        let (mut b_out, mut b_in) = ends.pop().expect("two");
        let (mut a_out, _a_in) = ends.pop().expect("two");
        for _ in 0..4 {
            assert!(a_out.send(1, release(0)).is_ok());
        }
        assert_eq!(a_out.occupancy(1), 4);
        assert!(a_out.send(1, release(0)).is_err(), "full ring hands back");
        assert!(a_out.send(0, release(0)).is_err(), "no ring to self");
        assert!(b_out.send(1, release(0)).is_err(), "no ring to self");
        let mut out = Vec::new();
        assert_eq!(b_in.drain(3, &mut out), 3);
        assert_eq!(b_in.drain(16, &mut out), 1);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn doorbell_wakes_a_sleeping_consumer_across_threads() {
        doorbell_wakes_on(Driver::Epoll);
        if crate::driver::uring_available() {
            doorbell_wakes_on(Driver::IoUring);
        }
    }

    fn doorbell_wakes_on(driver: Driver) {
        let mut ends = mesh(2, 64);
        let (_, consumer) = ends.pop().expect("two");
        let (mut producer, _) = ends.pop().expect("two");
        let handle = std::thread::spawn(move || {
            let mut rt = crate::driver::runtime(driver, 256).expect("runtime");
            let mut consumer = consumer;
            rt.block_on(async move {
                let mut got = Vec::new();
                while got.len() < 100 {
                    consumer.wait().await;
                    consumer.drain(16, &mut got);
                }
                got.len()
            })
        });
        for _ in 0..100 {
            while producer.send(1, release(0)).is_err() {
                std::thread::yield_now();
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        assert_eq!(handle.join().expect("consumer thread"), 100, "{driver:?}");
    }

    proptest! {
        #[test]
        fn ring_behaves_like_a_bounded_queue(ops in prop::collection::vec(any::<bool>(), 1..200)) {
            let mut ends = mesh(2, 8);
            let (_, mut b_in) = ends.pop().expect("two");
            let (mut a_out, _) = ends.pop().expect("two");
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 0u64;
            for push in ops {
                if push {
                    let ok = a_out.send(1, release(next)).is_ok();
                    prop_assert_eq!(ok, model.len() < 8);
                    if ok { model.push_back(next); }
                    next += 1;
                } else {
                    let mut out = Vec::new();
                    b_in.drain(1, &mut out);
                    let want = model.pop_front();
                    match (out.pop(), want) {
                        (Some(XMsg::Release { token: v, .. }), Some(w)) => prop_assert_eq!(v, w),
                        (None, None) => {}
                        _ => prop_assert!(false, "ring and model disagree"),
                    }
                }
            }
        }
    }
}
