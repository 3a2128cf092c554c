//! What the broker lets clients use, by the `[mqtt]` switches Mosquitto and EMQX operators know
//! (`max_qos`, `retain_available`, `wildcard_subscription_available`,
//! `shared_subscription_available`, `subscription_identifiers_available`): announced in a v5
//! CONNACK and enforced on every protocol version, so a v3 client that was never told is held
//! to the same rules (it is disconnected where a v5 client would hear a reason code).
//! Pure functions of the configuration, kept apart from the packet handlers that call them.

use super::link::Close;
use crate::codec::{Properties, QoS, ReasonCode, Will};
use crate::config::MqttConfig;
use crate::topic::parse_shared;

/// Fills the CONNACK properties that announce the switches. Maximum QoS is only sent below 2:
/// MQTT 5 allows the property to say 0 or 1 alone (3.2.2.3.4).
pub(super) fn announce(m: &MqttConfig, p: &mut Properties) {
    p.maximum_qos = (m.max_qos < 2).then_some(m.max_qos);
    p.retain_available = Some(u8::from(m.retain_available));
    p.wildcard_subscription_available = Some(u8::from(m.wildcard_subscription_available));
    p.shared_subscription_available = Some(u8::from(m.shared_subscription_available));
    p.subscription_identifier_available = Some(u8::from(m.subscription_identifiers_available));
}

/// Why a PUBLISH with `qos` and `retain` is refused, if it is (MQTT 5 3.3.1.2 and 3.3.1.3: a
/// DISCONNECT with 0x9B or 0x9A).
pub(super) fn refuse_publish(m: &MqttConfig, qos: QoS, retain: bool) -> Result<(), Close> {
    if qos as u8 > m.max_qos {
        return Err(Close::new(
            ReasonCode::QosNotSupported,
            "PUBLISH above mqtt.max_qos",
        ));
    }
    if retain && !m.retain_available {
        return Err(Close::new(
            ReasonCode::RetainNotSupported,
            "retained PUBLISH with mqtt.retain_available = false",
        ));
    }
    Ok(())
}

/// Why a CONNECT's will is refused, if it is (a CONNACK with 0x9B or 0x9A, MQTT 5 3.2.2.3.4
/// and 3.2.2.3.5).
pub(super) fn refuse_will(m: &MqttConfig, will: &Will) -> Result<(), Close> {
    refuse_publish(m, will.qos, will.retain)
        .map_err(|c| Close::new(c.reason, "will refused: ".to_string() + &c.why))
}

/// The SUBACK reason refusing `filter` by the switches, if one does.
pub(super) fn refuse_filter(m: &MqttConfig, filter: &str) -> Option<ReasonCode> {
    let shared = parse_shared(filter);
    if shared.is_some() && !m.shared_subscription_available {
        return Some(ReasonCode::SharedSubscriptionsNotSupported);
    }
    let inner = shared.and_then(Result::ok).map_or(filter, |(_, f)| f);
    if inner.contains(['+', '#']) && !m.wildcard_subscription_available {
        return Some(ReasonCode::WildcardSubscriptionsNotSupported);
    }
    None
}

/// A SUBSCRIBE with a subscription identifier where they are off (MQTT 5 3.8.2.1.2: 0xA1).
pub(super) fn refuse_subscription_id(m: &MqttConfig, id: Option<u32>) -> Result<(), Close> {
    if id.is_some() && !m.subscription_identifiers_available {
        return Err(Close::new(
            ReasonCode::SubscriptionIdentifiersNotSupported,
            "subscription identifier with mqtt.subscription_identifiers_available = false",
        ));
    }
    Ok(())
}

/// The QoS a subscription asking for `asked` is granted: at most `max_qos`.
pub(super) fn granted(m: &MqttConfig, asked: QoS) -> QoS {
    QoS::from_u8((asked as u8).min(m.max_qos)).unwrap_or(QoS::AtMostOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut MqttConfig)) -> MqttConfig {
        let mut m = MqttConfig::default();
        f(&mut m);
        m
    }

    #[test]
    fn defaults_allow_everything_and_announce_it() {
        let m = MqttConfig::default();
        assert!(refuse_publish(&m, QoS::ExactlyOnce, true).is_ok());
        assert_eq!(refuse_filter(&m, "$share/g/a/#"), None);
        assert_eq!(granted(&m, QoS::ExactlyOnce), QoS::ExactlyOnce);
        let mut p = Properties::default();
        announce(&m, &mut p);
        assert_eq!(p.maximum_qos, None);
        assert_eq!(p.retain_available, Some(1));
        assert_eq!(p.wildcard_subscription_available, Some(1));
        assert_eq!(p.shared_subscription_available, Some(1));
        assert_eq!(p.subscription_identifier_available, Some(1));
    }

    #[test]
    fn each_switch_refuses_with_its_reason() {
        let m = cfg(|m| {
            m.max_qos = 1;
            m.retain_available = false;
            m.wildcard_subscription_available = false;
            m.shared_subscription_available = false;
            m.subscription_identifiers_available = false;
        });
        let reason = |r: Result<(), Close>| r.err().map(|c| c.reason);
        assert_eq!(
            reason(refuse_publish(&m, QoS::ExactlyOnce, false)),
            Some(ReasonCode::QosNotSupported)
        );
        assert_eq!(
            reason(refuse_publish(&m, QoS::AtLeastOnce, true)),
            Some(ReasonCode::RetainNotSupported)
        );
        assert_eq!(reason(refuse_publish(&m, QoS::AtLeastOnce, false)), None);
        assert_eq!(
            refuse_filter(&m, "a/+"),
            Some(ReasonCode::WildcardSubscriptionsNotSupported)
        );
        assert_eq!(
            refuse_filter(&m, "$share/g/a"),
            Some(ReasonCode::SharedSubscriptionsNotSupported)
        );
        assert_eq!(refuse_filter(&m, "a/b"), None);
        assert_eq!(
            reason(refuse_subscription_id(&m, Some(3))),
            Some(ReasonCode::SubscriptionIdentifiersNotSupported)
        );
        assert_eq!(reason(refuse_subscription_id(&m, None)), None);
        assert_eq!(granted(&m, QoS::ExactlyOnce), QoS::AtLeastOnce);
        let mut p = Properties::default();
        announce(&m, &mut p);
        assert_eq!(p.maximum_qos, Some(1));
        assert_eq!(p.retain_available, Some(0));
        assert_eq!(p.wildcard_subscription_available, Some(0));
        assert_eq!(p.shared_subscription_available, Some(0));
        assert_eq!(p.subscription_identifier_available, Some(0));
    }

    #[test]
    fn wildcards_inside_a_shared_filter_count_as_wildcards() {
        let m = cfg(|m| m.wildcard_subscription_available = false);
        assert_eq!(
            refuse_filter(&m, "$share/g/a/#"),
            Some(ReasonCode::WildcardSubscriptionsNotSupported)
        );
    }
}
