//! The replicated state (the Raft state machine): every node's routes, the retained messages,
//! the session registry, and the nodes whose routes were dropped for silence. Every node applies
//! the same committed log to its own copy, so matching a publish never asks the network. What
//! an applied entry changes for this node's shards is sent on as an [`Effect`]; a snapshot
//! installed from the leader replaces everything, and the shards are told to start again from
//! it ([`Effect::Reset`]). Snapshots are kept in the store (keyspace `raft_snapshot`), so a
//! restarted node replays only the log after its last one.

// openraft's storage traits fix the error type (`StorageError`, a large enum): the helpers
// here return it as the traits do.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::sync::{Arc, Mutex, PoisonError};

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use super::types::{
    storage_error, Command, Entry, LogId, NodeId, Reply, Retained, Snapshot, SnapshotMeta,
    StorageError, StoredMembership, Types,
};
use super::Resume;

/// What the cluster agreed on.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Replicated {
    /// Each node's routes (filters with at least one subscriber there).
    pub routes: BTreeMap<NodeId, BTreeSet<String>>,
    /// Nodes whose routes were dropped for silence, until they send their route set.
    pub down: BTreeSet<NodeId>,
    pub retained: BTreeMap<String, Retained>,
    /// Client id -> the node its session is on and that session life's epoch.
    pub sessions: HashMap<String, (NodeId, u64)>,
}

/// The claim epoch of a hand-over no CONNECT waits for (claims from connections are never 0):
/// the session is merged into the one its client has on that node, and a node with nothing to
/// hand says nothing.
pub const MERGE: u64 = 0;

/// What applying the log changed for this node's shards.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Node `node` gained (`add`) or lost its route to `filter`.
    Route {
        node: NodeId,
        filter: String,
        add: bool,
    },
    Retain(Retained),
    /// The connection of `client_id` on `node` that claimed it with `epoch` (or an older one)
    /// lost it to a newer connection on another node: `node` closes it (0x8E), and with
    /// `hand_to` (that node and its claim's epoch) hands the persistent session over: to a
    /// connection resuming it there, or (epoch [`MERGE`]), when `node` was away while the client
    /// went there, into the session it started meanwhile.
    Evict {
        client_id: String,
        node: NodeId,
        epoch: u64,
        hand_to: Option<(NodeId, u64)>,
    },
    /// `node`'s claim of `client_id` with `epoch`, resuming a persistent session, is taken:
    /// what becomes of the session there.
    Claimed {
        client_id: String,
        node: NodeId,
        epoch: u64,
        resume: Resume,
    },
    /// Node `node`'s routes were dropped for silence (it is told, so it sends them again).
    Down(NodeId),
    /// The membership changed.
    Membership,
    /// The log was applied up to this index: once the effects before this one are with the
    /// shards, a wait for the index ends, and what the status shows is brought up to date.
    Applied(u64),
    /// A snapshot replaced the state: every remote route known so far is void; what the new
    /// state holds follows as `Route` and `Retain` effects.
    Reset,
}

/// The state machine, shared with the node's loop (which reads it for status).
#[derive(Debug, Default)]
pub struct Machine {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub data: Replicated,
}

/// The state machine as openraft holds it.
#[derive(Clone)]
pub struct StateStore {
    machine: Arc<Mutex<Machine>>,
    effects: UnboundedSender<Effect>,
    db: Database,
    snapshots: Keyspace,
}

/// A snapshot as kept in the store.
#[derive(Serialize, Deserialize)]
struct Kept {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

const CURRENT: &[u8] = b"current";

impl Replicated {
    /// A membership change: what nodes no longer in the cluster had is dropped (the shards
    /// forget their routes when told of the membership).
    fn keep_nodes(&mut self, members: &BTreeSet<NodeId>) {
        self.routes.retain(|n, _| members.contains(n));
        self.down.retain(|n| members.contains(n));
        self.sessions.retain(|_, (n, _)| members.contains(n));
    }

