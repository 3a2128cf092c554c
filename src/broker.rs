//! The running broker as the world outside the shards sees it: a handle on every shard's
//! control queue, the shared counters, the configuration in force, the log. The admin API,
//! metrics, the signal handler and shutdown use it; `server` builds it once the shards run.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Auth;
use crate::cli::RunArgs;
use crate::config::Config;
use crate::control::{Handle, Request, TraceSet};
use crate::logging::LogControl;
use crate::stats::Shared;

/// The running broker, as the admin API and the signal handler see it.
pub struct Broker {
    pub handle: Handle,
    pub shared: Arc<Shared>,
    pub cfg: Mutex<Arc<Config>>,
    pub log: LogControl,
    pub trace: Mutex<TraceSet>,
    pub driver: &'static str,
    /// The addresses the listeners are bound to, by name.
    pub bound: Vec<(String, crate::config::Endpoint)>,
    /// How the broker was started: a reload reads the same file and flags again.
    pub args: RunArgs,
    /// This node's side of the cluster, in one.
    pub cluster: Option<crate::cluster::Reporter>,
}

impl Broker {
    pub fn config(&self) -> Arc<Config> {
        self.cfg.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Re-reads the configuration file, the password and ACL files and the certificates, and
    /// applies them on every shard; on any error the old ones stay and the error says why.
    pub fn reload(&self) -> Result<String, String> {
        let result = (|| {
            let cfg = self.args.config().map_err(|e| e.to_string())?;
            let auth = Auth::load(&cfg)?;
            let tls = crate::tls::configs(&cfg)?;
            let old = self.config();
            if old.listeners.len() != cfg.listeners.len()
                || old
                    .listeners
                    .iter()
                    .zip(&cfg.listeners)
                    .any(|((a, x), (b, y))| a != b || x.bind != y.bind || x.kind != y.kind)
            {
                tracing::warn!("listener addresses and types change only at restart");
            }
            if old.broker.driver != cfg.broker.driver {
                tracing::warn!("broker.driver changes only at restart");
            }
            let summary = auth.describe();
            let (cfg, auth) = (Arc::new(cfg), Arc::new(auth));
            for r in self
                .handle
                .ask_all(|| Request::Reload(cfg.clone(), auth.clone(), tls.clone()))
            {
                r?;
            }
            if cfg.log.level != old.log.level && std::env::var_os("RINGMQ_LOG").is_none() {
                self.log.set_level(&cfg.log.level)?;
            }
            if let Ok(mut c) = self.cfg.lock() {
                *c = cfg;
            }
            Ok(summary)
        })();
        match &result {
            Ok(s) => tracing::info!(auth = %s, "configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the previous configuration stays")
            }
        }
        result
    }

    /// Applies a trace set on every shard.
    pub fn set_trace(&self, set: TraceSet) -> Result<(), String> {
        let set = Arc::new(set);
        for r in self.handle.ask_all(|| Request::Trace(set.clone())) {
            r?;
        }
        if let Ok(mut t) = self.trace.lock() {
            *t = (*set).clone();
        }
        Ok(())
    }

    /// Graceful shutdown: stop accepting and publish wills everywhere, then tell clients (v5:
    /// DISCONNECT 0x8B) and close, then save sessions and retained messages.
    pub fn shutdown(&self) -> Result<(), String> {
        let wills: i64 = self
            .handle
            .ask_all(|| Request::Drain)
            .into_iter()
            .filter_map(Result::ok)
            .filter_map(|v| v["wills"].as_i64())
            .sum();
        // The wills cross the rings before any subscriber is disconnected.
        std::thread::sleep(Duration::from_millis(200));
        self.handle.ask_all(|| Request::Close);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.shared.connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut sessions, mut retained) = (0, 0);
        for r in self.handle.ask_all(|| Request::Persist) {
            let v = r?;
            sessions += v["sessions"].as_u64().unwrap_or(0);
            retained += v["retained"].as_u64().unwrap_or(0);
        }
        let dir = self.config().broker.data_dir.clone();
        tracing::info!(wills, sessions, retained, data_dir = %dir.display(), "last changes handed to the store");
        Ok(())
    }
}
