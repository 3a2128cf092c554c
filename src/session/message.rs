//! A routed application message: decoded once, shared by `Arc` between every subscriber and
//! shard that receives it. The payload stays a `Bytes` slice; only per-subscriber headers are
//! encoded.

use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{Properties, Props, QoS};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// The v5 properties passed through to subscribers (payload format, content type,
    /// response topic, correlation data, user properties); never alias, expiry or sub ids.
    pub props: Props,
    /// Written to disk as the time left, read back from the moment it is read.
    #[serde(with = "remaining")]
    pub expires_at: Option<Instant>,
    /// The publisher's client id, for no-local subscriptions.
    pub origin: ByteString,
}

impl Message {
    /// Builds a routed message from a PUBLISH's parts, keeping only pass-through properties.
    pub fn new(
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
        origin: ByteString,
        now: Instant,
    ) -> Message {
        let mut expires_at = None;
        let mut pass = None;
        if let Some(p) = props {
            expires_at = p
                .message_expiry_interval
                .map(|s| now + std::time::Duration::from_secs(u64::from(s)));
            let kept = Properties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                ..Properties::default()
            };
            if !kept.is_empty() {
                pass = Some(Box::new(kept));
            }
        }
        Message {
            topic,
            payload,
            qos,
            retain,
            props: pass,
            expires_at,
            origin,
        }
    }

    /// A copy whose topic and payload own their memory, for messages kept long (retained,
    /// offline queues), so they do not pin a whole read buffer.
    pub fn compacted(&self) -> Message {
        Message {
            topic: owned(&self.topic),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            props: self.props.clone(),
            expires_at: self.expires_at,
            origin: self.origin.clone(),
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left of the message expiry interval, for the copy sent now.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            t.saturating_duration_since(now)
                .as_secs()
                .max(1)
                .min(u64::from(u32::MAX)) as u32
        })
    }
}

/// A copy of a string decoded from a read buffer, for state kept long (client ids, filters,
/// aliases): a zero-copy slice would keep the shard's whole 64 KiB read buffer alive.
pub fn owned(s: &ByteString) -> ByteString {
    ByteString::from(&**s)
}

/// (De)serializes a deadline as the milliseconds left until it, since an `Instant` means nothing
/// outside the process that took it.
mod remaining {
    use std::time::{Duration, Instant};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        let left = at.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        s.serialize_some(&left)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        let left: Option<u64> = Option::deserialize(d)?;
        Ok(left.map(|ms| Instant::now() + Duration::from_millis(ms)))
    }
}
