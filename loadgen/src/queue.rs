//! `queue`: offline queues, filled and drained. S persistent subscribers connect, subscribe to
//! a topic each and go; M QoS 1 messages are published over their topics (message k to
//! session k mod S), each PUBACKed, so the broker holds all of them for offline sessions.
//! `--drain` brings the subscribers back and counts every message once: lost (of those
//! acknowledged, judged only when nothing in the fill failed), duplicated, stray. `--no-fill`
//! only drains, what an earlier run with the same `--client-prefix` filled (across a broker
//! restart, say). Each phase is timed, and the broker's CPU over it sampled.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use clap::Args;
use ringmq::codec::{Packet, Publish, QoS};
use serde::Serialize;

use crate::broker;
use crate::client::Client;
use crate::pubsub::{Header, Payloads, HEADER};
use crate::report::{earliest_ns, unix_ns, Outcome};
use crate::session::{topic, Session, SessionArgs};
use crate::target::{source_for, Progress, TargetArgs};

#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Persistent sessions, one subscriber and one topic each.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// QoS 1 messages in all, spread evenly over the sessions.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// PUBACKs each publisher waits for at once.
    #[arg(long, default_value_t = 100)]
    pub inflight: u64,
    /// Payload bytes (at least 20).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Topic of session {i}; {p} is the client prefix, so that runs do not share topics.
    #[arg(long, default_value = "queue/{p}/{i}")]
    pub topic: String,
    /// Sessions being set up or drained at once, per worker thread.
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// Then reconnect the subscribers and count what they are sent.
    #[arg(long)]
    pub drain: bool,
    /// Only drain: the sessions an earlier run with this --client-prefix filled.
    #[arg(long, requires = "drain", requires = "client_prefix")]
    pub no_fill: bool,
    /// Seconds a draining subscriber waits for its next message before it gives up.
    #[arg(long, default_value_t = 2.0)]
    pub quiet: f64,
    #[command(flatten)]
    pub session: SessionArgs,
}

/// What a run measured; rates are per second of the phase and per broker CPU-second over it.
#[derive(Debug, Default, Serialize)]
pub struct QueueReport {
    pub target: String,
    pub client_prefix: String,
    pub sessions: u64,
    pub messages: u64,
    /// This run set up the sessions and filled them (not `--no-fill`).
    pub filled_phase: bool,
    /// Sessions connected, subscribed and disconnected, and the seconds that took.
    pub set_up: u64,
    pub setup_secs: f64,
    pub published: u64,
    pub acked: u64,
    /// PUBACKs with an error reason (v5).
    pub refused: u64,
    /// Sessions not set up and publishers that failed: the fill is incomplete, what the broker
    /// holds unknown, and losses are not judged.
    pub fill_failed: u64,
    /// From the first publish to the last PUBACK (0 when none came).
    pub fill_secs: f64,
    pub fill_rate: Option<f64>,
    pub fill_per_cpu_sec: Option<f64>,
    pub drained_phase: bool,
    /// Sessions the broker still had when their subscribers came back (CONNACK session present).
    pub resumed: u64,
    /// Distinct messages received.
    pub drained: u64,
    /// What `owed` has that was not drained; none without a drain or after an incomplete fill.
    pub lost: Option<u64>,
    pub duplicated: u64,
    /// Messages that were not this run's for that session.
    pub stray: u64,
    /// From the first reconnect to the last message received.
    pub drain_secs: f64,
    pub drain_rate: Option<f64>,
    pub drain_per_cpu_sec: Option<f64>,
    pub failures: BTreeMap<String, u64>,
}

impl QueueReport {
    /// The messages a drain should bring back: the ones this run's fill had acknowledged when
    /// nothing in it failed (refused ones are not owed), `--messages` after `--no-fill` (an
    /// earlier run filled them); none after an incomplete fill.
    fn owed(&self) -> Option<u64> {
        match (self.filled_phase, self.fill_failed) {
            (false, _) => Some(self.messages),
            (true, 0) => Some(self.acked),
            (true, _) => None,
        }
    }

    /// The owed messages the drain did not bring back, once it has run.
    fn judge_loss(&self) -> Option<u64> {
        let owed = self.owed().filter(|_| self.drained_phase)?;
        Some(owed.saturating_sub(self.drained))
    }
}

