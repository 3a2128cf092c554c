//! `pubsub`: P publishers and S subscribers on topic patterns ({i} is the client's index, {p}
//! the client prefix), for 1:1 pairs, fan-out, fan-in, wildcards and shared groups. Each
//! payload carries the publisher, a sequence number and its send time, so latency is measured
//! end to end and lost or duplicated messages are counted. Open loop, a message the broker held
//! back (its window full, its socket full) carries the time it was due instead: corrected for
//! coordinated omission. Closed loop keeps at most W messages in flight end to end per
//! publisher: the sustainable capacity. `--persistent` subscribers keep their sessions
//! (publishers are always clean: a kept one would only add store work); a resumed session may
//! first be sent messages from before the run, which are acknowledged and counted apart
//! (stale), by their timestamp. Their default topics hold the run's client prefix, so that the
//! sessions earlier runs left behind are sent none of this run's messages.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use ringmq::codec::{Packet, PubResp, Publish, QoS, ReasonCode};
use ringmq::topic::{matches, parse_shared};
use serde::{Deserialize, Serialize};

use crate::broker::Usage;
use crate::client::Client;
use crate::report::{histogram, unix_ns, Latency, Report};
use crate::session::{topic, Session, SessionArgs};
use crate::target::{source_for, Progress, TargetArgs};

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct PubSubArgs {
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Topic each publisher publishes to ({i}: the publisher's index, {p}: the client prefix).
    /// Default: bench/{i}; with --persistent, bench/{p}/{i}.
    #[arg(long)]
    pub pub_topic: Option<String>,
    /// Filter each subscriber subscribes to ({i}: the subscriber's index, {p}: the client
    /// prefix); `$share/g/...` works. Default: as --pub-topic's.
    #[arg(long)]
    pub sub_topic: Option<String>,
    /// Where the subscribers connect (default: --addr): another node of a cluster, so every
    /// message crosses between nodes.
    #[arg(long)]
    pub sub_addr: Option<std::net::SocketAddr>,
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Payload bytes (at least 20: publisher id, sequence, timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second per publisher (open loop). 0: closed loop with --inflight.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Messages per second for all publishers together (open loop); overrides --rate.
    #[arg(long)]
    pub total_rate: Option<f64>,
    /// Closed loop: messages in flight end to end per publisher.
    #[arg(long, default_value_t = 100)]
    pub inflight: u64,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Subscribers keep their sessions: clean session (v3) / clean start (v5) off.
    #[arg(long)]
    pub persistent: bool,
    #[command(flatten)]
    pub session: SessionArgs,
}

impl PubSubArgs {
    /// What this run's subscribers connect with (publishers: always a clean session).
    fn session(&self) -> Session {
        if self.persistent {
            self.session.kept()
        } else {
            Session::Clean
        }
    }

    /// A topic pattern: the one given, else `bench/{i}`; with persistent sessions
    /// `bench/{p}/{i}`, which no earlier run's sessions match.
    fn pattern<'a>(&self, given: &'a Option<String>) -> &'a str {
        match given {
            Some(p) => p,
            None if self.persistent => "bench/{p}/{i}",
            None => "bench/{i}",
        }
    }

    /// The topic publisher `i` publishes to.
    fn topic_of(&self, i: usize) -> String {
        topic(self.pattern(&self.pub_topic), self.session.prefix(), i)
    }

    /// The filter subscriber `j` subscribes to.
    fn filter_of(&self, j: usize) -> String {
        topic(self.pattern(&self.sub_topic), self.session.prefix(), j)
    }

    /// The arguments with what must be the same in every process of a run fixed: persistent
    /// sessions' client prefix.
    pub fn for_this_run(&self) -> PubSubArgs {
        PubSubArgs {
            session: if self.persistent {
                self.session.for_this_run()
            } else {
                self.session.clone()
            },
            ..self.clone()
        }
    }
}

/// Payload bytes before the padding: publisher (or session) id, sequence, timestamp.
pub const HEADER: usize = 20;

/// A payload's header: who sent it, its sequence number and its send time (Unix ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u32,
    pub seq: u64,
    pub stamp_ns: u64,
}

impl Header {
    /// The header of a received payload; `None` when it is too short to hold one.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let head = payload.get(..HEADER)?;
        let (id, rest) = head.split_at(4);
        let (seq, stamp) = rest.split_at(8);
        Some(Header {
            id: u32::from_be_bytes(id.try_into().ok()?),
            seq: u64::from_be_bytes(seq.try_into().ok()?),
            stamp_ns: u64::from_be_bytes(stamp.try_into().ok()?),
        })
    }
}

