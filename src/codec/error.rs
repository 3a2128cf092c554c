//! Decode errors: one variant per rule of the specification a packet can break, each mapped to
//! the MQTT 5.0 reason code the broker sends before it closes the connection. Small and `Copy`
//! because they are returned on the hot path.

use super::ReasonCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet type {0} is reserved or unknown")]
    UnknownPacketType(u8),
    #[error("reserved flag bits in the fixed header are not as the specification fixes them")]
    ReservedFlags,
    #[error("remaining length runs past four bytes")]
    RemainingLengthTooLong,
    #[error("a variable byte integer does not use the minimum number of bytes")]
    NonMinimalLength,
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge { size: usize, max: usize },
    #[error("the packet ends before a field it announces")]
    Truncated,
    #[error("bytes left over after the last field of the packet")]
    TrailingBytes,
    #[error("packet identifier 0 where a non-zero one is required")]
    ZeroPacketId,
    #[error("string is not well-formed UTF-8")]
    InvalidUtf8,
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("topic name contains a wildcard")]
    WildcardInTopicName,
    #[error("topic name is empty")]
    EmptyTopicName,
    #[error("topic filter is malformed")]
    InvalidTopicFilter,
    #[error("QoS 3 is not a quality of service")]
    InvalidQos,
    #[error("a QoS 0 PUBLISH has the DUP flag set")]
    DupAtQos0,
    #[error("protocol name is not MQTT or MQIsdp, or does not match the level")]
    InvalidProtocolName,
    #[error("protocol level {0} is not supported")]
    UnsupportedProtocolLevel(u8),
    #[error("the reserved bit of the CONNECT flags is set")]
    ReservedConnectFlag,
    #[error("will QoS or will retain set without the will flag")]
    WillFlagMismatch,
    #[error("password flag set without a user name (MQTT 3.x)")]
    PasswordWithoutUsername,
    #[error("property 0x{0:02x} is unknown")]
    UnknownProperty(u8),
    #[error("property 0x{0:02x} appears more than once")]
    DuplicateProperty(u8),
    #[error("property 0x{0:02x} is not allowed in this packet")]
    PropertyNotAllowed(u8),
    #[error("property 0x{0:02x} has a value the specification forbids")]
    InvalidPropertyValue(u8),
    #[error("the property length runs past the end of the packet")]
    PropertyLengthOverrun,
    #[error("reason code 0x{0:02x} is not valid in this packet")]
    InvalidReasonCode(u8),
    #[error("subscription options use reserved bits or retain handling 3")]
    InvalidSubscriptionOptions,
    #[error("SUBSCRIBE or UNSUBSCRIBE carries no topic filter")]
    NoTopicFilters,
    #[error("the first packet is not CONNECT, or a second CONNECT arrived")]
    UnexpectedConnect,
}

impl DecodeError {
    /// The reason code a v5 broker sends (in CONNACK or DISCONNECT) for this error.
    pub fn reason_code(self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolLevel(_) | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            WildcardInTopicName | EmptyTopicName => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter => ReasonCode::TopicFilterInvalid,
            DuplicateProperty(_)
            | PropertyNotAllowed(_)
            | InvalidPropertyValue(_)
            | ZeroPacketId
            | UnexpectedConnect
            | PasswordWithoutUsername => ReasonCode::ProtocolError,
            UnknownPacketType(_)
            | ReservedFlags
            | RemainingLengthTooLong
            | NonMinimalLength
            | Truncated
            | TrailingBytes
            | InvalidUtf8
            | NullCharacter
            | InvalidQos
            | ReservedConnectFlag
            | WillFlagMismatch
            | UnknownProperty(_)
            | PropertyLengthOverrun
            | InvalidReasonCode(_)
            | InvalidSubscriptionOptions
            | DupAtQos0
            | NoTopicFilters => ReasonCode::MalformedPacket,
        }
    }
}
