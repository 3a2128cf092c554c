//! Incremental, strict decoding. `decode` looks at the fixed header first: an incomplete frame is
//! `Ok(None)` (and the buffer is grown once to the frame's size), an oversized one is rejected
//! before its body is buffered, a complete one is split off as `Bytes` and parsed without copies.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use super::properties::{decode_properties, PropCtx};
use super::wire::{read_varint, Reader};
use super::*;
use crate::topic::{validate_filter, validate_name};

/// A complete frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_byte: u8,
    pub header_len: usize,
    pub remaining: usize,
}

impl FrameHeader {
    pub fn total(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads the fixed header at the start of `buf`, checking the frame against `max_size`.
pub fn frame_header(buf: &[u8], max_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, used)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let header = FrameHeader {
        first_byte,
        header_len: 1 + used,
        remaining: remaining as usize,
    };
    if header.total() > max_size {
        return Err(DecodeError::PacketTooLarge {
            size: header.total(),
            max: max_size,
        });
    }
    Ok(Some(header))
}

/// Decodes one packet from the front of `buf`. `protocol` is the connection's version; before
/// CONNECT any value will do, since CONNECT carries its own.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = frame_header(buf, max_size)? else {
        return Ok(None);
    };
    if buf.len() < header.total() {
        buf.reserve(header.total() - buf.len());
        return Ok(None);
    }
    // The header is stepped over, not split off: a split is a reference-count increment
    // (and a decrement when the header is dropped) on the shared read buffer.
    let mut body = buf.split_to(header.total()).freeze();
    body.advance(header.header_len);
    decode_body(header.first_byte, body, protocol).map(Some)
}

/// Parses one packet's body, given its first byte.
pub fn decode_body(first_byte: u8, body: Bytes, protocol: Protocol) -> Result<Packet, DecodeError> {
    let kind = first_byte >> 4;
    let flags = first_byte & 0x0f;
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::ReservedFlags)
        }
    };
    let mut r = Reader::new(body);
    let v5 = protocol.is_v5();
    let packet = match kind {
        1 => {
            expect_flags(0)?;
            Packet::Connect(Box::new(connect(&mut r)?))
        }
        2 => {
            expect_flags(0)?;
            Packet::ConnAck(connack(&mut r, protocol)?)
        }
        3 => Packet::Publish(publish(&mut r, flags, v5)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(pub_resp(&mut r, v5)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(pub_resp(&mut r, v5)?)
        }
        6 => {
            expect_flags(2)?;
            Packet::PubRel(pub_resp(&mut r, v5)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(pub_resp(&mut r, v5)?)
        }
        8 => {
            expect_flags(2)?;
            Packet::Subscribe(subscribe(&mut r, v5)?)
        }
        9 => {
            expect_flags(0)?;
            Packet::SubAck(suback(&mut r, v5)?)
        }
        10 => {
            expect_flags(2)?;
            Packet::Unsubscribe(unsubscribe(&mut r, v5)?)
        }
        11 => {
            expect_flags(0)?;
            Packet::UnsubAck(unsuback(&mut r, v5)?)
        }
        12 => {
            expect_flags(0)?;
            Packet::PingReq
        }
        13 => {
            expect_flags(0)?;
            Packet::PingResp
        }
        14 => {
            expect_flags(0)?;
            let (reason, properties) = reason_and_props(&mut r, v5, PropCtx::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 if v5 => {
            expect_flags(0)?;
            let (reason, properties) = reason_and_props(&mut r, v5, PropCtx::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        other => return Err(DecodeError::UnknownPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

fn reason(code: u8) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(code).ok_or(DecodeError::InvalidReasonCode(code))
}

fn props(r: &mut Reader, v5: bool, ctx: PropCtx) -> Result<Props, DecodeError> {
    if v5 {
        decode_properties(r, ctx)
    } else {
        Ok(None)
    }
}

fn qos(bits: u8) -> Result<QoS, DecodeError> {
    QoS::from_u8(bits).ok_or(DecodeError::InvalidQos)
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolLevel(l)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ReservedConnectFlag);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = qos((flags >> 3) & 0x03)?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::WillFlagMismatch);
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, PropCtx::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, PropCtx::Will)?;
        let topic = r.string()?;
        validate_name(&topic)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let v5 = protocol.is_v5();
    let flags = r.u8()?;
    if flags & 0xfe != 0 {
        return Err(DecodeError::ReservedFlags);
    }
    let code = r.u8()?;
    let reason = if v5 {
        reason(code)?
    } else {
        ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode(code))?
    };
    let properties = props(r, v5, PropCtx::ConnAck)?;
    Ok(ConnAck {
        // MQTT 3.1 has no session present flag: the byte is reserved, and read as 0.
        session_present: flags & 1 != 0 && protocol != Protocol::V31,
        reason,
        properties,
    })
}

fn publish(r: &mut Reader, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let qos = qos((flags >> 1) & 0x03)?;
    if qos == QoS::AtMostOnce && flags & 0x08 != 0 {
        return Err(DecodeError::DupAtQos0);
    }
    let topic: ByteString = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = props(r, v5, PropCtx::Publish)?;
    let aliased = properties.as_ref().is_some_and(|p| p.topic_alias.is_some());
    if !(topic.is_empty() && aliased) {
        validate_name(&topic)?;
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn pub_resp(r: &mut Reader, v5: bool) -> Result<PubResp, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason, properties) = reason_and_props(r, v5, PropCtx::PubResp)?;
    Ok(PubResp {
        packet_id,
        reason,
        properties,
    })
}

/// The optional reason code and properties that end v5 acks, DISCONNECT and AUTH.
fn reason_and_props(
    r: &mut Reader,
    v5: bool,
    ctx: PropCtx,
) -> Result<(ReasonCode, Props), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((ReasonCode::Success, None));
    }
    let code = reason(r.u8()?)?;
    let properties = if r.is_empty() {
        None
    } else {
        decode_properties(r, ctx)?
    };
    Ok((code, properties))
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        validate_filter(&filter)?;
        let opts = r.u8()?;
        let reserved = if v5 { 0xc0 } else { 0xfc };
        if opts & reserved != 0 {
            return Err(DecodeError::InvalidSubscriptionOptions);
        }
        let retain_handling = match (opts >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::InvalidSubscriptionOptions),
        };
        let options = SubOptions {
            qos: qos(opts & 0x03)?,
            no_local: opts & 0x04 != 0,
            retain_as_published: opts & 0x08 != 0,
            retain_handling,
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::SubAck)?;
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = r.u8()?;
        if !v5 && !matches!(code, 0 | 1 | 2 | 0x80) {
            return Err(DecodeError::InvalidReasonCode(code));
        }
        reasons.push(reason(code)?);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        validate_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::NoTopicFilters);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, PropCtx::UnsubAck)?;
    let mut reasons = Vec::new();
    if v5 {
        while !r.is_empty() {
            reasons.push(reason(r.u8()?)?);
        }
    }
    Ok(UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}
