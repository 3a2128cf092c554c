//! Defects a code review found, each pinned by a test that failed before its fix: topic alias
//! exhaustion, stale session slots, limits a will bypassed, over-long fields on the wire, QoS 0
//! ordering, session semantics on takeover, protocol errors that were accepted, and what a
//! client could make the broker hold without bound.

use std::collections::HashMap;

use crate::harness::*;
use ringmq::codec::*;

/// A v5 client allowing 65,535 topic aliases receives more distinct topics than that: every
/// delivery resolves to its own topic, alias 0 never appears, and once every alias is given out
/// the broker sends topics in full instead of reusing one.
#[test]
fn outbound_topic_aliases_never_wrap() {
    let b = Broker::with_config(1, "outbound_topic_aliases = 65535\n");
    let mut c = connect_packet(Protocol::V5, "many-topics", true);
    c.properties = props(|p| p.topic_alias_maximum = Some(u16::MAX));
    let (mut sub, _) = Raw::connect_with(b.port, c);
    sub.subscribe("a/#", QoS::AtMostOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
    let total = 65_600u32;
    let mut known: HashMap<u16, String> = HashMap::new();
    let mut unaliased = 0;
    for batch in (0..total).collect::<Vec<_>>().chunks(1000) {
        publ.send_all(batch.iter().map(|i| {
            Packet::Publish(publish(
                &format!("a/{i}"),
                i.to_string().as_bytes(),
                QoS::AtMostOnce,
                0,
            ))
        }));
        for _ in batch {
            let p = sub.recv_publish();
            let i = String::from_utf8_lossy(&p.payload).into_owned();
            let alias = p.properties.as_ref().and_then(|pr| pr.topic_alias);
            let topic = match alias {
                Some(0) => panic!("alias 0 for message {i}"),
                Some(a) if p.topic.is_empty() => known
                    .get(&a)
                    .cloned()
                    .unwrap_or_else(|| panic!("unknown alias {a} for message {i}")),
                Some(a) => {
                    assert!(
                        known.insert(a, p.topic.to_string()).is_none(),
                        "alias {a} reused"
                    );
                    p.topic.to_string()
                }
                None => {
                    unaliased += 1;
                    p.topic.to_string()
                }
            };
            assert_eq!(topic, format!("a/{i}"), "delivery resolves to its topic");
        }
    }
    assert_eq!(known.len(), 65_535, "every alias given out once");
    assert_eq!(unaliased, total as usize - 65_535, "the rest sent in full");
}

/// QoS 0 messages to a subscriber that reads slowly (its output buffer between half and full)
/// arrive in the order they were published: new ones never overtake queued ones.
#[test]
fn qos0_to_a_slow_reader_stays_in_order() {
    let b = Broker::with_config(
        1,
        "max_outbound_bytes = 16384\nmax_queued_messages = 100000\nmax_queued_bytes = 0\nqueue_qos0 = true\n",
    );
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "slow", true);
    sub.subscribe("seq", QoS::AtMostOnce);
    let total = 20_000u32;
    let port = b.port;
    let publisher = std::thread::spawn(move || {
        let (mut publ, _) = Raw::connect(port, Protocol::V311, "fast", true);
        let pad = vec![b'.'; 1000];
        for batch in (0..total).collect::<Vec<_>>().chunks(100) {
            publ.send_all(batch.iter().map(|i| {
                let mut payload = i.to_be_bytes().to_vec();
                payload.extend_from_slice(&pad);
                Packet::Publish(publish("seq", &payload, QoS::AtMostOnce, 0))
            }));
        }
        publ.disconnect();
    });
    let mut last: Option<u32> = None;
    let mut got = 0;
    while got < total {
        let Ok(Some(Packet::Publish(p))) = sub.recv_within(WAIT) else {
            let (_, metrics) = b.api("GET", "/metrics", None);
            let drops: Vec<&str> = metrics.lines().filter(|l| l.contains("dropped")).collect();
            panic!("{got} of {total} arrived; {drops:?}");
        };
        let n = u32::from_be_bytes(p.payload[..4].try_into().expect("sequence number"));
        if let Some(l) = last {
            assert!(n > l, "message {n} arrived after {l}");
        }
        last = Some(n);
        got += 1;
        if got % 64 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    publisher.join().expect("publisher");
}

/// A clean session lasts as long as its connection (MQTT-3.1.2-6): a connection with clean
/// session 0 that takes over a clean-session client id starts anew, without the old
/// subscriptions, on 3.1.1 and (session expiry 0) on 5.0. Mosquitto answers the same.
#[test]
fn a_clean_session_ends_with_its_connection_on_takeover() {
    for proto in [Protocol::V311, Protocol::V5] {
        for shards in [1, 4] {
            let b = Broker::start(shards);
            let (mut old, _) = Raw::connect(b.port, proto, "flip", true);
            old.subscribe("flip/t", QoS::AtLeastOnce);
            let mut c = connect_packet(proto, "flip", false);
            if proto.is_v5() {
                c.properties = props(|p| p.session_expiry_interval = Some(3600));
            }
            let (mut new, ack) = Raw::connect_with(b.port, c);
            assert!(
                !ack.session_present,
                "{proto:?} on {shards} shards: session present"
            );
            let closed = old.until_closed();
            if proto.is_v5() {
                assert!(
                    matches!(&closed[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver)
                );
            }
            let (mut publ, _) = Raw::connect(b.port, proto, "flip-pub", true);
            publ.publish_acked("flip/t", b"old subscription", QoS::AtLeastOnce, 1);
            new.expect_silence(std::time::Duration::from_millis(300));
        }
    }
}

/// MQTT 3.1 (`MQIsdp`) has no session present flag: a resumed 3.1 session's CONNACK carries
/// 0 in that byte.
#[test]
fn an_mqtt31_connack_never_says_session_present() {
    let b = Broker::start(1);
    let (c, _) = Raw::connect(b.port, Protocol::V31, "old-client", false);
    c.disconnect();
    let mut raw = Raw::open(b.port, Protocol::V31);
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V31,
        "old-client",
        false,
    ))));
    let mut bytes = [0u8; 4];
    std::io::Read::read_exact(raw.stream(), &mut bytes).expect("CONNACK");
    assert_eq!(bytes, [0x20, 2, 0, 0], "CONNACK bytes");
}

