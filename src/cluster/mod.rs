//! Several ringmq nodes serving as one broker (`[cluster]`).
//!
//! # How it is built
//! - Membership, every node's routes, the retained messages and the session registry are
//!   replicated by Raft: [openraft](https://crates.io/crates/openraft), whose log, vote and
//!   snapshots live in the broker's store ([`log_store`], [`state`]), so a node that restarts
//!   with its data dir comes back with them and catches up from the leader's log.
//! - The engine runs on its own thread with a small tokio runtime ([`node`]), beside the shards;
//!   peers reach it on `cluster.listen` ([`net`]), every connection proving the cookie first
//!   ([`wire`]). Shards report their routes' 0 <-> 1 changes to it ([`Event`]); it hands them
//!   what the applied log changed ([`ToShard`]), through a queue per shard rung by the shard's
//!   doorbell. No shard ever waits on consensus.
//! - Routes are (filter, node): a node proposes only its own changes, batched, and every node
//!   applies the log to its own copy, held by each shard in its interest table beside the
//!   shards' own entries (a remote node is one more member of a filter's set). Matching a
//!   publish never asks the network.
//! - A publish that remote nodes have subscribers for is forwarded once per node, by the shard
//!   that took it, over that shard's own connection to the node's `cluster.rpc_listen`
//!   (`shard::remote`); the receiving node routes it to its own shards as a local forward.
//! - The leader pings every member; one silent past `cluster.node_timeout_ms` has its routes
//!   dropped (`Command::Down`) until it comes back and sends them again.

mod log_store;
pub mod net;
pub mod node;
pub mod state;
pub mod types;
pub mod wire;

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::config::{ClusterConfig, ClusterRole};
use crate::ring::Doorbell;
use state::Effect;
pub use types::{node_id, NodeId, NodeInfo, Retained};
pub use wire::Trust;

/// What a shard tells the cluster thread.
#[derive(Debug)]
pub enum Event {
    /// The shard gained its first (`add`) or lost its last subscriber to `filter`; with
    /// `ack` (shard, token), the shard waits for [`ToShard::Answered`] once the cluster has it.
    Interest {
        filter: String,
        add: bool,
        ack: Option<(usize, u64)>,
    },
    /// A retained message set or cleared on this node.
    Retain(Retained),
    /// Send this node's whole route set again.
    Resend,
    /// `client_id` connected here, its connection's epoch `epoch` (written behind: a clean
    /// CONNECT does not wait for it; one that `resumes` a persistent session waits for
    /// [`ToShard::Claimed`]).
    Claim {
        client_id: String,
        epoch: u64,
        resumes: bool,
    },
    /// The session of `client_id` claimed with `epoch` ended here.
    Release { client_id: String, epoch: u64 },
}

/// An operator's change to the membership (`ringmq ctl cluster ...`).
#[derive(Debug)]
pub enum Admin {
    /// Join the cluster of the node at this `cluster.listen` address.
    Join(String),
    /// This node leaves the cluster.
    Leave,
    /// Remove the node with this name.
    Remove(String),
}

/// What the cluster thread tells a shard.
#[derive(Debug, Clone)]
pub enum ToShard {
    /// Remote node `node` is reached through slot `slot` (a member of the interest table's sets
    /// after this node's shards), its forwarded publishes going to `rpc`.
    Node {
        slot: usize,
        node: NodeId,
        name: String,
        rpc: String,
    },
    /// The node in `slot` left the cluster.
    Gone { slot: usize },
    /// The cluster dropped the routes of the node in `slot` (it was silent): what waited for
    /// its answers is settled.
    Down { slot: usize },
    /// The node in `slot` gained (`add`) or lost its route to `filter`.
    Route {
        filter: String,
        slot: usize,
        add: bool,
    },
    /// Every remote route known so far is void (a snapshot replaced the state).
    Reset,
    /// A retained message set or cleared, in the order the cluster agreed.
    Retain(Retained),
    /// What waited on `Event::Interest`'s token is done.
    Answered(u64),
    /// To `client_id`'s home shard: its connection claimed with `epoch` (or an older one)
    /// lost the id to a newer connection on another node; with `hand_to` (the slot of that
    /// node and the new claim's epoch, or [`state::MERGE`]), the persistent session goes there.
    Evict {
        client_id: String,
        epoch: u64,
        hand_to: Option<(usize, u64)>,
    },
    /// To `client_id`'s home shard: what became of its claim with `epoch` that resumes a
    /// persistent session.
    Claimed {
        client_id: String,
        epoch: u64,
        resume: Resume,
    },
}

