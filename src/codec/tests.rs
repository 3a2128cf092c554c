//! Byte-exact vectors for every packet in every version, one vector per decode error, and the
//! property tests: `decode(encode(p)) == p` and "decode never panics".

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;

fn dec(bytes: &[u8], proto: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let out = decode(&mut buf, proto, MAX);
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "decode left bytes behind");
    }
    out
}

fn enc(p: &Packet, proto: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(p, proto, &mut buf);
    assert_eq!(buf.len(), encoded_len(p, proto));
    buf.to_vec()
}

/// Asserts `bytes` decodes to `packet` and `packet` encodes to `bytes`.
fn vector(bytes: &[u8], packet: Packet, proto: Protocol) {
    assert_eq!(
        dec(bytes, proto),
        Ok(Some(packet.clone())),
        "decode {proto:?}"
    );
    assert_eq!(enc(&packet, proto), bytes, "encode {proto:?}");
}

fn s(v: &str) -> bytestring::ByteString {
    v.into()
}

fn props(f: impl FnOnce(&mut Properties)) -> Props {
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

#[test]
fn connect_v31() {
    let bytes = [
        0x10, 0x12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60, 0, 4, b'c', b'l',
        b'i', b'd',
    ];
    let p = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V31,
        clean_start: true,
        keep_alive: 60,
        client_id: s("clid"),
        will: None,
        username: None,
        password: None,
        properties: None,
    }));
    vector(&bytes, p, Protocol::V31);
}

#[test]
fn connect_v311_with_will_and_credentials() {
    let bytes = [
        0x10, 0x1f, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xee, 0, 10, 0, 1, b'c', 0, 1, b'w', 0, 2,
        b'h', b'i', 0, 1, b'u', 0, 2, b'p', b'w', 0, 0, 0, 0,
    ];
    // Remaining length 0x1f covers 31 bytes: trim the test vector to exactly that.
    let bytes = &bytes[..2 + 0x1b];
    let bytes = {
        let mut v = bytes.to_vec();
        v[1] = (v.len() - 2) as u8;
        v
    };
    let p = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 10,
        client_id: s("c"),
        will: Some(Will {
            topic: s("w"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        }),
        username: Some(s("u")),
        password: Some(Bytes::from_static(b"pw")),
        properties: None,
    }));
    // flags 0xee: username, password, will retain, will qos 1, will, clean
    vector(&bytes, p, Protocol::V311);
}

#[test]
fn connect_v5_with_properties() {
    let bytes = [
        0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 8, 0x11, 0, 0, 0, 120, 0x21, 0,
        10, 0, 3, b'a', b'b', b'c',
    ];
    let mut v = bytes.to_vec();
    v[1] = (v.len() - 2) as u8;
    let p = Packet::Connect(Box::new(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: s("abc"),
        will: None,
        username: None,
        password: None,
        properties: props(|p| {
            p.session_expiry_interval = Some(120);
            p.receive_maximum = Some(10);
        }),
    }));
    vector(&v, p, Protocol::V5);
}

#[test]
fn connack_all_versions() {
    let ok = ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: None,
    };
    vector(
        &[0x20, 2, 1, 0],
        Packet::ConnAck(ok.clone()),
        Protocol::V311,
    );
    assert_eq!(
        enc(&Packet::ConnAck(ok.clone()), Protocol::V31),
        [0x20, 2, 0, 0],
        "MQTT 3.1 has no session present flag"
    );
    // Found by the fuzzer: a 3.1 CONNACK's reserved byte read back as it is written.
    assert_eq!(
        dec(&[0x20, 2, 1, 4], Protocol::V31),
        Ok(Some(Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::BadUserNameOrPassword,
            properties: None,
        })))
    );
    vector(&[0x20, 3, 1, 0, 0], Packet::ConnAck(ok), Protocol::V5);
    let bad = ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: None,
    };
    vector(
        &[0x20, 2, 0, 4],
        Packet::ConnAck(bad.clone()),
        Protocol::V311,
    );
    vector(&[0x20, 3, 0, 0x86, 0], Packet::ConnAck(bad), Protocol::V5);
    let with_props = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: props(|p| {
            p.assigned_client_identifier = Some(s("x"));
            p.topic_alias_maximum = Some(5);
        }),
    };
    vector(
        &[0x20, 10, 0, 0, 7, 0x12, 0, 1, b'x', 0x22, 0, 5],
        Packet::ConnAck(with_props),
        Protocol::V5,
    );
}

