//! Per-shard counters and gauges, and what all shards share besides the rings: the global and
//! per-listener connection counts, the memory-overload flag, the start time. Each shard writes
//! only its own `Stats` (no cache line is shared on the message path); readers (logs, `$SYS`,
//! the admin API, metrics) sum over shards.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::session::Written;

/// A counter or gauge written by one thread only (its shard; the stats thread for the few in
/// [`Shared`]) and read by any. With one writer an update is a plain load and store, not a
/// locked read-modify-write: the message path counts several times per message.
#[derive(Debug, Default)]
pub struct Counter(AtomicI64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: i64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.add(-1);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy)]
pub enum DropReason {
    /// The session's queue was full (or QoS 0 is not queued for it).
    QueueFull,
    /// Larger than the client's maximum packet size.
    TooLarge,
    /// A shared group had no member left.
    NoMember,
}

/// Declares [`Refusal`] with its metric labels and the list of all of them, from one table, so a
/// new kind cannot be left out of the counters.
macro_rules! refusals {
    ($($(#[$doc:meta])* $kind:ident => $label:literal,)*) => {
        /// Something a client asked the broker to hold or do past a bound, refused and counted.
        #[derive(Debug, Clone, Copy)]
        pub enum Refusal {
            $($(#[$doc])* $kind,)*
        }

        impl Refusal {
            pub const ALL: [Refusal; [$(Refusal::$kind),*].len()] = [$(Refusal::$kind),*];

            /// The metric label.
            pub fn label(self) -> &'static str {
                match self {
                    $(Refusal::$kind => $label,)*
                }
            }
        }
    };
}

refusals! {
    /// A `$SYS` topic that would be longer than a topic may be (a long client id).
    SysTopic => "sys_topic",
    /// WebSocket pings beyond the pongs a connection may have waiting.
    WsPing => "ws_ping",
    /// A publish refused (v5: a 0x97 acknowledgement; v3 QoS 1/2: a disconnect; QoS 0: dropped)
    /// because the messages waiting for full rings reached `broker.max_ring_backlog`.
    Backlog => "ring_backlog",
    /// A CONNECT refused because the password-check queue was full.
    PasswordQueue => "password_queue",
    /// A connection on a `proxy_protocol` listener closed for a missing, malformed or late
    /// PROXY header.
    ProxyHeader => "proxy_header",
    /// A delayed publish not kept: `delayed.max_messages` were held.
    DelayedFull => "delayed_full",
}

#[derive(Debug, Default)]
pub struct Stats {
    /// What was refused past a bound, indexed by `Refusal as usize`.
    refused: [Counter; Refusal::ALL.len()],
    pub connections: Counter,
    /// Connections hibernating (no task, socket in the shard's epoll set).
    pub hibernating: Counter,
    /// Times an idle connection could not hibernate (its socket could not be duplicated:
    /// usually the open-file limit, since a hibernating socket holds a second descriptor).
    pub hibernate_failures: Counter,
    pub sessions: Counter,
    pub subscriptions: Counter,
    /// Retained messages in this shard's replica.
    pub retained: Counter,
    /// Retained messages removed by the expiry sweep (counted by shard 0 only: every shard
    /// purges its replica).
    pub retained_expired: Counter,
    /// Delayed publishes released at their deadline.
    pub delayed_published: Counter,
    pub msgs_in: [Counter; 3],
    pub msgs_out: [Counter; 3],
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_too_large: Counter,
    pub dropped_no_member: Counter,
    /// Times a ring to another shard was full and the sender backed off.
    pub ring_full: Counter,
    /// Messages waiting in this shard's outbound rings, sampled once a second.
    pub ring_occupancy: Counter,
    pub protocol_errors: Counter,
    /// TLS handshakes and WebSocket upgrades that failed (and other undecodable transport data).
    pub handshake_failures: Counter,
    pub connects_refused: Counter,
    /// CONNECTs refused by a ban.
    pub banned_refused: Counter,
    pub auth_failures: Counter,
    /// Publishes and subscriptions refused by the ACL (and writes to `$` topics).
    pub acl_denied: Counter,
    /// Clients slowed down or disconnected for their publish rate.
    pub rate_limited: Counter,
    pub wills: Counter,
    /// Connections closed because the same client id connected again on another node.
    pub cluster_evictions: Counter,
    pub cluster_sessions_out: Counter,
    pub cluster_sessions_in: Counter,
    pub cluster_sessions_anew: Counter,
    pub cluster_sessions_lost: Counter,
    /// Messages of a session from another node taken into the client's session here.
    pub cluster_messages_merged: Counter,
    /// Messages of a session moving between nodes dropped: expired on the way, or no session
    /// here to take them.
    pub cluster_messages_dropped: Counter,
    /// How late the shard's event loop ran, in microseconds (last sample).
    pub loop_lag_us: Counter,
    /// 1 while the shard refuses new connections for overload.
    pub overloaded: Counter,
    /// Deliveries dropped for a full queue since the stats thread last looked, by subscriber
    /// (at most `SLOW_TRACKED` subscribers; the counter above has them all).
    slow: std::sync::Mutex<ahash::AHashMap<bytestring::ByteString, u64>>,
}

/// Subscribers a shard names in one second's slow-subscriber report.
pub const SLOW_TRACKED: usize = 64;

impl Stats {
    /// Counts a delivery written, or dropped as too large for its client.
    pub fn count_written(&self, written: &Written) {
        match written {
            Written::Sent(qos) => self.msgs_out[*qos as usize].inc(),
            Written::TooLarge => self.dropped(DropReason::TooLarge),
            Written::Gone => {}
        }
    }

    pub fn dropped(&self, why: DropReason) {
        match why {
            DropReason::QueueFull => self.dropped_queue_full.inc(),
            DropReason::TooLarge => self.dropped_too_large.inc(),
            DropReason::NoMember => self.dropped_no_member.inc(),
        }
    }

    pub fn refused(&self, what: Refusal) {
        self.refused_n(what, 1);
    }

    pub fn refused_n(&self, what: Refusal, n: i64) {
        self.refused[what as usize].add(n);
    }

    /// How many were refused past this bound.
    pub fn refusals(&self, what: Refusal) -> i64 {
        self.refused[what as usize].get()
    }

    /// A delivery to `client` was dropped because its queue was full.
    pub fn dropped_for(&self, client: &bytestring::ByteString) {
        self.dropped(DropReason::QueueFull);
        let mut slow = self
            .slow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = slow.get_mut(client) {
            *n += 1;
        } else if slow.len() < SLOW_TRACKED {
            slow.insert(client.clone(), 1);
        }
    }

    /// The subscribers that dropped deliveries since the last call, with how many.
    pub fn take_slow(&self) -> ahash::AHashMap<bytestring::ByteString, u64> {
        std::mem::take(
            &mut *self
                .slow
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub fn dropped_total(&self) -> i64 {
        self.dropped_queue_full.get() + self.dropped_too_large.get() + self.dropped_no_member.get()
    }
}

/// What every shard and the admin thread share.
pub struct Shared {
    pub stats: Vec<Arc<Stats>>,
    /// Open connections across shards, for `broker.max_connections`.
    pub connections: AtomicUsize,
    /// Open connections per listener (in the order of `Config::listeners`).
    pub listener_connections: Vec<AtomicUsize>,
    /// Set by the stats thread while resident memory is over `overload.memory_budget_mb`.
    pub memory_over: AtomicBool,
    pub started: Instant,
    pub started_at: SystemTime,
    /// Messages received and sent in the last second, updated by the stats thread.
    pub rate_in: Counter,
    pub rate_out: Counter,
    /// The store's counters, kept by the storage thread.
    pub store: Arc<crate::store::StoreStats>,
    /// Raised and cleared by the stats thread.
    pub alarms: crate::alarms::Alarms,
    /// Delayed publishes held, all shards together, for `delayed.max_messages`.
    delayed: AtomicUsize,
}

impl Shared {
    pub fn new(shards: usize, listeners: usize) -> Shared {
        Shared {
            stats: (0..shards).map(|_| Arc::new(Stats::default())).collect(),
            connections: AtomicUsize::new(0),
            listener_connections: (0..listeners).map(|_| AtomicUsize::new(0)).collect(),
            memory_over: AtomicBool::new(false),
            started: Instant::now(),
            started_at: SystemTime::now(),
            rate_in: Counter::default(),
            rate_out: Counter::default(),
            store: Arc::default(),
            alarms: crate::alarms::Alarms::default(),
            delayed: AtomicUsize::new(0),
        }
    }

    /// Takes a place for one more delayed publish; false when `max` are held.
    pub fn hold_delayed(&self, max: usize) -> bool {
        self.delayed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts delayed publishes read back from the store (held whatever the bound).
    pub fn restore_delayed(&self, n: usize) {
        self.delayed.fetch_add(n, Ordering::Relaxed);
    }

    /// Gives back the place of a delayed publish released or cancelled.
    pub fn release_delayed(&self) {
        self.delayed.fetch_sub(1, Ordering::Relaxed);
    }

    /// Delayed publishes held now.
    pub fn delayed(&self) -> usize {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Sums one counter over all shards.
    pub fn sum(&self, f: impl Fn(&Stats) -> &Counter) -> i64 {
        self.stats.iter().map(|s| f(s).get()).sum()
    }

    /// Messages received and sent so far, all QoS.
    pub fn messages(&self) -> (i64, i64) {
        let all = |f: fn(&Stats) -> &[Counter; 3]| -> i64 {
            self.stats
                .iter()
                .flat_map(|s| f(s).iter())
                .map(Counter::get)
                .sum()
        };
        (all(|s| &s.msgs_in), all(|s| &s.msgs_out))
    }

    /// One line summing the counters of every shard, for the log.
    pub fn summary(&self) -> String {
        let (msgs_in, msgs_out) = self.messages();
        format!(
            "connections={} sessions={} subscriptions={} msgs_in={} msgs_out={} dropped={} ring_full={} protocol_errors={} connects_refused={} auth_failures={} acl_denied={} wills={}",
            self.sum(|s| &s.connections),
            self.sum(|s| &s.sessions),
            self.sum(|s| &s.subscriptions),
            msgs_in,
            msgs_out,
            self.stats.iter().map(|s| s.dropped_total()).sum::<i64>(),
            self.sum(|s| &s.ring_full),
            self.sum(|s| &s.protocol_errors),
            self.sum(|s| &s.connects_refused),
            self.sum(|s| &s.auth_failures),
            self.sum(|s| &s.acl_denied),
            self.sum(|s| &s.wills),
        )
    }

    /// Resident memory of the process, in bytes (Linux).
    pub fn rss_bytes() -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }
}
