//! What to load and how: the broker address, the source addresses to spread over, the protocol,
//! threads and processes; and the live counters behind the progress line.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use ringmq::codec::Protocol;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct TargetArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub addr: SocketAddr,
    /// Source addresses to spread connections over: a list (127.0.0.1,127.0.0.2) and/or ranges
    /// (127.0.0.2-127.0.0.40); each gives ~28k ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    pub source: Vec<String>,
    /// MQTT protocol version: 3 (3.1.1) or 5.
    #[arg(long, default_value_t = 3)]
    pub mqtt: u8,
    /// Worker threads per process (default: the online CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker processes; the parent starts them together and merges their results.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// The broker's PID, to report its CPU and memory over the run.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Set by the parent for its child processes: this child's index.
    #[arg(skip)]
    pub child: Option<usize>,
    /// Seconds to wait for each CONNACK.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

impl TargetArgs {
    pub fn protocol(&self) -> anyhow::Result<Protocol> {
        match self.mqtt {
            3 | 4 => Ok(Protocol::V311),
            5 => Ok(Protocol::V5),
            v => anyhow::bail!("--mqtt {v}: use 3 (MQTT 3.1.1) or 5"),
        }
    }

    /// Worker threads: `--threads`, else the CPUs this process may run on. `main` resolves
    /// it before any thread is pinned.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn sources(&self) -> anyhow::Result<Vec<IpAddr>> {
        let mut out = Vec::new();
        for s in &self.source {
            match s.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (a.parse()?, b.parse()?);
                    anyhow::ensure!(u32::from(a) <= u32::from(b), "source range {s} is empty");
                    out.extend(
                        (u32::from(a)..=u32::from(b))
                            .map(|v| IpAddr::from(std::net::Ipv4Addr::from(v))),
                    );
                }
                None => out.push(s.parse()?),
            }
        }
        Ok(out)
    }

    pub fn slice(&self) -> crate::workers::Slice {
        crate::workers::Slice {
            proc_index: self.child.unwrap_or(0),
            procs: self.procs,
            threads: self.threads(),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout)
    }
}

/// The source address of client `i`: the sources taken in turn; none (the system's choice)
/// when there are none.
pub fn source_for(sources: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[i % sources.len()])
}

/// Live counters read by the progress line.
#[derive(Default)]
pub struct Progress {
    pub up: AtomicU64,
    pub settled: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub done: AtomicBool,
}

impl Progress {
    /// The counters a child process passes on to its parent's progress line, in a fixed order.
    pub fn shown(&self) -> [&AtomicU64; 4] {
        [&self.up, &self.sent, &self.received, &self.errors]
    }

    /// Counts a connection up (`up`) until the guard is dropped, whichever way its client
    /// ends.
    pub fn connection_up(&self) -> Up<'_> {
        self.up.fetch_add(1, Ordering::Relaxed);
        Up(self)
    }

    /// Prints one line a second on stderr until `done`.
    pub fn spawn_printer(self: &std::sync::Arc<Self>) {
        let p = self.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let (mut sent, mut recv) = (0, 0);
            while !p.done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let (s, r) = (
                    p.sent.load(Ordering::Relaxed),
                    p.received.load(Ordering::Relaxed),
                );
                eprintln!(
                    "[{:>4}s] connections {}  out {}/s  in {}/s  errors {}",
                    start.elapsed().as_secs(),
                    p.up.load(Ordering::Relaxed),
                    s - sent,
                    r - recv,
                    p.errors.load(Ordering::Relaxed)
                );
                (sent, recv) = (s, r);
            }
        });
    }
}

/// A connection counted up in `Progress::up`: counted down when dropped.
pub struct Up<'a>(&'a Progress);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.up.fetch_sub(1, Ordering::Relaxed);
    }
}