#[test]
fn publish_all_qos_and_versions() {
    let p0 = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: s("a/b"),
        packet_id: None,
        properties: None,
        payload: Bytes::from_static(b"xy"),
    };
    vector(
        &[0x31, 7, 0, 3, b'a', b'/', b'b', b'x', b'y'],
        Packet::Publish(p0.clone()),
        Protocol::V311,
    );
    vector(
        &[0x31, 8, 0, 3, b'a', b'/', b'b', 0, b'x', b'y'],
        Packet::Publish(p0),
        Protocol::V5,
    );
    let p1 = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s("t"),
        packet_id: Some(7),
        properties: None,
        payload: Bytes::new(),
    };
    vector(
        &[0x3a, 5, 0, 1, b't', 0, 7],
        Packet::Publish(p1.clone()),
        Protocol::V31,
    );
    let p2 = Publish {
        qos: QoS::ExactlyOnce,
        dup: false,
        ..p1
    };
    vector(
        &[0x34, 5, 0, 1, b't', 0, 7],
        Packet::Publish(p2),
        Protocol::V311,
    );
    let p5 = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: s(""),
        packet_id: Some(1),
        properties: props(|p| {
            p.topic_alias = Some(3);
            p.user_properties.push((s("k"), s("v")));
            p.user_properties.push((s("k"), s("w")));
        }),
        payload: Bytes::from_static(b"z"),
    };
    let bytes = [
        0x32, 21, 0, 0, 0, 1, 17, 0x23, 0, 3, 0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1,
        b'w', b'z',
    ];
    let mut v = bytes.to_vec();
    v[1] = (v.len() - 2) as u8;
    v[6] = (v.len() - 8) as u8;
    vector(&v, Packet::Publish(p5), Protocol::V5);
}

#[test]
fn acks_all_versions() {
    for (first, make) in [
        (0x40u8, Packet::PubAck as fn(PubResp) -> Packet),
        (0x50, Packet::PubRec),
        (0x62, Packet::PubRel),
        (0x70, Packet::PubComp),
    ] {
        let ok = PubResp::new(9, ReasonCode::Success);
        vector(&[first, 2, 0, 9], make(ok.clone()), Protocol::V311);
        vector(&[first, 2, 0, 9], make(ok.clone()), Protocol::V31);
        vector(&[first, 2, 0, 9], make(ok.clone()), Protocol::V5);
        let nok = PubResp::new(9, ReasonCode::PacketIdentifierNotFound);
        vector(&[first, 3, 0, 9, 0x92], make(nok), Protocol::V5);
        let with_reason = PubResp {
            packet_id: 9,
            reason: ReasonCode::NotAuthorized,
            properties: props(|p| p.reason_string = Some(s("no"))),
        };
        vector(
            &[first, 9, 0, 9, 0x87, 5, 0x1f, 0, 2, b'n', b'o'],
            make(with_reason),
            Protocol::V5,
        );
        // Reason code present, property length zero: decodes as no properties.
        assert_eq!(
            dec(&[first, 4, 0, 9, 0, 0], Protocol::V5),
            Ok(Some(make(ok)))
        );
    }
}