    /// `client_id` connected on `node` with `epoch`: the newer of it and the registered claim
    /// keeps the id; a claim on another node that loses is evicted. A winning claim that
    /// `resumes` a persistent session has it handed over by the live node that held it, its
    /// CONNECT waiting; a node that held it but was away (down, cut off), and a node whose claim
    /// loses to one made meanwhile, hand theirs over to be merged ([`MERGE`]).
    fn claim(
        &mut self,
        (client_id, epoch, resumes): (String, u64, bool),
        node: NodeId,
        effects: &mut Vec<Effect>,
    ) {
        let previous = self.sessions.get(&client_id).copied();
        let won = previous.is_none_or(|(_, e)| e <= epoch);
        let elsewhere = previous.filter(|(n, _)| *n != node);
        let loser = elsewhere.map(|(n, e)| if won { (n, e) } else { (node, epoch) });
        if won {
            self.sessions.insert(client_id.clone(), (node, epoch));
        }
        let held = elsewhere.map(|(n, _)| n).filter(|_| won && resumes);
        let stranded = held.is_some_and(|n| self.down.contains(&n));
        let from = held.filter(|_| !stranded);
        if let Some((loser, lost)) = loser {
            // A resuming winner takes the whole session from a live holder, its CONNECT
            // waiting; a stranded holder, once back, hands it to be merged into the session the
            // client started meanwhile. Likewise a claim that loses to one made while its node
            // was away hands what its session still owes the client to the winner's.
            let hand_to = if won {
                held.map(|_| (node, if stranded { MERGE } else { epoch }))
            } else {
                elsewhere
                    .filter(|(n, _)| !self.down.contains(n))
                    .map(|(n, _)| (n, MERGE))
            };
            effects.push(Effect::Evict {
                client_id: client_id.clone(),
                node: loser,
                epoch: lost,
                hand_to,
            });
        }
        if resumes {
            let resume = match (from, stranded) {
                (Some(_), _) => Resume::Handed,
                (None, true) => Resume::Anew,
                (None, false) => Resume::Here,
            };
            effects.push(Effect::Claimed {
                client_id,
                node,
                epoch,
                resume,
            });
        }
    }
}

impl Machine {
    pub fn apply(&mut self, cmd: Command, effects: &mut Vec<Effect>) -> Reply {
        let d = &mut self.data;
        match cmd {
            // A change from a node dropped for silence was sent before it learnt so: it sends
            // its whole set again (`RouteSet`), and until then it has no routes.
            Command::Routes { node, .. } if d.down.contains(&node) => return Reply::NodeDown,
            Command::Routes { node, add, remove } => {
                let set = d.routes.entry(node).or_default();
                for filter in add {
                    if set.insert(filter.clone()) {
                        effects.push(Effect::Route {
                            node,
                            filter,
                            add: true,
                        });
                    }
                }
                for filter in remove {
                    if set.remove(&filter) {
                        effects.push(Effect::Route {
                            node,
                            filter,
                            add: false,
                        });
                    }
                }
            }
            Command::RouteSet { node, filters } => {
                d.down.remove(&node);
                let new: BTreeSet<String> = filters.into_iter().collect();
                let old = d.routes.insert(node, new.clone()).unwrap_or_default();
                for filter in old.difference(&new) {
                    effects.push(Effect::Route {
                        node,
                        filter: filter.clone(),
                        add: false,
                    });
                }
                for filter in new.difference(&old) {
                    effects.push(Effect::Route {
                        node,
                        filter: filter.clone(),
                        add: true,
                    });
                }
            }
            Command::Down { node } => {
                if d.down.insert(node) {
                    for filter in d.routes.remove(&node).unwrap_or_default() {
                        effects.push(Effect::Route {
                            node,
                            filter,
                            add: false,
                        });
                    }
                    effects.push(Effect::Down(node));
                }
            }
            Command::Retain(r) => {
                if r.stored.is_none() {
                    d.retained.remove(&r.topic);
                } else {
                    d.retained.insert(r.topic.clone(), r.clone());
                }
                effects.push(Effect::Retain(r));
            }
            Command::Sessions {
                node,
                started,
                claims,
                releases,
            } => {
                if started {
                    d.sessions.retain(|_, (n, _)| *n != node);
                }
                for claim in claims {
                    d.claim(claim, node, effects);
                }
                for (client_id, epoch) in releases {
                    if d.sessions.get(&client_id) == Some(&(node, epoch)) {
                        d.sessions.remove(&client_id);
                    }
                }
            }
        }
        Reply::Done
    }

    /// Every effect that rebuilds the shards' view from this state.
    fn replay(&self, effects: &mut Vec<Effect>) {
        effects.push(Effect::Reset);
        effects.push(Effect::Membership);
        for (node, filters) in &self.data.routes {
            for filter in filters {
                effects.push(Effect::Route {
                    node: *node,
                    filter: filter.clone(),
                    add: true,
                });
            }
        }
        effects.extend(self.data.retained.values().cloned().map(Effect::Retain));
        effects.push(Effect::Applied(self.applied_index()));
    }

