//! The broker's configuration: a TOML file whose every key has a default, so the broker runs with
//! no file at all. Unknown keys are errors, never silently ignored.

mod env;
mod sections;
mod system;
mod topics;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use sections::*;
pub use system::{system_config, SYSTEM_CONFIG, SYSTEM_CONFIG_ENV};
pub use topics::*;

/// The commented default configuration, embedded in the binary.
pub const DEFAULT_TOML: &str = include_str!("ringmq.default.toml");

/// Listeners a configuration may declare (a connection keeps its listener's index in 16 bits).
pub const MAX_LISTENERS: usize = 256;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub overload: OverloadConfig,
    pub durability: DurabilityConfig,
    pub cluster: ClusterConfig,
    pub delayed: DelayedConfig,
    pub admin: AdminConfig,
    pub sys: SysConfig,
    pub log: LogConfig,
    /// Topic rewrite rules, the first whose source matches applies (`[[rewrite]]`).
    pub rewrite: Vec<crate::topic::RewriteRule>,
    /// Subscriptions made for every client at CONNECT (`[[auto_subscribe]]`).
    pub auto_subscribe: Vec<AutoSubscribe>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: BrokerConfig::default(),
            listeners: default_listeners(),
            mqtt: MqttConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            overload: OverloadConfig::default(),
            durability: DurabilityConfig::default(),
            cluster: ClusterConfig::default(),
            delayed: DelayedConfig::default(),
            admin: AdminConfig::default(),
            sys: SysConfig::default(),
            log: LogConfig::default(),
            rewrite: Vec::new(),
            auto_subscribe: Vec::new(),
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
    Invalid { key: String, reason: String },
    #[error("environment variable {var}: {reason}")]
    Env { var: String, reason: String },
}

