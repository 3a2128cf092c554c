//! Delayed publish (`$delayed/{seconds}/{topic}`): the message reaches the target topic's
//! subscribers at the deadline the broker lists for it and not before, survives kill -9, needs
//! the ACL on both topics, is bounded, and is listed and cancelled through `ctl` and the API.
//! Each arrival is checked against the broker's own deadline (`publish_at_ms` in the listing,
//! on the same wall clock as the test), never against a duration the test guesses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;
use ringmq::codec::*;

const BASE: &str = "[broker]\npin_cores = false\n";

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The broker's listing of held delayed publishes.
fn held(b: &Broker) -> Vec<serde_json::Value> {
    match b.ctl_json(&["delayed", "list"]) {
        serde_json::Value::Array(rows) => rows,
        other => panic!("delayed list is not a list: {other}"),
    }
}

/// Waits (bounded by far more than the delay) for the next publish; acknowledges it.
fn next_publish(c: &mut Raw, within: Duration) -> Publish {
    match c.recv_within(within) {
        Ok(Some(Packet::Publish(p))) => {
            c.ack(&p);
            p
        }
        other => panic!("expected the delayed PUBLISH, got {other:?}"),
    }
}

#[test]
fn delayed_publish_arrives_at_its_deadline_with_its_properties() {
    for shards in [1, 3] {
        let b = Broker::with_toml(shards, BASE);
        let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "late-reader", true);
        sub.subscribe("d/t", QoS::AtLeastOnce);
        let (mut p, _) = Raw::connect(b.port, Protocol::V5, "delayer", true);
        let mut msg = publish("$delayed/3/d/t", b"later", QoS::AtLeastOnce, 1);
        msg.properties = props(|pr| {
            pr.user_properties = vec![("k".into(), "v".into())];
            pr.content_type = Some("text/plain".into());
        });
        p.send(&Packet::Publish(msg));
        match p.recv() {
            Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::Success),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let rows = held(&b);
        assert_eq!(rows.len(), 1, "{shards} shards: held: {rows:?}");
        assert_eq!(rows[0]["topic"], "d/t");
        assert_eq!(rows[0]["from"], "delayer");
        let due = rows[0]["publish_at_ms"].as_u64().expect("deadline");
        assert_eq!(b.metric("ringmq_delayed_messages"), Some(1.0));

        let got = next_publish(&mut sub, Duration::from_secs(20));
        let arrived = wall_ms();
        assert!(
            arrived >= due,
            "{shards} shards: arrived at {arrived}, before its deadline {due}"
        );
        assert_eq!(&got.topic[..], "d/t");
        assert_eq!(&got.payload[..], b"later");
        assert_eq!(got.qos, QoS::AtLeastOnce);
        let pr = got.properties.expect("properties kept");
        assert_eq!(pr.user_properties, vec![("k".into(), "v".into())]);
        assert_eq!(pr.content_type.as_deref(), Some("text/plain"));
        assert!(held(&b).is_empty(), "released, so no longer held");
        assert_eq!(b.metric("ringmq_delayed_messages"), Some(0.0));
        assert_eq!(b.metric("ringmq_delayed_published_total"), Some(1.0));
        // A delay of 0 goes out at once, to the target topic.
        p.publish_acked("$delayed/0/d/t", b"now", QoS::AtLeastOnce, 2);
        assert_eq!(&next_publish(&mut sub, WAIT).payload[..], b"now");
    }
}

/// Acknowledged means kept: a delayed publish survives kill -9 (with its id and deadline) and
/// is published after the restart; once published it is gone from the store.
#[test]
fn delayed_publish_survives_kill_9_and_is_removed_once_published() {
    let b = Broker::with_toml(2, BASE);
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "crashy", true);
    let mut msg = publish(
        "$delayed/8/k/t",
        b"kept across a crash",
        QoS::AtLeastOnce,
        1,
    );
    msg.retain = true;
    p.send(&Packet::Publish(msg));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    let before = held(&b);
    assert_eq!(before.len(), 1);
    let dir = b.kill9();

    let b = Broker::launch(2, BASE, dir, &[]);
    let after = held(&b);
    assert_eq!(after.len(), 1, "restored: {after:?}");
    assert_eq!(after[0]["id"], before[0]["id"]);
    let due = after[0]["publish_at_ms"].as_u64().expect("deadline");
    assert_eq!(Some(due), before[0]["publish_at_ms"].as_u64());
    // Retained: received live or, if subscribed after the release, as retained.
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "after-crash", true);
    sub.subscribe("k/t", QoS::AtLeastOnce);
    let got = next_publish(&mut sub, Duration::from_secs(20));
    assert!(wall_ms() >= due, "not before its deadline {due}");
    assert_eq!(&got.payload[..], b"kept across a crash");
    eventually("released", || held(&b).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    eventually("the store caught up", || {
        b.metric("ringmq_store_lag_batches") == Some(0.0)
    });
    let dir = b.kill9();
    let b = Broker::launch(2, BASE, dir, &[]);
    assert!(held(&b).is_empty(), "published once, not held again");
}

