//! What a Mosquitto operator expects (#15): the `[mqtt]` availability switches announced in a
//! v5 CONNACK and enforced, with their reason codes, on v5 and on v3.1.1 (where the client was
//! never told and is disconnected instead); and `$SYS/broker/...` as Mosquitto names it.

use std::time::Duration;

use ringmq::codec::*;

use crate::harness::{connect_packet, props, publish, will, Broker, Raw};

const ALL_OFF: &str = "max_qos = 1\nretain_available = false\n\
    wildcard_subscription_available = false\nshared_subscription_available = false\n\
    subscription_identifiers_available = false";

#[test]
fn connack_announces_each_switch() {
    let on = Broker::start(1);
    let (_, ack) = Raw::connect(on.port, Protocol::V5, "on", true);
    let p = ack.properties.expect("v5 CONNACK properties");
    assert_eq!(p.maximum_qos, None, "no Maximum QoS property at 2");
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.subscription_identifier_available, Some(1));
    let off = Broker::with_config(1, ALL_OFF);
    let (_, ack) = Raw::connect(off.port, Protocol::V5, "off", true);
    let p = ack.properties.expect("v5 CONNACK properties");
    assert_eq!(p.maximum_qos, Some(1));
    assert_eq!(p.retain_available, Some(0));
    assert_eq!(p.wildcard_subscription_available, Some(0));
    assert_eq!(p.shared_subscription_available, Some(0));
    assert_eq!(p.subscription_identifier_available, Some(0));
    let zero = Broker::with_config(1, "max_qos = 0");
    let (_, ack) = Raw::connect(zero.port, Protocol::V5, "zero", true);
    assert_eq!(ack.properties.and_then(|p| p.maximum_qos), Some(0));
}

/// What the broker sends before closing after `packet` on a fresh connection of `proto`.
fn closed_after(b: &Broker, proto: Protocol, id: &str, packet: Packet) -> Vec<Packet> {
    let (mut c, _) = Raw::connect(b.port, proto, id, true);
    c.send(&packet);
    c.until_closed()
}

fn disconnected_with(got: &[Packet], reason: ReasonCode) -> bool {
    matches!(got, [Packet::Disconnect(d)] if d.reason == reason)
}

#[test]
fn publishes_beyond_the_switches_disconnect_on_v5_and_v3() {
    let b = Broker::with_config(2, ALL_OFF);
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "watch", true);
    sub.subscribe("t", QoS::AtLeastOnce);
    let qos2 = Packet::Publish(publish("t", b"2", QoS::ExactlyOnce, 1));
    let got = closed_after(&b, Protocol::V5, "q5", qos2.clone());
    assert!(
        disconnected_with(&got, ReasonCode::QosNotSupported),
        "{got:?}"
    );
    let mut retained = publish("t", b"r", QoS::AtLeastOnce, 2);
    retained.retain = true;
    let got = closed_after(&b, Protocol::V5, "r5", Packet::Publish(retained.clone()));
    assert!(
        disconnected_with(&got, ReasonCode::RetainNotSupported),
        "{got:?}"
    );
    assert_eq!(closed_after(&b, Protocol::V311, "q3", qos2), []);
    let got = closed_after(&b, Protocol::V311, "r3", Packet::Publish(retained));
    assert_eq!(got, []);
    // None of them reached the subscriber; a publish within the switches does.
    let (mut ok, _) = Raw::connect(b.port, Protocol::V311, "ok", true);
    ok.publish_acked("t", b"fine", QoS::AtLeastOnce, 3);
    assert_eq!(&sub.recv_publish().payload[..], b"fine");
    b.wait_log("PUBLISH above mqtt.max_qos");
}

#[test]
fn wills_beyond_the_switches_are_refused_in_connack() {
    let b = Broker::with_config(1, ALL_OFF);
    for (id, qos, retain, reason) in [
        ("w2", QoS::ExactlyOnce, false, ReasonCode::QosNotSupported),
        ("wr", QoS::AtMostOnce, true, ReasonCode::RetainNotSupported),
    ] {
        let mut c = connect_packet(Protocol::V5, id, true);
        let mut w = will("gone", b"x", qos);
        w.retain = retain;
        c.will = Some(w);
        let mut raw = Raw::open(b.port, Protocol::V5);
        raw.send(&Packet::Connect(Box::new(c)));
        let got = raw.until_closed();
        assert!(
            matches!(&got[..], [Packet::ConnAck(a)] if a.reason == reason),
            "{id}: {got:?}"
        );
    }
    let mut c = connect_packet(Protocol::V311, "w3", true);
    c.will = Some(will("gone", b"x", QoS::ExactlyOnce));
    let mut raw = Raw::open(b.port, Protocol::V311);
    raw.send(&Packet::Connect(Box::new(c)));
    let got = raw.until_closed();
    assert!(
        got.iter()
            .all(|p| !matches!(p, Packet::ConnAck(a) if a.reason == ReasonCode::Success)),
        "{got:?}"
    );
}

