//! A delivery on its way to the client, and how the session writes it: the topic alias, the
//! message expiry left, the subscription ids, and the client's maximum packet size. A QoS 1 or 2
//! delivery is written from the window's own copy, so entering the window costs no clone.

use std::time::Instant;

use bytestring::ByteString;

use super::{Aliases, Delivery, Session};
use crate::codec::{publish_len, Properties, PublishRef, QoS};

/// What leaves for the connection now.
#[derive(Debug)]
pub enum Outgoing {
    /// QoS 0: written from this copy, which nothing keeps.
    Once(Delivery),
    /// QoS 1 or 2: the flow the window holds under this packet id.
    Flow(u16),
}

/// What came of writing an [`Outgoing`].
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    /// Written at this QoS.
    Sent(QoS),
    /// Larger than the client accepts: dropped, counted in the session's `dropped`, its flow
    /// (if any) ended and its log entry with it.
    TooLarge,
    /// No such flow in the window any more.
    Gone,
}

/// A topic alias property (id and two bytes) and the property length growing by a byte.
const ALIAS_PROPERTY_LEN: usize = 4;

impl Session {
    /// Writes `out` through `send` (with DUP set when `dup`), encoded for this session's
    /// protocol. The shared topic and payload are lent to `send`, not cloned.
    pub fn write(
        &mut self,
        out: &Outgoing,
        dup: bool,
        now: Instant,
        send: impl FnOnce(&PublishRef<'_>),
    ) -> Written {
        let (d, packet_id) = match out {
            Outgoing::Once(d) => (d, None),
            Outgoing::Flow(pid) => match self.inflight.get(*pid) {
                Some(f) => (&f.delivery, Some(*pid)),
                None => return Written::Gone,
            },
        };
        let mut props = None;
        if self.protocol.is_v5() {
            let mut p = d.msg.props.as_deref().cloned().unwrap_or_default();
            p.message_expiry_interval = d.msg.remaining_expiry(now);
            p.subscription_identifiers = d.sub_ids.clone();
            props = (!p.is_empty()).then_some(p);
        }
        fn publish<'a>(
            d: &'a Delivery,
            (dup, packet_id): (bool, Option<u16>),
            topic: &'a str,
            properties: Option<&'a Properties>,
        ) -> PublishRef<'a> {
            PublishRef {
                dup,
                qos: d.qos,
                retain: d.retain,
                topic,
                packet_id,
                properties,
                payload: &d.msg.payload,
            }
        }
        // Sized with the full topic and room for an alias property: an upper bound, checked
        // before an alias is given out that the client would then never learn. Only clients
        // that set a maximum (v5) pay for the sizing.
        let limited = self.max_packet_size != u32::MAX;
        if limited
            && publish_len(
                &publish(d, (dup, packet_id), &d.msg.topic, props.as_ref()),
                self.protocol,
            ) + ALIAS_PROPERTY_LEN
                > self.max_packet_size as usize
        {
            self.dropped += 1;
            if let Some(pid) = packet_id {
                self.finish(pid);
            }
            return Written::TooLarge;
        }
        let mut topic: &str = &d.msg.topic;
        // Tested here, not in the call: most connections take no aliases, and the call was not
        // inlined.
        let max = self.alias_max_out;
        let alias = (max > 0)
            .then(|| alias_for(&mut self.aliases, max, &d.msg.topic))
            .flatten();
        if let Some((alias, with_topic)) = alias {
            props.get_or_insert_with(Properties::default).topic_alias = Some(alias);
            if !with_topic {
                topic = "";
            }
        }
        send(&publish(d, (dup, packet_id), topic, props.as_ref()));
        Written::Sent(d.qos)
    }
}

/// The outbound alias for `topic` among a connection's `aliases` (allocated on first use, up
/// to `max`, which is not 0): the alias, and whether the topic must be sent with it (its first
/// use).
pub(super) fn alias_for(
    aliases: &mut Option<Box<Aliases>>,
    max: u16,
    topic: &ByteString,
) -> Option<(u16, bool)> {
    let aliases = aliases.get_or_insert_with(Box::default);
    if let Some(a) = aliases.out.get(topic) {
        return Some((*a, false));
    }
    // Aliases run 1..=max; once all are given out, new topics go without one (the count is
    // computed wide: at 65,535 aliases a u16 would wrap to alias 0).
    if aliases.out.len() >= usize::from(max) {
        return None;
    }
    let next = u16::try_from(aliases.out.len() + 1).ok()?;
    aliases.out.insert(topic.clone(), next);
    Some((next, true))
}
