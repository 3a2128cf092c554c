//! MQTT 5.0 properties: every property of the specification with its wire type, the packets it
//! may appear in, the values it may take and whether it may repeat. Packets hold
//! `Option<Box<Properties>>` so that the common case (no properties, and every v3 packet) costs
//! one null pointer and no allocation.

use bytes::{BufMut, Bytes};
use bytestring::ByteString;
use smallvec::SmallVec;

use super::wire::{field_len, put_binary, put_varint, varint_len, Reader, MAX_VARINT};
use super::DecodeError;

/// Where a property block sits; each property is allowed in some of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum PropCtx {
    Connect = 1,
    ConnAck = 1 << 1,
    Publish = 1 << 2,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    PubResp = 1 << 3,
    Subscribe = 1 << 4,
    SubAck = 1 << 5,
    Unsubscribe = 1 << 6,
    UnsubAck = 1 << 7,
    Disconnect = 1 << 8,
    Auth = 1 << 9,
    Will = 1 << 10,
}

pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The packets (as a `PropCtx` bit set) in which property `pid` is allowed; 0 when unknown.
pub fn allowed_in(pid: u8) -> u16 {
    use PropCtx::*;
    let set = |ctxs: &[PropCtx]| ctxs.iter().fold(0u16, |m, c| m | *c as u16);
    match pid {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => set(&[Publish, Will]),
        id::SUBSCRIPTION_IDENTIFIER => set(&[Publish, Subscribe]),
        id::SESSION_EXPIRY_INTERVAL => set(&[Connect, ConnAck, Disconnect]),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => set(&[ConnAck]),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => set(&[Connect, ConnAck, Auth]),
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => set(&[Connect]),
        id::WILL_DELAY_INTERVAL => set(&[Will]),
        id::SERVER_REFERENCE => set(&[ConnAck, Disconnect]),
        id::REASON_STRING => set(&[ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth]),
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            set(&[Connect, ConnAck])
        }
        id::TOPIC_ALIAS => set(&[Publish]),
        id::USER_PROPERTY => 0x7ff,
        _ => 0,
    }
}

/// Every MQTT 5.0 property; absent ones are `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    /// Repeatable in PUBLISH (one per matching subscription), at most one in SUBSCRIBE.
    pub subscription_identifiers: SmallVec<[u32; 1]>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<ByteString>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<ByteString>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<ByteString>,
    pub server_reference: Option<ByteString>,
    pub reason_string: Option<ByteString>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    /// Repeatable; the order is kept.
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

pub type Props = Option<Box<Properties>>;

fn set_once<T>(slot: &mut Option<T>, pid: u8, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(pid));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(r: &mut Reader, pid: u8) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::InvalidPropertyValue(pid)),
    }
}

fn nonzero_u16(r: &mut Reader, pid: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue(pid)),
        v => Ok(v),
    }
}

