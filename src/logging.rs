//! Logs through `tracing`: human or JSON lines, to stderr, stdout or a rotating file in the log
//! directory, with a level filter that can be changed while the broker runs (`ringmq ctl log
//! level`). `RINGMQ_LOG`, when set, wins over the configured level at start.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat, LogOutput, LogRotation};

/// Changes the level at run time; keeps the writer thread alive until [`LogControl::flush`].
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
    guard: Mutex<Option<tracing_appender::non_blocking::WorkerGuard>>,
}

impl LogControl {
    /// A control for a broker whose logs go to whatever subscriber its process installed (a
    /// test running a broker in-process); changing the level is refused.
    pub fn detached() -> LogControl {
        let (_layer, handle) = reload::Layer::new(EnvFilter::new("info"));
        LogControl {
            handle,
            current: Mutex::new("info".into()),
            guard: Mutex::new(None),
        }
    }

    /// Writes out every line logged so far and stops the writer thread: the last call before
    /// the process exits (later lines are not written).
    pub fn flush(&self) {
        if let Ok(mut g) = self.guard.lock() {
            g.take();
        }
    }

    pub fn level(&self) -> String {
        self.current.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Sets a new level or filter; a bad one is refused and the old one kept.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = filter(level).map_err(|e| format!("bad log level {level:?}: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        if let Ok(mut cur) = self.current.lock() {
            *cur = level.to_string();
        }
        tracing::info!(level, "log level changed");
        Ok(())
    }
}

/// A standard stream behind a writer thread, with colours when it is a terminal.
fn terminal<S: std::io::Write + IsTerminal + Send + 'static>(
    stream: S,
) -> (
    fmt::writer::BoxMakeWriter,
    bool,
    Option<tracing_appender::non_blocking::WorkerGuard>,
) {
    let ansi = stream.is_terminal();
    let (nb, guard) = tracing_appender::non_blocking(stream);
    (fmt::writer::BoxMakeWriter::new(nb), ansi, Some(guard))
}

/// The filter for `level`. The Raft engine (openraft) logs every vote and membership step at
/// info: it says only warnings unless the level names it (`info,openraft=info`).
fn filter(level: &str) -> Result<EnvFilter, String> {
    let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    if level.contains("openraft") {
        return Ok(f);
    }
    let quiet = "openraft=warn".parse().map_err(|e| format!("{e}"))?;
    Ok(f.add_directive(quiet))
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(cfg: &LogConfig) -> Result<LogControl, String> {
    let level = std::env::var("RINGMQ_LOG").unwrap_or_else(|_| cfg.level.clone());
    let filter = filter(&level).map_err(|e| format!("log.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    // Every output goes through a writer thread: a shard never waits on a slow terminal, pipe
    // or disk to log a line.
    let (writer, ansi, guard) = match cfg.output {
        LogOutput::Stderr => terminal(std::io::stderr()),
        LogOutput::Stdout => terminal(std::io::stdout()),
        LogOutput::File => {
            let rotation = match cfg.rotation {
                LogRotation::Hourly => tracing_appender::rolling::Rotation::HOURLY,
                LogRotation::Daily => tracing_appender::rolling::Rotation::DAILY,
                LogRotation::Never => tracing_appender::rolling::Rotation::NEVER,
            };
            let mut builder = tracing_appender::rolling::Builder::new()
                .rotation(rotation)
                .filename_prefix(&cfg.file_name);
            if cfg.max_files > 0 {
                builder = builder.max_log_files(cfg.max_files);
            }
            let appender = builder
                .build(&cfg.dir)
                .map_err(|e| format!("log.dir {}: {e}", cfg.dir.display()))?;
            let (nb, guard) = tracing_appender::non_blocking(appender);
            (fmt::writer::BoxMakeWriter::new(nb), false, Some(guard))
        }
    };
    let layer = match cfg.format {
        LogFormat::Human => fmt::layer().with_ansi(ansi).with_writer(writer).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogControl {
        handle,
        current: Mutex::new(level),
        guard: Mutex::new(guard),
    })
}

/// A plain stderr logger for the commands that are not `run`.
pub fn init_plain() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("RINGMQ_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