/// What becomes of a CONNECT resuming a persistent session this node does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// A live node held it and hands it over: the CONNECT waits for it.
    Handed,
    /// No other node held it: it starts here.
    Here,
    /// A dead node held it: it starts anew here (counted).
    Anew,
    /// This node cannot reach a majority: the registry cannot take the claim, and the
    /// CONNECT is refused (0x88) rather than split the session.
    Refused,
}

/// One shard's queue of what the cluster thread tells it.
pub struct ShardLink {
    items: Mutex<Vec<ToShard>>,
    bells: Arc<[Doorbell]>,
    shard: usize,
}

impl ShardLink {
    pub fn new(shard: usize, bells: Arc<[Doorbell]>) -> ShardLink {
        ShardLink {
            items: Mutex::default(),
            bells,
            shard,
        }
    }

    fn push(&self, m: ToShard) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(m);
        self.bells[self.shard].ring();
    }

    /// Whether anything waits (looked at by the pump before it sleeps).
    pub fn is_empty(&self) -> bool {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Takes what waits, in order.
    pub fn take(&self) -> Vec<ToShard> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The shards' queues, and the slot each remote node has in their interest tables.
pub struct Shards {
    links: Vec<Arc<ShardLink>>,
    slots: Mutex<BTreeMap<NodeId, usize>>,
    /// This node left its cluster and serves alone: no claim waits for a registry.
    alone: AtomicBool,
}

impl Shards {
    pub fn new(links: Vec<Arc<ShardLink>>) -> Shards {
        Shards {
            links,
            slots: Mutex::default(),
            alone: AtomicBool::new(false),
        }
    }

    fn answer(&self, shard: usize, token: u64) {
        if let Some(l) = self.links.get(shard) {
            l.push(ToShard::Answered(token));
        }
    }

    /// Whether this node left its cluster (it proposes nothing more).
    fn alone(&self) -> bool {
        self.alone.load(Ordering::Relaxed)
    }

    /// The registry cannot take `client_id`'s resuming claim with `epoch`: refused (no
    /// majority), or taken here when this node left its cluster and serves alone.
    fn refuse_claim(&self, client_id: String, epoch: u64) {
        let home = client_id.clone();
        let resume = if self.alone() {
            Resume::Here
        } else {
            Resume::Refused
        };
        let claimed = ToShard::Claimed {
            client_id,
            epoch,
            resume,
        };
        self.to_home(&home, claimed);
    }

    /// To the home shard of `client_id`.
    fn to_home(&self, client_id: &str, m: ToShard) {
        let home = crate::shard::home_of(client_id, self.links.len());
        if let Some(l) = self.links.get(home) {
            l.push(m);
        }
    }

    fn broadcast(&self, m: ToShard) {
        for l in &self.links {
            l.push(m.clone());
        }
    }

    /// The slot of remote node `node`, given one when it has none.
    fn slot(&self, node: NodeId) -> usize {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get(&node) {
            return *s;
        }
        let free = (0..).find(|s| !slots.values().any(|v| v == s)).unwrap_or(0);
        slots.insert(node, free);
        free
    }

    /// The members changed: each remote one's slot and address to every shard, and the slots
    /// of those that left freed.
    fn members(&self, me: NodeId, members: &BTreeMap<NodeId, NodeInfo>) {
        let gone: Vec<(NodeId, usize)> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(n, _)| !members.contains_key(n))
            .map(|(n, s)| (*n, *s))
            .collect();
        for (node, slot) in gone {
            self.slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&node);
            self.broadcast(ToShard::Gone { slot });
        }
        for (node, info) in members.iter().filter(|(n, _)| **n != me) {
            let slot = self.slot(*node);
            self.broadcast(ToShard::Node {
                slot,
                node: *node,
                name: info.name.clone(),
                rpc: info.rpc.clone(),
            });
        }
    }

    /// Hands an applied change to the shards.
    fn apply(&self, me: NodeId, e: Effect) {
        match e {
            Effect::Route { node, filter, add } if node != me => {
                let slot = self.slot(node);
                self.broadcast(ToShard::Route { filter, slot, add });
            }
            Effect::Retain(r) => self.broadcast(ToShard::Retain(r)),
            Effect::Reset => self.broadcast(ToShard::Reset),
            Effect::Down(node) if node != me => {
                let slot = self.slot(node);
                self.broadcast(ToShard::Down { slot });
            }
            Effect::Evict {
                client_id,
                node,
                epoch,
                hand_to,
            } if node == me => {
                let home = client_id.clone();
                let hand_to = hand_to.map(|(node, epoch)| (self.slot(node), epoch));
                let evict = ToShard::Evict {
                    client_id,
                    epoch,
                    hand_to,
                };
                self.to_home(&home, evict);
            }
            Effect::Claimed {
                client_id,
                node,
                epoch,
                resume,
            } if node == me => {
                let home = client_id.clone();
                let claimed = ToShard::Claimed {
                    client_id,
                    epoch,
                    resume,
                };
                self.to_home(&home, claimed);
            }
            Effect::Route { .. }
            | Effect::Evict { .. }
            | Effect::Claimed { .. }
            | Effect::Down(_)
            | Effect::Membership
            | Effect::Applied(_) => {}
        }
    }
}

