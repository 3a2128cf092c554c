//! This shard's side of the cluster ([`crate::cluster`]): what it reports (its routes' 0 <-> 1
//! changes, the retained messages set here), what it is told (remote nodes and their routes,
//! which it keeps in its interest table, each remote node one more member after the local
//! shards; retained messages in the order the cluster agreed), and its own connection to each
//! remote node, over which it forwards the publishes that node has subscribers for, once per
//! node. A forwarding connection is dialled, and dialled again after a failure, by a task of
//! its own; while it is down or behind, what waits for it is bounded, and past the bound the
//! shard stops reading its publishers (as for a full ring) rather than drop anything.
//!
//! A QoS 1/2 publish whose acknowledgement waits for the store (`[durability]` on) waits for
//! each remote node too, as for another shard: its frame asks for an answer (`Back::Done`),
//! is kept until the answer comes, and is sent again on the next connection if the last one
//! broke first. The other end takes a numbered frame once ([`crate::cluster::Streams`]).
//! A node whose routes the cluster drops (silent, or gone) settles what waited for it: the
//! cluster no longer routes to it.
//!
//! The other end: every shard accepts on `cluster.rpc_listen` (SO_REUSEPORT), proves the cookie
//! both ways, and routes what comes to this node's own shards only, never on to other nodes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::io::{self, ErrorKind};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream};

use super::handover::HANDED;
use super::peer_io::{next_frame, PeerIo};
use super::Shard;
use crate::cluster::wire::{self, Answering, Back, Dialling, Forward, Hello, Proof, Welcome};
use crate::cluster::{node_id, Event, NodeId, Reporter, ShardLink, ToShard, Trust};
use crate::ring::XMsg;
use crate::session::Message;
use crate::sock;
use crate::store::record::{wall_now, MovedSession, StoredMessage};
use bytestring::ByteString;

/// Bytes a forwarding connection may have waiting before the shard stops reading publishers.
const MAX_WAITING: usize = 4 * 1024 * 1024;
/// How long a forwarding connection's handshakes (TCP, TLS, the cookie) may take.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// How long a forwarding connection waits before dialling again after a failure.
const REDIAL: Duration = Duration::from_millis(500);

/// A frame not written yet: its number, the token its publisher waits on (if any), its bytes.
type Unsent = (u64, Option<u64>, Vec<u8>);

/// This shard's connection to one remote node.
pub(super) struct Forwarder {
    pub node: NodeId,
    pub name: String,
    rpc: String,
    /// Frames not written yet, in order: number, the confirmation token the publish's
    /// acknowledgement waits on (if any), the frame.
    unsent: RefCell<VecDeque<Unsent>>,
    /// The last frame number given out, and this forwarder's life (numbers restart with one).
    seq: Cell<u64>,
    life: u64,
    /// Frames written and waiting for their answer, by number: the token and the frame, sent
    /// again on the next connection (all numbered below anything unsent).
    awaiting: RefCell<BTreeMap<u64, (u64, Vec<u8>)>>,
    /// Bytes of the frames in `unsent` and `awaiting`, kept as they change: every publisher
    /// read asks (`Remote::blocked`).
    waiting: Cell<usize>,
    waker: Cell<Option<Waker>>,
    /// The node left the cluster: the task ends.
    gone: Cell<bool>,
    /// Messages queued for it (this shard's share of `ringmq_cluster_forwarded_total`).
    forwarded: Arc<AtomicU64>,
}

impl Forwarder {
    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Bytes waiting to be written or answered.
    fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Queues a publish; with `confirm` (a token the publish's acknowledgement waits on),
    /// kept once written until its answer comes.
    fn publish(&self, make: impl FnOnce(u64) -> Forward, confirm: Option<u64>) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        match wire::frame(&make(seq)) {
            Ok(bytes) => {
                self.waiting.set(self.waiting.get() + bytes.len());
                self.unsent.borrow_mut().push_back((seq, confirm, bytes));
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                self.wake();
            }
            Err(e) => {
                tracing::warn!(node = %self.name, error = %e, "a publish too large to forward")
            }
        }
    }

