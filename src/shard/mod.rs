//! A shard: one pinned thread, one monoio runtime, its own listeners, connections, sessions and
//! tries. Shard state lives in one `RefCell` on its thread and is only borrowed by synchronous
//! handlers, never across an `.await`. Other shards are reached through the ring mesh only.
//!
//! # Who holds what
//! `Shard` ties together owners with private fields, each in its own file:
//! - `mesh::Mesh`: the rings to other shards, the backlog for a full one and the readers
//!   waiting for it, the shard's queue to itself.
//! - `router::Router`: the trie of local plain subscriptions, the local members of shared
//!   groups, and this shard's replica of the interest table.
//! - `sessions::SessionTable`: session slots, the client-id index, will and expiry timers.
//! - `waiting::Waiting`: CONNECTs waiting for a password verdict or a grant.
//! - `homes::Homes`: the client ids homed here (owner, claim token and cluster epoch),
//!   flapping counts.
//! - [`crate::retained::RetainedStore`]: this shard's replica of the retained messages.
//!
//! The connection side: `conn` (the task: reads, decodes, writes), `link` (what the task and
//! the shard share about one connection), `transport` (TLS, WebSocket), `hibernate` (idle
//! sockets without a task), `limits` and `rate` (admission and publish rates), `proxied` (the
//! PROXY header read before admission). The handlers: `connect` (CONNECT, claims, takeovers,
//! session ends), `inbound` (every other packet), `route` (publish, subscribe, deliver),
//! `strategy` (how a shared group picks its member), `exclusive` (the arbiter of `$exclusive/`
//! filters), `auto_subscribe` (subscriptions made at CONNECT), `delayed` (`$delayed/` messages
//! held until due), `bans` (the banned-clients list), `admin` (the control plane), `persist`,
//! `sys` and `sys_broker`, `capabilities` (what the `[mqtt]` switches let clients use). In a
//! cluster: `remote` (other nodes' routes, publishes forwarded to and from them) and
//! `registry` (this node's claims in the cluster's session registry, evictions).
//!
//! # How a PUBLISH crosses them
//! `conn` decodes it and `inbound` checks it (aliases, limits, ACL, rate, the backlog bound)
//! and acknowledges it once routed. `route` stores it in the retained store if it retains (and
//! broadcasts the copy through the mesh), asks the router for the interested shards and the
//! matching shared groups, sends one copy to each other interested shard through the mesh,
//! delivers it to the router's local matches through their sessions (each session admits,
//! queues or drops it; `link` writes it), and picks one member per shared group. On the
//! receiving shard the pump takes it off the ring and delivers it the same way, locally only.

mod admin;
mod auto_subscribe;
mod bans;
mod capabilities;
mod client_index;
mod conn;
mod connect;
mod delayed;
mod durable;
mod exclusive;
mod handover;
mod hibernate;
mod homes;
mod inbound;
pub mod interest;
mod limits;
mod link;
mod listener;
mod mesh;
mod peer_io;
mod persist;
mod proxied;
mod rate;
mod registry;
mod remote;
mod route;
mod router;
mod sessions;
#[cfg(test)]
mod sim;
mod strategy;
mod sys;
mod sys_broker;
#[cfg(test)]
mod tests;
mod transport;
mod waiting;

use std::cell::RefCell;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::BytesMut;
use monoio::net::TcpStream;
use slab::Slab;

use crate::auth::checker::ShardChecks;
use crate::auth::Auth;
use crate::codec::SubOptions;
use crate::config::Config;
use crate::control::{Queue, TraceSet};
use crate::listen::ListenSocket;
use crate::retained::RetainedStore;
use crate::ring::{Inbox, Outbox, XMsg};
use crate::session::SessionLimits;
use crate::stats::{Shared, Stats};
use std::net::TcpListener as StdTcpListener;

use homes::Homes;

use link::ConnLink;
pub use listener::Listener;
use mesh::Mesh;
pub use persist::Restore;
use router::Router;
pub use sessions::SessionSlot;
use sessions::{SessionTable, TimerKind};
use waiting::Waiting;

/// A local subscriber to a (non-shared) filter.
#[derive(Debug, Clone, Copy)]
pub struct SubEntry {
    pub session: usize,
    pub options: SubOptions,
    pub id: Option<u32>,
}

/// An open connection, as the shard knows it.
pub struct Conn {
    pub link: Rc<ConnLink>,
    /// Its socket, while it hibernates (and has no task).
    pub hibernating: Option<std::os::fd::OwnedFd>,
    /// Plain TCP (no TLS or WebSocket state): it may hibernate.
    pub plain: bool,
}

