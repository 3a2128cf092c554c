//! The sections of `ringmq.toml`, each with its defaults. The commented default file
//! (`ringmq.default.toml`) documents every key; a test checks that it parses to these values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// This node's name, used in `$SYS/brokers/<node>/...`.
    pub node_name: String,
    /// Number of shards; 0 means one per online CPU.
    pub shards: usize,
    /// Messages each shard-to-shard ring holds.
    pub ring_capacity: usize,
    /// Messages a shard keeps for others whose rings are full; past it, publishes are refused.
    pub max_ring_backlog: usize,
    /// Pin each shard to a core.
    pub pin_cores: bool,
    /// Where what must outlive the process is kept (retained messages, persistent sessions).
    pub data_dir: PathBuf,
    /// Seconds a graceful shutdown may take before the process exits anyway.
    pub shutdown_timeout: u64,
    /// Connections the whole broker accepts (0: no limit).
    pub max_connections: usize,
    /// Seconds without traffic after which a plain-TCP connection hibernates (0: never).
    pub hibernate_after: u64,
    /// The io driver under the shards' runtimes.
    pub driver: Driver,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            node_name: "ringmq@127.0.0.1".into(),
            shards: 0,
            ring_capacity: 16384,
            max_ring_backlog: 65536,
            pin_cores: true,
            data_dir: "./data".into(),
            shutdown_timeout: 10,
            max_connections: 0,
            hibernate_after: 10,
            driver: Driver::Auto,
        }
    }
}

/// The io driver a shard's runtime runs on (`broker.driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// io_uring where this machine allows it, epoll elsewhere.
    Auto,
    /// io_uring, or the broker does not start.
    IoUring,
    /// epoll (monoio's legacy driver), even where io_uring is available.
    Epoll,
}

impl Driver {
    /// The name as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
    /// MQTT on a Unix socket (`socket_path`): local clients, file permissions as access control.
    Unix,
}

impl ListenerKind {
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// Which part of a verified client certificate becomes the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerCertAsUsername {
    None,
    Cn,
    San,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    #[serde(rename = "type")]
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// Unix: the socket file's path (created at start, removed at shutdown).
    pub socket_path: Option<PathBuf>,
    /// Unix: the socket file's permission bits (who may connect).
    pub socket_mode: u32,
    /// Connections this listener accepts (0: no limit).
    pub max_connections: usize,
    /// New connections per second this listener accepts (0: no limit).
    pub max_connect_rate: u32,
    /// TLS: the certificate chain and private key (PEM).
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// TLS: the CA (PEM) that client certificates are verified against.
    pub cafile: Option<PathBuf>,
    /// TLS: ask for a client certificate and verify it against `cafile`.
    pub verify_peer: bool,
    /// TLS: refuse clients without a certificate (with `verify_peer`).
    pub fail_if_no_peer_cert: bool,
    pub peer_cert_as_username: PeerCertAsUsername,
    /// WebSocket: the HTTP path MQTT is served on.
    pub path: String,
    /// WebSocket: when not empty, only these `Origin` headers are accepted.
    pub allowed_origins: Vec<String>,
    /// Every connection starts with a PROXY protocol v1 or v2 header (HAProxy, AWS NLB) naming
    /// the client's real address; one without is closed.
    pub proxy_protocol: bool,
    /// Seconds a connection has to send its PROXY header.
    pub proxy_protocol_timeout: u64,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            kind: ListenerKind::Tcp,
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            socket_path: None,
            socket_mode: 0o660,
            max_connections: 0,
            max_connect_rate: 0,
            certfile: None,
            keyfile: None,
            cafile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            peer_cert_as_username: PeerCertAsUsername::None,
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            proxy_protocol: false,
            proxy_protocol_timeout: 3,
        }
    }
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => a.fmt(f),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenerConfig {
    /// The configured address: the socket path of a `unix` listener, else `bind`.
    pub fn endpoint(&self) -> Endpoint {
        match (&self.kind, &self.socket_path) {
            (ListenerKind::Unix, Some(p)) => Endpoint::Unix(p.clone()),
            _ => Endpoint::Tcp(self.bind),
        }
    }
}