impl Outcome for QueueReport {
    fn shortfall(&self) -> Option<String> {
        if let Some((why, n)) = self.failures.iter().next() {
            Some(format!("{n} failed: {why}"))
        } else if self.published > 0 && self.acked < self.messages {
            Some(format!(
                "{} of {} messages acknowledged",
                self.acked, self.messages
            ))
        } else if self.drained_phase && (self.lost.unwrap_or(0) > 0 || self.stray > 0) {
            Some(format!(
                "lost {} of {} acknowledged messages ({} stray)",
                self.lost.unwrap_or(0),
                self.owed().unwrap_or(0),
                self.stray
            ))
        } else {
            None
        }
    }

    fn print(&self) {
        let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.0}"));
        println!(
            "queue         {} sessions, {} QoS 1 messages, ids {}-s-*  ->  {}",
            self.sessions, self.messages, self.client_prefix, self.target
        );
        if self.filled_phase {
            println!(
                "set up        {} sessions in {:.2} s",
                self.set_up, self.setup_secs
            );
            println!(
                "filled        {} acknowledged ({} refused) in {:.2} s: {} msg/s, {} per broker CPU-s",
                self.acked,
                self.refused,
                self.fill_secs,
                rate(self.fill_rate),
                rate(self.fill_per_cpu_sec)
            );
        }
        if self.drained_phase {
            let lost = match (self.owed(), self.lost) {
                (Some(owed), Some(lost)) => format!("of {owed} acknowledged (lost {lost}"),
                _ => "(fill incomplete: losses not judged".into(),
            };
            println!(
                "drained       {} {lost}, duplicated {}, stray {}) from {} resumed sessions",
                self.drained, self.duplicated, self.stray, self.resumed
            );
            println!(
                "drain rate    {:.2} s: {} msg/s, {} per broker CPU-s",
                self.drain_secs,
                rate(self.drain_rate),
                rate(self.drain_per_cpu_sec)
            );
        }
        for (why, n) in &self.failures {
            println!("failed        {n:>8}  {why}");
        }
    }
}

/// How many of `messages` go to session `j` of `sessions` (message k to session k mod S).
fn expected(j: usize, sessions: usize, messages: u64) -> u64 {
    let s = sessions as u64;
    messages / s + u64::from((j as u64) < messages % s)
}

/// Which of a session's messages (numbered 0..expected) have come, each counted once.
struct Tally {
    seen: Vec<u64>,
    expected: u64,
    distinct: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    New,
    Again,
    Stray,
}

impl Tally {
    fn new(expected: u64) -> Tally {
        Tally {
            seen: vec![0; expected.div_ceil(64) as usize],
            expected,
            distinct: 0,
        }
    }

    fn record(&mut self, n: u64) -> Seen {
        if n >= self.expected {
            return Seen::Stray;
        }
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if self.seen[word] & bit != 0 {
            return Seen::Again;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        Seen::New
    }

    fn complete(&self) -> bool {
        self.distinct == self.expected
    }
}

/// What every worker thread of a phase shares.
struct Job {
    target: TargetArgs,
    args: QueueArgs,
    sources: Vec<IpAddr>,
    topics: Vec<ByteString>,
    /// The next message a publisher claims.
    next: AtomicU64,
    progress: Arc<Progress>,
}

impl Job {
    /// Connects client `i` (subscribers first, then publishers) with `id`.
    async fn open(&self, id: String, session: Session, i: usize) -> anyhow::Result<Client> {
        let source = source_for(&self.sources, i);
        Ok(Client::open(&self.target, id, session, 60, source).await?)
    }
}

/// One worker thread's share of a phase.
#[derive(Default)]
struct Out {
    set_up: u64,
    published: u64,
    acked: u64,
    refused: u64,
    resumed: u64,
    drained: u64,
    duplicated: u64,
    stray: u64,
    /// Unix ns: the first message published, the last PUBACK and the last message drained.
    first_tx_ns: u64,
    last_ack_ns: u64,
    last_rx_ns: u64,
    failures: BTreeMap<String, u64>,
}

impl Out {
    fn fail(&mut self, phase: &str, e: anyhow::Error) {
        *self.failures.entry(format!("{phase}: {e}")).or_default() += 1;
    }

