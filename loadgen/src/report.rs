//! Results: what each worker measured, merged across threads and processes, printed as a table
//! or as JSON for machines (benchmark CI reads it).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::broker::Usage;

/// A run's result as `main` gives it: a table, or JSON with `--json`; and whether it fell short.
pub trait Outcome: Serialize {
    fn print(&self);
    /// Why the run fell short of what was asked, if it did.
    fn shortfall(&self) -> Option<String>;
}

/// A latency histogram in microseconds, carried between processes as (value, count) pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub recorded: Vec<(u64, u64)>,
}

/// Now, in nanoseconds since the Unix epoch: comparable across processes.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The earlier of two Unix-ns times, 0 standing for none.
pub fn earliest_ns(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Latency {
        Latency {
            recorded: h
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }

    pub fn to_hist(&self) -> Histogram<u64> {
        let mut h = histogram();
        for (v, n) in &self.recorded {
            let _ = h.record_n(*v, *n);
        }
        h
    }

    pub fn merge(&mut self, other: &Latency) {
        let mut h = self.to_hist();
        let _ = h.add(other.to_hist());
        *self = Latency::from_hist(&h);
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = self.to_hist();
        let q = |x| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(x)
            }
        };
        Percentiles {
            count: h.len(),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub elapsed_secs: f64,
    // conn
    pub connections_wanted: u64,
    pub connected: u64,
    pub still_open: u64,
    pub connect_secs: f64,
    /// The broker's CPU time from the first connect until every CONNACK came (0: not sampled).
    #[serde(default)]
    pub connect_cpu_secs: f64,
    /// When the first connection was up and when the last one was released (or found closed),
    /// in Unix nanoseconds; 0 when none was.
    #[serde(default)]
    pub held_from_ns: u64,
    #[serde(default)]
    pub held_until_ns: u64,
    /// Seconds into the hold at which the broker's RSS was sampled.
    #[serde(default)]
    pub settle_secs: f64,
    pub failures: BTreeMap<String, u64>,
    pub connect_latency: Latency,
    // pubsub
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    pub duplicated: u64,
    /// Sent to resumed persistent sessions from before the run: acknowledged, not counted.
    #[serde(default)]
    pub stale: u64,
    pub measured_secs: f64,
    pub measured_delivered: u64,
    pub latency: Latency,
    pub broker: Option<Usage>,
}

impl Report {
    /// Merges another process's report of the same run into this one.
    pub fn merge(&mut self, o: &Report) {
        self.elapsed_secs = self.elapsed_secs.max(o.elapsed_secs);
        self.connections_wanted += o.connections_wanted;
        self.connected += o.connected;
        self.still_open += o.still_open;
        self.connect_secs = self.connect_secs.max(o.connect_secs);
        self.held_from_ns = earliest_ns(self.held_from_ns, o.held_from_ns);
        self.held_until_ns = self.held_until_ns.max(o.held_until_ns);
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        self.connect_latency.merge(&o.connect_latency);
        self.published += o.published;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.duplicated += o.duplicated;
        self.stale += o.stale;
        self.measured_secs = self.measured_secs.max(o.measured_secs);
        self.measured_delivered += o.measured_delivered;
        self.latency.merge(&o.latency);
    }

    pub fn lost(&self) -> u64 {
        self.expected
            .saturating_sub(self.delivered - self.duplicated)
    }

    pub fn msgs_per_sec(&self) -> f64 {
        if self.measured_secs > 0.0 {
            self.measured_delivered as f64 / self.measured_secs
        } else {
            0.0
        }
    }

    pub fn connects_per_sec(&self) -> f64 {
        if self.connect_secs > 0.0 {
            self.connected as f64 / self.connect_secs
        } else {
            0.0
        }
    }

    /// Connections made per broker CPU-second while they were being made.
    pub fn connects_per_cpu_sec(&self) -> Option<f64> {
        (self.connect_cpu_secs > 0.0).then(|| self.connected as f64 / self.connect_cpu_secs)
    }

    /// Seconds from the first connection up to the last one released.
    pub fn held_secs(&self) -> f64 {
        self.held_until_ns.saturating_sub(self.held_from_ns) as f64 / 1e9
    }

    /// Broker RSS per connection, sampled while every connection asked for was held.
    pub fn rss_per_conn(&self) -> Option<f64> {
        let b = self.broker?;
        (self.connections_wanted > 0
            && self.published == 0
            && self.still_open == self.connections_wanted)
            .then(|| (b.rss_end as f64 - b.rss_start as f64) / self.still_open as f64)
    }

    /// When the broker's own count of established connections at the end of the hold is not
    /// loadgen's, what each says.
    pub fn sockets_mismatch(&self) -> Option<String> {
        let n = self.broker?.sockets?;
        (n != self.still_open).then(|| {
            format!(
                "the broker holds {n} connections, loadgen counted {}",
                self.still_open
            )
        })
    }

    /// Deliveries per broker CPU-second, when the broker was sampled.
    pub fn per_cpu_sec(&self) -> Option<f64> {
        self.broker?.per_cpu_sec(self.measured_delivered)
    }
}

impl Outcome for Report {
    /// Why this run fell short of what was asked: connections not held to the end of the hold,
    /// or messages lost.
    fn shortfall(&self) -> Option<String> {
        if self.still_open < self.connections_wanted {
            Some(format!(
                "held {} of {} connections to the end of the hold",
                self.still_open, self.connections_wanted
            ))
        } else if self.lost() > 0 {
            Some(format!(
                "lost {} of {} messages",
                self.lost(),
                self.expected
            ))
        } else {
            None
        }
    }

    fn print(&self) {
        println!("scenario      {}  ->  {}", self.scenario, self.target);
        if self.connections_wanted > 0 {
            let l = self.connect_latency.percentiles();
            println!(
                "connections   {} wanted, {} connected, {} still open at the end of the hold",
                self.connections_wanted, self.connected, self.still_open
            );
            println!(
                "held          {:.2} s, from the first connect to the last release",
                self.held_secs()
            );
            println!(
                "connect rate  {:.0} conn/s over {:.2} s",
                self.connects_per_sec(),
                self.connect_secs
            );
            println!(
                "CONNACK (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        for (why, n) in &self.failures {
            println!("failed        {n:>8}  {why}");
        }
        if self.published > 0 {
            let l = self.latency.percentiles();
            println!("published     {}", self.published);
            println!(
                "delivered     {} of {} expected (lost {}, duplicated {})",
                self.delivered,
                self.expected,
                self.lost(),
                self.duplicated
            );
            if self.stale > 0 {
                println!(
                    "stale         {} from before this run to resumed sessions (not counted)",
                    self.stale
                );
            }
            println!(
                "throughput    {:.0} msg/s delivered over {:.1} s measured",
                self.msgs_per_sec(),
                self.measured_secs
            );
            println!(
                "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if let Some(b) = self.broker {
            println!(
                "broker        {:.2} CPU-s, RSS {} -> {} KiB",
                b.cpu_secs,
                b.rss_start / 1024,
                b.rss_end / 1024
            );
            if let Some(per) = self.rss_per_conn() {
                println!(
                    "per conn      {per:.0} bytes of broker RSS, {:.0} s into the hold",
                    self.settle_secs
                );
            }
            if let Some(n) = b.sockets {
                println!("broker holds  {n} connections established at the end of the hold");
                if let Some(w) = self.sockets_mismatch() {
                    println!("WARNING       {w}");
                }
            }
            if let Some(r) = self.per_cpu_sec() {
                println!("efficiency    {r:.0} deliveries per broker CPU-second");
            }
        }
    }
}