/// How many deliveries one message of publisher `i` should make to the subscribers `subs`:
/// the matching ones, a shared group counting once.
fn fanout(args: &PubSubArgs, i: usize, subs: impl Iterator<Item = usize>) -> u64 {
    let topic = args.topic_of(i);
    let mut groups = std::collections::HashSet::new();
    let mut n = 0;
    for j in subs {
        let filter = args.filter_of(j);
        match parse_shared(&filter) {
            Some(Ok((group, inner)))
                if matches(inner, &topic) && groups.insert(group.to_string()) =>
            {
                n += 1
            }
            None if matches(&filter, &topic) => n += 1,
            _ => {}
        }
    }
    n
}

/// State shared by every worker thread of this process.
struct Shared {
    /// When this process began the run: a message stamped before it is from an earlier run.
    run_ns: u64,
    delivered: Vec<AtomicU64>,
    wakers: Vec<atomic_waker::AtomicWaker>,
    subs_ready: AtomicUsize,
    go: AtomicBool,
    stop: AtomicBool,
    start_ns: AtomicU64,
}

#[derive(Default)]
struct WorkerOut {
    published: u64,
    expected: u64,
    delivered: u64,
    duplicated: u64,
    stale: u64,
    measured: u64,
    failures: Vec<String>,
    latency: Latency,
}

