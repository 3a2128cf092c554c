//! `GET /api/v1/stats`: every shard's counters as JSON, read from the shared counters without
//! asking the shards (like `/metrics`, so the dashboard's polling never waits on a busy event
//! loop). Totals only: the dashboard turns two samples into rates.

use serde_json::{json, Value};

use crate::broker::Broker;
use crate::stats::{Counter, Stats};

fn all_qos(c: &[Counter; 3]) -> i64 {
    c.iter().map(Counter::get).sum()
}

fn shard_json(i: usize, s: &Stats) -> Value {
    json!({
        "shard": i,
        "connections": s.connections.get(),
        "sessions": s.sessions.get(),
        "subscriptions": s.subscriptions.get(),
        "messages_in": all_qos(&s.msgs_in),
        "messages_out": all_qos(&s.msgs_out),
        "bytes_in": s.bytes_in.get(),
        "bytes_out": s.bytes_out.get(),
        "dropped": s.dropped_total(),
        "loop_lag_us": s.loop_lag_us.get(),
        "ring_occupancy": s.ring_occupancy.get(),
        "overloaded": s.overloaded.get() == 1,
    })
}

pub fn stats(broker: &Broker) -> Value {
    let g = &broker.shared;
    let (messages_in, messages_out) = g.messages();
    json!({
        "uptime_secs": g.started.elapsed().as_secs(),
        "connections": g.sum(|s| &s.connections),
        "sessions": g.sum(|s| &s.sessions),
        "subscriptions": g.sum(|s| &s.subscriptions),
        "retained": g.stats.first().map_or(0, |s| s.retained.get()),
        "messages_in": messages_in,
        "messages_out": messages_out,
        "bytes_in": g.sum(|s| &s.bytes_in),
        "bytes_out": g.sum(|s| &s.bytes_out),
        "dropped": g.stats.iter().map(|s| s.dropped_total()).sum::<i64>(),
        "memory_resident_bytes": crate::stats::Shared::rss_bytes(),
        "shards": g.stats.iter().enumerate().map(|(i, s)| shard_json(i, s)).collect::<Vec<_>>(),
    })
}
