//! Per-shard counters. Each shard writes only its own `Stats` (no cache line is shared on the
//! message path); readers (logs, `$SYS`, metrics) sum over shards.

use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug, Default)]
pub struct Counter(AtomicI64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: Counter,
    pub msgs_in: Counter,
    pub msgs_out: Counter,
    /// Messages dropped: queue full, too large for the client, no shared member left.
    pub dropped: Counter,
    /// Times a ring to another shard was full and the sender backed off.
    pub ring_full: Counter,
    pub protocol_errors: Counter,
    pub connects_refused: Counter,
    /// Publishes refused (clients writing to `$` topics).
    pub denied: Counter,
    pub wills: Counter,
}

impl Stats {
    /// Counts a delivery written (true) or dropped as too large for its client (false).
    pub fn count_sent(&self, written: bool) {
        if written {
            self.msgs_out.inc();
        } else {
            self.dropped.inc();
        }
    }

    /// One line summing the counters of every shard, for the log.
    pub fn summary(all: &[std::sync::Arc<Stats>]) -> String {
        let sum = |f: fn(&Stats) -> &Counter| all.iter().map(|s| f(s).get()).sum::<i64>();
        format!(
            "connections={} msgs_in={} msgs_out={} dropped={} ring_full={} protocol_errors={} connects_refused={} denied={} wills={}",
            sum(|s| &s.connections),
            sum(|s| &s.msgs_in),
            sum(|s| &s.msgs_out),
            sum(|s| &s.dropped),
            sum(|s| &s.ring_full),
            sum(|s| &s.protocol_errors),
            sum(|s| &s.connects_refused),
            sum(|s| &s.denied),
            sum(|s| &s.wills),
        )
    }
}