/// Reads a property length and the block it announces.
pub fn decode_properties(r: &mut Reader, ctx: PropCtx) -> Result<Props, DecodeError> {
    let len = r.varint()? as usize;
    if len == 0 {
        return Ok(None);
    }
    let mut r = r.sub(len)?;
    let mut p = Properties::default();
    while !r.is_empty() {
        let pid = r.varint()?;
        let pid = u8::try_from(pid).map_err(|_| DecodeError::UnknownProperty(0xff))?;
        let allowed = allowed_in(pid);
        if allowed == 0 {
            return Err(DecodeError::UnknownProperty(pid));
        }
        if allowed & ctx as u16 == 0 {
            return Err(DecodeError::PropertyNotAllowed(pid));
        }
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.payload_format_indicator, pid, v)?
            }
            id::MESSAGE_EXPIRY_INTERVAL => {
                let v = r.u32()?;
                set_once(&mut p.message_expiry_interval, pid, v)?
            }
            id::CONTENT_TYPE => {
                let v = r.string()?;
                set_once(&mut p.content_type, pid, v)?
            }
            id::RESPONSE_TOPIC => {
                let v = r.string()?;
                crate::topic::validate_name(&v)?;
                set_once(&mut p.response_topic, pid, v)?
            }
            id::CORRELATION_DATA => {
                let v = r.binary()?;
                set_once(&mut p.correlation_data, pid, v)?
            }
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(pid));
                }
                if ctx == PropCtx::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(pid));
                }
                p.subscription_identifiers.push(v);
            }
            id::SESSION_EXPIRY_INTERVAL => {
                let v = r.u32()?;
                set_once(&mut p.session_expiry_interval, pid, v)?
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => {
                let v = r.string()?;
                set_once(&mut p.assigned_client_identifier, pid, v)?
            }
            id::SERVER_KEEP_ALIVE => {
                let v = r.u16()?;
                set_once(&mut p.server_keep_alive, pid, v)?
            }
            id::AUTHENTICATION_METHOD => {
                let v = r.string()?;
                set_once(&mut p.authentication_method, pid, v)?
            }
            id::AUTHENTICATION_DATA => {
                let v = r.binary()?;
                set_once(&mut p.authentication_data, pid, v)?
            }
            id::REQUEST_PROBLEM_INFORMATION => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.request_problem_information, pid, v)?
            }
            id::WILL_DELAY_INTERVAL => {
                let v = r.u32()?;
                set_once(&mut p.will_delay_interval, pid, v)?
            }
            id::REQUEST_RESPONSE_INFORMATION => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.request_response_information, pid, v)?
            }
            id::RESPONSE_INFORMATION => {
                let v = r.string()?;
                set_once(&mut p.response_information, pid, v)?
            }
            id::SERVER_REFERENCE => {
                let v = r.string()?;
                set_once(&mut p.server_reference, pid, v)?
            }
            id::REASON_STRING => {
                let v = r.string()?;
                set_once(&mut p.reason_string, pid, v)?
            }
            id::RECEIVE_MAXIMUM => {
                let v = nonzero_u16(&mut r, pid)?;
                set_once(&mut p.receive_maximum, pid, v)?
            }
            id::TOPIC_ALIAS_MAXIMUM => {
                let v = r.u16()?;
                set_once(&mut p.topic_alias_maximum, pid, v)?
            }
            id::TOPIC_ALIAS => {
                let v = nonzero_u16(&mut r, pid)?;
                set_once(&mut p.topic_alias, pid, v)?
            }
            id::MAXIMUM_QOS => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.maximum_qos, pid, v)?
            }
            id::RETAIN_AVAILABLE => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.retain_available, pid, v)?
            }
            id::USER_PROPERTY => {
                let k = r.string()?;
                let v = r.string()?;
                p.user_properties.push((k, v));
            }
            id::MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue(pid));
                }
                set_once(&mut p.maximum_packet_size, pid, v)?
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.wildcard_subscription_available, pid, v)?
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.subscription_identifier_available, pid, v)?
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                let v = flag(&mut r, pid)?;
                set_once(&mut p.shared_subscription_available, pid, v)?
            }
            _ => return Err(DecodeError::UnknownProperty(pid)),
        }
    }
    Ok(Some(Box::new(p)))
}

/// One property's value, for sizing and writing through a single walk.
enum Value<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    Var(u32),
    Data(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl Value<'_> {
    fn len(&self) -> usize {
        match self {
            Value::Byte(_) => 1,
            Value::Two(_) => 2,
            Value::Four(_) => 4,
            Value::Var(v) => varint_len(*v as usize),
            Value::Data(d) => field_len(d),
            Value::Pair(k, v) => field_len(k.as_bytes()) + field_len(v.as_bytes()),
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match self {
            Value::Byte(v) => buf.put_u8(*v),
            Value::Two(v) => buf.put_u16(*v),
            Value::Four(v) => buf.put_u32(*v),
            Value::Var(v) => put_varint(buf, (*v).min(MAX_VARINT) as usize),
            Value::Data(d) => put_binary(buf, d),
            Value::Pair(k, v) => {
                put_binary(buf, k.as_bytes());
                put_binary(buf, v.as_bytes());
            }
        }
    }
}

fn s(v: &ByteString) -> Value<'_> {
    Value::Data(v.as_bytes())
}