pub fn default_listeners() -> BTreeMap<String, ListenerConfig> {
    BTreeMap::from([("tcp".to_string(), ListenerConfig::default())])
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    pub max_packet_size: u32,
    /// Outbound QoS 1/2 messages in flight per client (capped by the client's receive maximum).
    pub max_inflight: u16,
    /// Inbound QoS 2 messages a client may have unreleased (our receive maximum).
    pub receive_maximum: u16,
    pub max_queued_messages: usize,
    /// Payload bytes queued per session (0: no limit besides the message count).
    pub max_queued_bytes: usize,
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
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    pub max_client_id_len: usize,
    /// Subscriptions one client may hold (0: no limit).
    pub max_subscriptions: usize,
    pub topic_alias_maximum: u16,
    /// Topic aliases the broker gives out per v5 connection (capped by the client's maximum).
    pub outbound_topic_aliases: u16,
    /// Bytes waiting to be written to one client before it counts as slow.
    pub max_outbound_bytes: usize,
    /// Retained messages the broker holds (0: no limit).
    pub max_retained_messages: usize,
    /// Largest retained payload, in bytes (0: no limit besides the packet size).
    pub max_retained_payload: usize,
    /// Highest QoS clients may publish with (0-2); subscriptions are granted at most this.
    pub max_qos: u8,
    /// Retained messages: when false a retained PUBLISH (or will) is refused.
    pub retain_available: bool,
    /// Filters with `+` or `#`: when false they are refused in SUBACK.
    pub wildcard_subscription_available: bool,
    /// `$share/...` filters: when false they are refused in SUBACK.
    pub shared_subscription_available: bool,
    /// v5 subscription identifiers: when false a SUBSCRIBE carrying one is a protocol error.
    pub subscription_identifiers_available: bool,
    /// How a shared subscription group picks its member.
    pub shared_subscription_strategy: super::SharedStrategy,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            receive_maximum: 32,
            max_queued_messages: 1000,
            max_queued_bytes: 256 * 1024,
            queue_qos0: true,
            session_expiry_v3: 7200,
            max_session_expiry: u32::MAX,
            keepalive_multiplier: 1.5,
            server_keep_alive: None,
            connect_timeout: 15,
            max_topic_levels: 128,
            max_topic_length: 65535,
            max_client_id_len: 65535,
            max_subscriptions: 100,
            topic_alias_maximum: 64,
            outbound_topic_aliases: 64,
            max_outbound_bytes: 1024 * 1024,
            max_retained_messages: 100_000,
            max_retained_payload: 64 * 1024,
            max_qos: 2,
            retain_available: true,
            wildcard_subscription_available: true,
            shared_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_strategy: super::SharedStrategy::default(),
        }
    }
}

/// The answer when no ACL rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoMatch {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Clients without a username are let in. Unset: only when no password file is configured.
    pub allow_anonymous: Option<bool>,
    /// Users and hashed passwords (`ringmq passwd`, or a `mosquitto_passwd` file).
    pub password_file: Option<PathBuf>,
    /// Ordered allow/deny rules (ringmq's format, or a Mosquitto ACL file).
    pub acl_file: Option<PathBuf>,
    /// What an ACL file decides when none of its rules match.
    pub acl_nomatch: NoMatch,
    /// ACL decisions remembered per client.
    pub acl_cache_size: usize,
    /// Threads that verify password hashes (0: one per four CPUs, at least one).
    pub password_threads: usize,
    /// CONNECTs per shard waiting for a password check; past it new ones get 0x89 (v3: 3).
    pub max_pending_checks: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: None,
            password_file: None,
            acl_file: None,
            acl_nomatch: NoMatch::Deny,
            acl_cache_size: 32,
            password_threads: 0,
            max_pending_checks: 256,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// PUBLISH packets per second per client (0: no limit); `publish_burst` may come at once.
    pub publish_rate: u32,
    pub publish_burst: u32,
    /// Payload bytes per second per client (0: no limit).
    pub publish_bytes_rate: u64,
    /// A client id connecting more than this many times within `flapping_window` seconds is
    /// banned for `flapping_ban` seconds (0: off).
    pub flapping_max_connects: u32,
    pub flapping_window: u64,
    pub flapping_ban: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            publish_rate: 0,
            publish_burst: 100,
            publish_bytes_rate: 0,
            flapping_max_connects: 0,
            flapping_window: 60,
            flapping_ban: 300,
        }
    }
}

/// Delayed publishes (`[delayed]`): `$delayed/{seconds}/{topic}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DelayedConfig {
    /// Off: a publish to `$delayed/...` is refused like any other `$` topic.
    pub enabled: bool,
    /// Delayed publishes the broker holds at once (all shards together); past it a v5 publisher
    /// gets 0x97, a v3 one's message is dropped (counted).
    pub max_messages: usize,
    /// The longest delay, in seconds (EMQX's: 4294967).
    pub max_delay: u64,
}

impl Default for DelayedConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_messages: 100_000,
            max_delay: 4_294_967,
        }
    }
}

/// Several nodes serving as one broker (`[cluster]`): who this node is, where its peers are,
/// and the secret they share.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Where this node takes its peers' consensus and control requests.
    pub listen: SocketAddr,
    /// Where this node takes the publishes its peers forward (every shard accepts on it).
    pub rpc_listen: SocketAddr,
    /// The addresses peers reach `listen` and `rpc_listen` at, when they are not those
    /// (a wildcard bind, a NAT); default: the listen addresses themselves.
    pub advertise: Option<SocketAddr>,
    pub advertise_rpc: Option<SocketAddr>,
    /// Other nodes' `listen` addresses (`host:port`, names resolved at start): this node joins
    /// the cluster they form, or forms it when its name is the least among them and none is up.
    pub seeds: Vec<String>,
    /// `voter` (takes part in consensus) or `learner` (replicates the state, never votes).
    pub role: ClusterRole,
    /// The secret every node must prove it holds (EMQX's cookie); required when enabled.
    pub cookie: Option<String>,
    /// Milliseconds a peer may stay silent before its routes are dropped.
    pub node_timeout_ms: u64,
    /// TLS on both cluster ports (`[cluster.tls]`); none: plain TCP.
    pub tls: Option<ClusterTlsConfig>,
}