#[test]
fn subscriptions_beyond_the_switches_are_refused_in_suback() {
    let b = Broker::with_config(2, ALL_OFF);
    let filters = || {
        vec![
            ("a/+".into(), SubOptions::qos(QoS::AtMostOnce)),
            ("$share/g/a".into(), SubOptions::qos(QoS::AtMostOnce)),
            ("a/b".into(), SubOptions::qos(QoS::ExactlyOnce)),
        ]
    };
    let (mut c5, _) = Raw::connect(b.port, Protocol::V5, "s5", true);
    let ack = c5.subscribe_with(filters(), None);
    assert_eq!(
        ack.reasons,
        [
            ReasonCode::WildcardSubscriptionsNotSupported,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::GrantedQos1,
        ]
    );
    let (mut c3, _) = Raw::connect(b.port, Protocol::V311, "s3", true);
    let ack = c3.subscribe_with(filters(), None);
    assert_eq!(
        ack.reasons,
        [
            ReasonCode::UnspecifiedError,
            ReasonCode::UnspecifiedError,
            ReasonCode::GrantedQos1,
        ]
    );
    // Granted QoS 1 for a QoS 2 request: a QoS 1 publish arrives at QoS 1.
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "p", true);
    p.publish_acked("a/b", b"m", QoS::AtLeastOnce, 1);
    assert_eq!(c5.recv_publish().qos, QoS::AtLeastOnce);
    let with_id = Packet::Subscribe(Subscribe {
        packet_id: 2,
        filters: vec![("x".into(), SubOptions::qos(QoS::AtMostOnce))],
        properties: props(|p| p.subscription_identifiers = vec![7].into()),
    });
    let got = closed_after(&b, Protocol::V5, "sid", with_id);
    assert!(
        disconnected_with(&got, ReasonCode::SubscriptionIdentifiersNotSupported),
        "{got:?}"
    );
    assert_eq!(c3.recv_publish().qos, QoS::AtLeastOnce);
    // Other clients carry on.
    c3.sync();
    c5.expect_silence(Duration::from_millis(50));
}

#[test]
fn sys_broker_topics_as_mosquitto_names_them() {
    let b = Broker::with_toml(2, "[broker]\npin_cores = false\n[sys]\ninterval = 1\n");
    let (mut w, _) = Raw::connect(b.port, Protocol::V311, "sys-watch", true);
    let mut retained = publish("kept", b"x", QoS::AtMostOnce, 0);
    retained.retain = true;
    w.send(&Packet::Publish(retained));
    w.subscribe("$SYS/broker/#", QoS::AtMostOnce);
    let wanted = [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "clients/maximum",
        "clients/disconnected",
        "messages/received",
        "messages/sent",
        "publish/messages/received",
        "bytes/received",
        "subscriptions/count",
        "retained messages/count",
        "load/messages/received/1min",
        "load/bytes/sent/15min",
    ];
    let mut seen = std::collections::HashMap::new();
    while !wanted.iter().all(|t| seen.contains_key(*t)) {
        let p = w.recv_publish();
        if p.retain {
            // Kept from a round before this client's own publish and subscription.
            continue;
        }
        let name = p
            .topic
            .strip_prefix("$SYS/broker/")
            .expect("under $SYS/broker");
        seen.insert(
            name.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
    }
    assert!(seen["version"].starts_with("ringmq version "), "{seen:?}");
    assert!(seen["uptime"].ends_with(" seconds"), "{seen:?}");
    // Mosquitto counts its own retained `$SYS` messages too, and so does ringmq.
    let kept: usize = seen["retained messages/count"].parse().expect("a count");
    assert!(kept >= 1, "{seen:?}");
    assert_eq!(seen["subscriptions/count"], "1");
    assert!(
        seen["clients/connected"]
            .parse::<i64>()
            .is_ok_and(|n| n >= 1),
        "{seen:?}"
    );
    let load: f64 = seen["load/messages/received/1min"]
        .parse()
        .expect("a number");
    assert!(load >= 0.0);
    // Retained, as Mosquitto's are: a client that subscribes later gets them at once, and
    // mosquitto_sub (where installed) reads them like Mosquitto's.
    let (mut late, _) = Raw::connect(b.port, Protocol::V5, "late", true);
    late.subscribe("$SYS/broker/version", QoS::AtMostOnce);
    let p = late.recv_publish();
    assert!(
        p.retain && p.payload.starts_with(b"ringmq version"),
        "{p:?}"
    );
    if let Ok(out) = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port.to_string()])
        .args([
            "-t",
            "$SYS/broker/clients/total",
            "-C",
            "1",
            "-W",
            "5",
            "-v",
        ])
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("$SYS/broker/clients/total "), "{text}");
    }
}
