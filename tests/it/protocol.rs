//! MQTT behaviour driven byte-exactly with raw clients, each on 1 shard and on 4 shards.

use std::time::Duration;

use ringmq::codec::*;

use crate::harness::*;

const SHARDS: [usize; 2] = [1, 4];

#[test]
fn connack_for_each_protocol_version() {
    let b = Broker::start(1);
    let mut raw = Raw::open(b.port, Protocol::V31);
    raw.send_bytes(&[
        0x10, 0x10, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 2, b'i', b'd',
    ]);
    raw.proto = Protocol::V311;
    assert_eq!(
        raw.recv(),
        Some(Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: None
        }))
    );
    let (_c, ack) = Raw::connect(b.port, Protocol::V311, "v4", true);
    assert!(!ack.session_present);
    let (_c, ack) = Raw::connect(b.port, Protocol::V5, "v5", true);
    let p = ack.properties.expect("v5 CONNACK properties");
    assert_eq!(p.shared_subscription_available, Some(1));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
}

#[test]
fn client_id_rules() {
    let b = Broker::start(1);
    let (_c, ack) = Raw::connect(b.port, Protocol::V5, "", true);
    let id = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned id");
    assert!(id.starts_with("ringmq-"));
    let (_c, _) = Raw::connect(b.port, Protocol::V311, "", true);
    let mut raw = Raw::open(b.port, Protocol::V311);
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V311,
        "",
        false,
    ))));
    assert_eq!(
        raw.until_closed(),
        [Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::ClientIdentifierNotValid,
            properties: None
        })]
    );
}

#[test]
fn unsupported_level_and_auth_method_are_refused() {
    let b = Broker::start(1);
    let mut raw = Raw::open(b.port, Protocol::V311);
    raw.send_bytes(&[
        0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 0,
    ]);
    assert_eq!(
        raw.until_closed(),
        [Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::UnsupportedProtocolVersion,
            properties: None
        })]
    );
    let mut c = connect_packet(Protocol::V5, "a", true);
    c.properties = props(|p| p.authentication_method = Some("SCRAM-SHA-1".into()));
    let mut raw = Raw::open(b.port, Protocol::V5);
    raw.send(&Packet::Connect(Box::new(c)));
    assert!(
        matches!(&raw.until_closed()[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::BadAuthenticationMethod)
    );
}

#[test]
fn protocol_violations_close_only_the_offender() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "bystander", true);
        sub.subscribe("t", QoS::AtMostOnce);
        // Not CONNECT first.
        let mut raw = Raw::open(b.port, Protocol::V311);
        raw.send(&Packet::PingReq);
        assert_eq!(raw.until_closed(), []);
        // Malformed PUBLISH from a v5 client: DISCONNECT 0x81 (here: invalid UTF-8 topic).
        let (mut bad, _) = Raw::connect(b.port, Protocol::V5, "bad", true);
        bad.send_bytes(&[0x30, 4, 0, 1, 0xff, 0]);
        assert!(
            matches!(&bad.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket)
        );
        // A second CONNECT: protocol error 0x82.
        let (mut twice, _) = Raw::connect(b.port, Protocol::V5, "twice", true);
        twice.send(&Packet::Connect(Box::new(connect_packet(
            Protocol::V5,
            "twice",
            true,
        ))));
        assert!(
            matches!(&twice.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
        );
        // Oversized packet (limit 1 MiB) rejected from its header: 0x95.
        let (mut big, _) = Raw::connect(b.port, Protocol::V5, "big", true);
        big.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0x03]);
        assert!(
            matches!(&big.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PacketTooLarge)
        );
        // The bystander is unaffected.
        let (mut p, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
        p.publish("t", b"still here", QoS::AtMostOnce, 0);
        assert_eq!(&sub.recv_publish().payload[..], b"still here");
        b.wait_log("closing connection");
    }
}