/// The bare acknowledgement writer gives the bytes `encode` gives for the same packet.
#[test]
fn bare_acks_are_encoded_packets() {
    for (kind, make) in [
        (AckType::PubAck, Packet::PubAck as fn(PubResp) -> Packet),
        (AckType::PubRec, Packet::PubRec),
        (AckType::PubRel, Packet::PubRel),
        (AckType::PubComp, Packet::PubComp),
    ] {
        for reason in [ReasonCode::Success, ReasonCode::UnspecifiedError] {
            for proto in [Protocol::V31, Protocol::V311, Protocol::V5] {
                let mut bare = BytesMut::new();
                put_ack(&mut bare, kind, 0x1234, reason, proto.is_v5());
                let packet = make(PubResp::new(0x1234, reason));
                assert_eq!(
                    &bare[..],
                    &enc(&packet, proto)[..],
                    "{kind:?} {reason:?} {proto:?}"
                );
            }
        }
    }
}

#[test]
fn subscribe_and_suback() {
    let sub = Subscribe {
        packet_id: 1,
        filters: vec![
            (s("a/+"), SubOptions::qos(QoS::AtLeastOnce)),
            (s("#"), SubOptions::qos(QoS::AtMostOnce)),
        ],
        properties: None,
    };
    let v3 = [0x82, 11, 0, 1, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'#', 0];
    let mut v3 = v3.to_vec();
    v3[1] = (v3.len() - 2) as u8;
    vector(&v3, Packet::Subscribe(sub.clone()), Protocol::V311);
    vector(&v3, Packet::Subscribe(sub.clone()), Protocol::V31);
    let sub5 = Subscribe {
        properties: props(|p| p.subscription_identifiers.push(300)),
        filters: vec![(
            s("x"),
            SubOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            },
        )],
        ..sub
    };
    vector(
        &[0x82, 10, 0, 1, 3, 0x0b, 0xac, 0x02, 0, 1, b'x', 0x2e],
        Packet::Subscribe(sub5),
        Protocol::V5,
    );
    let ack = SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::GrantedQos1,
            ReasonCode::Success,
            ReasonCode::NotAuthorized,
        ],
        properties: None,
    };
    vector(
        &[0x90, 6, 0, 1, 0, 1, 0, 0x87],
        Packet::SubAck(ack.clone()),
        Protocol::V5,
    );
    assert_eq!(
        enc(&Packet::SubAck(ack), Protocol::V311),
        [0x90, 5, 0, 1, 1, 0, 0x80]
    );
    let ack3 = SubAck {
        packet_id: 1,
        reasons: vec![ReasonCode::UnspecifiedError],
        properties: None,
    };
    vector(&[0x90, 3, 0, 1, 0x80], Packet::SubAck(ack3), Protocol::V311);
}

#[test]
fn unsubscribe_and_unsuback() {
    let u = Unsubscribe {
        packet_id: 2,
        filters: vec![s("a/#")],
        properties: None,
    };
    vector(
        &[0xa2, 7, 0, 2, 0, 3, b'a', b'/', b'#'],
        Packet::Unsubscribe(u.clone()),
        Protocol::V311,
    );
    vector(
        &[0xa2, 8, 0, 2, 0, 0, 3, b'a', b'/', b'#'],
        Packet::Unsubscribe(u),
        Protocol::V5,
    );
    let ack3 = UnsubAck {
        packet_id: 2,
        reasons: vec![],
        properties: None,
    };
    vector(&[0xb0, 2, 0, 2], Packet::UnsubAck(ack3), Protocol::V311);
    let ack5 = UnsubAck {
        packet_id: 2,
        reasons: vec![ReasonCode::NoSubscriptionExisted],
        properties: None,
    };
    vector(
        &[0xb0, 4, 0, 2, 0, 0x11],
        Packet::UnsubAck(ack5),
        Protocol::V5,
    );
}