#[test]
fn delayed_publish_needs_the_acl_on_both_topics_and_is_bounded() {
    let dir = tempdir::Dir::new();
    let acl = dir.0.join("acl");
    std::fs::write(
        &acl,
        "allow all publish $delayed/#\nallow all publish open/#\nallow all subscribe #\n",
    )
    .expect("acl");
    let toml = format!(
        "{BASE}[auth]\nacl_file = \"{}\"\n[delayed]\nmax_messages = 2\nmax_delay = 3600\n",
        acl.display()
    );
    let b = Broker::launch(2, &toml, dir, &[]);
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "acl-delayer", true);
    let reason = |p: &mut Raw, topic: &str, pid: u16| {
        p.publish_acked(topic, b"x", QoS::AtLeastOnce, pid).reason
    };
    assert_eq!(
        reason(&mut p, "$delayed/60/closed/x", 1),
        ReasonCode::NotAuthorized
    );
    assert_eq!(reason(&mut p, "$delayed/60/open/a", 2), ReasonCode::Success);
    assert_eq!(
        reason(&mut p, "$delayed/7200/open/a", 3),
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(
        reason(&mut p, "$delayed/soon/open/a", 4),
        ReasonCode::TopicNameInvalid
    );
    assert_eq!(reason(&mut p, "$delayed/60/open/b", 5), ReasonCode::Success);
    assert_eq!(
        reason(&mut p, "$delayed/60/open/c", 6),
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        b.metric("ringmq_limit_refusals_total{what=\"delayed_full\"}"),
        Some(1.0)
    );
    // A v3 publisher cannot hear a refusal: acknowledged, dropped, counted.
    let (mut v3, _) = Raw::connect(b.port, Protocol::V311, "v3-delayer", true);
    v3.publish_acked("$delayed/60/open/d", b"x", QoS::AtLeastOnce, 1);
    assert_eq!(
        b.metric("ringmq_limit_refusals_total{what=\"delayed_full\"}"),
        Some(2.0)
    );
    let rows = held(&b);
    let topics: Vec<&str> = rows.iter().filter_map(|r| r["topic"].as_str()).collect();
    assert_eq!(topics, ["open/a", "open/b"]);

    // Cancelled through ctl and through the API: gone, and its place free again.
    let first = rows[0]["id"].as_str().expect("id").to_string();
    let (ok, _, err) = b.ctl(&["delayed", "cancel", &first]);
    assert!(ok, "ctl delayed cancel: {err}");
    let (ok, _, _) = b.ctl(&["delayed", "cancel", &first]);
    assert!(!ok, "a second cancel finds nothing");
    let second = rows[1]["id"].as_str().expect("id");
    let (status, _) = b.api("DELETE", &format!("/api/v1/delayed/{second}"), None);
    assert_eq!(status, 200);
    assert!(held(&b).is_empty());
    assert_eq!(b.metric("ringmq_delayed_messages"), Some(0.0));
    assert_eq!(reason(&mut p, "$delayed/60/open/e", 7), ReasonCode::Success);
}

/// rumqttc (v3.1.1) publishing to `$delayed/...`: the subscriber gets it at its deadline.
#[test]
fn rumqttc_delayed_publish() {
    let b = Broker::with_toml(2, BASE);
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "rq-delayed-sub", true);
    sub.subscribe("rq/delayed", QoS::AtLeastOnce);
    let opts = rumqttc::MqttOptions::new("rq-delayer", "127.0.0.1", b.port);
    let (client, mut conn) = rumqttc::Client::new(opts, 16);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => {
                    let _ = tx.send(());
                }
                Err(_) => break,
                _ => {}
            }
        }
    });
    client
        .publish(
            "$delayed/3/rq/delayed",
            rumqttc::QoS::AtLeastOnce,
            false,
            "from rumqttc",
        )
        .expect("publish");
    rx.recv_timeout(WAIT).expect("PUBACK");
    let due = held(&b)
        .first()
        .and_then(|r| r["publish_at_ms"].as_u64())
        .expect("held with a deadline");
    let got = next_publish(&mut sub, Duration::from_secs(20));
    assert!(wall_ms() >= due);
    assert_eq!(&got.payload[..], b"from rumqttc");
}