/// What a connection's task starts with, set up before the task exists (or kept while it
/// hibernates).
pub(super) struct Accepted {
    pub link: Rc<ConnLink>,
    pub transport: Option<Box<transport::Transport>>,
    /// The connection's key in the shard's connection table.
    pub idx: usize,
}

pub(crate) struct Shard {
    id: usize,
    shards: usize,
    cfg: Arc<Config>,
    auth: Arc<Auth>,
    stats: Arc<Stats>,
    /// What all shards share: counters, connection counts, the memory flag.
    global: Arc<Shared>,
    control: Arc<Queue>,
    trace: Arc<TraceSet>,
    /// This shard's side of each listener (limits, TLS, connect-rate bucket).
    listeners: Vec<Listener>,
    /// False once a shutdown began: new connections are refused.
    accepting: bool,
    /// The rings to other shards and what waits for them.
    mesh: Mesh,
    conns: Slab<Conn>,
    /// The epoll set of hibernating connections (None with `broker.hibernate_after = 0`).
    hibernation: Option<hibernate::Hibernation>,
    /// When the sweep last ran: the clock a connection's idle check reads (a second coarse at
    /// most, against a `hibernate_after` of seconds), instead of the clock at every turn of
    /// every connection's loop.
    swept: link::Stamp,
    /// Sessions by slot, their client-id index and their timers.
    sessions: SessionTable,
    /// CONNECTs waiting for a password verdict or a grant.
    waiting: Waiting,
    /// Client ids homed here: who owns each session, and the flapping counts.
    homes: Homes,
    /// Resuming CONNECTs homed here waiting for a session from another node.
    handovers: handover::Handovers,
    /// Local subscribers and the interest table replica.
    router: Router,
    /// Draws for the random shared-subscription strategy.
    rng: strategy::Rng,
    retained: RetainedStore,
    next_token: u64,
    next_assigned_id: u64,
    /// The read buffer every connection of this shard reads into.
    rbuf: BytesMut,
    /// SUBACKs waiting for other shards to acknowledge new interest, by token.
    pending_replies: AHashMap<u64, inbound::PendingReply>,
    /// The `$exclusive/` filters homed here and the client id holding each.
    exclusive: AHashMap<bytestring::ByteString, bytestring::ByteString>,
    /// The store batch of this tick and what waits for the store.
    durable: durable::Durable,
    /// Delayed publishes this shard holds until their deadline.
    delayed: delayed::DelayedSet,
    /// This shard's replica of the bans.
    bans: crate::banned::BanList,
    /// Its side of the cluster, when there is one.
    remote: Option<remote::Remote>,
}

impl Shard {
    fn new(boot: Boot, outbox: Outbox) -> Shard {
        let Boot {
            id,
            shards,
            cfg,
            auth,
            shared,
            control,
            listeners,
            checks,
            driver: _,
            store,
            cluster,
        } = boot;
        let journaled = cfg.durability.mode != crate::config::DurabilityMode::Off;
        let hold = Duration::from_micros(cfg.durability.commit_window_us);
        let stats = shared.stats[id].clone();
        let hibernation = (cfg.broker.hibernate_after > 0)
            .then(hibernate::Hibernation::new)
            .and_then(|h| {
                h.map_err(|e| tracing::warn!(error = %e, "hibernation is off: no epoll set"))
                    .ok()
            });
        Shard {
            id,
            shards,
            cfg,
            auth,
            stats: stats.clone(),
            global: shared,
            control,
            trace: Arc::default(),
            listeners,
            accepting: true,
            mesh: Mesh::new(id, shards, outbox, stats.clone()),
            conns: Slab::new(),
            hibernation,
            swept: link::Stamp::of(Instant::now()),
            sessions: SessionTable::default(),
            waiting: Waiting::new(checks),
            homes: Homes::default(),
            handovers: handover::Handovers::default(),
            router: Router::default(),
            rng: strategy::Rng::default(),
            retained: RetainedStore::default(),
            next_token: 0,
            next_assigned_id: 0,
            rbuf: BytesMut::new(),
            pending_replies: AHashMap::new(),
            exclusive: AHashMap::new(),
            durable: durable::Durable::new(id, store, journaled, hold),
            delayed: delayed::DelayedSet::new(id),
            bans: crate::banned::BanList::default(),
            remote: cluster.map(|c| remote::Remote::new(c.reporter, c.link, &c.name, c.trust)),
        }
    }

    fn limits(&self) -> SessionLimits {
        SessionLimits {
            max_queued: self.cfg.mqtt.max_queued_messages,
            max_queued_bytes: self.cfg.mqtt.max_queued_bytes,
            queue_qos0: self.cfg.mqtt.queue_qos0,
        }
    }