/// A will topic over `max_topic_levels` or `max_topic_length` is refused as PUBLISH topics are.
#[test]
fn will_topics_obey_the_topic_limits() {
    let b = Broker::with_config(1, "max_topic_levels = 3\nmax_topic_length = 20\n");
    for topic in ["a/b/c/d", "a-very-long-will-topic-name"] {
        let mut c = connect_packet(Protocol::V5, "willful", true);
        c.will = Some(will(topic, b"bye", QoS::AtMostOnce));
        let mut raw = Raw::open(b.port, Protocol::V5);
        raw.send(&Packet::Connect(Box::new(c)));
        assert!(
            matches!(&raw.until_closed()[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::TopicNameInvalid),
            "will topic {topic} accepted"
        );
    }
    let mut ok = connect_packet(Protocol::V5, "willful", true);
    ok.will = Some(will("a/b/c", b"bye", QoS::AtMostOnce));
    Raw::connect_with(b.port, ok);
}

/// A QoS 0 PUBLISH with DUP set (MQTT-3.3.1-2) is malformed, and a client PUBLISH carrying a
/// subscription identifier (MQTT-3.3.4-6) is a protocol error: each ends that connection
/// alone, with its reason code.
#[test]
fn dup_at_qos0_and_a_client_subscription_identifier_end_the_connection() {
    let b = Broker::start(1);
    let (mut bystander, _) = Raw::connect(b.port, Protocol::V5, "bystander", true);
    bystander.subscribe("ok", QoS::AtMostOnce);
    let (mut dup, _) = Raw::connect(b.port, Protocol::V5, "dup", true);
    dup.send_bytes(&[0x38, 5, 0, 2, b'o', b'k', 0]);
    assert!(
        matches!(&dup.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket)
    );
    let (mut v3, _) = Raw::connect(b.port, Protocol::V311, "dup3", true);
    v3.send_bytes(&[0x38, 4, 0, 2, b'o', b'k']);
    assert!(v3.until_closed().is_empty(), "v3: closed without a packet");
    let (mut subid, _) = Raw::connect(b.port, Protocol::V5, "subid", true);
    let mut p = publish("ok", b"x", QoS::AtMostOnce, 0);
    p.properties = props(|pr| pr.subscription_identifiers.push(7));
    subid.send(&Packet::Publish(p));
    assert!(
        matches!(&subid.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "fine", true);
    publ.publish("ok", b"still served", QoS::AtMostOnce, 0);
    assert_eq!(&bystander.recv_publish().payload[..], b"still served");
}

/// A client id long enough that its `$SYS` event topic would exceed what a packet can carry:
/// the event is not published (and counted), and a `$SYS` subscriber never receives a
/// malformed packet.
#[test]
fn sys_event_topics_never_overflow_a_packet() {
    let b = Broker::start(1);
    let (mut watcher, _) = Raw::connect(b.port, Protocol::V311, "watcher", true);
    watcher.subscribe("$SYS/brokers/+/clients/#", QoS::AtMostOnce);
    let long = "x".repeat(65_500);
    let (c, _) = Raw::connect(b.port, Protocol::V311, &long, true);
    c.disconnect();
    let (c, _) = Raw::connect(b.port, Protocol::V311, "short", true);
    c.disconnect();
    let p = watcher.recv_publish();
    assert!(p.topic.ends_with("/clients/short/connected"), "{}", p.topic);
    let refused = b.metric("ringmq_limit_refusals_total{what=\"sys_topic\"}");
    assert_eq!(refused, Some(2.0));
}

/// A shard that panics ends the whole process (`panic = "abort"`), so systemd restarts it,
/// instead of leaving its rings unread and the other shards and CONNECTs homed on it waiting.
#[test]
fn a_shard_panic_ends_the_process() {
    let mut b = Broker::launch(
        2,
        "[broker]\npin_cores = false\n",
        tempdir::Dir::new(),
        &[("RINGMQ_FAULT_PANIC_TOPIC", "fault/boom")],
    );
    let (mut other, _) = Raw::connect(b.port, Protocol::V311, "bystander", true);
    let (mut c, _) = Raw::connect(b.port, Protocol::V311, "faulty", true);
    c.publish("fault/boom", b"", QoS::AtMostOnce, 0);
    let status = b.exited("a shard panic");
    assert!(!status.success(), "exit status {status}");
    assert!(
        other.until_closed().is_empty(),
        "other clients see the broker gone"
    );
    b.wait_log("fault injected");
}

/// Configuration values that would panic a shard are refused by `check-config`.
#[test]
fn check_config_refuses_values_that_would_panic() {
    let dir = tempdir::Dir::new();
    for bad in [
        "[mqtt]\nkeepalive_multiplier = inf\n",
        "[mqtt]\nkeepalive_multiplier = nan\n",
        "[mqtt]\nmax_topic_length = 70000\n",
    ] {
        let path = dir.0.join("bad.toml");
        std::fs::write(&path, bad).expect("write");
        let (ok, _, err) = ringmq(&["check-config", "-c", path.to_str().expect("path")], &[]);
        assert!(!ok, "accepted {bad:?}");
        assert!(err.contains("mqtt."), "{err}");
    }
}