#[test]
fn connect_timeout_and_keepalive_are_enforced() {
    let b = Broker::with_config(1, "connect_timeout = 1");
    let mut silent = Raw::open(b.port, Protocol::V311);
    assert_eq!(silent.until_closed(), [], "closed without CONNECT");
    let mut c = connect_packet(Protocol::V5, "ka", true);
    c.keep_alive = 1;
    let (mut raw, _) = Raw::connect_with(b.port, c);
    let got = raw.until_closed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
        "{got:?}"
    );
    let mut c = connect_packet(Protocol::V311, "ping", true);
    c.keep_alive = 1;
    let (mut pinger, _) = Raw::connect_with(b.port, c);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        pinger.send(&Packet::PingReq);
        assert_eq!(pinger.recv(), Some(Packet::PingResp));
    }
}

#[test]
fn qos_levels_both_directions_with_downgrade() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "sub", true);
        let ack = sub.subscribe_with(
            vec![
                ("q/2".into(), SubOptions::qos(QoS::ExactlyOnce)),
                ("q/1".into(), SubOptions::qos(QoS::AtLeastOnce)),
            ],
            None,
        );
        assert_eq!(
            ack.reasons,
            [ReasonCode::GrantedQos2, ReasonCode::GrantedQos1]
        );
        let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
        publ.publish_acked("q/2", b"two", QoS::ExactlyOnce, 10);
        let p = sub.recv_publish();
        assert_eq!((p.qos, &p.payload[..]), (QoS::ExactlyOnce, &b"two"[..]));
        sub.ack(&p);
        publ.publish_acked("q/1", b"downgraded", QoS::ExactlyOnce, 11);
        let p = sub.recv_publish();
        assert_eq!(p.qos, QoS::AtLeastOnce, "granted QoS caps delivery");
        sub.ack(&p);
        publ.publish_acked("q/2", b"zero", QoS::AtMostOnce, 0);
        assert_eq!(sub.recv_publish().qos, QoS::AtMostOnce);
    }
}

#[test]
fn inbound_qos2_is_exactly_once() {
    let b = Broker::start(4);
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "sub", true);
    sub.subscribe("x", QoS::AtMostOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    publ.publish("x", b"once", QoS::ExactlyOnce, 5);
    assert!(matches!(publ.recv(), Some(Packet::PubRec(a)) if a.packet_id == 5));
    let mut again = publish("x", b"once", QoS::ExactlyOnce, 5);
    again.dup = true;
    publ.send(&Packet::Publish(again));
    assert!(matches!(publ.recv(), Some(Packet::PubRec(a)) if a.packet_id == 5));
    publ.send(&Packet::PubRel(PubResp::new(5, ReasonCode::Success)));
    assert!(matches!(publ.recv(), Some(Packet::PubComp(a)) if a.packet_id == 5));
    assert_eq!(&sub.recv_publish().payload[..], b"once");
    sub.expect_silence(Duration::from_millis(300));
}

#[test]
fn persistent_session_queues_and_redelivers_with_dup() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "keeper", false);
        sub.subscribe("jobs/#", QoS::AtLeastOnce);
        let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
        publ.publish_acked("jobs/1", b"first", QoS::AtLeastOnce, 1);
        let unacked = sub.recv_publish();
        assert!(!unacked.dup);
        sub.drop_connection();
        b.wait_offline("keeper");
        for i in 2..=4u16 {
            publ.publish_acked(
                "jobs/n",
                format!("queued {i}").as_bytes(),
                QoS::AtLeastOnce,
                i,
            );
        }
        let (mut back, ack) = Raw::connect(b.port, Protocol::V311, "keeper", false);
        assert!(ack.session_present);
        let first = back.recv_publish();
        assert!(first.dup, "unacknowledged message comes back with DUP");
        assert_eq!(
            (first.packet_id, &first.payload[..]),
            (unacked.packet_id, &b"first"[..])
        );
        back.ack(&first);
        for i in 2..=4 {
            let p = back.recv_publish();
            assert_eq!(p.payload, format!("queued {i}").as_bytes());
            back.ack(&p);
        }
        let (_c, ack) = Raw::connect(b.port, Protocol::V311, "keeper2", true);
        assert!(!ack.session_present);
    }
}