    /// The shard that records who owns `client_id`.
    fn home_of(&self, client_id: &str) -> usize {
        home_of(client_id, self.shards)
    }

    /// A token unique in the broker: the shard's id in its top 16 bits ([`token_shard`]).
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        (self.id as u64) << 48 | self.next_token
    }

    /// Sends to a shard (itself included), in order.
    fn send(&mut self, to: usize, msg: XMsg) {
        self.mesh.send(to, msg);
    }

    fn handle_xmsg(&mut self, msg: XMsg, now: Instant) {
        match msg {
            XMsg::Publish { msg, confirm } => {
                if confirm.is_some() {
                    self.durable.begin();
                }
                self.deliver_local(&msg, now);
                self.confirm_stored(confirm);
            }
            XMsg::Shared {
                group,
                msg,
                confirm,
            } => {
                if confirm.is_some() {
                    self.durable.begin();
                }
                self.deliver_shared_local(&group, msg, now);
                self.confirm_stored(confirm);
            }
            XMsg::Stored { token, stored } => self.stored_elsewhere(token, stored),
            XMsg::Ban(ban) => self.on_ban(ban),
            XMsg::Unban(kind, value) => self.on_unban(kind, &value),
            XMsg::Retain(m) => {
                self.retained.set(m);
                self.stats.retained.set(self.retained.len() as i64);
            }

            XMsg::Interest {
                filter,
                shard,
                add,
                ack,
            } => {
                self.router.apply_interest(&filter, shard, add);
                if let Some(token) = ack {
                    self.send(shard, XMsg::InterestAck(token));
                }
            }
            XMsg::InterestAck(token) => self.reply_answered(token, true),
            XMsg::Claim {
                client_id,
                shard,
                token,
                clean_start,
            } => self.on_claim(client_id, shard, token, clean_start, now),
            XMsg::Takeover {
                client_id,
                shard,
                token,
                clean_start,
            } => self.on_takeover(client_id, shard, token, clean_start),
            XMsg::Grant(g) => self.on_grant(g),
            XMsg::Release { client_id, token } => {
                if let Some(epoch) = self.homes.release(&client_id, token) {
                    self.cluster_release(&client_id, epoch);
                }
            }
            XMsg::Evict {
                client_id,
                token,
                hand_to,
            } => self.evicted(&client_id, token, hand_to),
            XMsg::Moved {
                client_id,
                epoch,
                session,
                confirm,
            } => self.session_arrived(client_id, epoch, session, confirm),
            XMsg::Merge {
                client_id,
                token,
                session,
                confirm,
            } => self.merge_session(&client_id, token, *session, confirm, now),
            XMsg::ExclusiveClaim {
                filter,
                client_id,
                shard,
                token,
            } => self.on_exclusive_claim(filter, client_id, shard, token),
            XMsg::ExclusiveAnswer {
                filter,
                token,
                granted,
            } => self.exclusive_answered(token, filter, granted),
            XMsg::ExclusiveRelease {
                filter,
                client_id,
                ack,
            } => self.on_exclusive_release(filter, client_id, ack),
            XMsg::ExclusiveReleased(token) => self.reply_answered(token, true),
        }
    }

    /// Whether publishers are read no more: a ring to another shard, or a forwarding
    /// connection to another node, has too much waiting.
    fn blocked(&self) -> bool {
        self.mesh.blocked() || self.remote.as_ref().is_some_and(|r| r.blocked())
    }

    /// Retries what waits for full rings; once nothing blocks, the connections that stopped
    /// reading read again.
    fn unblock(&mut self) {
        self.mesh.retry_backlog();
        if !self.blocked() {
            self.mesh.wake_readers();
        }
    }

    /// Handles what the shard sent itself, in order, without waiting for the pump: a CONNECT
    /// whose client id is homed here is claimed and granted in the same loop tick.
    fn handle_own(&mut self, now: Instant) {
        while let Some(msg) = self.mesh.pop_own() {
            self.handle_xmsg(msg, now);
        }
    }

    /// Whether a connected plain-TCP link with nothing pending, idle at the last sweep, may
    /// hibernate now.
    fn may_hibernate(&self, link: &ConnLink) -> bool {
        let after = self.cfg.broker.hibernate_after;
        self.hibernation.is_some()
            && after > 0
            && link.session().is_some()
            && link.out.borrow().is_empty()
            && !link.throttled()
            && link.idle_for(self.swept) >= Duration::from_secs(after)
    }

    /// A connection's task ended (or a hibernating one could not resume): it is forgotten, and
    /// its session goes offline.
    fn connection_ended(&mut self, idx: usize, link: &ConnLink) {
        self.conns.remove(idx);
        self.stats.connections.dec();
        self.connection_gone(link.listener());
        self.connection_closed(link, Instant::now());
    }

    /// Once a second: keep-alive and CONNECT deadlines, will delays, session expiry, delayed
    /// publishes, expired retained messages and bans.
    fn sweep(&mut self, now: Instant) {
        let stamp = link::Stamp::of(now);
        self.swept = stamp;
        self.homes.prune_flapping(&self.cfg.limits, now);
        self.sweep_handovers(now);
        self.release_delayed(now);
        self.purge_retained(now);
        self.bans.purge(crate::store::record::wall_now());
        self.stats.ring_occupancy.set(self.mesh.occupancy() as i64);
        let mult = self.cfg.mqtt.keepalive_multiplier;
        let connect_timeout = self.cfg.connect_timeout();
        let after = self.cfg.broker.hibernate_after;
        let hibernate_after = Duration::from_secs(after);
        let hibernating = self.hibernation.is_some() && after > 0;
        for (_, conn) in &self.conns {
            let link = &conn.link;
            let dozing = hibernating && conn.plain && conn.hibernating.is_none();
            if dozing && link.session().is_some() && link.idle_for(stamp) >= hibernate_after {
                // Its task looks at the link and hibernates if nothing else is going on.
                link.wake();
            }
            match link.state.get() {
                s if (s == link::LinkState::New || s.awaits_connect())
                    && link.silent_for(stamp) > connect_timeout =>
                {
                    link.close(link::Close::new(
                        crate::codec::ReasonCode::MaximumConnectTime,
                        "no CONNECT in time",
                    ));
                }
                link::LinkState::Active(_) if link.keep_alive.get() > 0 => {
                    let limit = Duration::from_secs_f32(f32::from(link.keep_alive.get()) * mult);
                    if link.silent_for(stamp) > limit {
                        link.close(link::Close::new(
                            crate::codec::ReasonCode::KeepAliveTimeout,
                            "keep-alive timeout",
                        ));
                    }
                }
                _ => {}
            }
        }
        while let Some((kind, key, token)) = self.sessions.next_due(now) {
            self.on_timer(kind, key, token, now);
        }
    }

    fn on_timer(&mut self, kind: TimerKind, key: usize, token: u64, now: Instant) {
        let Some(slot) = self.sessions.get_mut(key) else {
            return;
        };
        if slot.token != token || slot.link.is_some() {
            return;
        }
        match kind {
            TimerKind::Will if slot.will_at().is_some_and(|t| t <= now) => {
                slot.set_will_at(None);
                slot.session.meta_changed();
                if let Some(will) = slot.session.will.take() {
                    let origin = slot.session.client_id.clone();
                    self.publish_will(*will, origin, now);
                }
                self.touch(key);
            }
            TimerKind::Expiry if slot.expires_at().is_some_and(|t| t <= now) => {
                self.end_session(key, now);
            }
            _ => {}
        }
    }
}

