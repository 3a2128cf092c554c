//! Encoding: each packet's remaining length is computed first, the buffer grows once, then the
//! packet is written in one pass. PUBLISH is split so that a fan-out encodes its header (topic,
//! packet id, properties) per variant and shares the payload by reference.

use bytes::{BufMut, BytesMut};

use super::properties::{props_len, put_props};
use super::wire::{field_len, put_binary, put_varint, varint_len};
use super::*;

/// Bytes `packet` takes on the wire for `protocol`.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let remaining = body_len(packet, protocol);
    1 + varint_len(remaining) + remaining
}

/// Appends `packet` encoded for `protocol` to `buf`.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    let remaining = body_len(packet, protocol);
    buf.reserve(1 + varint_len(remaining) + remaining);
    let v5 = protocol.is_v5();
    match packet {
        Packet::Publish(p) => {
            put_publish_header(buf, &p.as_out(), protocol);
            buf.put_slice(&p.payload);
        }
        Packet::Connect(c) => {
            buf.put_u8(0x10);
            put_varint(buf, remaining);
            put_connect(buf, c);
        }
        Packet::ConnAck(c) => {
            buf.put_u8(0x20);
            put_varint(buf, remaining);
            // MQTT 3.1 has no session present flag: its byte is reserved (0).
            buf.put_u8((c.session_present && protocol != Protocol::V31) as u8);
            if v5 {
                buf.put_u8(c.reason as u8);
                put_props(buf, c.properties.as_deref());
            } else {
                buf.put_u8(c.reason.v3_connack_code());
            }
        }
        Packet::PubAck(a) => put_pub_resp(buf, AckType::PubAck, a, remaining, v5),
        Packet::PubRec(a) => put_pub_resp(buf, AckType::PubRec, a, remaining, v5),
        Packet::PubRel(a) => put_pub_resp(buf, AckType::PubRel, a, remaining, v5),
        Packet::PubComp(a) => put_pub_resp(buf, AckType::PubComp, a, remaining, v5),
        Packet::Subscribe(s) => {
            buf.put_u8(0x82);
            put_varint(buf, remaining);
            buf.put_u16(s.packet_id);
            if v5 {
                put_props(buf, s.properties.as_deref());
            }
            for (filter, o) in &s.filters {
                put_binary(buf, filter.as_bytes());
                let mut opts = o.qos as u8;
                if v5 {
                    opts |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling as u8) << 4;
                }
                buf.put_u8(opts);
            }
        }
        Packet::SubAck(s) => {
            buf.put_u8(0x90);
            put_varint(buf, remaining);
            buf.put_u16(s.packet_id);
            if v5 {
                put_props(buf, s.properties.as_deref());
            }
            for r in &s.reasons {
                buf.put_u8(if v5 || !r.is_error() { *r as u8 } else { 0x80 });
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u8(0xa2);
            put_varint(buf, remaining);
            buf.put_u16(u.packet_id);
            if v5 {
                put_props(buf, u.properties.as_deref());
            }
            for filter in &u.filters {
                put_binary(buf, filter.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u8(0xb0);
            put_varint(buf, remaining);
            buf.put_u16(u.packet_id);
            if v5 {
                put_props(buf, u.properties.as_deref());
                for r in &u.reasons {
                    buf.put_u8(*r as u8);
                }
            }
        }
        Packet::PingReq => buf.put_slice(&[0xc0, 0]),
        Packet::PingResp => buf.put_slice(&[0xd0, 0]),
        Packet::Disconnect(d) => put_reason_tail(buf, 0xe0, d.reason, &d.properties, remaining),
        Packet::Auth(a) => put_reason_tail(buf, 0xf0, a.reason, &a.properties, remaining),
    }
}

/// The length of a PUBLISH's variable header (topic, packet id, properties).
fn publish_var_header_len(p: &PublishRef<'_>, protocol: Protocol) -> usize {
    let mut n = field_len(p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    if protocol.is_v5() {
        n += props_len(p.properties);
    }
    n
}

/// Bytes a PUBLISH takes on the wire, payload included.
pub fn publish_len(p: &PublishRef<'_>, protocol: Protocol) -> usize {
    let remaining = publish_var_header_len(p, protocol) + p.payload.len();
    1 + varint_len(remaining) + remaining
}

/// Writes a PUBLISH's fixed and variable header; the payload (`p.payload.len()` bytes, counted in
/// the remaining length) is for the caller to send after it, by reference or by copy.
pub fn put_publish_header(buf: &mut BytesMut, p: &PublishRef<'_>, protocol: Protocol) {
    let remaining = publish_var_header_len(p, protocol) + p.payload.len();
    let first = 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8;
    buf.reserve(1 + varint_len(remaining) + remaining - p.payload.len());
    buf.put_u8(first);
    put_varint(buf, remaining);
    put_binary(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id.unwrap_or(0));
    }
    if protocol.is_v5() {
        put_props(buf, p.properties);
    }
}

fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol.is_v5();
    let v5_props = |p: &Props| if v5 { props_len(p.as_deref()) } else { 0 };
    match packet {
        Packet::Connect(c) => connect_len(c),
        Packet::ConnAck(c) => 2 + v5_props(&c.properties),
        Packet::Publish(p) => publish_var_header_len(&p.as_out(), protocol) + p.payload.len(),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + reason_tail_len(a.reason, &a.properties, v5)
        }
        Packet::Subscribe(s) => {
            2 + v5_props(&s.properties)
                + s.filters
                    .iter()
                    .map(|(f, _)| field_len(f.as_bytes()) + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(s) => 2 + v5_props(&s.properties) + s.reasons.len(),
        Packet::Unsubscribe(u) => {
            2 + v5_props(&u.properties)
                + u.filters
                    .iter()
                    .map(|f| field_len(f.as_bytes()))
                    .sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            2 + if v5 {
                props_len(u.properties.as_deref()) + u.reasons.len()
            } else {
                0
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_tail_len(d.reason, &d.properties, v5),
        Packet::Auth(a) => reason_tail_len(a.reason, &a.properties, v5),
    }
}

/// v5 acks, DISCONNECT and AUTH drop a Success reason and empty properties from the wire.
fn reason_tail_len(reason: ReasonCode, props: &Props, v5: bool) -> usize {
    if !v5 || (reason == ReasonCode::Success && props.is_none()) {
        0
    } else if props.is_none() {
        1
    } else {
        1 + props_len(props.as_deref())
    }
}

fn put_reason_tail(buf: &mut BytesMut, first: u8, reason: ReasonCode, props: &Props, len: usize) {
    buf.put_u8(first);
    put_varint(buf, len);
    if len >= 1 {
        buf.put_u8(reason as u8);
    }
    if len >= 2 {
        put_props(buf, props.as_deref());
    }
}

/// Which acknowledgement of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckType {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckType {
    /// Its fixed header's first byte (PUBREL's flags are 0b0010).
    fn first_byte(self) -> u8 {
        match self {
            AckType::PubAck => 0x40,
            AckType::PubRec => 0x50,
            AckType::PubRel => 0x62,
            AckType::PubComp => 0x70,
        }
    }
}

fn put_pub_resp(buf: &mut BytesMut, kind: AckType, a: &PubResp, remaining: usize, v5: bool) {
    put_ack_head(buf, kind, a.packet_id, a.reason, remaining);
    if v5 && remaining > 3 {
        put_props(buf, a.properties.as_deref());
    }
}

/// A publish acknowledgement without properties, as the broker sends them, appended to
/// `buf`: the bytes [`encode`] writes for that packet, without one built and dropped for
/// every message.
pub fn put_ack(buf: &mut BytesMut, kind: AckType, packet_id: u16, reason: ReasonCode, v5: bool) {
    let remaining = 2 + reason_tail_len(reason, &None, v5);
    buf.reserve(2 + remaining);
    put_ack_head(buf, kind, packet_id, reason, remaining);
}

/// An acknowledgement up to its properties: the reason code is there when `remaining` leaves
/// room for it (only v5 packets do).
fn put_ack_head(
    buf: &mut BytesMut,
    kind: AckType,
    packet_id: u16,
    reason: ReasonCode,
    remaining: usize,
) {
    buf.put_u8(kind.first_byte());
    put_varint(buf, remaining);
    buf.put_u16(packet_id);
    if remaining > 2 {
        buf.put_u8(reason as u8);
    }
}

fn connect_len(c: &Connect) -> usize {
    let v5 = c.protocol.is_v5();
    let mut n = field_len(c.protocol.name().as_bytes()) + 1 + 1 + 2;
    if v5 {
        n += props_len(c.properties.as_deref());
    }
    n += field_len(c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            n += props_len(w.properties.as_deref());
        }
        n += field_len(w.topic.as_bytes()) + field_len(&w.payload);
    }
    n += c.username.as_ref().map_or(0, |u| field_len(u.as_bytes()));
    n += c.password.as_ref().map_or(0, |p| field_len(p));
    n
}

fn put_connect(buf: &mut BytesMut, c: &Connect) {
    let v5 = c.protocol.is_v5();
    put_binary(buf, c.protocol.name().as_bytes());
    buf.put_u8(c.protocol.level());
    let mut flags = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
    }
    flags |= (c.password.is_some() as u8) << 6 | (c.username.is_some() as u8) << 7;
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        put_props(buf, c.properties.as_deref());
    }
    put_binary(buf, c.client_id.as_bytes());
    if let Some(w) = &c.will {
        if v5 {
            put_props(buf, w.properties.as_deref());
        }
        put_binary(buf, w.topic.as_bytes());
        put_binary(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_binary(buf, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_binary(buf, p);
    }
}
