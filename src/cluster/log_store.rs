//! The Raft log and vote, kept in the broker's store (fjall, the data dir) so that a node that
//! restarts comes back with its log and its vote: keyspace `raft_log` holds entries by index
//! (big-endian, so they sort), `raft_meta` the vote, the last committed and the last purged
//! log ids. The vote and appended entries are synced before openraft is told they are done (a
//! vote or an entry that vanished after a crash could elect two leaders); the committed id is
//! written lazily, as openraft allows.
//!
//! Appended entries are synced by a thread of their own ([`Flusher`]), not on the cluster
//! thread's runtime: a slow disk must not stall heartbeats, pings and the failure detector
//! behind an fsync. Appends that come while a sync runs share the next one.

// openraft's storage traits fix the error type (`StorageError`, a large enum): the helpers
// here return it as the traits do.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, PersistMode};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::types::{storage_error, Entry, LogId, StorageError, Types, Vote};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";
/// Set when the node left its cluster (`ctl cluster leave`): its Raft state is dropped at the
/// next start.
const LEFT: &[u8] = b"left";

/// The keyspaces that hold this node's Raft state.
const KEYSPACES: [&str; 3] = ["raft_log", "raft_meta", "raft_snapshot"];

/// When the store is marked as having left its cluster, empties the Raft state (log, vote,
/// snapshots) so the node starts as a new one; whether it did.
pub fn forget_if_left(db: &Database) -> Result<bool, String> {
    let meta = db
        .keyspace("raft_meta", fjall::KeyspaceCreateOptions::default)
        .map_err(|e| format!("the store's raft_meta: {e}"))?;
    if meta.get(LEFT).map_err(|e| e.to_string())?.is_none() {
        return Ok(false);
    }
    for name in KEYSPACES {
        let ks = db
            .keyspace(name, fjall::KeyspaceCreateOptions::default)
            .map_err(|e| format!("the store's {name}: {e}"))?;
        let keys: Vec<fjall::UserKey> = ks.iter().filter_map(|kv| kv.key().ok()).collect();
        for k in keys {
            ks.remove(k).map_err(|e| e.to_string())?;
        }
    }
    db.persist(PersistMode::SyncAll)
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// A sync slower than this is logged: the disk is delaying the cluster's commits.
const SLOW_SYNC: Duration = Duration::from_millis(500);

/// The log, readable from any task (a clone is a reader).
#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    flusher: Flusher,
}

/// Syncs the store for appended entries on its own thread and tells openraft when they are
/// on disk, in the order they were appended. The thread ends with the last handle.
#[derive(Clone)]
struct Flusher(Sender<LogFlushed<Types>>);

impl Flusher {
    fn start(db: Database) -> Result<Flusher, String> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("ringmq-raft-sync".into())
            .spawn(move || Flusher::run(&db, &rx))
            .map_err(|e| format!("cannot start the Raft log's sync thread: {e}"))?;
        Ok(Flusher(tx))
    }

    /// Calls `callback` once what was written before it is on disk.
    fn after_sync(&self, callback: LogFlushed<Types>) -> Result<(), StorageError> {
        self.0
            .send(callback)
            .map_err(|_| storage_error("the Raft log's sync thread is gone"))
    }

    fn run(db: &Database, rx: &Receiver<LogFlushed<Types>>) {
        while let Ok(first) = rx.recv() {
            let waiting: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
            let started = Instant::now();
            let synced = db.persist(PersistMode::SyncAll).map_err(|e| e.to_string());
            if started.elapsed() > SLOW_SYNC {
                tracing::warn!(
                    ms = started.elapsed().as_millis() as u64,
                    "a sync of the Raft log was slow: the disk delays the cluster's commits"
                );
            }
            for callback in waiting {
                callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
            }
        }
    }
}

fn encode(v: &impl Serialize) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(v).map_err(storage_error)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(b).map_err(storage_error)
}

impl LogStore {
    pub fn open(db: &Database) -> Result<LogStore, String> {
        let ks = |name: &str| {
            db.keyspace(name, fjall::KeyspaceCreateOptions::default)
                .map_err(|e| format!("the store's {name}: {e}"))
        };
        Ok(LogStore {
            log: ks("raft_log")?,
            meta: ks("raft_meta")?,
            db: db.clone(),
            flusher: Flusher::start(db.clone())?,
        })
    }

    /// Marks the store as having left the cluster (see [`forget_if_left`]).
    pub fn mark_left(&self) -> Result<(), StorageError> {
        self.meta.insert(LEFT, [1u8]).map_err(storage_error)?;
        self.sync()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(storage_error)? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Writes `v` under `key` and syncs it.
    fn put_meta(&self, key: &[u8], v: &impl Serialize) -> Result<(), StorageError> {
        self.write_meta(key, v)?;
        self.sync()
    }

    /// Writes `v` under `key`; the next sync takes it along.
    fn write_meta(&self, key: &[u8], v: &impl Serialize) -> Result<(), StorageError> {
        self.meta
            .insert(key.to_vec(), encode(v)?)
            .map_err(storage_error)
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll).map_err(storage_error)
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        match self.log.last_key_value() {
            Some(kv) => {
                let (_, v) = kv.into_inner().map_err(storage_error)?;
                decode(&v).map(Some)
            }
            None => Ok(None),
        }
    }

    /// Removes the entries with indexes in `range`.
    fn remove(&self, range: (Bound<[u8; 8]>, Bound<[u8; 8]>)) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        for kv in self.log.range(range) {
            let (k, _) = kv.into_inner().map_err(storage_error)?;
            batch.remove(&self.log, k);
        }
        batch.commit().map_err(storage_error)?;
        self.sync()
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn bounds(range: impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let map = |b: Bound<&u64>| match b {
        Bound::Included(i) => Bound::Included(key(*i)),
        Bound::Excluded(i) => Bound::Excluded(key(*i)),
        Bound::Unbounded => Bound::Unbounded,
    };
    (map(range.start_bound()), map(range.end_bound()))
}

impl RaftLogReader<Types> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.log
            .range(bounds(range))
            .map(|kv| {
                let (_, v) = kv.into_inner().map_err(storage_error)?;
                decode(&v)
            })
            .collect()
    }
}

impl RaftLogStorage<Types> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, StorageError> {
        let purged: Option<LogId> = self.get_meta(PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id).or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    /// Written, not synced: openraft lets the committed id be kept lazily, and the next
    /// append's sync takes it along. After a crash the kept mark may be older than the last
    /// commit; the node learns the rest from the leader.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Types>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = self.db.batch();
        for e in entries {
            batch.insert(&self.log, key(e.log_id.index), encode(&e)?);
        }
        batch.commit().map_err(storage_error)?;
        self.flusher.after_sync(callback)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove(bounds(log_id.index..))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put_meta(PURGED, &log_id)?;
        self.remove(bounds(..=log_id.index))
    }
}