#[test]
fn offline_queue_is_bounded() {
    let b = Broker::with_config(1, "max_queued_messages = 3");
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "bounded", false);
    sub.subscribe("b", QoS::AtLeastOnce);
    sub.disconnect();
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    for i in 1..=6u16 {
        publ.publish_acked("b", &[i as u8], QoS::AtLeastOnce, i);
    }
    let (mut back, _) = Raw::connect(b.port, Protocol::V311, "bounded", false);
    for i in 1..=3u8 {
        let p = back.recv_publish();
        assert_eq!(&p.payload[..], &[i]);
        back.ack(&p);
    }
    back.expect_silence(Duration::from_millis(300));
}

#[test]
fn session_expiry_v5() {
    let b = Broker::start(4);
    let mut c = connect_packet(Protocol::V5, "exp", false);
    c.properties = props(|p| p.session_expiry_interval = Some(1));
    let (s, _) = Raw::connect_with(b.port, c.clone());
    s.disconnect();
    let (s, ack) = Raw::connect_with(b.port, c.clone());
    assert!(ack.session_present, "within the expiry");
    s.disconnect();
    std::thread::sleep(Duration::from_millis(2600));
    let (_s, ack) = Raw::connect_with(b.port, c);
    assert!(!ack.session_present, "expired");
}

#[test]
fn takeover_across_shards_closes_the_old_connection() {
    let b = Broker::start(4);
    for round in 0..6 {
        let mut c = connect_packet(Protocol::V5, "same-id", false);
        c.properties = props(|p| p.session_expiry_interval = Some(60));
        let (mut old, _) = Raw::connect_with(b.port, c.clone());
        old.subscribe("take/over", QoS::AtLeastOnce);
        let (mut new, ack) = Raw::connect_with(b.port, c);
        assert!(ack.session_present, "round {round}: session continues");
        let got = old.until_closed();
        assert!(
            matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
            "{got:?}"
        );
        let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "p", true);
        publ.publish_acked("take/over", b"moved", QoS::AtLeastOnce, 1);
        let p = new.recv_publish();
        assert_eq!(
            &p.payload[..],
            b"moved",
            "subscription moved with the session"
        );
        new.ack(&p);
        let mut clean = connect_packet(Protocol::V5, "same-id", true);
        clean.properties = None;
        let (fresh, ack) = Raw::connect_with(b.port, clean);
        assert!(!ack.session_present);
        fresh.disconnect();
    }
}

