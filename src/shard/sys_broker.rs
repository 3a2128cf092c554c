//! `$SYS/broker/...` as Mosquitto names it, beside EMQX's `$SYS/brokers/<node>/...` (`sys`), so
//! dashboards and scripts written against Mosquitto read ringmq unchanged. Published retained,
//! as Mosquitto does, by shard 0 on the same `sys.interval` timer, from every shard's counters.
//!
//! The load averages (`load/.../1min|5min|15min`) are Mosquitto's: a per-minute rate over the
//! last interval, smoothed by `exp(-interval / window)`. ringmq counts PUBLISH packets (not every
//! packet as Mosquitto's `messages/*` do), so `messages/*` and `publish/messages/*` agree;
//! what ringmq has no number for (`heap/*`, `messages/stored`) is not published.

use std::time::Instant;

use super::Shard;

/// The counters the load averages follow, under `load/`.
const SERIES: [&str; 7] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
];
/// The windows of the load averages, in seconds, with their topic suffixes.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// What the tree remembers between publications (kept by shard 0's `$SYS` timer).
#[derive(Default)]
pub(super) struct BrokerTree {
    /// The counters at the last publication, and when.
    last: Option<(Instant, [i64; SERIES.len()])>,
    loads: [[f64; WINDOWS.len()]; SERIES.len()],
    /// The most clients seen connected at a publication.
    max_clients: i64,
}

impl BrokerTree {
    /// Folds the counters at `now` into the load averages.
    fn update(&mut self, counts: [i64; SERIES.len()], now: Instant) {
        if let Some((then, before)) = self.last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                for (i, load) in self.loads.iter_mut().enumerate() {
                    let per_minute = (counts[i] - before[i]).max(0) as f64 * 60.0 / secs;
                    for (w, (window, _)) in load.iter_mut().zip(WINDOWS) {
                        let keep = (-secs / window).exp();
                        *w = keep * *w + (1.0 - keep) * per_minute;
                    }
                }
            }
        }
        self.last = Some((now, counts));
    }
}

impl Shard {
    /// Publishes the Mosquitto-named tree (shard 0 only).
    pub(super) fn publish_broker_tree(&mut self, tree: &mut BrokerTree, now: Instant) {
        let g = self.global.clone();
        let (msgs_in, msgs_out) = g.messages();
        let dropped: i64 = g.stats.iter().map(|s| s.dropped_total()).sum();
        let (bytes_in, bytes_out) = (g.sum(|s| &s.bytes_in), g.sum(|s| &s.bytes_out));
        tree.update(
            [
                msgs_in, msgs_out, msgs_in, msgs_out, dropped, bytes_in, bytes_out,
            ],
            now,
        );
        let connected = g.sum(|s| &s.connections);
        tree.max_clients = tree.max_clients.max(connected);
        let total = g.sum(|s| &s.sessions).max(connected);
        let mut values = vec![
            (
                "version".to_string(),
                format!("ringmq version {}", env!("CARGO_PKG_VERSION")),
            ),
            (
                "uptime".to_string(),
                format!("{} seconds", g.started.elapsed().as_secs()),
            ),
            ("clients/connected".into(), connected.to_string()),
            ("clients/active".into(), connected.to_string()),
            ("clients/total".into(), total.to_string()),
            (
                "clients/disconnected".into(),
                (total - connected).to_string(),
            ),
            ("clients/inactive".into(), (total - connected).to_string()),
            ("clients/maximum".into(), tree.max_clients.to_string()),
            ("messages/received".into(), msgs_in.to_string()),
            ("messages/sent".into(), msgs_out.to_string()),
            ("publish/messages/received".into(), msgs_in.to_string()),
            ("publish/messages/sent".into(), msgs_out.to_string()),
            ("publish/messages/dropped".into(), dropped.to_string()),
            ("bytes/received".into(), bytes_in.to_string()),
            ("bytes/sent".into(), bytes_out.to_string()),
            (
                "subscriptions/count".into(),
                g.sum(|s| &s.subscriptions).to_string(),
            ),
            (
                "retained messages/count".into(),
                self.retained.len().to_string(),
            ),
        ];
        for (series, load) in SERIES.iter().zip(&tree.loads) {
            for ((_, suffix), v) in WINDOWS.iter().zip(load) {
                values.push((format!("load/{series}/{suffix}"), format!("{v:.2}")));
            }
        }
        for (suffix, v) in values {
            self.sys_publish_to(format!("$SYS/broker/{suffix}"), v, true, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn loads_follow_mosquittos_smoothing() {
        let mut tree = BrokerTree::default();
        let t0 = Instant::now();
        tree.update([0; SERIES.len()], t0);
        assert_eq!(tree.loads[0], [0.0; 3], "nothing before a first interval");
        // 120 messages in 60 s: 120 a minute, of which the 1-minute average takes 1 - 1/e.
        tree.update([120; SERIES.len()], t0 + Duration::from_secs(60));
        let one = tree.loads[0][0];
        assert!(
            (one - 120.0 * (1.0 - (-1.0f64).exp())).abs() < 1e-9,
            "{one}"
        );
        assert!(tree.loads[0][1] < one && tree.loads[0][2] < tree.loads[0][1]);
        // A counter that went down (a reset) counts as no traffic, not a negative rate.
        tree.update([0; SERIES.len()], t0 + Duration::from_secs(120));
        assert!(tree.loads[0][0] >= 0.0 && tree.loads[0][0] < one);
    }
}