    /// The frames to write now: every unsent one, those owed an answer moved to `awaiting`.
    fn take_unsent(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut awaiting = self.awaiting.borrow_mut();
        for (seq, token, frame) in self.unsent.borrow_mut().drain(..) {
            out.extend_from_slice(&frame);
            match token {
                Some(token) => {
                    awaiting.insert(seq, (token, frame));
                }
                None => self.waiting.set(self.waiting.get() - frame.len()),
            }
        }
        out
    }

    /// Frame `seq` was answered: the token its publisher waits on, if it was owed one.
    fn answered(&self, seq: u64) -> Option<u64> {
        let (token, frame) = self.awaiting.borrow_mut().remove(&seq)?;
        self.waiting.set(self.waiting.get() - frame.len());
        Some(token)
    }

    /// The tokens of every publish still waiting for an answer; every frame forgotten.
    fn settle_all(&self) -> Vec<u64> {
        let awaiting = std::mem::take(&mut *self.awaiting.borrow_mut());
        let unsent = std::mem::take(&mut *self.unsent.borrow_mut());
        self.waiting.set(0);
        let sent = awaiting.into_values().map(|(token, _)| token);
        sent.chain(unsent.into_iter().filter_map(|(_, t, _)| t))
            .collect()
    }
}

/// What a forwarding connection from another node is answered with, written by its task.
#[derive(Default)]
pub(super) struct Answers {
    out: RefCell<Vec<u8>>,
    waker: Cell<Option<Waker>>,
}

