//! The configuration of EMQX's topic features: rewrite rules, the subscriptions every client
//! gets at CONNECT, and how a shared group picks its member.

use serde::{Deserialize, Serialize};

use crate::codec::{QoS, RetainHandling, SubOptions};

/// One subscription made for every client at CONNECT (`topic` with `${clientid}` and
/// `${username}` filled in); the option names are EMQX's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoSubscribe {
    pub topic: String,
    #[serde(default)]
    qos: u8,
    /// No local.
    #[serde(default)]
    nl: bool,
    /// Retain as published.
    #[serde(default)]
    rap: bool,
    /// Retain handling: 0 send retained messages, 1 only for a new subscription, 2 never.
    #[serde(default)]
    rh: u8,
}

impl AutoSubscribe {
    /// Its subscription options (checked by [`AutoSubscribe::validate`]).
    pub fn options(&self) -> SubOptions {
        SubOptions {
            qos: QoS::from_u8(self.qos).unwrap_or_default(),
            no_local: self.nl,
            retain_as_published: self.rap,
            retain_handling: match self.rh {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscribe,
                _ => RetainHandling::Never,
            },
        }
    }

    /// The reason this entry is not usable, if it is not.
    pub fn validate(&self) -> Result<(), String> {
        if self.qos > 2 {
            return Err("qos must be 0, 1 or 2".into());
        }
        if self.rh > 2 {
            return Err("rh must be 0, 1 or 2".into());
        }
        if crate::topic::parse_exclusive(&self.topic).is_some() {
            return Err(
                "an $exclusive/ filter is claimed by one client: it cannot be given to all".into(),
            );
        }
        let probe = self
            .topic
            .replace("${clientid}", "c")
            .replace("${username}", "u");
        crate::topic::validate_filter(&probe).map_err(|_| "topic is not a topic filter".to_string())
    }

    /// The filter for one client.
    pub fn filter_for(&self, client_id: &str, username: Option<&str>) -> String {
        self.topic
            .replace("${clientid}", client_id)
            .replace("${username}", username.unwrap_or(""))
    }
}

/// How a shared group picks the member for a message (EMQX's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    Random,
    /// Each in turn, preferring one that can take the message now.
    #[default]
    RoundRobin,
    /// The same member until it leaves.
    Sticky,
    /// The same member for messages from one publisher.
    HashClientid,
    /// The same member for messages on one topic.
    HashTopic,
}

#[cfg(test)]
mod tests {
    use super::AutoSubscribe;

    fn entry(topic: &str) -> AutoSubscribe {
        AutoSubscribe {
            topic: topic.into(),
            qos: 1,
            nl: false,
            rap: false,
            rh: 0,
        }
    }

    #[test]
    fn an_auto_subscription_is_a_filter_any_client_may_hold() {
        assert!(entry("dev/${clientid}/#").validate().is_ok());
        assert!(entry("dev/#/x").validate().is_err());
        let refused = entry("$exclusive/dev/${clientid}").validate();
        assert!(refused.is_err_and(|e| e.contains("$exclusive")));
    }
}
