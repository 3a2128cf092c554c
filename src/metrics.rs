//! Prometheus `/metrics` in the text exposition format (0.0.4), read from the per-shard
//! counters without asking the shards (so a scrape never waits on a busy event loop).

use std::fmt::Write;

use crate::broker::Broker;
use crate::stats::{Counter, Stats};

struct Out(String);

/// Reads one counter of a shard.
type Read = fn(&Stats) -> &Counter;
/// Reads one per-QoS counter of a shard.
type ReadQos = fn(&Stats) -> &[Counter; 3];
/// A family summed over shards: name, type, help, the counter.
type Summed = (&'static str, &'static str, &'static str, Read);

const GAUGES: [Summed; 4] = [
    ("connections", "gauge", "Open client connections.", |s| {
        &s.connections
    }),
    (
        "connections_hibernating",
        "gauge",
        "Open connections hibernating (idle, without a task).",
        |s| &s.hibernating,
    ),
    ("sessions", "gauge", "Sessions, connected or not.", |s| {
        &s.sessions
    }),
    ("subscriptions", "gauge", "Subscriptions.", |s| {
        &s.subscriptions
    }),
];

const COUNTERS: [Summed; 21] = [
    (
        "banned_refused_total",
        "counter",
        "CONNECTs refused by a ban (client id, username, peer address, flapping).",
        |s| &s.banned_refused,
    ),
    (
        "delayed_published_total",
        "counter",
        "Delayed publishes released at their deadline.",
        |s| &s.delayed_published,
    ),
    (
        "retained_expired_total",
        "counter",
        "Retained messages removed by the expiry sweep.",
        |s| &s.retained_expired,
    ),
    (
        "bytes_received_total",
        "counter",
        "Bytes read from clients.",
        |s| &s.bytes_in,
    ),
    (
        "bytes_sent_total",
        "counter",
        "Bytes written to clients.",
        |s| &s.bytes_out,
    ),
    (
        "auth_failures_total",
        "counter",
        "CONNECTs refused for bad credentials.",
        |s| &s.auth_failures,
    ),
    (
        "acl_denied_total",
        "counter",
        "Publishes and subscriptions the ACL refused.",
        |s| &s.acl_denied,
    ),
    (
        "connects_refused_total",
        "counter",
        "Connections refused (limits, overload, auth, protocol).",
        |s| &s.connects_refused,
    ),
    (
        "protocol_errors_total",
        "counter",
        "Connections closed for a protocol violation.",
        |s| &s.protocol_errors,
    ),
    (
        "handshake_failures_total",
        "counter",
        "Failed TLS handshakes and WebSocket upgrades or framing.",
        |s| &s.handshake_failures,
    ),
    (
        "rate_limited_total",
        "counter",
        "Publishes over a client's rate.",
        |s| &s.rate_limited,
    ),
    ("wills_total", "counter", "Wills published.", |s| &s.wills),
    (
        "cluster_evictions_total",
        "counter",
        "Connections closed because their client id connected again on another node.",
        |s| &s.cluster_evictions,
    ),
    (
        "cluster_sessions_handed_over_total",
        "counter",
        "Persistent sessions sent to the node where their client connected again.",
        |s| &s.cluster_sessions_out,
    ),
    (
        "cluster_sessions_taken_over_total",
        "counter",
        "Persistent sessions received from the node that held them.",
        |s| &s.cluster_sessions_in,
    ),
    (
        "cluster_sessions_started_anew_total",
        "counter",
        "Resumed sessions that started anew: the node holding them was down or did not hand them over in time.",
        |s| &s.cluster_sessions_anew,
    ),
    (
        "cluster_sessions_lost_total",
        "counter",
        "Sessions handed to a node that went away before it answered, or could not store them (kept in this node's store until its next start).",
        |s| &s.cluster_sessions_lost,
    ),
    (
        "cluster_session_messages_merged_total",
        "counter",
        "Messages of a session from another node (back after a crash or a partition, or late to a hand-over) given to the session the client started here meanwhile.",
        |s| &s.cluster_messages_merged,
    ),
    (
        "cluster_session_messages_dropped_total",
        "counter",
        "Messages of a session moving between nodes that were dropped: expired on the way, or no session here to take them.",
        |s| &s.cluster_messages_dropped,
    ),
    (
        "hibernate_failures_total",
        "counter",
        "Idle connections that could not hibernate (open-file limit).",
        |s| &s.hibernate_failures,
    ),
    (
        "ring_full_total",
        "counter",
        "Times a shard-to-shard ring was full.",
        |s| &s.ring_full,
    ),
];

/// Families with a value per shard: name, help, the gauge.
const PER_SHARD: [(&str, &str, Read); 3] = [
    (
        "loop_lag_microseconds",
        "How late each shard's event loop ran (last sample).",
        |s| &s.loop_lag_us,
    ),
    (
        "ring_occupancy",
        "Messages waiting in each shard's outbound rings.",
        |s| &s.ring_occupancy,
    ),
    (
        "overloaded",
        "1 while a shard refuses new connections for lag.",
        |s| &s.overloaded,
    ),
];

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.0,
            "# HELP ringmq_{name} {help}\n# TYPE ringmq_{name} {kind}"
        );
    }

    fn value(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "ringmq_{name} {v}");
        } else {
            let _ = writeln!(self.0, "ringmq_{name}{{{labels}}} {v}");
        }
    }

    /// One family summed over shards.
    fn total(&mut self, b: &Broker, (name, kind, help, f): Summed) {
        self.family(name, kind, help);
        self.value(name, "", b.shared.sum(f));
    }
}