/// The cluster as `ctl`, the API and `/metrics` see it (refreshed as the log is applied).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub node: String,
    pub leader: Option<String>,
    pub members: Vec<MemberSummary>,
    pub routes: usize,
    pub retained: usize,
    pub sessions: usize,
    pub last_applied: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberSummary {
    #[serde(skip)]
    pub id: NodeId,
    pub name: String,
    pub addr: String,
    pub rpc: String,
    pub voter: bool,
    pub routes: usize,
    /// Its routes were dropped for silence.
    pub down: bool,
    /// Messages this node forwarded to it.
    pub forwarded: u64,
    /// (Seen from the leader only) log entries it has not yet replicated.
    pub lag: Option<u64>,
}

impl Summary {
    fn refresh(&mut self, core: &node::Core) {
        let m = core.machine.lock().unwrap_or_else(PoisonError::into_inner);
        let voters: Vec<NodeId> = m.membership.voter_ids().collect();
        let metrics = core.raft.metrics().borrow().clone();
        let names: BTreeMap<NodeId, String> = m
            .membership
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.name.clone()))
            .collect();
        self.leader = core.leader().ok().and_then(|l| names.get(&l).cloned());
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.clone().unwrap_or_default();
        self.members = m
            .membership
            .membership()
            .nodes()
            .map(|(id, n)| MemberSummary {
                id: *id,
                name: n.name.clone(),
                addr: n.addr.clone(),
                rpc: n.rpc.clone(),
                voter: voters.contains(id),
                routes: m.data.routes.get(id).map_or(0, |r| r.len()),
                down: m.data.down.contains(id),
                forwarded: 0,
                lag: replication
                    .get(id)
                    .map(|matched| last.saturating_sub(matched.map_or(0, |l| l.index))),
            })
            .collect();
        self.routes = m.data.routes.values().map(|r| r.len()).sum();
        self.retained = m.data.retained.len();
        self.sessions = m.data.sessions.len();
        self.last_applied = m.last_applied.map(|l| l.index);
    }
}

/// The numbered frames this node took from each sending shard of each node: a frame sent again
/// after a reconnection (whichever shard it now lands on) is taken once.
#[derive(Default)]
pub struct Streams(Mutex<std::collections::HashMap<(NodeId, u32), (u64, u64)>>);

impl Streams {
    /// Whether frame `seq` of (`node`, `shard`, `life`) is new (and from now on taken).
    pub fn take(&self, node: NodeId, shard: u32, life: u64, seq: u64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (l, last) = m.entry((node, shard)).or_insert((life, 0));
        if *l != life {
            *l = life;
            *last = 0;
        }
        let fresh = seq > *last;
        *last = (*last).max(seq);
        fresh
    }
}

/// The running cluster side of this node: where shards report, what the admin reads.
pub struct Cluster {
    events: UnboundedSender<Event>,
    admin: UnboundedSender<(Admin, std::sync::mpsc::SyncSender<Result<String, String>>)>,
    summary: Arc<Mutex<Summary>>,
    streams: Streams,
    /// Messages forwarded to each node, one counter per (node, shard) so shards never share a
    /// cache line for it.
    forwarded: Mutex<Vec<(NodeId, Arc<AtomicU64>)>>,
}

impl Cluster {
    pub fn streams(&self) -> &Streams {
        &self.streams
    }

    /// Carries out an operator's change to the membership (on the admin thread: it waits for
    /// the cluster thread's answer, up to a minute). What was done, or why not.
    pub fn admin(&self, op: Admin) -> Result<String, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.admin
            .send((op, tx))
            .map_err(|_| "the cluster thread has stopped".to_string())?;
        rx.recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the cluster did not answer in time".to_string())?
    }

    /// Reports a shard's event (never blocks: the cluster thread takes it when it can).
    pub fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// A shard's counter of messages forwarded to `node`.
    pub fn forward_counter(&self, node: NodeId) -> Arc<AtomicU64> {
        let c = Arc::new(AtomicU64::new(0));
        self.forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((node, c.clone()));
        c
    }

    pub fn summary(&self) -> Summary {
        let mut s = self
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let forwarded = self
            .forwarded
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for m in &mut s.members {
            m.forwarded = forwarded
                .iter()
                .filter(|(n, _)| *n == m.id)
                .map(|(_, c)| c.load(Ordering::Relaxed))
                .sum();
        }
        s
    }
}