#[test]
fn retained_set_replace_clear_and_dollar_topics() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "p", true);
        let mut r = publish("r/a", b"one", QoS::AtLeastOnce, 1);
        r.retain = true;
        publ.send(&Packet::Publish(r.clone()));
        publ.recv();
        r.payload = bytes::Bytes::from_static(b"two");
        r.packet_id = Some(2);
        publ.send(&Packet::Publish(r.clone()));
        publ.recv();
        let mut other = publish("r/b", b"bee", QoS::AtMostOnce, 0);
        other.retain = true;
        publ.send(&Packet::Publish(other));
        publ.sync();
        let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "s", true);
        sub.subscribe("r/+", QoS::AtLeastOnce);
        let mut got: Vec<(String, Vec<u8>, bool)> = (0..2)
            .map(|_| {
                let p = sub.recv_publish();
                sub.ack(&p);
                (p.topic.to_string(), p.payload.to_vec(), p.retain)
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("r/a".into(), b"two".to_vec(), true),
                ("r/b".into(), b"bee".to_vec(), true)
            ]
        );
        r.payload = bytes::Bytes::new();
        r.packet_id = Some(3);
        publ.send(&Packet::Publish(r));
        publ.recv();
        let p = sub.recv_publish();
        assert!(
            !p.retain,
            "live messages go out with retain 0 to existing subscribers (v3)"
        );
        sub.ack(&p);
        let (mut late, _) = Raw::connect(b.port, Protocol::V311, "late", true);
        late.subscribe("r/#", QoS::AtMostOnce);
        assert_eq!(late.recv_publish().topic, "r/b", "r/a was cleared");
        late.expect_silence(Duration::from_millis(200));
        let (mut all, _) = Raw::connect(b.port, Protocol::V311, "all", true);
        all.subscribe("#", QoS::AtMostOnce);
        assert_eq!(all.recv_publish().topic, "r/b");
        publ.publish("$SYS/fake", b"x", QoS::AtMostOnce, 0);
        all.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn retain_handling_and_retain_as_published() {
    let b = Broker::start(4);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "p", true);
    let mut r = publish("rh", b"kept", QoS::AtMostOnce, 0);
    r.retain = true;
    publ.send(&Packet::Publish(r.clone()));
    publ.sync();
    let opts = |rh, rap| SubOptions {
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: rap,
        retain_handling: rh,
    };
    let (mut s, _) = Raw::connect(b.port, Protocol::V5, "s", true);
    s.subscribe_with(
        vec![("rh".into(), opts(RetainHandling::Never, false))],
        None,
    );
    s.expect_silence(Duration::from_millis(200));
    s.subscribe_with(
        vec![("rh".into(), opts(RetainHandling::OnNewSubscribe, true))],
        None,
    );
    s.expect_silence(Duration::from_millis(200));
    let (mut s2, _) = Raw::connect(b.port, Protocol::V5, "s2", true);
    s2.subscribe_with(
        vec![("rh".into(), opts(RetainHandling::OnNewSubscribe, true))],
        None,
    );
    assert!(s2.recv_publish().retain);
    s2.subscribe_with(
        vec![("rh".into(), opts(RetainHandling::OnSubscribe, true))],
        None,
    );
    assert!(s2.recv_publish().retain);
    publ.send(&Packet::Publish(r));
    assert!(
        s2.recv_publish().retain,
        "retain as published keeps the flag"
    );
    assert!(s.recv_publish().retain);
}

#[test]
fn will_on_abnormal_close_not_on_disconnect_and_on_0x04() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "watch", true);
        sub.subscribe("wills/#", QoS::AtLeastOnce);
        let with_will = |id: &str, proto| {
            let mut c = connect_packet(proto, id, true);
            c.will = Some(will(&format!("wills/{id}"), b"gone", QoS::AtLeastOnce));
            c
        };
        let (c, _) = Raw::connect_with(b.port, with_will("crash", Protocol::V311));
        c.drop_connection();
        let p = sub.recv_publish();
        assert_eq!(
            (p.topic.as_ref(), &p.payload[..]),
            ("wills/crash", &b"gone"[..])
        );
        sub.ack(&p);
        let (c, _) = Raw::connect_with(b.port, with_will("polite", Protocol::V5));
        c.disconnect();
        sub.expect_silence(Duration::from_millis(300));
        let (mut c, _) = Raw::connect_with(b.port, with_will("withwill", Protocol::V5));
        c.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::DisconnectWithWill,
            properties: None,
        }));
        assert_eq!(sub.recv_publish().topic, "wills/withwill");
    }
}

#[test]
fn will_delay_is_cancelled_by_a_reconnect_and_sent_after_it() {
    let b = Broker::start(4);
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "watch", true);
    sub.subscribe("wd", QoS::AtMostOnce);
    let mut c = connect_packet(Protocol::V5, "delayed", false);
    c.properties = props(|p| p.session_expiry_interval = Some(30));
    c.will = Some(Will {
        properties: props(|p| p.will_delay_interval = Some(2)),
        ..will("wd", b"late", QoS::AtMostOnce)
    });
    let (s, _) = Raw::connect_with(b.port, c.clone());
    s.drop_connection();
    std::thread::sleep(Duration::from_millis(500));
    let (s, ack) = Raw::connect_with(b.port, c.clone());
    assert!(ack.session_present);
    sub.expect_silence(Duration::from_millis(3000));
    s.drop_connection();
    let p = sub.recv_publish();
    assert_eq!(&p.payload[..], b"late", "sent once the delay passed");
}

