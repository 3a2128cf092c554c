//! The command line. `ringmq` alone is `ringmq run`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigError, ListenerConfig};

#[derive(Debug, Parser)]
#[command(name = "ringmq", version, about = "A thread-per-core MQTT broker")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker in the foreground (the default; the systemd way).
    #[command(visible_aliases = ["console", "foreground"])]
    Run(RunArgs),
    /// Start the broker in the background (pidfile in the data dir); returns once it listens.
    Start(RunArgs),
    /// Stop the broker of this data dir gracefully (SIGTERM) and wait for it to exit.
    Stop(RunArgs),
    /// Stop the broker of this data dir if it runs, then start it again.
    Restart(RunArgs),
    /// Print `pong` and exit 0 when the broker answers (its admin API, else its first listener).
    Ping(RunArgs),
    /// Check this machine's kernel settings and limits against a connection target.
    Doctor {
        /// The number of connections to be ready for.
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        /// Read /proc and /sys under this directory instead of / (for tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Print the configuration: the commented defaults, or the one in effect (as TOML).
    PrintConfig {
        /// The embedded defaults, with comments.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Validate a configuration file (and the environment overrides); names the key at fault.
    CheckConfig {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Manage a password file: add or change a user, or delete one (`-D`).
    Passwd(PasswdArgs),
    /// Talk to a running broker through its admin API.
    Ctl(CtlArgs),
}

#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// A plain TCP listener, repeatable; replaces the configured listeners.
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Number of shards (0: one per online CPU).
    #[arg(long)]
    pub shards: Option<usize>,
    /// The admin API's address (replaces admin.bind).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The data directory (replaces broker.data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl RunArgs {
    /// The configuration file to read: `-c`, else the system one of an installed binary
    /// ([`crate::config::system_config`]), else none (the embedded defaults).
    pub fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(crate::config::system_config)
    }

    /// Loads the file (or the defaults, with environment overrides) and applies the
    /// command-line overrides.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut cfg = match self.config_file() {
            Some(path) => Config::load(&path)?,
            None => Config::parse("", "(defaults)")?,
        };
        if !self.listen.is_empty() {
            cfg.listeners = self
                .listen
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let name = if i == 0 {
                        "tcp".to_string()
                    } else {
                        format!("tcp{i}")
                    };
                    let l = ListenerConfig {
                        bind: *a,
                        ..ListenerConfig::default()
                    };
                    (name, l)
                })
                .collect();
        }
        if let Some(n) = self.shards {
            cfg.broker.shards = n;
        }
        if let Some(a) = self.admin {
            cfg.admin.bind = a;
        }
        if let Some(d) = &self.data_dir {
            cfg.broker.data_dir = d.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// These arguments as `ringmq run` takes them, the configuration file named explicitly.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        if let Some(path) = self.config_file() {
            out.extend(["--config".into(), path.into_os_string()]);
        }
        for a in &self.listen {
            out.extend(["--listen".into(), a.to_string().into()]);
        }
        if let Some(n) = self.shards {
            out.extend(["--shards".into(), n.to_string().into()]);
        }
        if let Some(a) = self.admin {
            out.extend(["--admin".into(), a.to_string().into()]);
        }
        if let Some(d) = &self.data_dir {
            out.extend(["--data-dir".into(), d.clone().into_os_string()]);
        }
        out
    }
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Create the file (replacing one that exists).
    #[arg(short = 'c')]
    pub create: bool,
    /// Delete the user.
    #[arg(short = 'D')]
    pub delete: bool,
    /// Take the password from the command line (otherwise it is read from stdin).
    #[arg(short = 'b')]
    pub batch: bool,
    pub file: PathBuf,
    pub username: String,
    pub password: Option<String>,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The admin API (default: admin.bind from --config, else http://127.0.0.1:18083).
    #[arg(long)]
    pub url: Option<String>,
    /// A bearer token for the API (or RINGMQ_ADMIN_TOKEN).
    #[arg(long, env = "RINGMQ_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// The configuration file whose admin.bind and admin.token to use.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, shards, driver, connections, sessions, subscriptions, retained, msg/s.
    Status,
    /// Active alarms and the recently cleared ones.
    Alarms,
    /// Connected clients and sessions.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Subscriptions, and adding or removing one for a client.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCmd),
    /// Topic filters subscribed to.
    #[command(subcommand)]
    Topics(TopicsCmd),
    /// Retained messages.
    #[command(subcommand)]
    Retained(RetainedCmd),
    /// Banned clients: by client id, username or peer address (IP or CIDR).
    #[command(subcommand)]
    Banned(BannedCmd),
    /// Delayed publishes (`$delayed/{seconds}/{topic}`) held until their deadline.
    #[command(subcommand)]
    Delayed(DelayedCmd),
    /// Configuration: re-read the file, password file, ACL file and certificates.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The log level.
    #[command(subcommand)]
    Log(LogCmd),
    /// Log every packet of a client, or every publish to a topic filter.
    #[command(subcommand)]
    Trace(TraceCmd),
    /// The cluster this node is in: its members, leader and routes; join, leave, remove.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members (voter or learner, routes, whether dropped for silence), leader, applied log.
    Status,
    /// Join the cluster that the node at `seed` (its `cluster.listen` address) is in.
    Join { seed: String },
    /// Leave the cluster (this node goes on serving its own clients alone).
    Leave,
    /// Remove another node, by its name, from the cluster (a node that is gone for good).
    Remove { node: String },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCmd {
    List,
    Show { client_id: String },
    Kick { client_id: String },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCmd {
    List,
    Show {
        client_id: String,
    },
    Add {
        client_id: String,
        filter: String,
        #[arg(long, default_value_t = 0)]
        qos: u8,
    },
    Del {
        client_id: String,
        filter: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCmd {
    List,
}

#[derive(Debug, Subcommand)]
pub enum RetainedCmd {
    List,
    Show {
        topic: String,
    },
    /// Remove one retained message, or all of them.
    Clean {
        topic: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BannedCmd {
    List,
    /// Ban (and kick) clients: KIND is clientid, username or peerhost.
    Add {
        kind: String,
        value: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Seconds the ban lasts; without it, permanent.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Lift a ban.
    Del {
        kind: String,
        value: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DelayedCmd {
    List,
    /// Cancel one, by the id `list` shows.
    Cancel {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum LogCmd {
    /// Show the level, or set it (a level or a filter like `info,ringmq::shard=debug`).
    Level { level: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum TraceCmd {
    Client {
        client_id: String,
        #[arg(long)]
        off: bool,
    },
    Topic {
        filter: String,
        #[arg(long)]
        off: bool,
    },
    List,
}