    /// The index of the last entry applied (0 before any).
    fn applied_index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

impl StateStore {
    /// The state machine over the store's `raft_snapshot` keyspace, starting from the last
    /// snapshot kept there; what applying changes goes to `effects`.
    pub fn open(
        db: &Database,
        effects: UnboundedSender<Effect>,
    ) -> Result<(StateStore, Arc<Mutex<Machine>>), String> {
        let snapshots = db
            .keyspace("raft_snapshot", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| format!("the store's raft_snapshot: {e}"))?;
        let mut machine = Machine::default();
        if let Some(v) = snapshots.get(CURRENT).map_err(|e| e.to_string())? {
            let kept: Kept = postcard::from_bytes(&v).map_err(|e| e.to_string())?;
            machine.data = postcard::from_bytes(&kept.data).map_err(|e| e.to_string())?;
            machine.last_applied = kept.meta.last_log_id;
            machine.membership = kept.meta.last_membership.clone();
            let mut replay = Vec::new();
            machine.replay(&mut replay);
            for e in replay {
                let _ = effects.send(e);
            }
        }
        let machine = Arc::new(Mutex::new(machine));
        let store = StateStore {
            machine: machine.clone(),
            effects,
            db: db.clone(),
            snapshots,
        };
        Ok((store, machine))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, effects: Vec<Effect>) {
        for e in effects {
            let _ = self.effects.send(e);
        }
    }

    fn keep(&self, kept: &Kept) -> Result<(), StorageError> {
        let v = postcard::to_allocvec(kept).map_err(storage_error)?;
        self.snapshots
            .insert(CURRENT.to_vec(), v)
            .map_err(storage_error)?;
        self.db.persist(PersistMode::SyncAll).map_err(storage_error)
    }

