//! `conn`: open N connections at a target rate, hold them, verify they are all still open.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use ringmq::codec::{Packet, QoS};

use crate::client::Client;
use crate::report::{histogram, Latency, Report};
use crate::target::{Progress, TargetArgs};

#[derive(Debug, Clone, Args)]
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
    /// Subscribe each client to this filter ({i} becomes the client index).
    #[arg(long)]
    pub subscribe: Option<String>,
    /// Seconds to hold every connection once all are up.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

#[derive(Default)]
struct WorkerOut {
    connected: u64,
    still_open: u64,
    failures: BTreeMap<String, u64>,
    latency: Latency,
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
    crate::target::ready_then_wait(target);
    if target.child.is_none() {
        std::thread::sleep(Duration::from_secs(args.hold));
    }
    let held = target.broker_pid.and_then(crate::broker::sample);
    release.store(true, Ordering::Relaxed);
    let outs = workers
        .join()
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    let mut r = Report {
        scenario: format!("conn n={} rate={}", args.connections, args.rate),
        target: target.addr.to_string(),
        elapsed_secs: started.elapsed().as_secs_f64(),
        connections_wanted: local,
        connect_secs,
        ..Report::default()
    };
    for o in outs {
        r.connected += o.connected;
        r.still_open += o.still_open;
        for (k, v) in o.failures {
            *r.failures.entry(k).or_default() += v;
        }
        r.connect_latency.merge(&o.latency);
    }
    if let (Some(b), Some(h)) = (before, held) {
        r.broker = Some(crate::broker::usage(b, h));
    }
    Ok(r)
}

async fn worker(
    t: usize,
    target: TargetArgs,
    args: ConnArgs,
    sources: Vec<std::net::IpAddr>,
    progress: Arc<Progress>,
    release: Arc<AtomicBool>,
) -> WorkerOut {
    let slice = target.slice();
    let clients: Vec<usize> = slice.clients(t, args.connections).collect();
    let per_worker = args.rate / (slice.procs * slice.threads) as f64;
    let pending = Rc::new(Cell::new(0usize));
    let out = Rc::new(RefCell::new(WorkerOut::default()));
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
        while pending.get() >= args.max_pending {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        pending.set(pending.get() + 1);
        let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
        let ctx = (
            target.clone(),
            args.clone(),
            progress.clone(),
            release.clone(),
        );
        let (pending, out, hist) = (pending.clone(), out.clone(), hist.clone());
        handles.push(monoio::spawn(async move {
            let (target, args, progress, release) = ctx;
            let t0 = Instant::now();
            let result = Client::open(
                &target,
                format!("lg-c-{i}"),
                !args.persistent,
                args.keepalive,
                source,
            )
            .await;
            pending.set(pending.get() - 1);
            let mut client = match result {
                Ok(c) => c,
                Err(e) => {
                    *out.borrow_mut().failures.entry(e.label()).or_default() += 1;
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                    progress.settled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let _ = hist
                .borrow_mut()
                .record(t0.elapsed().as_micros().max(1) as u64);
            if let Some(pattern) = &args.subscribe {
                let filter = pattern.replace("{i}", &i.to_string());
                let ok = client.subscribe(&filter, QoS::AtMostOnce).await;
                if !matches!(ok, Ok(true)) {
                    *out.borrow_mut()
                        .failures
                        .entry("subscribe failed".into())
                        .or_default() += 1;
                }
            }
            out.borrow_mut().connected += 1;
            progress.up.fetch_add(1, Ordering::Relaxed);
            progress.settled.fetch_add(1, Ordering::Relaxed);
            if hold(&mut client, &args, &release).await {
                out.borrow_mut().still_open += 1;
            } else {
                *out.borrow_mut()
                    .failures
                    .entry("closed while held".into())
                    .or_default() += 1;
            }
            progress.up.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for h in handles {
        h.await;
    }
    let mut o = std::mem::take(&mut *out.borrow_mut());
    o.latency = Latency::from_hist(&hist.borrow());
    o
}

/// Keeps the connection alive until released, then checks it still answers a PINGREQ.
async fn hold(client: &mut Client, args: &ConnArgs, release: &AtomicBool) -> bool {
    let ping_every = Duration::from_secs(u64::from(args.keepalive.max(2)) / 2);
    let mut next_ping = Instant::now() + ping_every;
    while !release.load(Ordering::Relaxed) {
        let tick = monoio::time::sleep(Duration::from_millis(500));
        monoio::select! {
            _ = tick => {}
            r = client.readable() => {
                if r.is_err() || !client.fill().unwrap_or(false) {
                    return false;
                }
                while let Ok(Some(_)) = client.try_next() {}
            }
        }
        if Instant::now() >= next_ping && args.keepalive > 0 {
            if client.send(&Packet::PingReq).await.is_err() {
                return false;
            }
            next_ping = Instant::now() + ping_every;
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