#[test]
fn overlapping_subscriptions_no_local_and_unsubscribe() {
    for shards in SHARDS {
        let b = Broker::start(shards);
        let (mut s, _) = Raw::connect(b.port, Protocol::V5, "over", true);
        s.subscribe_with(
            vec![("o/+".into(), SubOptions::qos(QoS::AtMostOnce))],
            props(|p| p.subscription_identifiers.push(7)),
        );
        s.subscribe_with(
            vec![("o/#".into(), SubOptions::qos(QoS::AtLeastOnce))],
            props(|p| p.subscription_identifiers.push(9)),
        );
        let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
        publ.publish_acked("o/x", b"m", QoS::AtLeastOnce, 1);
        let p = s.recv_publish();
        assert_eq!(p.qos, QoS::AtLeastOnce, "one copy at the highest QoS");
        let mut ids = p
            .properties
            .as_ref()
            .expect("sub ids")
            .subscription_identifiers
            .to_vec();
        ids.sort();
        assert_eq!(ids, [7, 9]);
        s.ack(&p);
        s.expect_silence(Duration::from_millis(200));
        let nl = SubOptions {
            qos: QoS::AtMostOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        };
        publ.subscribe_with(vec![("o/x".into(), nl)], None);
        publ.publish("o/x", b"mine", QoS::AtMostOnce, 0);
        publ.expect_silence(Duration::from_millis(300));
        assert_eq!(
            &s.recv_publish().payload[..],
            b"mine",
            "others still get it"
        );
        s.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: vec!["o/#".into(), "nope".into()],
            properties: None,
        }));
        assert_eq!(
            s.recv(),
            Some(Packet::UnsubAck(UnsubAck {
                packet_id: 3,
                reasons: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
                properties: None
            }))
        );
        s.send(&Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["o/+".into()],
            properties: None,
        }));
        assert!(matches!(s.recv(), Some(Packet::UnsubAck(_))));
        publ.publish("o/x", b"after", QoS::AtMostOnce, 0);
        s.expect_silence(Duration::from_millis(300));
    }
}

#[test]
fn suback_reason_codes() {
    let b = Broker::with_config(1, "max_topic_levels = 3");
    let (mut s, _) = Raw::connect(b.port, Protocol::V5, "codes", true);
    let ack = s.subscribe_with(
        vec![
            ("a/b/c/d".into(), SubOptions::qos(QoS::AtMostOnce)),
            ("a/b".into(), SubOptions::qos(QoS::ExactlyOnce)),
        ],
        None,
    );
    assert_eq!(
        ack.reasons,
        [ReasonCode::TopicFilterInvalid, ReasonCode::GrantedQos2]
    );
    let (mut s3, _) = Raw::connect(b.port, Protocol::V311, "codes3", true);
    s3.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![("a/b/c/d".into(), SubOptions::qos(QoS::AtMostOnce))],
        properties: None,
    }));
    assert_eq!(
        s3.recv(),
        Some(Packet::SubAck(SubAck {
            packet_id: 1,
            reasons: vec![ReasonCode::UnspecifiedError],
            properties: None
        }))
    );
}