pub fn run(
    target: &TargetArgs,
    args: &PubSubArgs,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    let resolved;
    let args = match args.total_rate {
        Some(total) => {
            anyhow::ensure!(total > 0.0, "--total-rate must be positive");
            resolved = PubSubArgs {
                rate: total / args.publishers.max(1) as f64,
                total_rate: None,
                ..args.clone()
            };
            &resolved
        }
        None => args,
    };
    anyhow::ensure!(
        args.size >= HEADER,
        "--size must be at least {HEADER} bytes"
    );
    anyhow::ensure!(args.qos <= 2, "--qos is 0, 1 or 2");
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    target.protocol()?;
    let slice = target.slice();
    let local = slice.local_clients(args.subscribers);
    let local_subs = local.len();
    if args.rate == 0.0 {
        for i in slice.local_clients(args.publishers) {
            anyhow::ensure!(
                fanout(args, i, local.iter().copied()) > 0,
                "closed loop needs each publisher's subscribers in its own process; \
                 use --rate (open loop) or fewer --procs"
            );
        }
    }
    let shared = Arc::new(Shared {
        run_ns: unix_ns(),
        delivered: (0..args.publishers).map(|_| AtomicU64::new(0)).collect(),
        wakers: (0..args.publishers)
            .map(|_| atomic_waker::AtomicWaker::new())
            .collect(),
        subs_ready: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        start_ns: AtomicU64::new(0),
    });
    let sources = target.sources()?;
    let workers = {
        let (target, args, progress, shared) = (
            target.clone(),
            args.clone(),
            progress.clone(),
            shared.clone(),
        );
        std::thread::spawn(move || {
            crate::workers::run(target.threads(), move |t| {
                worker(
                    t,
                    target.clone(),
                    args.clone(),
                    sources.clone(),
                    progress.clone(),
                    shared.clone(),
                )
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.subs_ready.load(Ordering::Relaxed) < local_subs && !workers.is_finished() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "subscribers did not all connect within 60 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    crate::procs::ready_then_wait(target, progress);
    shared.start_ns.store(unix_ns(), Ordering::Relaxed);
    shared.go.store(true, Ordering::Relaxed);
    let broker = measured_window(target, args);
    shared.stop.store(true, Ordering::Relaxed);
    let outs = workers
        .join()
        .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
    let mut r = Report {
        scenario: format!(
            "pubsub P={} S={} pub={} sub={} qos={} size={} {}{}",
            args.publishers,
            args.subscribers,
            args.pattern(&args.pub_topic),
            args.pattern(&args.sub_topic),
            args.qos,
            args.size,
            if args.rate > 0.0 {
                format!("rate={}/s", args.rate)
            } else {
                format!("closed-loop w={}", args.inflight)
            },
            if args.persistent {
                format!(" persistent ids={}-*", args.session.prefix())
            } else {
                String::new()
            }
        ),
        target: target.addr.to_string(),
        elapsed_secs: args.warmup + args.duration,
        measured_secs: args.duration,
        ..Report::default()
    };
    for o in outs {
        r.published += o.published;
        r.expected += o.expected;
        r.delivered += o.delivered;
        r.duplicated += o.duplicated;
        r.stale += o.stale;
        r.measured_delivered += o.measured;
        r.latency.merge(&o.latency);
        for f in o.failures {
            *r.failures.entry(f).or_default() += 1;
        }
    }
    r.broker = broker;
    Ok(r)
}

/// Waits out the warm-up and the measured window from the start of a run, and returns what the
/// broker used over the measured window alone, as deliveries are counted.
pub fn measured_window(target: &TargetArgs, args: &PubSubArgs) -> Option<Usage> {
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let measured = || std::thread::sleep(Duration::from_secs_f64(args.duration));
    crate::broker::over(target.broker_pid, measured).1
}

/// What every client task of a worker thread shares.
struct Ctx {
    target: TargetArgs,
    args: PubSubArgs,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
    out: RefCell<WorkerOut>,
    hist: RefCell<hdrhistogram::Histogram<u64>>,
}

async fn worker(
    t: usize,
    target: TargetArgs,
    args: PubSubArgs,
    sources: Vec<std::net::IpAddr>,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
) -> WorkerOut {
    let slice = target.slice();
    let local_subs = slice.local_clients(args.subscribers);
    let ctx = Rc::new(Ctx {
        target,
        args,
        progress,
        shared,
        out: RefCell::new(WorkerOut::default()),
        hist: RefCell::new(histogram()),
    });
    let args = &ctx.args;
    let mut handles = Vec::new();
    for j in slice.clients(t, args.subscribers) {
        let (ctx, source) = (ctx.clone(), source_for(&sources, j));
        handles.push(monoio::spawn(async move {
            if let Err(e) = subscriber(j, &ctx, source).await {
                ctx.out
                    .borrow_mut()
                    .failures
                    .push(format!("subscriber: {e}"));
                ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                ctx.shared.subs_ready.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for i in slice.clients(t, args.publishers) {
        let local_fan = fanout(args, i, local_subs.iter().copied());
        let global_fan = fanout(args, i, 0..args.subscribers);
        let (ctx, source) = (ctx.clone(), source_for(&sources, args.subscribers + i));
        handles.push(monoio::spawn(async move {
            match publisher(i, local_fan, &ctx, source).await {
                Ok(n) => {
                    let mut o = ctx.out.borrow_mut();
                    o.published += n;
                    o.expected += n * global_fan;
                }
                Err(e) => {
                    ctx.out
                        .borrow_mut()
                        .failures
                        .push(format!("publisher: {e}"));
                    ctx.progress.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for h in handles {
        h.await;
    }
    let mut o = std::mem::take(&mut *ctx.out.borrow_mut());
    o.latency = Latency::from_hist(&ctx.hist.borrow());
    o
}

fn qos(n: u8) -> QoS {
    QoS::from_u8(n).unwrap_or(QoS::AtMostOnce)
}

async fn subscriber(j: usize, ctx: &Ctx, source: Option<std::net::IpAddr>) -> anyhow::Result<()> {
    let Ctx {
        target,
        args,
        progress,
        shared,
        out,
        hist,
    } = ctx;
    let id = args.session.subscriber_id(j);
    let addr = args.sub_addr.unwrap_or(target.addr);
    let mut c = Client::open_at(target, addr, id, args.session(), 60, source).await?;
    let filter = args.filter_of(j);
    anyhow::ensure!(c.subscribe(&filter, qos(args.qos)).await?, "no SUBACK");
    let _up = progress.connection_up();
    shared.subs_ready.fetch_add(1, Ordering::Relaxed);
    let mut next_seq: HashMap<u32, u64> = HashMap::new();
    let (warm_ns, dur_ns) = ((args.warmup * 1e9) as u64, (args.duration * 1e9) as u64);
    let mut quiet_since: Option<Instant> = None;
    loop {
        while let Some(p) = c.try_next_publish()? {
            let Some(Header {
                id: pub_id,
                seq,
                stamp_ns: stamp,
            }) = Header::read(&p.payload)
            else {
                continue;
            };
            let mut o = out.borrow_mut();
            if stamp < shared.run_ns {
                o.stale += 1;
                continue;
            }
            o.delivered += 1;
            let next = next_seq.entry(pub_id).or_insert(0);
            if seq < *next {
                o.duplicated += 1;
            } else {
                *next = seq + 1;
            }
            let start = shared.start_ns.load(Ordering::Relaxed);
            if stamp >= start + warm_ns && stamp < start + warm_ns + dur_ns {
                o.measured += 1;
                let _ = hist
                    .borrow_mut()
                    .record((unix_ns().saturating_sub(stamp) / 1000).max(1));
            }
            progress.received.fetch_add(1, Ordering::Relaxed);
            if let (Some(d), Some(w)) = (
                shared.delivered.get(pub_id as usize),
                shared.wakers.get(pub_id as usize),
            ) {
                d.fetch_add(1, Ordering::Relaxed);
                w.wake();
            }
        }
        c.flush().await?;
        if shared.stop.load(Ordering::Relaxed) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let tick = monoio::time::sleep(Duration::from_millis(200));
        monoio::select! {
            _ = tick => {}
            r = c.read_more() => {
                r?;
                if shared.stop.load(Ordering::Relaxed) {
                    quiet_since = Some(Instant::now());
                }
            }
        }
    }
    c.disconnect().await;
    Ok(())
}

/// Payloads of one size, written one after another into one buffer: each is a view of it,
/// whose space the next takes back once the codec has copied the message out and dropped it.
pub struct Payloads {
    buf: BytesMut,
    size: usize,
}

impl Payloads {
    pub fn new(size: usize) -> Payloads {
        Payloads {
            buf: BytesMut::new(),
            size,
        }
    }

    /// The next payload: its header (`Header`), then padding up to the size.
    pub fn next(&mut self, id: u32, seq: u64, stamp_ns: u64) -> Bytes {
        self.buf.reserve(self.size);
        self.buf.put_u32(id);
        self.buf.put_u64(seq);
        self.buf.put_u64(stamp_ns);
        self.buf.resize(self.size, b'x');
        self.buf.split().freeze()
    }
}

/// Publishes until told to stop; returns how many messages it published.
async fn publisher(
    i: usize,
    local_fan: u64,
    ctx: &Ctx,
    source: Option<std::net::IpAddr>,
) -> anyhow::Result<u64> {
    let Ctx {
        target,
        args,
        progress,
        shared,
        ..
    } = ctx;
    // A kept session would only add store work, and could leave QoS 2 ids awaiting release.
    let id = args.session.publisher_id(i);
    let mut c = Client::open(target, id, Session::Clean, 60, source).await?;
    let _up = progress.connection_up();
    while !shared.go.load(Ordering::Relaxed) {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let topic: bytestring::ByteString = args.topic_of(i).into();
    let q = qos(args.qos);
    let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    // The wall clock at `start`, read with it. Not the run's start: this publisher saw the go
    // up to a sleep later, and that lag would count in every latency it measures.
    let start = Instant::now();
    let start_ns = unix_ns();
    // Open loop: whether the broker held the last sends back (the QoS window full, the output
    // queue over its bound, the socket full). Sends due meanwhile are stamped with the time
    // they were due, so a slow broker's delay counts (no coordinated omission). Otherwise a
    // send is stamped when it goes: the lateness of this loop's own 1 ms timer is not the
    // broker's latency (it was most of a 10 k msg/s run's p50).
    let mut held = false;
    let end = start + Duration::from_secs_f64(args.warmup + args.duration);
    let (mut seq, mut unacked, mut pid) = (0u64, 0u64, 0u16);
    let mut forgiven = 0u64;
    let mut last_progress = (Instant::now(), 0u64);
    let window = args.inflight.max(1);
    let mut payloads = Payloads::new(args.size);
    while Instant::now() < end && !shared.stop.load(Ordering::Relaxed) {
        c.fill()?;
        while let Some(p) = c.try_next()? {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => unacked = unacked.saturating_sub(1),
                Packet::PubRec(r) => c.queue(&Packet::PubRel(PubResp::new(
                    r.packet_id,
                    ReasonCode::Success,
                ))),
                _ => {}
            }
        }
        let now = Instant::now();
        let delivered = shared.delivered[i].load(Ordering::Relaxed) + forgiven;
        if delivered != last_progress.1 {
            last_progress = (now, delivered);
        } else if now.duration_since(last_progress.0) > Duration::from_secs(1) {
            forgiven += (seq * local_fan).saturating_sub(delivered);
            last_progress = (now, delivered);
        }
        let qos_room = |unacked: u64| q == QoS::AtMostOnce || unacked < window.min(65_000);
        loop {
            let stamp = match interval {
                Some(iv) => {
                    let intended = start + iv.mul_f64(seq as f64);
                    if intended > now {
                        held = false;
                        break;
                    }
                    if held {
                        start_ns + intended.duration_since(start).as_nanos() as u64
                    } else {
                        unix_ns()
                    }
                }
                None => {
                    if seq * local_fan >= delivered + window * local_fan {
                        break;
                    }
                    unix_ns()
                }
            };
            if !qos_room(unacked) || c.queued() > 256 * 1024 {
                held = true;
                break;
            }
            let packet_id = if q == QoS::AtMostOnce {
                None
            } else {
                pid = pid.wrapping_add(1).max(1);
                unacked += 1;
                Some(pid)
            };
            c.queue(&Packet::Publish(Publish {
                dup: false,
                qos: q,
                retain: false,
                topic: topic.clone(),
                packet_id,
                properties: None,
                payload: payloads.next(i as u32, seq, stamp),
            }));
            seq += 1;
            progress.sent.fetch_add(1, Ordering::Relaxed);
        }
        if !c.try_flush()? {
            held = true;
            c.flush().await?;
        }
        let wait = match interval {
            Some(iv) => (start + iv.mul_f64(seq as f64))
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
            None => Duration::from_millis(50),
        };
        let delivered_now = shared.delivered[i].load(Ordering::Relaxed);
        let sleep = monoio::time::sleep(wait);
        monoio::select! {
            _ = sleep => {}
            r = c.readable() => { r?; }
            _ = poll_fn(|cx| {
                shared.wakers[i].register(cx.waker());
                if interval.is_none() && shared.delivered[i].load(Ordering::Relaxed) != delivered_now {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }) => {}
        }
    }
    let drain_until = Instant::now() + Duration::from_secs(5);
    while unacked > 0 && Instant::now() < drain_until {
        match monoio::time::timeout(Duration::from_millis(200), c.next()).await {
            Ok(Ok(Some(Packet::PubAck(_) | Packet::PubComp(_)))) => unacked -= 1,
            Ok(Ok(Some(Packet::PubRec(r)))) => {
                c.send(&Packet::PubRel(PubResp::new(
                    r.packet_id,
                    ReasonCode::Success,
                )))
                .await?;
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => break,
        }
    }
    c.disconnect().await;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PubSubArgs,
    }

    /// The arguments of one run of `pubsub ARGS`.
    fn run_of(args: &[&str]) -> PubSubArgs {
        let argv = std::iter::once("pubsub").chain(args.iter().copied());
        Cli::parse_from(argv).args.for_this_run()
    }

    #[test]
    fn persistent_runs_publish_on_topics_no_earlier_run_subscribed_to() {
        let plain = run_of(&[]);
        assert_eq!(plain.topic_of(3), "bench/3");
        assert_eq!(plain.filter_of(3), "bench/3");
        let (a, b) = (run_of(&["--persistent"]), run_of(&["--persistent"]));
        assert_eq!(a.topic_of(3), format!("bench/{}/3", a.session.prefix()));
        assert_eq!(a.filter_of(3), a.topic_of(3));
        assert!(
            !matches(&a.filter_of(3), &b.topic_of(3)),
            "an earlier run's sessions are sent none of this run's messages"
        );
        let given = run_of(&[
            "--persistent",
            "--client-prefix",
            "dur",
            "--subscribers",
            "3",
            "--pub-topic",
            "t/{p}/{i}",
            "--sub-topic",
            "t/{p}/+",
        ]);
        assert_eq!(given.topic_of(2), "t/dur/2");
        assert_eq!(given.filter_of(2), "t/dur/+");
        assert_eq!(fanout(&given, 0, 0..3), 3);
    }

    #[test]
    fn a_payload_header_reads_back_and_a_short_one_is_none() {
        let p = Payloads::new(64).next(7, 1 << 40, 123_456_789);
        assert_eq!(p.len(), 64);
        assert_eq!(
            Header::read(&p),
            Some(Header {
                id: 7,
                seq: 1 << 40,
                stamp_ns: 123_456_789
            })
        );
        assert_eq!(Header::read(&p[..HEADER - 1]), None);
    }

    #[test]
    fn payloads_reuse_their_buffer_once_the_last_one_is_dropped() {
        let mut payloads = Payloads::new(64);
        let first = payloads.next(1, 0, 0);
        let at = first.as_ptr();
        drop(first);
        let second = payloads.next(1, 1, 0);
        assert_eq!(second.as_ptr(), at, "the same space again");
        let third = payloads.next(1, 2, 0);
        assert_ne!(
            third.as_ptr(),
            second.as_ptr(),
            "not while the last one is held"
        );
        assert_eq!(Header::read(&second).map(|h| h.seq), Some(1));
        assert_eq!(Header::read(&third).map(|h| h.seq), Some(2));
    }
}