    fn current(&self) -> Result<Option<Kept>, StorageError> {
        match self.snapshots.get(CURRENT).map_err(storage_error)? {
            Some(v) => postcard::from_bytes(&v).map(Some).map_err(storage_error),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<Types> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let m = self.lock();
            let data = postcard::to_allocvec(&m.data).map_err(storage_error)?;
            let id = m
                .last_applied
                .map_or_else(|| "empty".to_string(), |l| l.to_string());
            let meta = SnapshotMeta {
                last_log_id: m.last_applied,
                last_membership: m.membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        let kept = Kept { meta, data };
        self.keep(&kept)?;
        Ok(Snapshot {
            meta: kept.meta,
            snapshot: Box::new(Cursor::new(kept.data)),
        })
    }
}

impl RaftStateMachine<Types> for StateStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.lock();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut effects = Vec::new();
        let mut replies = Vec::new();
        {
            let mut m = self.lock();
            for e in entries {
                m.last_applied = Some(e.log_id);
                let reply = match e.payload {
                    EntryPayload::Blank => Reply::Done,
                    EntryPayload::Normal(cmd) => m.apply(cmd, &mut effects),
                    EntryPayload::Membership(mem) => {
                        m.data.keep_nodes(&mem.nodes().map(|(id, _)| *id).collect());
                        m.membership = StoredMembership::new(Some(e.log_id), mem);
                        effects.push(Effect::Membership);
                        Reply::Done
                    }
                };
                replies.push(reply);
            }
            effects.push(Effect::Applied(m.applied_index()));
        }
        self.send(effects);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let replicated: Replicated = postcard::from_bytes(&data).map_err(storage_error)?;
        let kept = Kept {
            meta: meta.clone(),
            data,
        };
        self.keep(&kept)?;
        tracing::info!(
            last = ?meta.last_log_id,
            bytes = kept.data.len(),
            "cluster: installed a snapshot from the leader (a full resync)"
        );
        let mut effects = Vec::new();
        {
            let mut m = self.lock();
            m.data = replicated;
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.replay(&mut effects);
        }
        self.send(effects);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.current()?.map(|k| Snapshot {
            meta: k.meta,
            snapshot: Box::new(Cursor::new(k.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(
        m: &mut Machine,
        node: NodeId,
        started: bool,
        claims: &[(&str, u64, bool)],
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let cmd = Command::Sessions {
            node,
            started,
            claims: claims
                .iter()
                .map(|(c, e, r)| (c.to_string(), *e, *r))
                .collect(),
            releases: Vec::new(),
        };
        m.apply(cmd, &mut effects);
        effects
    }

    type Evicted = (String, NodeId, u64, Option<(NodeId, u64)>);

    fn evicted(effects: &[Effect]) -> Vec<Evicted> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Evict {
                    client_id,
                    node,
                    epoch,
                    hand_to,
                } => Some((client_id.clone(), *node, *epoch, *hand_to)),
                _ => None,
            })
            .collect()
    }

    fn claimed(effects: &[Effect]) -> Vec<(NodeId, u64, Resume)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Claimed {
                    node,
                    epoch,
                    resume,
                    ..
                } => Some((*node, *epoch, *resume)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_newer_claim_keeps_the_id_and_the_other_node_evicts_its_connection() {
        let mut m = Machine::default();
        assert!(evicted(&sessions(&mut m, 1, false, &[("c", 10, false)])).is_empty());
        // A newer connection on node 2: node 1's is evicted.
        let e = sessions(&mut m, 2, false, &[("c", 20, false)]);
        assert_eq!(evicted(&e), [("c".to_string(), 1, 10, None)]);
        assert!(claimed(&e).is_empty(), "a clean claim waits for nothing");
        // An older claim arriving late (a healed partition) loses, and is itself evicted: what
        // its session owes goes to the winner's.
        let e = sessions(&mut m, 3, false, &[("c", 15, false)]);
        assert_eq!(evicted(&e), [("c".to_string(), 3, 15, Some((2, MERGE)))]);
        assert_eq!(m.data.sessions.get("c"), Some(&(2, 20)));
        // A claim on the same node is a local takeover: nothing to evict elsewhere.
        assert!(evicted(&sessions(&mut m, 2, false, &[("c", 30, false)])).is_empty());
        // A release of an older life does not free the id; node 2's start voids its claims.
        let mut effects = Vec::new();
        let release = Command::Sessions {
            node: 2,
            started: false,
            claims: Vec::new(),
            releases: vec![("c".into(), 20)],
        };
        m.apply(release, &mut effects);
        assert_eq!(m.data.sessions.get("c"), Some(&(2, 30)));
        sessions(&mut m, 2, true, &[]);
        assert!(m.data.sessions.is_empty());
    }

    #[test]
    fn a_silent_node_keeps_no_route_until_it_sends_its_whole_set_again() {
        let mut m = Machine::default();
        let routes = |add: &[&str]| Command::Routes {
            node: 2,
            add: add.iter().map(|f| f.to_string()).collect(),
            remove: Vec::new(),
        };
        m.apply(routes(&["a/#"]), &mut Vec::new());
        let mut e = Vec::new();
        m.apply(Command::Down { node: 2 }, &mut e);
        assert!(matches!(
            &e[..],
            [Effect::Route { add: false, .. }, Effect::Down(2)]
        ));
        // A change it sent before it learnt it was dropped is not taken, and its proposer is
        // told so: it sends its whole set before it answers the subscribers waiting.
        let mut e = Vec::new();
        assert_eq!(m.apply(routes(&["b"]), &mut e), Reply::NodeDown);
        assert!(e.is_empty());
        assert_eq!(m.data.routes.get(&2).map_or(0, |r| r.len()), 0);
        // Its whole set, sent again, is taken.
        let set = Command::RouteSet {
            node: 2,
            filters: vec!["a/#".into(), "b".into()],
        };
        assert_eq!(m.apply(set, &mut Vec::new()), Reply::Done);
        assert_eq!(m.data.routes[&2].len(), 2);
        assert!(!m.data.down.contains(&2));
    }

    #[test]
    fn a_resumed_session_is_handed_over_by_a_live_holder_and_starts_anew_after_a_dead_one() {
        let mut m = Machine::default();
        let e = sessions(&mut m, 1, false, &[("p", 10, true)]);
        assert_eq!(
            claimed(&e),
            [(1, 10, Resume::Here)],
            "nobody held it: it starts here"
        );
        let e = sessions(&mut m, 2, false, &[("p", 20, true)]);
        assert_eq!(evicted(&e), [("p".to_string(), 1, 10, Some((2, 20)))]);
        assert_eq!(claimed(&e), [(2, 20, Resume::Handed)]);
        // An older claim that loses waits for nothing and takes nothing; its node hands what
        // its session holds to the winner.
        let e = sessions(&mut m, 3, false, &[("p", 15, true)]);
        assert_eq!(evicted(&e), [("p".to_string(), 3, 15, Some((2, MERGE)))]);
        assert_eq!(claimed(&e), [(3, 15, Resume::Here)]);
        // Its holder silent, the session cannot come: it starts anew on node 3, and node 2,
        // back, hands it over there.
        m.apply(Command::Down { node: 2 }, &mut Vec::new());
        let e = sessions(&mut m, 3, false, &[("p", 40, true)]);
        assert_eq!(evicted(&e), [("p".to_string(), 2, 20, Some((3, MERGE)))]);
        assert_eq!(
            claimed(&e),
            [(3, 40, Resume::Anew)],
            "stranded on a dead node"
        );
        // Back from its store, node 2 registers what it held (epoch 0): the id stays node 3's,
        // and node 2 hands the old session's messages there.
        let e = sessions(&mut m, 2, true, &[("p", 0, false)]);
        assert_eq!(evicted(&e), [("p".to_string(), 2, 0, Some((3, MERGE)))]);
        assert_eq!(m.data.sessions.get("p"), Some(&(3, 40)));
    }
}