/// A shard's way to the cluster thread.
pub type Reporter = Arc<Cluster>;

/// This node was removed from its cluster at its own request: the Raft engine stops (a node
/// outside the membership must not call elections), the shards forget every other node, and the
/// store is marked so that the next start begins without the old Raft state (ready to join).
async fn left(core: &node::Core, log: &log_store::LogStore, shards: &Shards) {
    if let Err(e) = log.mark_left() {
        tracing::error!(error = %e, "could not mark the store as having left the cluster");
    }
    if let Err(e) = core.raft.shutdown().await {
        tracing::warn!(error = %e, "the Raft engine did not stop cleanly");
    }
    shards.members(core.id(), &BTreeMap::new());
    shards.alone.store(true, Ordering::Relaxed);
    tracing::warn!("left the cluster: serving this node's clients alone until restarted");
}

/// Starts this node's cluster thread: binds `cluster.listen` (an error if it cannot), opens the
/// Raft log in the store's database, and joins or forms the cluster in the background.
pub fn start(
    cfg: &ClusterConfig,
    name: &str,
    trust: Trust,
    db: &fjall::Database,
    links: Vec<Arc<ShardLink>>,
) -> Result<Reporter, String> {
    let listener =
        StdListener::bind(cfg.listen).map_err(|e| format!("cluster.listen {}: {e}", cfg.listen))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = cfg
        .advertise
        .unwrap_or(listener.local_addr().map_err(|e| e.to_string())?);
    let rpc = cfg.advertise_rpc.unwrap_or(cfg.rpc_listen);
    let info = NodeInfo {
        name: name.to_string(),
        addr: addr.to_string(),
        rpc: rpc.to_string(),
    };
    let (effects_tx, effects_rx) = unbounded_channel();
    if log_store::forget_if_left(db)? {
        tracing::info!("this node left its cluster: starting without its Raft state");
    }
    let log = log_store::LogStore::open(db)?;
    let left_log = log.clone();
    let (machine_store, machine) = state::StateStore::open(db, effects_tx)?;
    let raft_cfg = node::raft_config(cfg.node_timeout_ms)?;
    let (events_tx, events_rx) = unbounded_channel();
    let (admin_tx, mut admin_rx) = unbounded_channel();
    let summary = Arc::new(Mutex::new(Summary {
        node: name.to_string(),
        ..Summary::default()
    }));
    let cluster = Arc::new(Cluster {
        events: events_tx.clone(),
        admin: admin_tx,
        summary: summary.clone(),
        streams: Streams::default(),
        forwarded: Mutex::default(),
    });
    let voter = cfg.role == ClusterRole::Voter;
    let seeds = cfg.seeds.clone();
    let timeout = Duration::from_millis(cfg.node_timeout_ms);
    let shards = Arc::new(Shards::new(links));
    std::thread::Builder::new()
        .name("ringmq-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cluster: no runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let me = node_id(&info.name);
                let network = net::Network {
                    trust: trust.clone(),
                    me,
                };
                let raft = match types::Raft::new(me, raft_cfg, network, log, machine_store).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster: the Raft engine did not start");
                        return;
                    }
                };
                let core = Arc::new(node::Core::new(raft, info, trust, voter, machine, timeout));
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster: cannot listen");
                        return;
                    }
                };
                tokio::spawn(net::serve(listener, core.clone()));
                tokio::spawn(node::watch_loop(core.clone(), timeout));
                let (admin_core, admin_shards) = (core.clone(), shards.clone());
                tokio::spawn(async move {
                    while let Some((op, answer)) = admin_rx.recv().await {
                        let leaving = matches!(op, Admin::Leave);
                        let done = admin_core.admin(op).await;
                        if leaving && done.is_ok() {
                            left(&admin_core, &left_log, &admin_shards).await;
                        }
                        let _ = answer.send(done);
                    }
                });
                tokio::spawn(node::effect_loop(
                    core.clone(),
                    effects_rx,
                    shards.clone(),
                    events_tx,
                    summary,
                ));
                node::join(&core, &seeds).await;
                node::propose_loop(core, events_rx, shards).await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(cluster)
}
