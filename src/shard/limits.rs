//! Limits a client cannot talk its way past: admission of new connections (global and
//! per-listener counts, per-listener connect rate, overload) and per-client publish rates. The
//! flapping ban is counted where every CONNECT of a client id is seen: its home (`homes`).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::link::{Close, ConnLink};
use super::rate::{RateLimiter, TokenBucket};
use super::Shard;
use crate::codec::ReasonCode;

impl Shard {
    /// Why a new connection on `listener` will be refused, if it will; counts it as open.
    pub(super) fn admit_connection(&mut self, listener: usize, now: Instant) -> Option<ReasonCode> {
        let open = self.global.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let on_listener = self
            .global
            .listener_connections
            .get(listener)
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed) + 1);
        let l = self.listeners.get_mut(listener)?;
        let max = self.cfg.broker.max_connections;
        let reason = if !self.accepting {
            Some(ReasonCode::ServerShuttingDown)
        } else if (max > 0 && open > max)
            || (l.cfg.max_connections > 0 && on_listener > l.cfg.max_connections)
        {
            Some(ReasonCode::QuotaExceeded)
        } else if l
            .connect_rate
            .as_mut()
            .is_some_and(|b| b.take(1.0, now).is_some())
        {
            Some(ReasonCode::ConnectionRateExceeded)
        } else if self.stats.overloaded.get() == 1
            || self.global.memory_over.load(Ordering::Relaxed)
        {
            Some(ReasonCode::ServerBusy)
        } else {
            None
        };
        if reason.is_some() {
            self.stats.connects_refused.inc();
        }
        reason
    }

    /// The connection counted by `admit_connection` closed.
    pub(super) fn connection_gone(&mut self, listener: usize) {
        self.global.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.global.listener_connections.get(listener) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Charges one PUBLISH to the client's buckets. Over the rate, a v5 client is disconnected
    /// with 0x96; a v3 client (which has no such code) is read more slowly instead.
    pub(super) fn charge_publish(
        &mut self,
        link: &ConnLink,
        bytes: usize,
        now: Instant,
    ) -> Result<(), Close> {
        let l = &self.cfg.limits;
        if l.publish_rate == 0 && l.publish_bytes_rate == 0 {
            return Ok(());
        }
        let mut extras = link.extras();
        let rate = extras.rate.get_or_insert_with(|| RateLimiter {
            msgs: (l.publish_rate > 0).then(|| {
                let rate = f64::from(l.publish_rate);
                TokenBucket::new(rate, f64::from(l.publish_burst.max(1)), now)
            }),
            bytes: (l.publish_bytes_rate > 0).then(|| {
                let rate = l.publish_bytes_rate as f64;
                TokenBucket::new(rate, rate, now)
            }),
        });
        let wait_msgs = rate.msgs.as_mut().and_then(|b| b.take(1.0, now));
        let wait_bytes = rate.bytes.as_mut().and_then(|b| b.take(bytes as f64, now));
        let Some(wait) = wait_msgs.max(wait_bytes) else {
            return Ok(());
        };
        self.stats.rate_limited.inc();
        if link.protocol.get().is_v5() {
            tracing::info!(peer = %link.peer, "publish rate exceeded: disconnecting");
            return Err(Close::new(
                ReasonCode::MessageRateTooHigh,
                "publish rate exceeded",
            ));
        }
        extras.throttle = Some(now + wait.min(Duration::from_secs(5)));
        Ok(())
    }

    /// Whether this shard should refuse new connections for lag; logs each change.
    fn set_overloaded(&mut self, lag: Duration) {
        let max = self.cfg.overload.max_loop_lag_ms;
        let over = max > 0 && lag > Duration::from_millis(max);
        let was = self.stats.overloaded.get() == 1;
        if over != was {
            self.stats.overloaded.set(i64::from(over));
            if over {
                tracing::warn!(
                    shard = self.id,
                    lag_ms = lag.as_millis() as u64,
                    "shard overloaded: refusing new connections"
                );
            } else {
                tracing::info!(
                    shard = self.id,
                    "shard recovered: accepting new connections"
                );
            }
        }
    }
}

/// Measures how late the event loop runs: a 100 ms sleep that wakes later than asked.
pub(super) async fn lag_probe(shard: Rc<RefCell<Shard>>) {
    const TICK: Duration = Duration::from_millis(100);
    loop {
        let start = Instant::now();
        monoio::time::sleep(TICK).await;
        let lag = start.elapsed().saturating_sub(TICK);
        let mut sh = shard.borrow_mut();
        sh.stats.loop_lag_us.set(lag.as_micros() as i64);
        sh.set_overloaded(lag);
        if !sh.accepting {
            return;
        }
    }
}
