//! The broker's configuration: a TOML file whose every key has a default, so the broker runs with
//! no file at all. Unknown keys are errors, never silently ignored.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The commented default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("ringmq.default.toml");

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub mqtt: MqttConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Number of shards; 0 means one per online CPU.
    pub shards: usize,
    pub listen: Vec<SocketAddr>,
    /// Messages each shard-to-shard ring holds.
    pub ring_capacity: usize,
    /// Pin each shard to a core.
    pub pin_cores: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub max_packet_size: u32,
    /// Outbound QoS 1/2 messages in flight per client (capped by the client's receive maximum).
    pub max_inflight: u16,
    /// Inbound QoS 2 messages a client may have unreleased (our receive maximum).
    pub receive_maximum: u16,
    pub max_queued_messages: usize,
    pub queue_qos0: bool,
    /// Session expiry for MQTT 3.x clients with clean session off, in seconds.
    pub session_expiry_v3: u32,
    /// Largest session expiry a v5 client may ask for, in seconds.
    pub max_session_expiry: u32,
    /// A client silent for this multiple of its keep-alive is disconnected.
    pub keepalive_multiplier: f32,
    /// When set, overrides the client's keep-alive (v5 clients are told).
    pub server_keep_alive: Option<u16>,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: u64,
    pub max_topic_levels: usize,
    pub max_client_id_len: usize,
    pub topic_alias_maximum: u16,
    /// Bytes waiting to be written to one client before it counts as slow.
    pub max_outbound_bytes: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 1883))],
            ring_capacity: 16384,
            pin_cores: true,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            receive_maximum: 32,
            max_queued_messages: 1000,
            queue_qos0: true,
            session_expiry_v3: 7200,
            max_session_expiry: u32::MAX,
            keepalive_multiplier: 1.5,
            server_keep_alive: None,
            connect_timeout: 15,
            max_topic_levels: 128,
            max_client_id_len: 65535,
            topic_alias_maximum: 65535,
            max_outbound_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.broker.listen.is_empty() {
            return bad("broker.listen", "at least one address is needed");
        }
        if self.broker.ring_capacity < 16 {
            return bad("broker.ring_capacity", "must be at least 16");
        }
        if self.mqtt.max_packet_size < 64 {
            return bad("mqtt.max_packet_size", "must be at least 64 bytes");
        }
        if self.mqtt.max_inflight == 0 || self.mqtt.receive_maximum == 0 {
            return bad(
                "mqtt.max_inflight",
                "max_inflight and receive_maximum must be at least 1",
            );
        }
        if self.mqtt.keepalive_multiplier.is_nan() || self.mqtt.keepalive_multiplier < 1.0 {
            return bad("mqtt.keepalive_multiplier", "must be at least 1.0");
        }
        Ok(())
    }

    /// The number of shards to start.
    pub fn shard_count(&self) -> usize {
        match self.broker.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.mqtt.connect_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_to_the_defaults() {
        let cfg = Config::parse(DEFAULT_TOML, "default").expect("default parses");
        let d = Config::default();
        assert_eq!(cfg.broker.listen, d.broker.listen);
        assert_eq!(cfg.mqtt.max_packet_size, d.mqtt.max_packet_size);
        assert_eq!(cfg.mqtt.max_queued_messages, d.mqtt.max_queued_messages);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[mqtt]\nmax_packet_sise = 5\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("max_packet_sise"), "{e}");
        let e = Config::parse("[mqtt]\nmax_inflight = 0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("mqtt.max_inflight"), "{e}");
    }
}
