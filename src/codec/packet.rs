//! The packet model: one version-agnostic set of types for MQTT 3.1, 3.1.1 and 5.0. Fields that
//! exist only in v5 (properties, reason codes) are optional or ignored when encoding for v3, so
//! everything above the codec is blind to the protocol version.

use bytes::Bytes;
use bytestring::ByteString;

use super::{Properties, Props, ReasonCode};

/// Protocol version, fixed by CONNECT for the life of a connection.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V31,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V311,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V31 => 3,
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V31 => "MQIsdp",
            _ => "MQTT",
        }
    }

    pub fn is_v5(self) -> bool {
        self == Protocol::V5
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Props,
}

impl Connect {
    /// A CONNECT with no will, credentials or properties.
    pub fn new(protocol: Protocol, client_id: &str, clean_start: bool, keep_alive: u16) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// "Clean session" in v3, "clean start" in v5.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// v3 clients receive `ReasonCode::v3_connack_code` of it.
    pub reason: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in v5 when a topic alias stands for it.
    pub topic: ByteString,
    /// `None` at QoS 0.
    pub packet_id: Option<u16>,
    pub properties: Props,
    pub payload: Bytes,
}

impl Publish {
    /// The packet as [`PublishRef`] borrows it, to encode.
    pub fn as_out(&self) -> PublishRef<'_> {
        PublishRef {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.topic,
            packet_id: self.packet_id,
            properties: self.properties.as_deref(),
            payload: &self.payload,
        }
    }
}

/// A PUBLISH to encode, borrowing its parts from wherever they live: a decoded [`Publish`], or a
/// message and one subscriber's delivery of it, so that a delivery is written without touching
/// the reference counts of the shared topic and payload.
#[derive(Debug, Clone, Copy)]
pub struct PublishRef<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in v5 when a topic alias stands for it.
    pub topic: &'a str,
    pub packet_id: Option<u16>,
    pub properties: Option<&'a Properties>,
    pub payload: &'a Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Props,
}

impl PubResp {
    pub fn new(packet_id: u16, reason: ReasonCode) -> Self {
        Self {
            packet_id,
            reason,
            properties: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe.
    OnSubscribe = 0,
    /// Only if the subscription did not exist.
    OnNewSubscribe = 1,
    Never = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SubOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    /// Whether a subscription with these options gets the retained messages now (`existed`:
    /// the session had the subscription already).
    pub fn wants_retained(&self, existed: bool) -> bool {
        match self.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscribe => !existed,
            RetainHandling::Never => false,
        }
    }

    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(ByteString, SubOptions)>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per filter; v3 encodes Granted QoS 0-2 as is and any error as 0x80.
    pub reasons: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<ByteString>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// v5 only; empty for v3.
    pub reasons: Vec<ReasonCode>,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The packet type number of the fixed header.
    pub fn type_code(&self) -> u8 {
        match self {
            Packet::Connect(_) => 1,
            Packet::ConnAck(_) => 2,
            Packet::Publish(_) => 3,
            Packet::PubAck(_) => 4,
            Packet::PubRec(_) => 5,
            Packet::PubRel(_) => 6,
            Packet::PubComp(_) => 7,
            Packet::Subscribe(_) => 8,
            Packet::SubAck(_) => 9,
            Packet::Unsubscribe(_) => 10,
            Packet::UnsubAck(_) => 11,
            Packet::PingReq => 12,
            Packet::PingResp => 13,
            Packet::Disconnect(_) => 14,
            Packet::Auth(_) => 15,
        }
    }
}