impl Answers {
    /// Answers frame `seq`.
    pub fn done(&self, seq: u64, stored: bool) {
        if let Ok(bytes) = wire::frame(&Back::Done { seq, stored }) {
            self.out.borrow_mut().extend_from_slice(&bytes);
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// This shard's cluster state.
pub(super) struct Remote {
    reporter: Reporter,
    link: Arc<ShardLink>,
    /// This node's id, and what peers and this node prove themselves with.
    me: NodeId,
    trust: Trust,
    /// Forwarders by slot.
    nodes: Vec<Option<Rc<Forwarder>>>,
    /// Forwarders whose task the pump starts.
    starting: Vec<Rc<Forwarder>>,
    /// The last session registry epoch this shard gave out.
    pub(super) last_epoch: u64,
}

impl Remote {
    pub fn new(reporter: Reporter, link: Arc<ShardLink>, name: &str, trust: Trust) -> Remote {
        Remote {
            reporter,
            link,
            me: node_id(name),
            trust,
            nodes: Vec::new(),
            starting: Vec::new(),
            last_epoch: 0,
        }
    }

    /// Forwarders made since the last call, whose task is to be started.
    pub fn take_starting(&mut self) -> Vec<Rc<Forwarder>> {
        std::mem::take(&mut self.starting)
    }

    pub(super) fn report(&self, e: Event) {
        self.reporter.send(e);
    }

    pub fn link(&self) -> &ShardLink {
        &self.link
    }

    fn forwarder(&self, slot: usize) -> Option<&Rc<Forwarder>> {
        self.nodes.get(slot).and_then(Option::as_ref)
    }

    /// Whether a forwarding connection has too much waiting: publishers are read no more.
    pub fn blocked(&self) -> bool {
        self.nodes
            .iter()
            .flatten()
            .any(|f| f.waiting() > MAX_WAITING)
    }

    /// Whether a forwarding connection to the node in `slot` exists.
    pub fn reaches(&self, slot: usize) -> bool {
        self.forwarder(slot).is_some_and(|f| !f.gone.get())
    }

    /// Sends `client_id`'s persistent session (or word that there is none) to the node in
    /// `slot`, where the connection that claimed it with `epoch` resumes it; its answer settles
    /// `confirm`.
    pub fn hand_over(
        &self,
        slot: usize,
        client_id: String,
        epoch: u64,
        moved: Option<MovedSession>,
        confirm: Option<u64>,
    ) {
        if let Some(fw) = self.forwarder(slot) {
            let session = |seq| Forward::Session {
                seq,
                client_id,
                epoch,
                moved,
            };
            fw.publish(session, confirm);
        }
    }

    /// Forwards a publish to the node in `slot` (`group`: for one member of that shared group
    /// there); `confirm`: the token its acknowledgement waits on.
    pub fn forward(
        &self,
        slot: usize,
        msg: StoredMessage,
        group: Option<String>,
        confirm: Option<u64>,
    ) {
        let Some(fw) = self.forwarder(slot) else {
            return;
        };
        let c = confirm.is_some();
        fw.publish(
            |seq| match group {
                Some(group) => Forward::Shared {
                    seq,
                    group,
                    msg,
                    confirm: c,
                },
                None => Forward::Publish {
                    seq,
                    msg,
                    confirm: c,
                },
            },
            confirm,
        );
    }
}

impl Shard {
    /// Takes what the cluster thread told this shard.
    pub(super) fn cluster_answered(&mut self) {
        let Some(items) = self.remote.as_ref().map(|r| r.link().take()) else {
            return;
        };
        for m in items {
            self.on_cluster(m);
        }
    }

    fn on_cluster(&mut self, m: ToShard) {
        let shards = self.shards;
        match m {
            ToShard::Node {
                slot,
                node,
                name,
                rpc,
            } => {
                let Some(remote) = self.remote.as_mut() else {
                    return;
                };
                if remote.nodes.len() <= slot {
                    remote.nodes.resize(slot + 1, None);
                }
                let same = remote.nodes[slot]
                    .as_ref()
                    .is_some_and(|f| f.node == node && f.rpc == rpc);
                if same {
                    return;
                }
                let old = remote.nodes[slot].take();
                let fw = Rc::new(Forwarder {
                    node,
                    name,
                    rpc,
                    unsent: RefCell::default(),
                    seq: Cell::new(0),
                    life: crate::store::record::wall_now() << 16 | self.id as u64,
                    awaiting: RefCell::default(),
                    waiting: Cell::new(0),
                    waker: Cell::new(None),
                    gone: Cell::new(false),
                    forwarded: remote.reporter.forward_counter(node),
                });
                remote.nodes[slot] = Some(fw.clone());
                remote.starting.push(fw);
                if let Some(old) = old {
                    self.forget_forwarder(&old);
                }
            }
            ToShard::Gone { slot } => {
                if let Some(fw) = self
                    .remote
                    .as_mut()
                    .and_then(|r| r.nodes.get_mut(slot)?.take())
                {
                    self.forget_forwarder(&fw);
                }
                self.router.forget_member(shards + slot);
            }
            ToShard::Down { slot } => {
                if let Some(fw) = self
                    .remote
                    .as_ref()
                    .and_then(|r| r.forwarder(slot).cloned())
                {
                    self.settle_forwarder(&fw);
                }
            }
            ToShard::Route { filter, slot, add } => {
                self.router
                    .apply_interest(&filter.into(), shards + slot, add);
            }
            ToShard::Reset => {
                for slot in 0..self.remote.as_ref().map_or(0, |r| r.nodes.len()) {
                    self.router.forget_member(shards + slot);
                }
            }
            ToShard::Retain(r) => self.cluster_retained(r),
            ToShard::Answered(token) => self.reply_answered(token, true),
            ToShard::Evict {
                client_id,
                epoch,
                hand_to,
            } => self.evict_claim(&client_id, epoch, hand_to),
            ToShard::Claimed {
                client_id,
                epoch,
                resume,
            } => self.resume_claimed(&client_id, epoch, resume),
        }
    }

    /// What waited for a node's answers is settled: its routes are gone, nothing more is owed
    /// to it (its persistent sessions start anew elsewhere).
    fn settle_forwarder(&mut self, fw: &Forwarder) {
        for token in fw.settle_all() {
            if token & HANDED != 0 {
                self.handed_over(token, false);
            } else {
                self.stored_elsewhere(token, true);
            }
        }
    }

    /// A remote node answered the frame that carried `token`.
    fn answered_by_peer(&mut self, token: u64, stored: bool) {
        if token & HANDED != 0 {
            self.handed_over(token, stored);
        } else {
            self.stored_elsewhere(token, stored);
        }
    }

    fn forget_forwarder(&mut self, fw: &Forwarder) {
        fw.gone.set(true);
        fw.wake();
        self.settle_forwarder(fw);
    }

    /// A retained message the cluster agreed on, set in this shard's replica (shard 0 keeps it
    /// in the store, unless this node took it: it is kept already).
    fn cluster_retained(&mut self, r: crate::cluster::Retained) {
        let me = self.remote.as_ref().map(|x| x.me);
        let now = Instant::now();
        let msg = match &r.stored {
            Some(bytes) => {
                let Some(m) = postcard::from_bytes::<StoredMessage>(bytes)
                    .ok()
                    .and_then(|sm| sm.message(now, wall_now()))
                else {
                    return;
                };
                m
            }
            None => Message::new(
                r.topic.clone().into(),
                bytes::Bytes::new(),
                crate::codec::QoS::AtMostOnce,
                true,
                None,
                bytestring::ByteString::new(),
                now,
            ),
        };
        let msg = Arc::new(msg.compacted());
        if self.id == 0 && me != Some(r.origin) {
            self.journal_retained(&msg);
        }
        self.retained.set(msg);
        self.stats.retained.set(self.retained.len() as i64);
    }

    /// Tells the cluster of a retained message set or cleared here.
    pub(super) fn report_retained(&self, msg: &Message) {
        let Some(remote) = self.remote.as_ref() else {
            return;
        };
        let stored = (!msg.payload.is_empty())
            .then(|| {
                postcard::to_allocvec(&StoredMessage::of(msg, Instant::now(), wall_now())).ok()
            })
            .flatten();
        remote.report(Event::Retain(crate::cluster::Retained {
            topic: msg.topic.to_string(),
            stored,
            origin: remote.me,
        }));
    }

    /// A frame another node's shard forwarded: routed to this node's shards only (once, when
    /// it was sent again after a reconnection); a frame asking for an answer is answered once
    /// what it made here is stored or delivered.
    /// Whether frame `seq` of this stream is new (one sent again after a broken link is not).
    fn fresh(&self, from: &PeerStream, seq: u64) -> bool {
        match (from.origin, &self.remote) {
            (Some((shard, life)), Some(r)) => {
                r.reporter.streams().take(from.node, shard, life, seq)
            }
            _ => true,
        }
    }

    fn take_forwarded(&mut self, f: Forward, from: &mut PeerStream) {
        let now = Instant::now();
        let (seq, msg, group, confirm) = match f {
            Forward::Begin { shard, life } => {
                from.origin = Some((shard, life));
                return;
            }
            Forward::Publish { seq, msg, confirm } => (seq, msg, None, confirm),
            Forward::Shared {
                seq,
                group,
                msg,
                confirm,
            } => (seq, msg, Some(group), confirm),
            Forward::Session {
                seq,
                client_id,
                epoch,
                moved,
            } => {
                if !self.fresh(from, seq) {
                    // Sent again after a broken link: taken already, the answer was lost.
                    from.answers.done(seq, true);
                    return;
                }
                // Answered once the session is stored where it lands (at once without a
                // store), so that the old node forgets it only then.
                self.durable.begin();
                let confirm = moved
                    .as_ref()
                    .and_then(|_| self.durable.confirm())
                    .map(|token| (self.id, token));
                self.answer_when_kept(from, seq);
                let client_id = ByteString::from(client_id);
                let session = moved.map(|m| {
                    let (s, expired) = m.session(client_id.clone(), now, wall_now());
                    self.stats.cluster_messages_dropped.add(expired as i64);
                    Box::new(s)
                });
                let home = self.home_of(&client_id);
                let moved = XMsg::Moved {
                    client_id,
                    epoch,
                    session,
                    confirm,
                };
                self.send(home, moved);
                return;
            }
        };
        let fresh = self.fresh(from, seq);
        let m = msg.message(now, wall_now()).filter(|_| fresh);
        if let Some(m) = m {
            if confirm {
                self.durable.begin();
            }
            let m = Arc::new(m);
            match group {
                Some(group) => self.dispatch_local_shared(group.into(), m, now),
                None => self.route_local(m, now),
            }
        }
        if confirm {
            // A frame taken before (or expired) owes nothing more: answered at once.
            self.answer_when_kept(from, seq);
        }
    }

    /// Ends what frame `seq` began (`Durable::begin`) and answers it once
    /// what it made here is kept (at once when it made nothing to wait for).
    fn answer_when_kept(&mut self, from: &PeerStream, seq: u64) {
        let wait = self.durable.end();
        if let Some(d) = self.durable.answer_peer(from.answers.clone(), seq, wait) {
            self.carry_out(d);
        }
    }
}

/// What a shard knows of a forwarding connection from another node.
struct PeerStream {
    node: NodeId,
    /// The sending shard and its life, once `Begin` came.
    origin: Option<(u32, u64)>,
    answers: Rc<Answers>,
}

/// Dials `fw`'s node and proves the cookie, sends what waits for it (frames still owed an
/// answer first), and takes its answers; again after every failure, until the node leaves.
pub(super) async fn forward_task(shard: Rc<RefCell<Shard>>, fw: Rc<Forwarder>) {
    let (trust, me, id) = match shard.borrow().remote.as_ref() {
        Some(r) => (r.trust.clone(), r.me, shard.borrow().id as u32),
        None => return,
    };
    while !fw.gone.get() {
        if let Err(e) = forward_once(&shard, &fw, &trust, me, id).await {
            tracing::debug!(node = %fw.name, error = %e, "forwarding connection failed");
        }
        if !fw.gone.get() {
            monoio::time::sleep(REDIAL).await;
        }
    }
}

async fn forward_once(
    shard: &Rc<RefCell<Shard>>,
    fw: &Forwarder,
    trust: &Trust,
    me: NodeId,
    id: u32,
) -> io::Result<()> {
    let addr = fw
        .rpc
        .parse()
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("{}: {e}", fw.rpc)))?;
    let handshake = async {
        let s = sock::connect(addr, None).await?;
        let s = PeerIo::dialled(s, trust.tls.as_deref(), &fw.rpc)?;
        let (dialling, hello) = Dialling::start(&trust.cookie, me);
        s.write_frame(&hello).await?;
        let mut buf = BytesMut::new();
        let welcome: Welcome = s.read_frame(&mut buf).await?;
        let (proof, _) = dialling
            .finish(&welcome)
            .map_err(|e| io::Error::new(ErrorKind::PermissionDenied, e))?;
        s.write_frame(&proof).await?;
        Ok::<_, io::Error>((s, buf))
    };
    let (s, mut buf) = monoio::time::timeout(HANDSHAKE, handshake)
        .await
        .map_err(|_| io::Error::new(ErrorKind::TimedOut, "cluster handshake"))??;
    s.write_frame(&Forward::Begin {
        shard: id,
        life: fw.life,
    })
    .await?;
    // What was sent and never answered goes again, before anything newer.
    let again: Vec<u8> = fw
        .awaiting
        .borrow()
        .values()
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    s.write_all(&again).await?;
    tracing::info!(node = %fw.name, "forwarding to a node");
    let mut readable = std::pin::pin!(Some(s.readable()));
    loop {
        let answers = poll_fn(|cx| {
            if let Some(r) = readable.as_mut().as_pin_mut() {
                if let Poll::Ready(r) = std::future::Future::poll(r, cx) {
                    return Poll::Ready(r.map(|()| true));
                }
            }
            if fw.gone.get() || !fw.unsent.borrow().is_empty() {
                return Poll::Ready(Ok(false));
            }
            fw.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await?;
        if fw.gone.get() {
            return Ok(());
        }
        if answers {
            readable.set(Some(s.readable()));
            s.fill(&mut buf).await?;
            while let Some(Back::Done { seq, stored }) = next_frame::<Back>(&mut buf)? {
                if let Some(token) = fw.answered(seq) {
                    shard.borrow_mut().answered_by_peer(token, stored);
                }
            }
        }
        let data = fw.take_unsent();
        s.write_all(&data).await?;
    }
}

/// Accepts other nodes' forwarding connections on this shard.
pub(super) async fn accept_loop(shard: Rc<RefCell<Shard>>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, from)) => {
                monoio::spawn(serve_peer(shard.clone(), s, from));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster rpc accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_peer(shard: Rc<RefCell<Shard>>, s: TcpStream, from: std::net::SocketAddr) {
    let (trust, me) = match shard.borrow().remote.as_ref() {
        Some(r) => (r.trust.clone(), r.me),
        None => return,
    };
    if let Err(e) = sock::prepare(&s) {
        tracing::debug!(%from, error = %e, "cluster rpc socket setup failed");
        return;
    }
    let s = match PeerIo::accepted(s, trust.tls.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%from, error = %e, "cluster rpc TLS setup failed");
            return;
        }
    };
    let mut buf = BytesMut::new();
    let handshake = async {
        let hello: Hello = s.read_frame(&mut buf).await?;
        let (answering, welcome) = Answering::start(&trust.cookie, me, &hello)
            .map_err(|e| io::Error::new(ErrorKind::PermissionDenied, e))?;
        s.write_frame(&welcome).await?;
        let proof: Proof = s.read_frame(&mut buf).await?;
        answering
            .finish(&proof)
            .map_err(|e| io::Error::new(ErrorKind::PermissionDenied, e))
    };
    let timed = monoio::time::timeout(HANDSHAKE, handshake).await;
    let node = match timed {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            tracing::warn!(%from, error = %e, "refused a forwarding connection");
            return;
        }
        Err(_) => return,
    };
    let mut stream = PeerStream {
        node,
        origin: None,
        answers: Rc::default(),
    };
    if let Err(e) = take_frames(&shard, &s, &mut buf, &mut stream).await {
        tracing::debug!(%from, error = %e, "forwarding connection from a node ended");
    }
}