#[test]
fn ping_disconnect_auth() {
    for proto in [Protocol::V31, Protocol::V311, Protocol::V5] {
        vector(&[0xc0, 0], Packet::PingReq, proto);
        vector(&[0xd0, 0], Packet::PingResp, proto);
        let d = Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        };
        vector(&[0xe0, 0], Packet::Disconnect(d), proto);
    }
    let d = Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        properties: None,
    };
    vector(&[0xe0, 1, 4], Packet::Disconnect(d), Protocol::V5);
    let d = Disconnect {
        reason: ReasonCode::Success,
        properties: props(|p| p.session_expiry_interval = Some(0)),
    };
    vector(
        &[0xe0, 7, 0, 5, 0x11, 0, 0, 0, 0],
        Packet::Disconnect(d),
        Protocol::V5,
    );
    let a = Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: props(|p| p.authentication_method = Some(s("m"))),
    };
    vector(
        &[0xf0, 6, 0x18, 4, 0x15, 0, 1, b'm'],
        Packet::Auth(a),
        Protocol::V5,
    );
    assert_eq!(
        dec(&[0xf0, 0], Protocol::V311),
        Err(DecodeError::UnknownPacketType(15))
    );
}

#[test]
fn incremental_and_size_limit() {
    let full = [0x30, 4, 0, 1, b't', b'x'];
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut buf, Protocol::V311, MAX), Ok(None), "cut {cut}");
        assert_eq!(buf.len(), cut, "nothing consumed while incomplete");
    }
    // Two packets in one buffer come out one at a time.
    let mut buf = BytesMut::from(&[0xc0, 0, 0xd0, 0][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V311, MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode(&mut buf, Protocol::V311, MAX),
        Ok(Some(Packet::PingResp))
    );
    assert_eq!(decode(&mut buf, Protocol::V311, MAX), Ok(None));
    // Oversized: rejected from the fixed header alone, with only 5 bytes buffered.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
    assert_eq!(
        decode(&mut buf, Protocol::V311, 1000),
        Err(DecodeError::PacketTooLarge {
            size: 2_097_155,
            max: 1000
        })
    );
}

#[test]
fn payload_is_a_slice_of_the_frame() {
    let mut buf = BytesMut::from(&[0x30, 6, 0, 1, b't', b'a', b'b', b'c'][..]);
    let base = buf.as_ptr() as usize;
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, Protocol::V311, MAX) else {
        panic!("expected a publish");
    };
    assert_eq!(p.payload.as_ptr() as usize, base + 5);
    assert_eq!(p.topic.as_bytes().as_ptr() as usize, base + 4);
}