pub fn render(b: &Broker) -> String {
    let mut o = Out(String::with_capacity(4096));
    let g = &b.shared;
    o.family("info", "gauge", "Version and io driver.");
    let info = format!(
        "version=\"{}\",driver=\"{}\",shards=\"{}\"",
        env!("CARGO_PKG_VERSION"),
        b.driver,
        g.stats.len()
    );
    o.value("info", &info, 1);
    o.family(
        "uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
    );
    o.value("uptime_seconds", "", g.started.elapsed().as_secs());
    for family in GAUGES {
        o.total(b, family);
    }
    o.family("alarms_active", "gauge", "Alarms raised now.");
    o.value("alarms_active", "", g.alarms.active_count());
    o.family(
        "connections_max",
        "gauge",
        "Connections the broker accepts (broker.max_connections; 0: no limit).",
    );
    o.value("connections_max", "", b.config().broker.max_connections);
    o.family("retained_messages", "gauge", "Retained messages.");
    o.value(
        "retained_messages",
        "",
        g.stats.first().map_or(0, |s| s.retained.get()),
    );
    o.family(
        "delayed_messages",
        "gauge",
        "Delayed publishes held until their deadline.",
    );
    o.value("delayed_messages", "", g.delayed());
    let by_qos: [(&str, &str, ReadQos); 2] = [
        (
            "messages_received_total",
            "PUBLISH packets received, by QoS.",
            |s| &s.msgs_in,
        ),
        (
            "messages_sent_total",
            "PUBLISH packets sent, by QoS.",
            |s| &s.msgs_out,
        ),
    ];
    for (name, help, f) in by_qos {
        o.family(name, "counter", help);
        for q in 0..3 {
            let v: i64 = g.stats.iter().map(|s| f(s)[q].get()).sum();
            o.value(name, &format!("qos=\"{q}\""), v);
        }
    }
    o.family(
        "messages_dropped_total",
        "counter",
        "Deliveries dropped, by reason.",
    );
    let drops: [(&str, Read); 3] = [
        ("queue_full", |s| &s.dropped_queue_full),
        ("too_large", |s| &s.dropped_too_large),
        ("no_member", |s| &s.dropped_no_member),
    ];
    for (reason, f) in drops {
        o.value(
            "messages_dropped_total",
            &format!("reason=\"{reason}\""),
            g.sum(f),
        );
    }
    o.family(
        "limit_refusals_total",
        "counter",
        "What clients asked the broker to hold past a bound, refused, by bound.",
    );
    for what in crate::stats::Refusal::ALL {
        let v: i64 = g.stats.iter().map(|s| s.refusals(what)).sum();
        o.value(
            "limit_refusals_total",
            &format!("what=\"{}\"", what.label()),
            v,
        );
    }
    for family in COUNTERS {
        o.total(b, family);
    }
    for (name, help, f) in PER_SHARD {
        o.family(name, "gauge", help);
        for (i, s) in g.stats.iter().enumerate() {
            o.value(name, &format!("shard=\"{i}\""), f(s).get());
        }
    }
    store_metrics(&mut o, &g.store, b.config().durability.mode.name());
    if let Some(c) = &b.cluster {
        cluster_metrics(&mut o, &c.summary());
    }
    o.family(
        "memory_resident_bytes",
        "gauge",
        "Resident memory of the process.",
    );
    o.value(
        "memory_resident_bytes",
        "",
        crate::stats::Shared::rss_bytes(),
    );
    o.0
}