/// Takes a peer's frames and writes their answers, until the connection ends.
async fn take_frames(
    shard: &Rc<RefCell<Shard>>,
    s: &PeerIo,
    buf: &mut BytesMut,
    stream: &mut PeerStream,
) -> io::Result<()> {
    let answers = stream.answers.clone();
    let mut readable = std::pin::pin!(Some(s.readable()));
    loop {
        while let Some(f) = next_frame::<Forward>(buf)? {
            shard.borrow_mut().take_forwarded(f, stream);
        }
        let data = std::mem::take(&mut *answers.out.borrow_mut());
        s.write_all(&data).await?;
        poll_fn(|cx| {
            if let Some(r) = readable.as_mut().as_pin_mut() {
                if let Poll::Ready(r) = std::future::Future::poll(r, cx) {
                    return Poll::Ready(r);
                }
            }
            if !answers.out.borrow().is_empty() {
                return Poll::Ready(Ok(()));
            }
            answers.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await?;
        readable.set(Some(s.readable()));
        s.fill(buf).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarder() -> Forwarder {
        Forwarder {
            node: 1,
            name: "n2".into(),
            rpc: "127.0.0.2:1".into(),
            unsent: RefCell::default(),
            seq: Cell::new(0),
            life: 1,
            awaiting: RefCell::default(),
            waiting: Cell::new(0),
            waker: Cell::new(None),
            gone: Cell::new(false),
            forwarded: Arc::default(),
        }
    }

    /// The bytes `waiting` should say, counted the slow way.
    fn counted(fw: &Forwarder) -> usize {
        let unsent: usize = fw.unsent.borrow().iter().map(|(_, _, f)| f.len()).sum();
        let awaiting: usize = fw.awaiting.borrow().values().map(|(_, f)| f.len()).sum();
        unsent + awaiting
    }

    #[test]
    fn the_waiting_bytes_follow_every_frame_in_and_out() {
        let fw = forwarder();
        let frame = |seq| Forward::Begin {
            shard: 0,
            life: seq,
        };
        fw.publish(frame, Some(7));
        fw.publish(frame, None);
        fw.publish(frame, Some(9));
        assert!(fw.waiting() > 0);
        assert_eq!(fw.waiting(), counted(&fw));
        assert!(!fw.take_unsent().is_empty());
        assert_eq!(fw.waiting(), counted(&fw), "the unconfirmed frame is gone");
        assert_eq!(fw.answered(1), Some(7));
        assert_eq!(fw.answered(1), None, "an answer counts once");
        assert_eq!(fw.answered(2), None, "never owed an answer");
        assert_eq!(fw.waiting(), counted(&fw));
        fw.publish(frame, Some(11));
        assert_eq!(fw.settle_all(), [9, 11]);
        assert_eq!(fw.waiting(), 0);
    }
}