#[test]
fn every_error_has_a_vector() {
    use DecodeError::*;
    let v3 = Protocol::V311;
    let v5 = Protocol::V5;
    let cases: Vec<(&[u8], Protocol, DecodeError, ReasonCode)> = vec![
        (
            &[0x00, 0],
            v3,
            UnknownPacketType(0),
            ReasonCode::MalformedPacket,
        ),
        (&[0xc1, 0], v3, ReservedFlags, ReasonCode::MalformedPacket),
        (
            &[0x60, 2, 0, 1],
            v3,
            ReservedFlags,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x30, 0xff, 0xff, 0xff, 0xff, 1],
            v3,
            RemainingLengthTooLong,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0xc0, 0x80, 0],
            v3,
            NonMinimalLength,
            ReasonCode::MalformedPacket,
        ),
        (&[0x40, 1, 0], v3, Truncated, ReasonCode::MalformedPacket),
        (
            &[0xc0, 1, 0],
            v3,
            TrailingBytes,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x40, 3, 0, 1, 0],
            v3,
            TrailingBytes,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x40, 2, 0, 0],
            v3,
            ZeroPacketId,
            ReasonCode::ProtocolError,
        ),
        (
            &[0x32, 5, 0, 1, b't', 0, 0],
            v3,
            ZeroPacketId,
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 3, 0, 1, 0xff],
            v3,
            InvalidUtf8,
            ReasonCode::MalformedPacket,
        ),
        // U+D800 encoded as UTF-8 (a surrogate): not well-formed.
        (
            &[0x30, 5, 0, 3, 0xed, 0xa0, 0x80],
            v3,
            InvalidUtf8,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x30, 3, 0, 1, 0],
            v3,
            NullCharacter,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x30, 3, 0, 1, b'+'],
            v3,
            WildcardInTopicName,
            ReasonCode::TopicNameInvalid,
        ),
        (
            &[0x30, 2, 0, 0],
            v3,
            EmptyTopicName,
            ReasonCode::TopicNameInvalid,
        ),
        (
            &[0x82, 6, 0, 1, 0, 1, b'#', 3],
            v3,
            InvalidQos,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x82, 8, 0, 1, 0, 3, b'a', b'#', b'b', 0],
            v3,
            InvalidTopicFilter,
            ReasonCode::TopicFilterInvalid,
        ),
        (
            &[0x36, 5, 0, 1, b't', 0, 1],
            v3,
            InvalidQos,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x38, 3, 0, 1, b't'],
            v5,
            DupAtQos0,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x82, 6, 0, 1, 0, 1, b'a', 0x04],
            v3,
            InvalidSubscriptionOptions,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
            v5,
            InvalidSubscriptionOptions,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x82, 2, 0, 1],
            v3,
            NoTopicFilters,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0xa2, 2, 0, 1],
            v3,
            NoTopicFilters,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x10, 7, 0, 4, b'M', b'Q', b'T', b'X', 4],
            v3,
            InvalidProtocolName,
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            &[0x10, 7, 0, 4, b'M', b'Q', b'T', b'T', 6],
            v3,
            UnsupportedProtocolLevel(6),
            ReasonCode::UnsupportedProtocolVersion,
        ),
        (
            &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 0, 0, 0],
            v3,
            ReservedConnectFlag,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x22, 0, 0, 0, 0],
            v3,
            WillFlagMismatch,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x1e, 0, 0, 0, 0],
            v3,
            InvalidQos,
            ReasonCode::MalformedPacket,
        ),
        (
            &[
                0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x40, 0, 0, 0, 0, 0, 0,
            ],
            v3,
            PasswordWithoutUsername,
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 6, 0, 1, b't', 2, 0x7f, 0],
            v5,
            UnknownProperty(0x7f),
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x30, 9, 0, 1, b't', 5, 0x11, 0, 0, 0, 1],
            v5,
            PropertyNotAllowed(0x11),
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 8, 0, 1, b't', 4, 0x01, 0, 0x01, 1],
            v5,
            DuplicateProperty(0x01),
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 6, 0, 1, b't', 2, 0x01, 2],
            v5,
            InvalidPropertyValue(0x01),
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0],
            v5,
            InvalidPropertyValue(0x23),
            ReasonCode::ProtocolError,
        ),
        (
            &[0x30, 6, 0, 1, b't', 9, 0x01, 0],
            v5,
            PropertyLengthOverrun,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x40, 3, 0, 1, 0x05],
            v5,
            InvalidReasonCode(5),
            ReasonCode::MalformedPacket,
        ),
        (
            &[
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 0, 0, 0, 0,
            ],
            v3,
            TrailingBytes,
            ReasonCode::MalformedPacket,
        ),
    ];
    for (bytes, proto, err, reason) in cases {
        assert_eq!(dec(bytes, proto), Err(err), "{bytes:02x?}");
        assert_eq!(err.reason_code(), reason, "{err:?}");
        assert!(!err.to_string().is_empty());
    }
    let mut big = BytesMut::from(&[0x30, 0x80, 0x80, 0x04][..]);
    let e = decode(&mut big, v3, 1000).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn reason_codes_round_trip() {
    for rc in ReasonCode::ALL {
        assert_eq!(ReasonCode::from_u8(rc as u8), Some(rc));
    }
    for code in 0..=5u8 {
        let rc = ReasonCode::from_v3_connack(code).expect("v3 code");
        assert_eq!(rc.v3_connack_code(), code);
    }
    assert_eq!(ReasonCode::from_u8(0x03), None);
}

// ---- property tests ----

fn arb_string() -> impl Strategy<Value = bytestring::ByteString> {
    "[a-zA-Z0-9 éλ中/_-]{0,12}".prop_map(bytestring::ByteString::from)
}

