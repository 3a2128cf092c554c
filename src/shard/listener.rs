//! A shard's side of one configured listener: its settings, its share of the connect-rate
//! limit, and the TLS configuration its connections handshake with. Rebuilt on reload (so new
//! certificates apply to new connections); the sockets themselves stay.

use std::sync::Arc;
use std::time::Instant;

use super::rate::TokenBucket;
use crate::config::{Config, ListenerConfig};
use crate::tls::TlsConfigs;

pub struct Listener {
    /// The listener's name in the configuration: a reload matches listeners by it.
    pub name: String,
    pub cfg: ListenerConfig,
    /// This shard's share of `max_connect_rate` (the kernel spreads connections evenly).
    pub connect_rate: Option<TokenBucket>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    /// One shard's listeners for `cfg`, in configuration order.
    pub fn for_shard(cfg: &Config, tls: &TlsConfigs, shards: usize) -> Vec<Listener> {
        let now = Instant::now();
        cfg.listeners
            .iter()
            .zip(tls.iter())
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
    }
}