    fn add(&mut self, o: Out) {
        self.set_up += o.set_up;
        self.published += o.published;
        self.acked += o.acked;
        self.refused += o.refused;
        self.resumed += o.resumed;
        self.drained += o.drained;
        self.duplicated += o.duplicated;
        self.stray += o.stray;
        self.first_tx_ns = earliest_ns(self.first_tx_ns, o.first_tx_ns);
        self.last_ack_ns = self.last_ack_ns.max(o.last_ack_ns);
        self.last_rx_ns = self.last_rx_ns.max(o.last_rx_ns);
        for (k, v) in o.failures {
            *self.failures.entry(k).or_default() += v;
        }
    }
}

pub fn run(
    target: &TargetArgs,
    args: &QueueArgs,
    progress: &Arc<Progress>,
) -> anyhow::Result<QueueReport> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!(args.publishers > 0, "--publishers must be at least 1");
    anyhow::ensure!(
        args.size >= HEADER,
        "--size must be at least {HEADER} bytes"
    );
    anyhow::ensure!(
        u32::try_from(args.sessions).is_ok(),
        "--sessions: at most {}",
        u32::MAX
    );
    anyhow::ensure!(target.procs == 1, "queue runs in one process (no --procs)");
    target.protocol()?;
    let session = args.session.for_this_run();
    let prefix = session.prefix();
    let job = Arc::new(Job {
        target: target.clone(),
        topics: (0..args.sessions)
            .map(|j| topic(&args.topic, prefix, j).into())
            .collect(),
        args: QueueArgs {
            session: session.clone(),
            ..args.clone()
        },
        sources: target.sources()?,
        next: AtomicU64::new(0),
        progress: progress.clone(),
    });
    let mut r = QueueReport {
        target: target.addr.to_string(),
        client_prefix: prefix.to_string(),
        sessions: args.sessions as u64,
        messages: args.messages,
        filled_phase: !args.no_fill,
        drained_phase: args.drain,
        ..QueueReport::default()
    };
    let (pid, lanes) = (target.broker_pid, args.concurrency);
    if !args.no_fill {
        eprintln!("setting up {} sessions", args.sessions);
        let t0 = Instant::now();
        let o = per_session(&job, args.sessions, lanes, "setup", set_up);
        r.setup_secs = t0.elapsed().as_secs_f64();
        r.set_up = o.set_up;
        r.fill_failed += o.failures.values().sum::<u64>();
        r.failures.extend(o.failures);
        eprintln!("publishing {} messages", args.messages);
        let (o, used) = broker::over(pid, || {
            let p = args.publishers;
            per_session(&job, p, p, "publisher", publisher)
        });
        r.fill_secs = if o.first_tx_ns > 0 {
            o.last_ack_ns.saturating_sub(o.first_tx_ns) as f64 / 1e9
        } else {
            0.0
        };
        r.fill_per_cpu_sec = used.and_then(|u| u.per_cpu_sec(o.acked));
        r.fill_rate = (r.fill_secs > 0.0).then(|| o.acked as f64 / r.fill_secs);
        (r.published, r.acked, r.refused) = (o.published, o.acked, o.refused);
        r.fill_failed += o.failures.values().sum::<u64>();
        r.failures.extend(o.failures);
    }
    if args.drain {
        eprintln!("draining {} sessions", args.sessions);
        let start_ns = unix_ns();
        let (o, used) = broker::over(pid, || {
            per_session(&job, args.sessions, lanes, "drain", drain)
        });
        r.drain_per_cpu_sec = used.and_then(|u| u.per_cpu_sec(o.drained));
        r.drain_secs = o.last_rx_ns.saturating_sub(start_ns) as f64 / 1e9;
        r.drain_rate = (r.drain_secs > 0.0).then(|| o.drained as f64 / r.drain_secs);
        (r.resumed, r.drained, r.duplicated, r.stray) =
            (o.resumed, o.drained, o.duplicated, o.stray);
        r.failures.extend(o.failures);
    }
    r.lost = r.judge_loss();
    Ok(r)
}

/// Runs `each(k, ..)` for every `k < count` (a session, a publisher) on the worker threads,
/// each thread for the ks its slice gives it, `lanes` at a time; returns what they counted,
/// merged, and their failures under `phase`.
fn per_session<Fut>(
    job: &Arc<Job>,
    count: usize,
    lanes: usize,
    phase: &'static str,
    each: fn(usize, Arc<Job>, Rc<RefCell<Out>>) -> Fut,
) -> Out
where
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let job = job.clone();
    let outs = crate::workers::run(job.target.threads(), move |t| {
        let job = job.clone();
        async move {
            let queue = Rc::new(RefCell::new(job.target.slice().clients(t, count)));
            let out = Rc::new(RefCell::new(Out::default()));
            let lanes: Vec<_> = (0..lanes.max(1))
                .map(|_| {
                    let (queue, out, job) = (queue.clone(), out.clone(), job.clone());
                    monoio::spawn(async move {
                        loop {
                            let next = queue.borrow_mut().next();
                            let Some(k) = next else { break };
                            if let Err(e) = each(k, job.clone(), out.clone()).await {
                                out.borrow_mut().fail(phase, e);
                            }
                        }
                    })
                })
                .collect();
            for lane in lanes {
                lane.await;
            }
            let merged = std::mem::take(&mut *out.borrow_mut());
            merged
        }
    });
    let mut merged = Out::default();
    for o in outs {
        merged.add(o);
    }
    merged
}