#[test]
fn shared_subscriptions_spread_across_shards_and_redispatch() {
    let b = Broker::start(4);
    let mut members: Vec<Raw> = (0..3)
        .map(|i| {
            let (mut m, _) = Raw::connect(b.port, Protocol::V5, &format!("m{i}"), true);
            m.subscribe("$share/g/jobs/+", QoS::AtLeastOnce);
            m
        })
        .collect();
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
    for i in 0..30u16 {
        publ.publish_acked("jobs/x", &i.to_be_bytes(), QoS::AtLeastOnce, i + 1);
    }
    let mut seen = Vec::new();
    let mut per_member = [0usize; 3];
    for (n, m) in members.iter_mut().enumerate() {
        while let Ok(Some(Packet::Publish(p))) = m.recv_within(Duration::from_millis(400)) {
            m.ack(&p);
            seen.push(u16::from_be_bytes([p.payload[0], p.payload[1]]));
            per_member[n] += 1;
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..30).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    assert!(
        per_member.iter().filter(|c| **c > 0).count() >= 2,
        "spread: {per_member:?}"
    );
    // A member that leaves with unacknowledged messages: they go to another member.
    let (mut hoarder, _) = Raw::connect(b.port, Protocol::V5, "hoarder", true);
    hoarder.subscribe("$share/h/work", QoS::AtLeastOnce);
    let (mut helper, _) = Raw::connect(b.port, Protocol::V5, "helper", true);
    helper.subscribe("$share/h/work", QoS::AtLeastOnce);
    for i in 0..10u16 {
        publ.publish_acked("work", &i.to_be_bytes(), QoS::AtLeastOnce, 100 + i);
    }
    let mut kept = 0;
    while let Ok(Some(Packet::Publish(_))) = hoarder.recv_within(Duration::from_millis(400)) {
        kept += 1;
    }
    hoarder.drop_connection();
    let mut got = 0;
    while let Ok(Some(Packet::Publish(p))) = helper.recv_within(Duration::from_millis(800)) {
        helper.ack(&p);
        got += 1;
    }
    assert!(kept > 0, "the hoarder got some");
    assert_eq!(
        got, 10,
        "helper received its own and the hoarder's unacknowledged ones"
    );
}

#[test]
fn topic_aliases_both_ways() {
    let b = Broker::start(4);
    let mut c = connect_packet(Protocol::V5, "aliased", true);
    c.properties = props(|p| p.topic_alias_maximum = Some(5));
    let (mut s, _) = Raw::connect_with(b.port, c);
    s.subscribe("long/topic/name", QoS::AtMostOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
    let mut first = publish("long/topic/name", b"1", QoS::AtMostOnce, 0);
    first.properties = props(|p| p.topic_alias = Some(3));
    publ.send(&Packet::Publish(first));
    let mut second = publish("", b"2", QoS::AtMostOnce, 0);
    second.topic = "".into();
    second.properties = props(|p| p.topic_alias = Some(3));
    publ.send(&Packet::Publish(second));
    let a = s.recv_publish();
    assert_eq!(
        (
            a.topic.as_ref(),
            a.properties.as_ref().and_then(|p| p.topic_alias)
        ),
        ("long/topic/name", Some(1))
    );
    let b2 = s.recv_publish();
    assert_eq!(
        (b2.topic.as_ref(), &b2.payload[..]),
        ("", &b"2"[..]),
        "second copy uses the alias alone"
    );
    assert_eq!(b2.properties.and_then(|p| p.topic_alias), Some(1));
    let mut unknown = publish("", b"3", QoS::AtMostOnce, 0);
    unknown.properties = props(|p| p.topic_alias = Some(4));
    publ.send(&Packet::Publish(unknown));
    assert!(
        matches!(&publ.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
}

#[test]
fn v5_properties_expiry_and_maximum_packet_size() {
    let b = Broker::start(4);
    let mut c = connect_packet(Protocol::V5, "small", true);
    c.properties = props(|p| p.maximum_packet_size = Some(200));
    let (mut s, _) = Raw::connect_with(b.port, c);
    s.subscribe("v5/#", QoS::AtMostOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
    let mut p = publish("v5/req", b"body", QoS::AtMostOnce, 0);
    p.properties = props(|p| {
        p.response_topic = Some("v5/resp".into());
        p.correlation_data = Some(bytes::Bytes::from_static(b"c1"));
        p.content_type = Some("text/plain".into());
        p.payload_format_indicator = Some(1);
        p.user_properties = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        p.message_expiry_interval = Some(100);
    });
    publ.send(&Packet::Publish(p));
    let got = s.recv_publish();
    let gp = got.properties.expect("properties passed through");
    assert_eq!(gp.response_topic.as_deref(), Some("v5/resp"));
    assert_eq!(gp.correlation_data.as_deref(), Some(&b"c1"[..]));
    assert_eq!(gp.content_type.as_deref(), Some("text/plain"));
    assert_eq!(gp.user_properties.len(), 2);
    assert!(gp
        .message_expiry_interval
        .is_some_and(|e| (99..=100).contains(&e)));
    publ.publish("v5/big", &[0u8; 500], QoS::AtMostOnce, 0);
    publ.publish("v5/after", b"ok", QoS::AtMostOnce, 0);
    assert_eq!(
        s.recv_publish().topic,
        "v5/after",
        "too-large message skipped for this client"
    );
    // An expired retained message is not delivered.
    let mut r = publish("v5/exp", b"old", QoS::AtMostOnce, 0);
    r.retain = true;
    r.properties = props(|p| p.message_expiry_interval = Some(1));
    publ.send(&Packet::Publish(r));
    s.recv_publish();
    std::thread::sleep(Duration::from_millis(2100));
    let (mut late, _) = Raw::connect(b.port, Protocol::V5, "late", true);
    late.subscribe("v5/exp", QoS::AtMostOnce);
    late.expect_silence(Duration::from_millis(300));
}

#[test]
fn receive_maximum_and_auth_packet_rules() {
    let b = Broker::with_config(1, "receive_maximum = 2");
    let (mut c, _) = Raw::connect(b.port, Protocol::V5, "flood", true);
    for i in 1..=3u16 {
        c.publish("rm", b"x", QoS::ExactlyOnce, i);
    }
    let got = c.until_closed();
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::ReceiveMaximumExceeded),
        "{got:?}"
    );
    let (mut a, _) = Raw::connect(b.port, Protocol::V5, "auth", true);
    a.send(&Packet::Auth(Auth {
        reason: ReasonCode::ReAuthenticate,
        properties: None,
    }));
    assert!(
        matches!(&a.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError)
    );
}

#[test]
fn outbound_window_respects_client_receive_maximum() {
    let b = Broker::start(1);
    let mut c = connect_packet(Protocol::V5, "window", true);
    c.properties = props(|p| p.receive_maximum = Some(2));
    let (mut s, _) = Raw::connect_with(b.port, c);
    s.subscribe("w", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    for i in 1..=5u16 {
        publ.publish_acked("w", &[i as u8], QoS::AtLeastOnce, i);
    }
    let a = s.recv_publish();
    let b2 = s.recv_publish();
    s.expect_silence(Duration::from_millis(300));
    s.ack(&a);
    let c3 = s.recv_publish();
    assert_eq!(&c3.payload[..], &[3]);
    s.ack(&b2);
    s.ack(&c3);
    assert_eq!(&s.recv_publish().payload[..], &[4]);
}

#[test]
fn a_qos1_message_too_large_for_its_subscriber_gives_back_its_window_slot() {
    let b = Broker::start(1);
    for (id, clean) in [("small-clean", true), ("small-kept", false)] {
        let mut c = connect_packet(Protocol::V5, id, clean);
        c.properties = props(|p| {
            p.maximum_packet_size = Some(200);
            p.receive_maximum = Some(1);
            p.session_expiry_interval = (!clean).then_some(300);
        });
        let (mut s, _) = Raw::connect_with(b.port, c);
        s.subscribe("big/#", QoS::AtLeastOnce);
        let (mut publ, _) = Raw::connect(b.port, Protocol::V5, &format!("{id}-pub"), true);
        // Neither acknowledgement waits on the dropped delivery, kept session or not.
        let dropped = publ.publish_acked("big/1", &[0u8; 500], QoS::AtLeastOnce, 1);
        assert!(!dropped.reason.is_error(), "{dropped:?}");
        publ.publish_acked("big/2", b"fits", QoS::AtLeastOnce, 2);
        let got = s.recv_publish();
        assert_eq!(got.topic, "big/2", "{id}: the one slot was free again");
        s.ack(&got);
        s.expect_silence(Duration::from_millis(200));
    }
    let too_large = b.metric("ringmq_messages_dropped_total{reason=\"too_large\"}");
    assert_eq!(too_large, Some(2.0), "each drop counted");
}

#[test]
fn a_port_in_use_is_an_error_at_start() {
    let b = Broker::start(2);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", b.port),
            "--shards",
            "1",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run a second broker");
    assert!(
        !out.status.success(),
        "a second broker must not bind the same port"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
}

#[test]
fn server_keep_alive_is_announced_and_enforced() {
    let b = Broker::with_config(2, "server_keep_alive = 1");
    let (mut c, ack) = Raw::connect(b.port, Protocol::V5, "ska", true);
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), Some(1));
    let got = c.until_closed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
        "{got:?}"
    );
}

#[test]
fn packet_id_in_use_is_refused_in_suback_and_unsuback() {
    let b = Broker::start(1);
    let (mut c, _) = Raw::connect(b.port, Protocol::V5, "pid", true);
    c.publish("p", b"x", QoS::ExactlyOnce, 9);
    assert!(matches!(c.recv(), Some(Packet::PubRec(a)) if a.packet_id == 9));
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 9,
        filters: vec![("a".into(), SubOptions::qos(QoS::AtMostOnce))],
        properties: None,
    }));
    assert_eq!(
        c.recv(),
        Some(Packet::SubAck(SubAck {
            packet_id: 9,
            reasons: vec![ReasonCode::PacketIdentifierInUse],
            properties: None
        }))
    );
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        filters: vec!["a".into()],
        properties: None,
    }));
    assert_eq!(
        c.recv(),
        Some(Packet::UnsubAck(UnsubAck {
            packet_id: 9,
            reasons: vec![ReasonCode::PacketIdentifierInUse],
            properties: None
        }))
    );
    c.send(&Packet::PubRel(PubResp::new(9, ReasonCode::Success)));
    assert!(matches!(c.recv(), Some(Packet::PubComp(_))));
    let ack = c.subscribe_with(vec![("a".into(), SubOptions::qos(QoS::AtMostOnce))], None);
    assert_eq!(
        ack.reasons,
        [ReasonCode::Success],
        "free again once released"
    );
}