fn d(v: &Bytes) -> Value<'_> {
    Value::Data(v)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Calls `f` with every present property in id order (user properties in their order).
    fn each(&self, mut f: impl FnMut(u8, Value<'_>)) {
        macro_rules! opt {
            ($field:ident, $pid:expr, $wrap:expr) => {
                if let Some(v) = &self.$field {
                    f($pid, $wrap(v));
                }
            };
        }
        opt!(
            payload_format_indicator,
            id::PAYLOAD_FORMAT_INDICATOR,
            |v: &u8| Value::Byte(*v)
        );
        opt!(
            message_expiry_interval,
            id::MESSAGE_EXPIRY_INTERVAL,
            |v: &u32| Value::Four(*v)
        );
        opt!(content_type, id::CONTENT_TYPE, s);
        opt!(response_topic, id::RESPONSE_TOPIC, s);
        opt!(correlation_data, id::CORRELATION_DATA, d);
        for sid in &self.subscription_identifiers {
            f(id::SUBSCRIPTION_IDENTIFIER, Value::Var(*sid));
        }
        opt!(
            session_expiry_interval,
            id::SESSION_EXPIRY_INTERVAL,
            |v: &u32| Value::Four(*v)
        );
        opt!(
            assigned_client_identifier,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            s
        );
        opt!(server_keep_alive, id::SERVER_KEEP_ALIVE, |v: &u16| {
            Value::Two(*v)
        });
        opt!(authentication_method, id::AUTHENTICATION_METHOD, s);
        opt!(authentication_data, id::AUTHENTICATION_DATA, d);
        opt!(
            request_problem_information,
            id::REQUEST_PROBLEM_INFORMATION,
            |v: &u8| Value::Byte(*v)
        );
        opt!(will_delay_interval, id::WILL_DELAY_INTERVAL, |v: &u32| {
            Value::Four(*v)
        });
        opt!(
            request_response_information,
            id::REQUEST_RESPONSE_INFORMATION,
            |v: &u8| Value::Byte(*v)
        );
        opt!(response_information, id::RESPONSE_INFORMATION, s);
        opt!(server_reference, id::SERVER_REFERENCE, s);
        opt!(reason_string, id::REASON_STRING, s);
        opt!(receive_maximum, id::RECEIVE_MAXIMUM, |v: &u16| Value::Two(
            *v
        ));
        opt!(topic_alias_maximum, id::TOPIC_ALIAS_MAXIMUM, |v: &u16| {
            Value::Two(*v)
        });
        opt!(topic_alias, id::TOPIC_ALIAS, |v: &u16| Value::Two(*v));
        opt!(maximum_qos, id::MAXIMUM_QOS, |v: &u8| Value::Byte(*v));
        opt!(
            retain_available,
            id::RETAIN_AVAILABLE,
            |v: &u8| Value::Byte(*v)
        );
        for (k, v) in &self.user_properties {
            f(id::USER_PROPERTY, Value::Pair(k, v));
        }
        opt!(maximum_packet_size, id::MAXIMUM_PACKET_SIZE, |v: &u32| {
            Value::Four(*v)
        });
        opt!(
            wildcard_subscription_available,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            |v: &u8| Value::Byte(*v)
        );
        opt!(
            subscription_identifier_available,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            |v: &u8| Value::Byte(*v)
        );
        opt!(
            shared_subscription_available,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            |v: &u8| Value::Byte(*v)
        );
    }

    /// Bytes of the property block, without its length prefix.
    pub fn body_len(&self) -> usize {
        let mut n = 0;
        self.each(|_, v| n += 1 + v.len());
        n
    }
}

/// Bytes the property block takes on the wire, its length prefix included.
pub fn props_len(props: Option<&Properties>) -> usize {
    let body = props.map_or(0, |p| p.body_len());
    varint_len(body) + body
}

pub fn put_props(buf: &mut impl BufMut, props: Option<&Properties>) {
    match props {
        None => buf.put_u8(0),
        Some(p) => {
            put_varint(buf, p.body_len());
            p.each(|pid, v| {
                buf.put_u8(pid);
                v.put(buf);
            });
        }
    }
}