impl Config {
    /// Parses `text` (read from `origin`), applies the `RINGMQ_*__*` environment overrides and
    /// validates the result.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, std::env::vars())
    }

    fn parse_with_env(
        text: &str,
        origin: &str,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: origin.into(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))?;
        env::apply(&mut table, vars)?;
        let cfg = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| parse_err(format!("{e} (after environment overrides)")));
        let cfg: Config = match cfg {
            Ok(c) => c,
            // Re-read the file alone for an error that points at its line, when the file is
            // what is wrong.
            Err(e) => {
                return Err(toml::from_str::<Config>(text)
                    .err()
                    .map_or(e, |e| parse_err(e.to_string())))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses the file at `path` (see [`Config::parse`]).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason: reason.into(),
            })
        };
        if self.durability.max_journal_mb < 64 {
            return bad("durability.max_journal_mb", "at least 64");
        }
        if self.durability.commit_window_us > 1_000_000 {
            return bad("durability.commit_window_us", "at most 1000000 (a second)");
        }
        if self.durability.sync_interval_ms == 0 {
            return bad("durability.sync_interval_ms", "at least 1");
        }
        if self.listeners.is_empty() {
            return bad("listeners", "at least one listener is needed");
        }
        if self.listeners.len() > MAX_LISTENERS {
            return bad("listeners", &format!("at most {MAX_LISTENERS} listeners"));
        }
        let mut binds = std::collections::HashSet::new();
        for (name, l) in &self.listeners {
            let key = |k: &str| format!("listeners.{name}.{k}");
            match (&l.endpoint(), l.kind) {
                (Endpoint::Tcp(_), ListenerKind::Unix) => {
                    return bad(&key("socket_path"), "a unix listener needs socket_path");
                }
                (Endpoint::Tcp(a), _) if a.port() != 0 && !binds.insert(l.endpoint()) => {
                    return bad(&key("bind"), "another listener binds the same address");
                }
                (Endpoint::Unix(_), _) if !binds.insert(l.endpoint()) => {
                    return bad(&key("socket_path"), "another listener uses the same path");
                }
                _ => {}
            }
            if l.socket_mode > 0o777 {
                return bad(&key("socket_mode"), "permission bits: at most 0o777");
            }
            if l.kind.is_tls() && (l.certfile.is_none() || l.keyfile.is_none()) {
                return bad(
                    &key("certfile"),
                    "a TLS listener needs certfile and keyfile",
                );
            }
            if l.verify_peer && l.cafile.is_none() {
                return bad(&key("cafile"), "verify_peer needs a CA file");
            }
            if l.proxy_protocol && l.proxy_protocol_timeout == 0 {
                return bad(&key("proxy_protocol_timeout"), "at least 1 second");
            }
            if l.kind.is_ws() && !l.path.starts_with('/') {
                return bad(&key("path"), "must start with /");
            }
        }
        if self.cluster.enabled {
            let c = &self.cluster;
            if c.cookie.as_deref().is_none_or(|k| k.len() < 16) {
                return bad(
                    "cluster.cookie",
                    "a cluster needs a cookie of 16 bytes or more",
                );
            }
            if c.node_timeout_ms < 500 {
                return bad("cluster.node_timeout_ms", "must be at least 500");
            }
            if let Some(s) = c.seeds.iter().find(|s| s.rsplit_once(':').is_none()) {
                return bad("cluster.seeds", &format!("{s:?} is not host:port"));
            }
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
        if self.mqtt.max_qos > 2 {
            return bad("mqtt.max_qos", "must be 0, 1 or 2");
        }
        let mult = self.mqtt.keepalive_multiplier;
        if !mult.is_finite() || !(1.0..=100.0).contains(&mult) {
            return bad("mqtt.keepalive_multiplier", "must be from 1.0 to 100.0");
        }
        if self.broker.max_ring_backlog == 0 {
            return bad("broker.max_ring_backlog", "must be at least 1");
        }
        if self.auth.max_pending_checks == 0 {
            return bad("auth.max_pending_checks", "must be at least 1");
        }
        if self.mqtt.max_topic_length > crate::codec::MAX_FIELD {
            return bad(
                "mqtt.max_topic_length",
                "must be at most 65535 (a packet field)",
            );
        }
        if self.broker.node_name.len() > 1024 {
            return bad("broker.node_name", "must be at most 1024 bytes");
        }
        if self.admin.enabled
            && !self.admin.bind.ip().is_loopback()
            && self.admin.token.is_none()
            && (self.admin.username.is_none() || self.admin.password.is_none())
        {
            return bad(
                "admin.bind",
                "an admin interface beyond loopback needs admin.token or admin.username and admin.password",
            );
        }
        if self.auth.allow_anonymous == Some(false) && self.auth.password_file.is_none() {
            return bad(
                "auth.allow_anonymous",
                "false without a password_file would refuse every client",
            );
        }
        for (i, a) in self.auto_subscribe.iter().enumerate() {
            if let Err(reason) = a.validate() {
                return bad(&format!("auto_subscribe[{i}] ({:?})", a.topic), &reason);
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", &e.to_string());
        }
        Ok(())
    }

    /// Clients without credentials are let in.
    pub fn allow_anonymous(&self) -> bool {
        self.auth
            .allow_anonymous
            .unwrap_or(self.auth.password_file.is_none())
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
        assert_eq!(cfg.listeners["tcp"].bind, d.listeners["tcp"].bind);
        assert_eq!(cfg.admin.bind, d.admin.bind);
        assert_eq!(cfg.sys.interval, d.sys.interval);
        assert_eq!(
            cfg.limits.flapping_max_connects,
            d.limits.flapping_max_connects
        );
        assert_eq!(cfg.mqtt.max_packet_size, d.mqtt.max_packet_size);
        assert_eq!(cfg.mqtt.max_queued_messages, d.mqtt.max_queued_messages);
        assert_eq!(cfg.broker.driver, Driver::Auto);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[mqtt]\nmax_packet_sise = 5\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("max_packet_sise"), "{e}");
        let e = Config::parse("[mqtt]\nmax_inflight = 0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("mqtt.max_inflight"), "{e}");
        let e = Config::parse(
            "[listeners.s]\ntype = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("listeners.s.certfile"), "{e}");
        let e = Config::parse("[broker]\ndriver = \"uring\"\n", "f.toml").unwrap_err();
        assert!(
            e.to_string().contains("driver") && e.to_string().contains("epoll"),
            "{e}"
        );
        let e = Config::parse("[admin]\nbind = \"0.0.0.0:18083\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("admin.bind"), "{e}");
        let many: String = (0..=MAX_LISTENERS)
            .map(|i| format!("[listeners.l{i}]\nbind = \"127.0.0.1:{}\"\n", 20000 + i))
            .collect();
        let e = Config::parse(&many, "f.toml").unwrap_err();
        assert!(e.to_string().contains("at most 256 listeners"), "{e}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let vars = [
            ("RINGMQ_MQTT__MAX_INFLIGHT".to_string(), "7".to_string()),
            (
                "RINGMQ_LISTENERS__TCP__BIND".to_string(),
                "127.0.0.1:1999".to_string(),
            ),
        ];
        let cfg = Config::parse_with_env("[mqtt]\nmax_inflight = 3\n", "f", vars.into_iter())
            .expect("parses");
        assert_eq!(cfg.mqtt.max_inflight, 7);
        assert_eq!(cfg.listeners["tcp"].bind.port(), 1999);
        assert_eq!(cfg.listeners["tcp"].kind, ListenerKind::Tcp);
        let vars = [("RINGMQ_BROKER__DRIVER".to_string(), "epoll".to_string())];
        let cfg =
            Config::parse_with_env("[broker]\ndriver = \"io_uring\"\n", "f", vars.into_iter())
                .expect("parses");
        assert_eq!(cfg.broker.driver, Driver::Epoll);
        let vars = [("RINGMQ_MQTT__MAX_INFLIGHT".to_string(), "many".to_string())];
        let e = Config::parse_with_env("", "f", vars.into_iter()).unwrap_err();
        assert!(e.to_string().contains("max_inflight"), "{e}");
    }
}