#[test]
fn a_publish_right_after_suback_reaches_the_new_subscriber_on_any_shard() {
    let b = Broker::start(4);
    let publishers: Vec<Raw> = (0..4)
        .map(|i| Raw::connect(b.port, Protocol::V311, &format!("p{i}"), true).0)
        .collect();
    let mut publishers = publishers;
    for round in 0..20 {
        let (mut s, _) = Raw::connect(b.port, Protocol::V311, &format!("s{round}"), true);
        let topic = format!("fresh/{round}");
        s.subscribe(&topic, QoS::AtMostOnce);
        for p in &mut publishers {
            p.publish(&topic, b"now", QoS::AtMostOnce, 0);
        }
        for _ in 0..publishers.len() {
            assert_eq!(&s.recv_publish().payload[..], b"now", "round {round}");
        }
    }
}

#[test]
fn packets_sent_right_behind_connect_are_handled() {
    for shards in [1, 4] {
        let b = Broker::start(shards);
        let mut raw = Raw::open(b.port, Protocol::V311);
        let mut bytes = bytes::BytesMut::new();
        let c = connect_packet(Protocol::V311, "eager", true);
        encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut bytes);
        let s = Subscribe {
            packet_id: 1,
            filters: vec![("eager/t".into(), SubOptions::qos(QoS::AtMostOnce))],
            properties: None,
        };
        encode(&Packet::Subscribe(s), Protocol::V311, &mut bytes);
        encode(&Packet::PingReq, Protocol::V311, &mut bytes);
        raw.send_bytes(&bytes);
        assert!(matches!(raw.recv(), Some(Packet::ConnAck(_))));
        let got = [raw.recv(), raw.recv()];
        assert!(
            got.iter().any(|p| matches!(p, Some(Packet::SubAck(_)))),
            "{shards} shards: {got:?}"
        );
        assert!(
            got.iter().any(|p| matches!(p, Some(Packet::PingResp))),
            "{got:?}"
        );
    }
}