/// Mutual TLS between the nodes (`[cluster.tls]`), on the consensus and the forwarding
/// connections alike: every node shows a certificate signed by the cluster's CA, to the nodes
/// it dials and to those dialling it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterTlsConfig {
    /// This node's certificate chain (PEM).
    pub certfile: PathBuf,
    /// Its private key (PEM).
    pub keyfile: PathBuf,
    /// The CA (PEM) that signed the nodes' certificates.
    pub cafile: PathBuf,
    /// The name every node's certificate carries; default: the host of the address dialled
    /// (an IP address or a DNS name in the certificate's subject alternative names).
    pub server_name: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 4370)),
            rpc_listen: SocketAddr::from(([127, 0, 0, 1], 5370)),
            advertise: None,
            advertise_rpc: None,
            seeds: Vec::new(),
            role: ClusterRole::Voter,
            cookie: None,
            node_timeout_ms: 5000,
            tls: None,
        }
    }
}

/// A node's part in the cluster's consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterRole {
    Voter,
    Learner,
}

/// What a crash costs (`[durability]`): where acknowledged state lives and when it is synced.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    pub mode: DurabilityMode,
    /// Milliseconds between fsyncs of the journal in `crash` mode (and the longest a `power`
    /// acknowledgement waits for company before its fsync).
    pub sync_interval_ms: u64,
    /// MiB of journal kept before the store flushes memory tables and drops old journal files
    /// (at least 64).
    pub max_journal_mb: u64,
    /// Microseconds a shard holds its changes before it hands them to the storage thread as
    /// one batch: a message acknowledged by its subscribers within it is never written, and
    /// acknowledgements to publishers wait for it.
    pub commit_window_us: u64,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self {
            mode: DurabilityMode::Crash,
            sync_interval_ms: 10,
            max_journal_mb: 128,
            commit_window_us: 1000,
        }
    }
}

/// The promise behind an acknowledgement (`durability.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Memory only; saved at a graceful shutdown. A crash loses what changed since the start.
    Off,
    /// Acknowledged once written to the journal (survives kill -9); fsync every
    /// `sync_interval_ms` (a power loss loses at most that window).
    Crash,
    /// Acknowledged once the journal is fsynced (survives a power loss).
    Power,
}

impl DurabilityMode {
    pub fn name(self) -> &'static str {
        match self {
            DurabilityMode::Off => "off",
            DurabilityMode::Crash => "crash",
            DurabilityMode::Power => "power",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// A shard whose event loop runs this late (milliseconds) refuses new connections (0: off).
    pub max_loop_lag_ms: u64,
    /// Resident memory (MiB) above which every shard refuses new connections (0: 80 % of the
    /// machine's physical memory).
    pub memory_budget_mb: u64,
}

impl OverloadConfig {
    /// The memory budget in bytes: `memory_budget_mb`, or 80 % of physical memory for 0 (0 when
    /// that cannot be read: no budget).
    pub fn memory_budget_bytes(&self) -> u64 {
        match self.memory_budget_mb {
            0 => physical_memory().map_or(0, |total| total / 5 * 4),
            mb => mb * 1024 * 1024,
        }
    }
}

/// `MemTotal` from /proc/meminfo, in bytes: read once (the stats thread asks every second).
fn physical_memory() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        meminfo_bytes(&info, "MemTotal:")
    })
}

/// One `key` line of /proc/meminfo's text (`MemTotal:`, `MemAvailable:`), in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_loop_lag_ms: 1000,
            memory_budget_mb: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// A bearer token the API requires (`Authorization: Bearer ...`).
    pub token: Option<String>,
    /// Basic-auth credentials the API accepts.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 18083)),
            token: None,
            username: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SysConfig {
    /// Seconds between `$SYS/brokers/<node>/...` publications (0: off).
    pub interval: u64,
    /// Publish `$SYS/brokers/<node>/clients/<id>/connected|disconnected` events.
    pub client_events: bool,
}

impl Default for SysConfig {
    fn default() -> Self {
        Self {
            interval: 30,
            client_events: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    Stderr,
    Stdout,
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Hourly,
    Daily,
    Never,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`info`) or a filter (`info,ringmq::shard=debug`); `RINGMQ_LOG` wins over it.
    pub level: String,
    pub format: LogFormat,
    pub output: LogOutput,
    /// With `output = "file"`: the directory and file name, rotated as `rotation` says.
    pub dir: PathBuf,
    pub file_name: String,
    pub rotation: LogRotation,
    /// Rotated files kept (0: all).
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
            output: LogOutput::Stderr,
            dir: "./log".into(),
            file_name: "ringmq.log".into(),
            rotation: LogRotation::Daily,
            max_files: 7,
        }
    }
}
