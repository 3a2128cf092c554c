//! `conn`: open N connections at a target rate, hold them, verify they are all still open at
//! the end of the hold. The process that started the others (or the only one) times the hold
//! and samples the broker during it; every process then checks its own clients.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringmq::codec::{Packet, QoS};
use serde::{Deserialize, Serialize};

use crate::broker::{Sample, Usage};
use crate::client::Client;
use crate::report::{histogram, unix_ns, Latency, Report};
use crate::session::{topic, Session};
use crate::target::{source_for, Progress, TargetArgs};

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ConnArgs {
    /// Connections to open in total (across all processes).
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Connects per second in total (0: as fast as possible).
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Handshakes in flight per worker thread.
    #[arg(long, default_value_t = 100)]
    pub max_pending: usize,
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// Persistent sessions (clean session off).
    #[arg(long)]
    pub persistent: bool,
    /// Subscribe each client to this filter ({i} becomes the client index, {p} the client id
    /// prefix, lg).
    #[arg(long)]
    pub subscribe: Option<String>,
    /// Seconds to hold every connection once all are up.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
    /// Seconds into the hold at which the broker's RSS is sampled for bytes per connection
    /// (past `broker.hibernate_after` to measure hibernated connections); default: the hold.
    #[arg(long)]
    pub settle: Option<u64>,
}

impl ConnArgs {
    pub fn settle_secs(&self) -> u64 {
        self.settle.unwrap_or(self.hold)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.settle_secs() <= self.hold,
            "--settle {} is past the end of --hold {}",
            self.settle_secs(),
            self.hold
        );
        Ok(())
    }
}

/// The prefix of conn's client ids, `lg-c-N`.
const CONN_PREFIX: &str = "lg";

/// What the broker held during the hold.
pub struct Held {
    /// After the settle.
    settled: Option<Sample>,
    /// At the end of the hold.
    end: Option<Sample>,
    sockets: Option<u64>,
}

impl Held {
    /// The broker's usage from `before` (taken before the first connect) to the end of the hold.
    pub fn usage(&self, before: Option<Sample>) -> Option<Usage> {
        let (before, settled, end) = (before?, self.settled?, self.end?);
        Some(Usage {
            rss_end: settled.rss_bytes,
            sockets: self.sockets,
            ..crate::broker::usage(before, end)
        })
    }
}

/// The hold, once every connection is up: `--hold` seconds, cut short when no connection is
/// left; the broker's RSS is sampled after `--settle` seconds and its sockets at the end, both
/// while the connections are held (they are released after this returns).
pub fn hold(target: &TargetArgs, args: &ConnArgs, progress: &Progress) -> Held {
    eprintln!(
        "holding {} connections for {} s",
        progress.up.load(Ordering::Relaxed),
        args.hold
    );
    let start = Instant::now();
    let any_left = hold_until(start + Duration::from_secs(args.settle_secs()), progress);
    let settled = target.broker_pid.and_then(crate::broker::sample);
    if any_left {
        hold_until(start + Duration::from_secs(args.hold), progress);
    }
    let held = Held {
        settled,
        end: target.broker_pid.and_then(crate::broker::sample),
        sockets: target
            .broker_pid
            .and_then(|pid| crate::broker::established(pid, target.addr.port())),
    };
    eprintln!(
        "hold over: {} connections up",
        progress.up.load(Ordering::Relaxed)
    );
    held
}