/// The shard that made a [`Shard::token`].
pub(crate) fn token_shard(token: u64) -> usize {
    (token >> 48) as usize
}

/// The home shard of a client id among `shards` (FNV-1a).
pub fn home_of(client_id: &str, shards: usize) -> usize {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in client_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// What a shard starts with.
pub struct Boot {
    pub id: usize,
    pub shards: usize,
    pub cfg: Arc<Config>,
    pub auth: Arc<Auth>,
    pub shared: Arc<Shared>,
    pub control: Arc<Queue>,
    pub listeners: Vec<Listener>,
    pub checks: ShardChecks,
    /// The io driver to run on, `io_uring` or `epoll` (resolved once for the broker).
    pub driver: crate::config::Driver,
    /// This shard's way to the storage thread.
    pub store: crate::store::StoreLink,
    /// Its way to the cluster thread, in a cluster.
    pub cluster: Option<ClusterBoot>,
}

/// What a shard starts with in a cluster.
pub struct ClusterBoot {
    pub reporter: crate::cluster::Reporter,
    pub link: Arc<crate::cluster::ShardLink>,
    /// This node's name, and what it proves itself with to other nodes.
    pub name: String,
    pub trust: crate::cluster::Trust,
    /// Its socket on `cluster.rpc_listen` (taken when the shard starts).
    pub rpc: Option<StdTcpListener>,
}

/// Runs a shard on the current thread until a shutdown closes it.
pub fn run(
    boot: Boot,
    ends: (Outbox, Inbox),
    sockets: Vec<crate::listen::ListenSocket>,
    saved: Restore,
) -> std::io::Result<()> {
    let (outbox, inbox) = ends;
    let mut rt = crate::driver::runtime(boot.driver, 4096)?;
    rt.block_on(async move {
        tracing::debug!(
            shard = boot.id,
            driver = crate::driver::current().name(),
            "shard running"
        );
        let mut boot = boot;
        let rpc = boot.cluster.as_mut().and_then(|c| c.rpc.take());
        let shard = Rc::new(RefCell::new(Shard::new(boot, outbox)));
        shard.borrow_mut().restore(saved);
        if let Some(rpc) = rpc {
            let listener = monoio::net::TcpListener::from_std(rpc)?;
            monoio::spawn(remote::accept_loop(shard.clone(), listener));
        }
        for (i, l) in sockets.into_iter().enumerate() {
            match l {
                ListenSocket::Tcp(l) => {
                    let listener = monoio::net::TcpListener::from_std(l)?;
                    monoio::spawn(conn::accept_loop(shard.clone(), listener, i));
                }
                ListenSocket::Unix(l) => {
                    let listener = monoio::net::UnixListener::from_std(l)?;
                    monoio::spawn(conn::accept_loop(shard.clone(), listener, i));
                }
            }
        }
        monoio::spawn(sweeper(shard.clone()));
        monoio::spawn(hibernate::resumer(shard.clone(), conn::serve::<TcpStream>));
        monoio::spawn(limits::lag_probe(shard.clone()));
        monoio::spawn(sys::publisher(shard.clone()));
        monoio::spawn(store_hold(shard.clone()));
        pump(shard, inbox).await;
        Ok(())
    })
}

/// Drains the rings, the self-queue and the control queue in batches; sleeps on the doorbell
/// when all are empty. Returns once a shutdown has closed the shard.
async fn pump(shard: Rc<RefCell<Shard>>, mut inbox: Inbox) {
    let mut batch: Vec<XMsg> = Vec::with_capacity(1024);
    let control = shard.borrow().control.clone();
    loop {
        inbox.drain(256, &mut batch);
        {
            let mut sh = shard.borrow_mut();
            sh.mesh.take_own(&mut batch);
            let now = Instant::now();
            for msg in batch.drain(..) {
                sh.handle_xmsg(msg, now);
            }
            for (verdict, link) in sh.waiting.verdicts() {
                sh.password_checked(verdict, link);
            }
            sh.unblock();
            sh.cluster_answered();
            sh.store_answered();
            sh.flush_store();
            sh.mesh.ring_bells();
        }
        let starting = shard
            .borrow_mut()
            .remote
            .as_mut()
            .map(remote::Remote::take_starting);
        for fw in starting.into_iter().flatten() {
            monoio::spawn(remote::forward_task(shard.clone(), fw));
        }
        for (req, reply) in control.take() {
            let closing = matches!(req, crate::control::Request::Persist);
            let kept = req.is_kept();
            let mut sh = shard.borrow_mut();
            let answer = sh.control(req);
            if kept && answer.is_ok() && sh.durable.journaled() {
                sh.durable.answer_when_stored(reply, answer);
                sh.mesh.wake_pump();
            } else {
                let _ = reply.send(answer);
            }
            if closing {
                return;
            }
        }
        let backlogged = shard.borrow().blocked();
        if backlogged {
            monoio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        poll_fn(|cx| {
            let mut sh = shard.borrow_mut();
            if sh.mesh.pump_due() || sh.waiting.verdicts_ready() || sh.store_due() {
                return Poll::Ready(());
            }
            sh.mesh.sleep_pump(cx.waker().clone());
            drop(sh);
            // Verdicts and store answers are looked at again after the doorbell is armed, like
            // the rings: a side thread that rang before it was armed must not be missed.
            inbox.poll_wait(cx, || {
                let sh = shard.borrow();
                !control.is_empty()
                    || sh.waiting.verdicts_ready()
                    || sh.durable.answered()
                    || sh.remote.as_ref().is_some_and(|r| !r.link().is_empty())
            })
        })
        .await;
    }
}

/// Wakes the pump when a hold of the store's batch is over (see `Durable::hold_over`).
async fn store_hold(shard: Rc<RefCell<Shard>>) {
    loop {
        let until = poll_fn(|cx| shard.borrow_mut().durable.poll_hold(cx)).await;
        monoio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        shard.borrow_mut().mesh.wake_pump();
    }
}

async fn sweeper(shard: Rc<RefCell<Shard>>) {
    loop {
        monoio::time::sleep(Duration::from_secs(1)).await;
        shard.borrow_mut().sweep(Instant::now());
    }
}
