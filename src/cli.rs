//! The command line. `ringmq` alone is `ringmq run`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    /// Run the broker in the foreground (the default).
    Run(RunArgs),
    /// Check this machine's kernel settings and limits against a connection target.
    Doctor {
        /// The number of connections to be ready for.
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        /// Read /proc and /sys under this directory instead of / (for tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Print the configuration: the commented defaults, or the one in effect.
    PrintConfig {
        /// The embedded defaults, with comments.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        run: RunArgs,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct RunArgs {
    /// The TOML configuration file.
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    /// A plain TCP listener, repeatable; replaces the configured ones.
    #[arg(long, global = true)]
    pub listen: Vec<SocketAddr>,
    /// Number of shards (0: one per online CPU).
    #[arg(long, global = true)]
    pub shards: Option<usize>,
}

impl RunArgs {
    /// Loads the file (or the defaults) and applies the command-line overrides.
    pub fn config(&self) -> Result<crate::config::Config, crate::config::ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => crate::config::Config::load(path)?,
            None => crate::config::Config::default(),
        };
        if !self.listen.is_empty() {
            cfg.broker.listen = self.listen.clone();
        }
        if let Some(n) = self.shards {
            cfg.broker.shards = n;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
