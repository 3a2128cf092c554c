//! How a shared group picks the member for one message, broker-wide: the publishing shard picks
//! one shard among those with members, and that shard picks one of its members, both from the
//! same [`Choice`]. Round robin keeps a turn at each step (and prefers a member that can take
//! the message now); sticky takes the lowest shard and its oldest member, so every shard agrees;
//! the hashes take a key every shard computes alike; random draws afresh at each step.

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::config::SharedStrategy;
use crate::session::Message;

/// One message's pick: the strategy and, for the hashes and random, the number it picks by.
#[derive(Debug, Clone, Copy)]
pub(super) struct Choice {
    strategy: SharedStrategy,
    number: u64,
}

/// Which member of a shard's group to take.
pub(super) enum Index {
    /// From this index on, the first that is ready (round robin, random).
    FirstReadyFrom(usize),
    /// Exactly this one (sticky, hashes).
    Exactly(usize),
}

impl Choice {
    pub fn new(strategy: SharedStrategy, msg: &Message, rng: &Rng) -> Choice {
        let number = match strategy {
            SharedStrategy::Random => rng.next(),
            SharedStrategy::HashClientid => stable_hash(&msg.origin),
            SharedStrategy::HashTopic => stable_hash(&msg.topic),
            SharedStrategy::RoundRobin | SharedStrategy::Sticky => 0,
        };
        Choice { strategy, number }
    }

    /// The shard among `n` with members, `turn` being the group's round-robin turn.
    pub fn shard(&self, n: usize, turn: &Cell<usize>) -> usize {
        self.index(n, turn, self.number)
    }

    /// The member among a shard's `n`: with its own bits of the number, so that the shard's
    /// pick does not decide the member's too.
    pub fn member(&self, n: usize, turn: &Cell<usize>) -> Index {
        let i = self.index(n, turn, self.number.rotate_right(32));
        match self.strategy {
            SharedStrategy::RoundRobin | SharedStrategy::Random => Index::FirstReadyFrom(i),
            _ => Index::Exactly(i),
        }
    }

    fn index(&self, n: usize, turn: &Cell<usize>, number: u64) -> usize {
        match self.strategy {
            SharedStrategy::RoundRobin => {
                let t = turn.get().wrapping_add(1);
                turn.set(t);
                t % n
            }
            SharedStrategy::Sticky => 0,
            _ => (number % n as u64) as usize,
        }
    }
}

/// A hash every shard (and every run) computes alike: SipHash with fixed keys.
fn stable_hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A small per-shard generator (xorshift64*) for the random strategy: no system call per message.
pub(super) struct Rng(Cell<u64>);

impl Default for Rng {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // A fixed seed when the system has no random source: the spread stays even, only
        // predictable.
        let _ = getrandom::fill(&mut seed);
        Rng(Cell::new(u64::from_le_bytes(seed) | 1))
    }
}

impl Rng {
    pub fn next(&self) -> u64 {
        let mut x = self.0.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, origin: &str) -> Message {
        Message::new(
            topic.into(),
            bytes::Bytes::new(),
            crate::codec::QoS::AtMostOnce,
            false,
            None,
            origin.into(),
            std::time::Instant::now(),
        )
    }

    fn member(c: &Choice, n: usize, turn: &Cell<usize>) -> usize {
        match c.member(n, turn) {
            Index::FirstReadyFrom(i) | Index::Exactly(i) => i,
        }
    }

    #[test]
    fn each_strategy_picks_as_named() {
        let rng = Rng::default();
        let turn = Cell::new(0);
        let rr = Choice::new(SharedStrategy::RoundRobin, &msg("t", "a"), &rng);
        let picks: Vec<usize> = (0..6).map(|_| member(&rr, 3, &turn)).collect();
        assert_eq!(picks, [1, 2, 0, 1, 2, 0]);
        let sticky = Choice::new(SharedStrategy::Sticky, &msg("t", "a"), &rng);
        assert!((0..5).all(|_| sticky.shard(4, &turn) == 0 && member(&sticky, 3, &turn) == 0));
        let by_client = |o: &str| Choice::new(SharedStrategy::HashClientid, &msg("t", o), &rng);
        assert_eq!(
            member(&by_client("x"), 5, &turn),
            member(&by_client("x"), 5, &turn)
        );
        let by_topic = |t: &str| Choice::new(SharedStrategy::HashTopic, &msg(t, "o"), &rng);
        let spread: std::collections::HashSet<usize> = (0..64)
            .map(|i| member(&by_topic(&format!("t/{i}")), 4, &turn))
            .collect();
        assert_eq!(spread.len(), 4);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            let c = Choice::new(SharedStrategy::Random, &msg("t", "o"), &rng);
            seen[member(&c, 4, &turn)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
    }
}