fn arb_topic() -> impl Strategy<Value = bytestring::ByteString> {
    "[a-z0-9]{1,5}(/[a-z0-9]{0,5}){0,3}".prop_map(bytestring::ByteString::from)
}

fn arb_filter() -> impl Strategy<Value = bytestring::ByteString> {
    prop_oneof![
        arb_topic(),
        Just("#".into()),
        Just("a/+/c".into()),
        Just("$share/g/x/#".into())
    ]
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn arb_reason() -> impl Strategy<Value = ReasonCode> {
    prop::sample::select(ReasonCode::ALL.to_vec())
}

/// Properties valid in `ctx`: a few of the allowed ones, each with a legal value.
fn arb_props(ctx: properties::PropCtx) -> impl Strategy<Value = Props> {
    use properties::PropCtx as C;
    (
        any::<u32>(),
        arb_string(),
        arb_bytes(),
        1..u16::MAX,
        prop::collection::vec((arb_string(), arb_string()), 0..3),
        1..268_435_455u32,
        any::<bool>(),
    )
        .prop_map(move |(n, text, data, nz, users, sid, flag)| {
            let mut p = Properties {
                user_properties: users,
                ..Default::default()
            };
            match ctx {
                C::Connect => {
                    p.session_expiry_interval = Some(n);
                    p.receive_maximum = Some(nz);
                    p.maximum_packet_size = Some(n.max(1));
                    p.request_problem_information = Some(flag as u8);
                    p.authentication_method = Some(text);
                    p.authentication_data = Some(data);
                }
                C::ConnAck => {
                    p.assigned_client_identifier = Some(text);
                    p.server_keep_alive = Some(nz);
                    p.maximum_qos = Some(flag as u8);
                    p.topic_alias_maximum = Some(nz);
                    p.shared_subscription_available = Some(1);
                }
                C::Publish | C::Will => {
                    p.payload_format_indicator = Some(flag as u8);
                    p.message_expiry_interval = Some(n);
                    p.content_type = Some(text);
                    p.correlation_data = Some(data);
                    p.response_topic = Some("re/ply".into());
                    if ctx == C::Will {
                        p.will_delay_interval = Some(n);
                    } else {
                        p.subscription_identifiers.push(sid);
                        p.subscription_identifiers.push(sid);
                    }
                }
                C::Subscribe => p.subscription_identifiers.push(sid),
                C::Disconnect => {
                    p.session_expiry_interval = Some(n);
                    p.server_reference = Some(text);
                }
                C::Auth => {
                    p.authentication_method = Some(text);
                    p.authentication_data = Some(data);
                }
                C::Unsubscribe => {}
                _ => p.reason_string = Some(text),
            }
            if p.is_empty() {
                None
            } else {
                Some(Box::new(p))
            }
        })
}

fn maybe_props(v5: bool, ctx: properties::PropCtx) -> impl Strategy<Value = Props> {
    prop_oneof![Just(None), arb_props(ctx)].prop_map(move |p| if v5 { p } else { None })
}

fn arb_packet(proto: Protocol) -> impl Strategy<Value = Packet> {
    use properties::PropCtx as C;
    let v5 = proto.is_v5();
    let pid = 1..=u16::MAX;
    let resp = (pid.clone(), arb_reason(), maybe_props(v5, C::PubResp))
        .boxed()
        .prop_map(move |(id, r, p)| {
            if v5 {
                PubResp {
                    packet_id: id,
                    reason: r,
                    properties: p,
                }
            } else {
                PubResp::new(id, ReasonCode::Success)
            }
        })
        .boxed();
    let will = (
        arb_topic(),
        arb_bytes(),
        arb_qos(),
        any::<bool>(),
        maybe_props(v5, C::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    let connect = (
        any::<bool>(),
        any::<u16>(),
        arb_string(),
        prop::option::of(will),
        prop::option::of(arb_string()),
        prop::option::of(arb_bytes()),
        maybe_props(v5, C::Connect),
    )
        .prop_map(
            move |(clean, ka, id, will, username, password, properties)| {
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: proto,
                    clean_start: clean,
                    keep_alive: ka,
                    client_id: id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        );
    let connack = (
        any::<bool>(),
        0..=5u8,
        arb_reason(),
        maybe_props(v5, C::ConnAck),
    )
        .prop_map(move |(sp, code, r, properties)| {
            let reason = if v5 {
                r
            } else {
                ReasonCode::from_v3_connack(code).unwrap_or(ReasonCode::Success)
            };
            Packet::ConnAck(ConnAck {
                session_present: sp && proto != Protocol::V31,
                reason,
                properties,
            })
        });
    let publish = (
        any::<bool>(),
        arb_qos(),
        any::<bool>(),
        arb_topic(),
        pid.clone(),
        maybe_props(v5, C::Publish),
        arb_bytes(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let packet_id = (qos != QoS::AtMostOnce).then_some(id);
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id,
                properties,
                payload,
            })
        });
    let opts =
        (arb_qos(), any::<bool>(), any::<bool>(), 0..3u8).prop_map(move |(qos, nl, rap, rh)| {
            if !v5 {
                return SubOptions::qos(qos);
            }
            let retain_handling = [
                RetainHandling::OnSubscribe,
                RetainHandling::OnNewSubscribe,
                RetainHandling::Never,
            ][rh as usize];
            SubOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling,
            }
        });
    let subscribe = (
        pid.clone(),
        prop::collection::vec((arb_filter(), opts), 1..4),
        maybe_props(v5, C::Subscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let suback_codes = if v5 {
        prop::collection::vec(arb_reason(), 0..4).boxed()
    } else {
        prop::collection::vec(
            prop::sample::select(vec![
                ReasonCode::Success,
                ReasonCode::GrantedQos1,
                ReasonCode::GrantedQos2,
                ReasonCode::UnspecifiedError,
            ]),
            0..4,
        )
        .boxed()
    };
    let suback = (pid.clone(), suback_codes, maybe_props(v5, C::SubAck)).prop_map(
        |(packet_id, reasons, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reasons,
                properties,
            })
        },
    );
    let unsubscribe = (
        pid.clone(),
        prop::collection::vec(arb_filter(), 1..4),
        maybe_props(v5, C::Unsubscribe),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        });
    let unsuback = (
        pid,
        prop::collection::vec(arb_reason(), 0..4),
        maybe_props(v5, C::UnsubAck),
    )
        .prop_map(move |(packet_id, reasons, properties)| {
            let reasons = if v5 { reasons } else { vec![] };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reasons,
                properties,
            })
        });
    let disconnect =
        (arb_reason(), maybe_props(v5, C::Disconnect)).prop_map(move |(r, properties)| {
            let reason = if v5 { r } else { ReasonCode::Success };
            Packet::Disconnect(Disconnect { reason, properties })
        });
    let auth = (arb_reason(), maybe_props(true, C::Auth))
        .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
    let mut all = vec![
        connect.boxed(),
        connack.boxed(),
        publish.boxed(),
        resp.clone().prop_map(Packet::PubAck).boxed(),
        resp.clone().prop_map(Packet::PubRec).boxed(),
        resp.clone().prop_map(Packet::PubRel).boxed(),
        resp.prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        all.push(auth.boxed());
    }
    prop::strategy::Union::new(all)
}

fn arb_proto() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V31),
        Just(Protocol::V311),
        Just(Protocol::V5)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_inverts_encode((proto, packet) in arb_proto().prop_flat_map(|p| (Just(p), arb_packet(p)))) {
        let bytes = enc(&packet, proto);
        prop_assert_eq!(dec(&bytes, proto), Ok(Some(packet)));
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64), proto in arb_proto()) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf, proto, 256) {}
    }

    #[test]
    fn decode_never_panics_on_mutated_packets((proto, packet) in arb_proto().prop_flat_map(|p| (Just(p), arb_packet(p))), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = enc(&packet, proto);
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf, proto, MAX) {}
    }
}
