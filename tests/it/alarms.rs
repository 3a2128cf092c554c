//! Alarms (#15): the memory alarm raised when a reload sets a budget below the broker's resident
//! memory and cleared when a reload lifts it, seen as `$SYS/brokers/<node>/alarms/...` events by
//! a subscriber, on `GET /api/v1/alarms`, `ctl alarms` and the `ringmq_alarms_active` gauge; and
//! the slow-subscriber alarm, naming the client, raised by a subscriber that stops acknowledging
//! while messages arrive (its queue full, deliveries dropped) and cleared once the drops stop.

use std::time::Duration;

use ringmq::codec::*;

use crate::harness::{Broker, Raw};

/// Generous: raising takes a stats sweep, clearing three more, publishing one shard-0 tick.
const ALARM_WAIT: Duration = Duration::from_secs(30);

fn config(budget_mb: u64) -> String {
    format!("[broker]\npin_cores = false\n\n[overload]\nmemory_budget_mb = {budget_mb}\n")
}

fn reload_with(b: &Broker, budget_mb: u64) {
    std::fs::write(b.dir.0.join("ringmq.toml"), config(budget_mb)).expect("config");
    let (status, body) = b.api("POST", "/api/v1/reload", None);
    assert_eq!(status, 200, "{body}");
}

/// The next alarm event's topic and JSON payload.
fn next_event(sub: &mut Raw) -> (String, serde_json::Value) {
    match sub.recv_within(ALARM_WAIT) {
        Ok(Some(Packet::Publish(p))) => {
            let payload = serde_json::from_slice(&p.payload).expect("JSON payload");
            (p.topic.to_string(), payload)
        }
        Ok(other) => panic!("expected an alarm event, got {other:?}"),
        Err(()) => panic!("no alarm event within {ALARM_WAIT:?}"),
    }
}

fn alarms(b: &Broker) -> serde_json::Value {
    let (status, body) = b.api("GET", "/api/v1/alarms", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

#[test]
fn memory_alarm_raised_and_cleared_with_events() {
    const NAME: &str = "high_system_memory_usage";
    let b = Broker::with_toml(2, &config(1_000_000));
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "watcher", true);
    sub.subscribe("$SYS/brokers/+/alarms/#", QoS::AtMostOnce);
    let none = alarms(&b);
    assert_eq!(none["active"], serde_json::json!([]), "{none}");
    assert_eq!(b.metric("ringmq_alarms_active"), Some(0.0));

    reload_with(&b, 1);
    let (topic, event) = next_event(&mut sub);
    assert!(topic.ends_with("/alarms/activate"), "{topic}");
    assert!(topic.starts_with("$SYS/brokers/"), "{topic}");
    assert_eq!(event["name"], NAME, "{event}");
    assert!(event["message"].as_str().is_some_and(|m| m.contains("MiB")));
    let since = event["since"].as_u64().expect("since");
    let now = alarms(&b);
    let active = now["active"].as_array().expect("active");
    assert_eq!(active.len(), 1, "{now}");
    assert_eq!(active[0]["name"], NAME);
    assert_eq!(active[0]["since"], since);
    assert_eq!(b.metric("ringmq_alarms_active"), Some(1.0));
    let (ok, human, _) = b.ctl(&["alarms"]);
    assert!(ok && human.contains(NAME), "{human}");

    reload_with(&b, 1_000_000);
    let (topic, event) = next_event(&mut sub);
    assert!(topic.ends_with("/alarms/deactivate"), "{topic}");
    assert_eq!(event["name"], NAME, "{event}");
    assert_eq!(event["since"], since);
    assert!(event["until"].as_u64().is_some_and(|u| u >= since));
    let after = alarms(&b);
    assert_eq!(after["active"], serde_json::json!([]), "{after}");
    let history = after["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "{after}");
    assert_eq!(history[0]["name"], NAME);
    assert_eq!(history[0]["until"], event["until"]);
    assert_eq!(b.metric("ringmq_alarms_active"), Some(0.0));
}

#[test]
fn slow_subscriber_alarm_raised_by_drops_and_cleared_when_they_stop() {
    const NAME: &str = "slow_subscriber";
    let b = Broker::with_config(2, "max_inflight = 1\nmax_queued_messages = 1");
    let (mut watcher, _) = Raw::connect(b.port, Protocol::V5, "watcher", true);
    watcher.subscribe("$SYS/brokers/+/alarms/#", QoS::AtMostOnce);
    // Subscribes and never acknowledges: one message in flight, one queued, the rest dropped.
    let (mut slow, _) = Raw::connect(b.port, Protocol::V311, "slow", true);
    slow.subscribe("flood", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    for pid in 1..=5 {
        publisher.publish_acked("flood", b"x", QoS::AtLeastOnce, pid);
    }

    let (topic, event) = next_event(&mut watcher);
    assert!(topic.ends_with("/alarms/activate"), "{topic}");
    assert_eq!(event["name"], NAME, "{event}");
    assert_eq!(
        event["client_id"], "slow",
        "the alarm names the client: {event}"
    );
    let now = alarms(&b);
    assert_eq!(now["active"][0]["name"], NAME, "{now}");
    assert_eq!(now["active"].as_array().map(Vec::len), Some(1), "{now}");

    let (topic, event) = next_event(&mut watcher);
    assert!(topic.ends_with("/alarms/deactivate"), "{topic}");
    assert_eq!(event["name"], NAME, "{event}");
    assert_eq!(event["client_id"], "slow", "{event}");
    let after = alarms(&b);
    assert_eq!(after["active"], serde_json::json!([]), "{after}");
    assert_eq!(after["history"][0]["name"], NAME, "{after}");
    assert_eq!(slow.recv_publish().payload.as_ref(), b"x");
}