/// Waits until `deadline`; false if every connection went before it.
fn hold_until(deadline: Instant, progress: &Progress) -> bool {
    loop {
        if progress.up.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

pub fn run(
    target: &TargetArgs,
    args: &ConnArgs,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    let slice = target.slice();
    let local = slice.local_clients(args.connections).len() as u64;
    let release = Arc::new(AtomicBool::new(false));
    let sources = target.sources()?;
    target.protocol()?;
    let before = target.broker_pid.and_then(crate::broker::sample);
    let settled_before = progress.settled.load(Ordering::Relaxed);
    let started = Instant::now();
    let workers = {
        let (target, args, progress, release) = (
            target.clone(),
            args.clone(),
            progress.clone(),
            release.clone(),
        );
        std::thread::spawn(move || {
            let threads = target.threads();
            crate::workers::run(threads, move |t| {
                worker(
                    t,
                    target.clone(),
                    args.clone(),
                    sources.clone(),
                    progress.clone(),
                    release.clone(),
                )
            })
        })
    };
    while progress.settled.load(Ordering::Relaxed) - settled_before < local
        && !workers.is_finished()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = target.broker_pid.and_then(crate::broker::sample);
    crate::procs::ready_then_wait(target, progress);
    // A child's hold is timed by its parent, which says when it is over.
    let held = if target.child.is_some() {
        crate::procs::wait_for_parent();
        None
    } else {
        Some(hold(target, args, progress))
    };
    release.store(true, Ordering::Relaxed);
    let outs = workers
        .join()
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    let mut r = Report {
        scenario: format!("conn n={} rate={}", args.connections, args.rate),
        target: target.addr.to_string(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        settle_secs: args.settle_secs() as f64,
        ..Report::default()
    };
    for o in &outs {
        r.merge(o);
    }
    r.connections_wanted = local;
    r.connect_secs = connect_secs;
    if let (Some(b), Some(c)) = (before, connected) {
        r.connect_cpu_secs = c.cpu_secs - b.cpu_secs;
    }
    r.broker = held.and_then(|h| h.usage(before));
    Ok(r)
}

async fn worker(
    t: usize,
    target: TargetArgs,
    args: ConnArgs,
    sources: Vec<std::net::IpAddr>,
    progress: Arc<Progress>,
    release: Arc<AtomicBool>,
) -> Report {
    let slice = target.slice();
    let clients: Vec<usize> = slice.clients(t, args.connections).collect();
    let per_worker = args.rate / (slice.procs * slice.threads) as f64;
    let pending = Rc::new(Pending::default());
    let released = Released::watch(release);
    let out = Rc::new(RefCell::new(Report::default()));
    let hist = Rc::new(RefCell::new(histogram()));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(clients.len());
    for (k, i) in clients.into_iter().enumerate() {
        if per_worker > 0.0 {
            // Timers round up to a millisecond: sleep only when a millisecond or more ahead.
            let ahead = (start + Duration::from_secs_f64(k as f64 / per_worker))
                .saturating_duration_since(Instant::now());
            if ahead >= Duration::from_millis(1) {
                monoio::time::sleep(ahead).await;
            }
        }
        pending.below(args.max_pending).await;
        pending.start();
        let source = source_for(&sources, i);
        let ctx = (
            target.clone(),
            args.clone(),
            progress.clone(),
            released.clone(),
        );
        let (pending, out, hist) = (pending.clone(), out.clone(), hist.clone());
        handles.push(monoio::spawn(async move {
            let (target, args, progress, released) = ctx;
            let t0 = Instant::now();
            let result = Client::open(
                &target,
                format!("{CONN_PREFIX}-c-{i}"),
                if args.persistent {
                    Session::Kept { expiry_secs: 0 }
                } else {
                    Session::Clean
                },
                args.keepalive,
                source,
            )
            .await;
            pending.done();
            let mut client = match result {
                Ok(c) => c,
                Err(e) => {
                    *out.borrow_mut().failures.entry(e.to_string()).or_default() += 1;
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    progress.settled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let _ = hist
                .borrow_mut()
                .record(t0.elapsed().as_micros().max(1) as u64);
            if let Some(pattern) = &args.subscribe {
                let filter = topic(pattern, CONN_PREFIX, i);
                let ok = client.subscribe(&filter, QoS::AtMostOnce).await;
                if !matches!(ok, Ok(true)) {
                    *out.borrow_mut()
                        .failures
                        .entry("subscribe failed".into())
                        .or_default() += 1;
                }
            }
            {
                let mut o = out.borrow_mut();
                o.connected += 1;
                if o.held_from_ns == 0 {
                    o.held_from_ns = unix_ns();
                }
            }
            let up = progress.connection_up();
            progress.settled.fetch_add(1, Ordering::Relaxed);
            let open = keep(&mut client, &args, &released).await;
            drop(up);
            let mut o = out.borrow_mut();
            o.held_until_ns = o.held_until_ns.max(unix_ns());
            if open {
                o.still_open += 1;
            } else {
                *o.failures.entry("closed while held".into()).or_default() += 1;
            }
        }));
    }
    for h in handles {
        h.await;
    }
    let mut o = std::mem::take(&mut *out.borrow_mut());
    o.connect_latency = Latency::from_hist(&hist.borrow());
    o
}

/// The handshakes in flight, and the spawner waiting for one to end when `--max-pending` are:
/// it starts the next the moment one ends (a timer's millisecond would leave the pool short).
#[derive(Default)]
struct Pending {
    n: Cell<usize>,
    waiting: Cell<Option<std::task::Waker>>,
}

impl Pending {
    async fn below(&self, max: usize) {
        std::future::poll_fn(|cx| {
            if self.n.get() < max {
                return std::task::Poll::Ready(());
            }
            self.waiting.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        })
        .await
    }

    fn start(&self) {
        self.n.set(self.n.get() + 1);
    }

    fn done(&self) {
        self.n.set(self.n.get() - 1);
        if let Some(w) = self.waiting.take() {
            w.wake();
        }
    }
}

/// The end of the hold, as a worker thread's clients wait for it. The hold is timed on another
/// thread (an atomic flag); one task per worker looks at the flag and wakes every client.
/// A client waits for it beside its socket's readiness. (Woken by a timer of its own instead,
/// each client's readiness wait was cancelled and made again at every tick: in a burst of
/// 10,000 connects, io_uring's search for the poll to cancel was the load generator's
/// largest cost.)
#[derive(Default)]
struct Released {
    done: Cell<bool>,
    waiting: RefCell<Vec<std::task::Waker>>,
}

impl Released {
    /// Starts the task that watches `release`.
    fn watch(release: Arc<AtomicBool>) -> Rc<Released> {
        let r = Rc::new(Released::default());
        let watched = r.clone();
        monoio::spawn(async move {
            while !release.load(Ordering::Relaxed) {
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
            watched.done.set(true);
            for w in watched.waiting.take() {
                w.wake();
            }
        });
        r
    }

    /// Ready once released. Its task's waker is kept once, at the first poll: keep one of
    /// these for the whole hold (a new one per wait would add a waker at every wake).
    async fn wait(&self) {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if self.done.get() {
                return std::task::Poll::Ready(());
            }
            if !registered {
                self.waiting.borrow_mut().push(cx.waker().clone());
                registered = true;
            }
            std::task::Poll::Pending
        })
        .await
    }
}

/// Keeps the connection alive until released, then checks it still answers a PINGREQ.
async fn keep(client: &mut Client, args: &ConnArgs, released: &Released) -> bool {
    // Keep alive 0: no pings while held.
    let ping_every =
        (args.keepalive > 0).then(|| Duration::from_secs(u64::from(args.keepalive.max(2)) / 2));
    let mut next_ping = ping_every.map(|every| Instant::now() + every);
    let mut release = std::pin::pin!(released.wait());
    while !released.done.get() {
        let ping_due = async {
            match next_ping {
                Some(at) => monoio::time::sleep(at.saturating_duration_since(Instant::now())).await,
                None => std::future::pending().await,
            }
        };
        monoio::select! {
            _ = &mut release => {}
            _ = ping_due => {}
            r = client.readable() => {
                if r.is_err() || !client.fill().unwrap_or(false) {
                    return false;
                }
                while let Ok(Some(_)) = client.try_next() {}
            }
        }
        if let (Some(every), Some(at)) = (ping_every, next_ping) {
            if Instant::now() >= at {
                if client.send(&Packet::PingReq).await.is_err() {
                    return false;
                }
                next_ping = Some(Instant::now() + every);
            }
        }
    }
    if client.send(&Packet::PingReq).await.is_err() {
        return false;
    }
    let answered = monoio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.next().await {
                Ok(Some(Packet::PingResp)) => return true,
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    client.disconnect().await;
    answered
}
