//! Reason codes: every MQTT 5.0 reason code, and the MQTT 3.x CONNACK return codes they map to.
//! The broker speaks in v5 reason codes internally and translates at the edge for v3 clients.

/// An MQTT 5.0 reason code (section 2.4 of the specification).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    /// Also "Normal disconnection" and "Granted QoS 0".
    Success = 0x00,
    GrantedQos1 = 0x01,
    GrantedQos2 = 0x02,
    DisconnectWithWill = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QosNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    pub const ALL: [ReasonCode; 43] = {
        use ReasonCode::*;
        [
            Success,
            GrantedQos1,
            GrantedQos2,
            DisconnectWithWill,
            NoMatchingSubscribers,
            NoSubscriptionExisted,
            ContinueAuthentication,
            ReAuthenticate,
            UnspecifiedError,
            MalformedPacket,
            ProtocolError,
            ImplementationSpecificError,
            UnsupportedProtocolVersion,
            ClientIdentifierNotValid,
            BadUserNameOrPassword,
            NotAuthorized,
            ServerUnavailable,
            ServerBusy,
            Banned,
            ServerShuttingDown,
            BadAuthenticationMethod,
            KeepAliveTimeout,
            SessionTakenOver,
            TopicFilterInvalid,
            TopicNameInvalid,
            PacketIdentifierInUse,
            PacketIdentifierNotFound,
            ReceiveMaximumExceeded,
            TopicAliasInvalid,
            PacketTooLarge,
            MessageRateTooHigh,
            QuotaExceeded,
            AdministrativeAction,
            PayloadFormatInvalid,
            RetainNotSupported,
            QosNotSupported,
            UseAnotherServer,
            ServerMoved,
            SharedSubscriptionsNotSupported,
            ConnectionRateExceeded,
            MaximumConnectTime,
            SubscriptionIdentifiersNotSupported,
            WildcardSubscriptionsNotSupported,
        ]
    };

    pub fn from_u8(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| *c as u8 == code)
    }

    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code closest to this v5 connect reason.
    pub fn v3_connack_code(self) -> u8 {
        use ReasonCode::*;
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            ServerUnavailable
            | ServerBusy
            | ServerShuttingDown
            | ConnectionRateExceeded
            | QuotaExceeded
            | UseAnotherServer
            | ServerMoved => 3,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            _ => 5,
        }
    }

    /// The v5 reason for an MQTT 3.x CONNACK return code.
    pub fn from_v3_connack(code: u8) -> Option<Self> {
        use ReasonCode::*;
        Some(match code {
            0 => Success,
            1 => UnsupportedProtocolVersion,
            2 => ClientIdentifierNotValid,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}