/// Leaves session `j` subscribed to its topic, empty and offline.
async fn set_up(j: usize, job: Arc<Job>, out: Rc<RefCell<Out>>) -> anyhow::Result<()> {
    let (id, kept) = (job.args.session.subscriber_id(j), job.args.session.kept());
    let mut c = job.open(id.clone(), kept, j).await?;
    if c.session_present {
        // Left by an earlier run with this prefix, maybe with messages queued: a clean
        // connect discards it, and the session starts anew.
        leave(c).await;
        leave(job.open(id.clone(), Session::Clean, j).await?).await;
        c = job.open(id, kept, j).await?;
    }
    anyhow::ensure!(
        c.subscribe(&job.topics[j], QoS::AtLeastOnce).await?,
        "SUBACK refused or missing"
    );
    leave(c).await;
    out.borrow_mut().set_up += 1;
    Ok(())
}

/// Disconnects and waits (2 s at most) for the broker to close: it has then ended the
/// connection, and a persistent session is offline.
async fn leave(mut c: Client) {
    c.disconnect().await;
    let _ = monoio::time::timeout(Duration::from_secs(2), async {
        while let Ok(Some(_)) = c.next().await {}
    })
    .await;
}

/// Publishes messages claimed from the shared count until there are none left, at most
/// `--inflight` awaiting their PUBACK: as many as the window has room for are claimed at once.
/// Queue's payloads carry no send time (0): nothing reads it.
async fn publisher(p: usize, job: Arc<Job>, out: Rc<RefCell<Out>>) -> anyhow::Result<()> {
    let args = &job.args;
    let id = args.session.publisher_id(p);
    let mut c = job.open(id, Session::Clean, args.sessions + p).await?;
    let _up = job.progress.connection_up();
    let (sessions, window) = (args.sessions as u64, args.inflight.clamp(1, 65_000));
    let (mut pid, mut exhausted, mut last_ack) = (0u16, false, Instant::now());
    let (mut inflight, mut payloads) = (0u64, Payloads::new(args.size));
    loop {
        let (mut acked, mut refused) = (0, 0);
        while let Some(packet) = c.try_next()? {
            if let Packet::PubAck(a) = packet {
                if a.reason.is_error() {
                    refused += 1;
                } else {
                    acked += 1;
                }
            }
        }
        if acked + refused > 0 {
            inflight -= acked + refused;
            last_ack = Instant::now();
            let mut o = out.borrow_mut();
            o.acked += acked;
            o.refused += refused;
            o.last_ack_ns = unix_ns();
        }
        if !exhausted && inflight < window {
            let room = window - inflight;
            let first = job.next.fetch_add(room, Ordering::Relaxed);
            let end = (first + room).min(args.messages);
            exhausted = end == args.messages;
            for k in first..end {
                let j = k % sessions;
                pid = pid.wrapping_add(1).max(1);
                c.queue(&Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: job.topics[j as usize].clone(),
                    packet_id: Some(pid),
                    properties: None,
                    payload: payloads.next(j as u32, k / sessions, 0),
                }));
            }
            let published = end.saturating_sub(first);
            if published > 0 {
                inflight += published;
                job.progress.sent.fetch_add(published, Ordering::Relaxed);
                let mut o = out.borrow_mut();
                o.first_tx_ns = earliest_ns(o.first_tx_ns, unix_ns());
                o.published += published;
            }
        }
        c.flush().await?;
        if exhausted && inflight == 0 {
            break;
        }
        anyhow::ensure!(
            last_ack.elapsed() < Duration::from_secs(10),
            "no PUBACK for 10 s"
        );
        let tick = monoio::time::sleep(Duration::from_millis(100));
        monoio::select! {
            _ = tick => {}
            r = c.read_more() => r?,
        }
    }
    leave(c).await;
    Ok(())
}