/// The cluster's families: members, routes, registry, and per peer its link, routes,
/// messages forwarded and (on the leader) replication lag.
fn cluster_metrics(o: &mut Out, s: &crate::cluster::Summary) {
    let gauges: [(&str, &str, usize); 5] = [
        (
            "cluster_members",
            "Members of the cluster this node is in.",
            s.members.len(),
        ),
        (
            "cluster_leader",
            "1 while this node leads the cluster.",
            usize::from(s.leader.as_deref() == Some(s.node.as_str())),
        ),
        (
            "cluster_routes",
            "Routes (filter, node) in the replicated table.",
            s.routes,
        ),
        (
            "cluster_sessions",
            "Client ids in the cluster's session registry.",
            s.sessions,
        ),
        (
            "cluster_retained",
            "Retained messages in the replicated state.",
            s.retained,
        ),
    ];
    for (name, help, v) in gauges {
        o.family(name, "gauge", help);
        o.value(name, "", v);
    }
    o.family(
        "cluster_applied_index",
        "gauge",
        "The last Raft log index this node applied.",
    );
    o.value("cluster_applied_index", "", s.last_applied.unwrap_or(0));
    let peers = || s.members.iter().filter(|m| m.name != s.node);
    type PeerValue = fn(&crate::cluster::MemberSummary) -> Option<u64>;
    let families: [(&str, &str, &str, PeerValue); 4] = [
        (
            "cluster_peer_up",
            "gauge",
            "1 unless the peer's routes were dropped for silence.",
            |m| Some(u64::from(!m.down)),
        ),
        (
            "cluster_peer_routes",
            "gauge",
            "Routes the peer holds.",
            |m| Some(m.routes as u64),
        ),
        (
            "cluster_forwarded_total",
            "counter",
            "Messages this node forwarded to the peer.",
            |m| Some(m.forwarded),
        ),
        (
            "cluster_peer_lag_entries",
            "gauge",
            "Log entries the peer has yet to replicate (reported by the leader).",
            |m| m.lag,
        ),
    ];
    for (name, kind, help, f) in families {
        o.family(name, kind, help);
        for m in peers() {
            if let Some(v) = f(m) {
                o.value(name, &format!("node=\"{}\"", m.name), v);
            }
        }
    }
}

/// The store's families: what it wrote, synced and failed, its lag and size, what the last
/// start restored.
fn store_metrics(o: &mut Out, st: &crate::store::StoreStats, mode: &str) {
    use crate::store::StoreStats as S;
    o.family("store_info", "gauge", "The store's durability mode.");
    o.value("store_info", &format!("mode=\"{mode}\""), 1);
    let restore = S::get(&st.restore_ms) as f64 / 1000.0;
    let families: [(&str, &str, &str, f64); 12] = [
        ("store_batches_total", "counter", "Shard batches committed to the store (one per shard tick with changes).", S::get(&st.batches) as f64),
        ("store_records_total", "counter", "Changes written to the store.", S::get(&st.records) as f64),
        ("store_written_bytes_total", "counter", "Key and value bytes written to the store.", S::get(&st.bytes) as f64),
        ("store_syncs_total", "counter", "Journal fsyncs.", S::get(&st.syncs) as f64),
        ("store_failures_total", "counter", "Shard batches the store could not write: what they carried was not acknowledged (v5: reason 0x80).", S::get(&st.failures) as f64),
        ("store_lag_batches", "gauge", "Shard batches handed to the storage thread and not yet committed.", S::get(&st.lag) as f64),
        ("store_last_sync_timestamp_ms", "gauge", "Wall-clock time of the last journal fsync (ms since the epoch).", S::get(&st.last_sync_ms) as f64),
        ("store_disk_bytes", "gauge", "Bytes the store takes on disk (journal and tables).", S::get(&st.disk_bytes) as f64),
        ("store_restored_sessions", "gauge", "Sessions read back from the store at start.", S::get(&st.restored_sessions) as f64),
        ("store_restored_messages", "gauge", "Queued and in-flight messages read back at start.", S::get(&st.restored_messages) as f64),
        ("store_restored_retained", "gauge", "Retained messages read back at start.", S::get(&st.restored_retained) as f64),
        ("store_restore_seconds", "gauge", "Seconds the start took to read the store back.", restore),
    ];
    for (name, kind, help, v) in families {
        o.family(name, kind, help);
        o.value(name, "", v);
    }
}
