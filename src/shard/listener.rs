//! A shard's side of one configured listener: its settings, its share of the connect-rate
//! limit, and the TLS configuration its connections handshake with. Rebuilt on reload (so new
//! certificates apply to new connections); the sockets themselves stay.

use std::sync::Arc;
use std::time::Instant;

use super::limits::TokenBucket;
use crate::config::{Config, ListenerConfig};

pub struct Listener {
    pub name: String,
    pub cfg: ListenerConfig,
    /// This shard's share of `max_connect_rate` (the kernel spreads connections evenly).
    pub connect_rate: Option<TokenBucket>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// Every shard's listeners for `cfg`, in configuration order; reads the certificates once.
    pub fn build(cfg: &Config, shards: usize) -> Result<Vec<Vec<Listener>>, String> {
        let tls: Vec<Option<Arc<rustls::ServerConfig>>> = cfg
            .listeners
            .iter()
            .map(|(name, l)| {
                l.kind
                    .is_tls()
                    .then(|| {
                        crate::tls::server_config(l).map_err(|e| format!("listeners.{name}: {e}"))
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let now = Instant::now();
        Ok((0..shards)
            .map(|_| {
                cfg.listeners
                    .iter()
                    .zip(&tls)
                    .map(|((name, l), tls)| Listener {
                        name: name.clone(),
                        cfg: l.clone(),
                        connect_rate: (l.max_connect_rate > 0).then(|| {
                            let rate = (f64::from(l.max_connect_rate) / shards as f64).max(1.0);
                            TokenBucket::new(rate, rate, now)
                        }),
                        tls: tls.clone(),
                    })
                    .collect()
            })
            .collect())
    }
}