/// Reconnects session `j` and takes its messages until it has them all or none comes for
/// `--quiet` seconds.
async fn drain(j: usize, job: Arc<Job>, out: Rc<RefCell<Out>>) -> anyhow::Result<()> {
    let session = &job.args.session;
    let mut c = job
        .open(session.subscriber_id(j), session.kept(), j)
        .await?;
    if !c.session_present {
        // The broker kept nothing for this session: its messages are lost.
        leave(c).await;
        return Ok(());
    }
    out.borrow_mut().resumed += 1;
    let _up = job.progress.connection_up();
    let mut tally = Tally::new(expected(j, job.args.sessions, job.args.messages));
    let quiet = Duration::from_secs_f64(job.args.quiet);
    while !tally.complete() {
        let (mut new, mut again, mut stray) = (0, 0, 0);
        while let Some(p) = c.try_next_publish()? {
            let seen = match Header::read(&p.payload) {
                Some(h) if h.id as usize == j => tally.record(h.seq),
                _ => Seen::Stray,
            };
            match seen {
                Seen::New => new += 1,
                Seen::Again => again += 1,
                Seen::Stray => stray += 1,
            }
        }
        if new + again + stray > 0 {
            let mut o = out.borrow_mut();
            o.duplicated += again;
            o.stray += stray;
            if new > 0 {
                o.drained += new;
                o.last_rx_ns = unix_ns();
                job.progress.received.fetch_add(new, Ordering::Relaxed);
            }
        }
        c.flush().await?;
        if tally.complete() {
            break;
        }
        match monoio::time::timeout(quiet, c.read_more()).await {
            Err(_) => break,
            Ok(r) => r?,
        }
    }
    leave(c).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_goes_to_exactly_one_session() {
        for (sessions, messages) in [(1, 0), (1, 5), (3, 10), (7, 3), (10, 100)] {
            let mut counts = vec![0u64; sessions];
            for k in 0..messages {
                counts[(k % sessions as u64) as usize] += 1;
            }
            let want: Vec<u64> = (0..sessions)
                .map(|j| expected(j, sessions, messages))
                .collect();
            assert_eq!(counts, want, "{sessions} sessions, {messages} messages");
        }
    }

    #[test]
    fn a_tally_counts_each_message_once_and_knows_strays() {
        let mut t = Tally::new(130);
        assert!(!t.complete());
        assert_eq!(t.record(0), Seen::New);
        assert_eq!(t.record(0), Seen::Again);
        assert_eq!(t.record(129), Seen::New);
        assert_eq!(t.record(130), Seen::Stray);
        for n in 1..129 {
            assert_eq!(t.record(n), Seen::New);
        }
        assert!(t.complete());
        assert_eq!(t.distinct, 130);
        assert!(Tally::new(0).complete());
    }

    #[test]
    fn shortfalls_name_what_is_missing() {
        let full = QueueReport {
            messages: 10,
            published: 10,
            acked: 10,
            drained_phase: true,
            drained: 10,
            ..QueueReport::default()
        };
        assert_eq!(full.shortfall(), None);
        let unacked = QueueReport { acked: 9, ..full };
        assert!(unacked.shortfall().is_some_and(|s| s.contains("9 of 10")));
        let lost = QueueReport {
            acked: 10,
            drained: 7,
            lost: Some(3),
            ..unacked
        };
        assert!(lost.shortfall().is_some_and(|s| s.contains("lost 3")));
        let stray = QueueReport {
            drained: 10,
            lost: Some(0),
            stray: 2,
            ..lost
        };
        assert!(stray.shortfall().is_some_and(|s| s.contains("2 stray")));
    }

    #[test]
    fn losses_are_judged_against_what_a_complete_fill_had_acknowledged() {
        let run = |acked, refused, fill_failed, drained| QueueReport {
            messages: 10,
            filled_phase: true,
            published: acked + refused,
            acked,
            refused,
            fill_failed,
            drained_phase: true,
            drained,
            ..QueueReport::default()
        };
        assert_eq!(run(10, 0, 0, 10).judge_loss(), Some(0));
        assert_eq!(run(10, 0, 0, 7).judge_loss(), Some(3));
        assert_eq!(run(8, 2, 0, 8).judge_loss(), Some(0), "refused: not owed");
        assert_eq!(run(8, 2, 0, 6).judge_loss(), Some(2));
        assert_eq!(run(6, 0, 1, 6).judge_loss(), None, "fill incomplete");
        let no_drain = QueueReport {
            drained_phase: false,
            ..run(10, 0, 0, 0)
        };
        assert_eq!(no_drain.judge_loss(), None);
        let earlier_fill = QueueReport {
            filled_phase: false,
            ..run(0, 0, 0, 9)
        };
        assert_eq!(earlier_fill.judge_loss(), Some(1), "against --messages");
    }
}
