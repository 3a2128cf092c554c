//! The crash-safe store: persistent sessions, their queued and in-flight deliveries, inbound
//! QoS 2 ids, retained messages, delayed publishes and bans, in `fjall` (a pure-Rust LSM tree with a journal and atomic
//! cross-keyspace batches) under `broker.data_dir`. Chosen over a home-made segment log: it
//! brings the journal, crash recovery of a torn tail, compaction and a lock on the directory,
//! and one batch per shard tick keeps its cost per message small (see `bench/durable.sh`).
//!
//! Shards never call it: each sends its tick's changes as one [`Batch`] to the storage thread
//! ([`writer`]), which commits whatever batches wait as one group, syncs as the mode says, and
//! tells each shard which of its batches are safe, ringing its doorbell. At start [`Store::recover`]
//! reads everything back before any listener opens.

pub mod legacy;
pub mod record;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytestring::ByteString;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::config::DurabilityConfig;
use crate::session::{DeliveryOp, Message, Session};
use record::{DelayedMessage, Flight, StoredMessage, StoredSession};

pub use writer::{spawn, Batch, StoreLink, Writer};

/// One change for the store, made by a shard.
#[derive(Debug)]
pub enum Op {
    /// A session's own record, encoded by the shard that holds it.
    Session {
        client_id: ByteString,
        value: Vec<u8>,
    },
    /// A change to one of the deliveries of the session life `epoch` (encoded by the storage
    /// thread).
    Delivery { epoch: u64, op: DeliveryOp },
    /// The session's life `epoch` ended: its record and deliveries go.
    EndSession { client_id: ByteString, epoch: u64 },
    /// A retained message set.
    Retain(Arc<Message>),
    /// A retained message cleared.
    Unretain(ByteString),
    /// A retained message that expired: removed only if the kept one has expired too (another
    /// shard may have set a new one meanwhile).
    ExpireRetained(ByteString),
    /// A delayed publish held, by id.
    Delay(u64, Arc<DelayedMessage>),
    /// A delayed publish released or cancelled.
    Undelay(u64),
    /// A client ban set (or replaced).
    Ban(Arc<crate::banned::Ban>),
    /// A ban lifted, by its key.
    Unban(String),
}

/// What the store holds, in counters for `/metrics` and `ctl status`.
#[derive(Default)]
pub struct StoreStats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub failures: AtomicU64,
    /// Batches sent by shards and not yet committed.
    pub lag: AtomicU64,
    pub last_sync_ms: AtomicU64,
    pub disk_bytes: AtomicU64,
    pub restored_sessions: AtomicU64,
    pub restored_messages: AtomicU64,
    pub restored_retained: AtomicU64,
    pub restore_ms: AtomicU64,
}

/// The open store.
pub struct Store {
    db: Database,
    path: std::path::PathBuf,
    sessions: Keyspace,
    queue: Keyspace,
    flight: Keyspace,
    retained: Keyspace,
    delayed: Keyspace,
    banned: Keyspace,
    meta: Keyspace,
}

/// What a restart brings back.
#[derive(Default)]
pub struct Recovered {
    pub sessions: Vec<RestoredSession>,
    pub retained: Vec<Arc<Message>>,
    /// Delayed publishes by id (their deadlines may have passed while the broker was down).
    pub delayed: Vec<(u64, DelayedMessage)>,
    /// The bans still in force.
    pub banned: Vec<crate::banned::Ban>,
    pub messages: usize,
    /// The largest epoch in the store: new session lives are numbered above it (the wall clock
    /// they start from may have gone back).
    pub max_epoch: u64,
}

/// A session read back, with its epoch, last sequence number and offline deadlines.
pub struct RestoredSession {
    pub session: Session,
    pub epoch: u64,
    pub last_seq: u64,
    /// When it expires (None: never), counting the time the broker was down.
    pub expires_at: Option<Instant>,
    /// When its will is due, if it has one.
    pub will_at: Option<Instant>,
}

const ALIVE: &[u8] = b"alive";

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Store {
    /// Opens (or creates) the store in `dir`; fails when another broker holds it.
    pub fn open(dir: &Path, cfg: &DurabilityConfig) -> Result<Store, String> {
        let path = dir.join("store");
        let db = Database::builder(&path)
            .max_journaling_size(cfg.max_journal_mb * 1024 * 1024)
            .worker_threads(1)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => format!(
                    "{} is in use by another broker (one data dir per broker)",
                    path.display()
                ),
                e => format!("cannot open the store in {}: {e}", path.display()),
            })?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(io)
        };
        Ok(Store {
            sessions: ks("sessions")?,
            queue: ks("queue")?,
            flight: ks("flight")?,
            retained: ks("retained")?,
            delayed: ks("delayed")?,
            banned: ks("banned")?,
            meta: ks("meta")?,
            db,
            path,
        })
    }

    /// The database, for other keyspaces kept beside the broker's (the cluster's Raft log).
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    /// Reads every session, delivery and retained message back. Records of ended sessions and
    /// expired messages are deleted on the way.
    pub fn recover(&self, now: Instant) -> Result<Recovered, String> {
        let wall = record::wall_now();
        let alive = self
            .meta
            .get(ALIVE)
            .map_err(io)?
            .and_then(|v| record::decode::<u64>(&v))
            .unwrap_or(wall);
        let mut gone = self.db.batch();
        let mut by_id: AHashMap<ByteString, (StoredSession, Session)> = AHashMap::new();
        for kv in self.sessions.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            let (Ok(id), Some(rec)) =
                (std::str::from_utf8(&k), record::decode::<StoredSession>(&v))
            else {
                tracing::warn!("unreadable session record in the store: skipped");
                gone.remove(&self.sessions, k);
                continue;
            };
            let id = ByteString::from(id);
            let session = rec.session(id.clone());
            by_id.insert(id, (rec, session));
        }
        let mut flights: AHashMap<Vec<u8>, Flight> = AHashMap::new();
        for kv in self.flight.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            match record::decode::<Flight>(&v) {
                Some(f) => {
                    flights.insert(k.to_vec(), f);
                }
                None => gone.remove(&self.flight, k),
            }
        }
        let lives: AHashMap<u64, ByteString> = by_id
            .iter()
            .map(|(id, (rec, _))| (rec.epoch, id.clone()))
            .collect();
        let max_epoch = lives.keys().copied().max().unwrap_or(0);
        for kv in self.queue.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            let owner = record::parse_delivery_key(&k).and_then(|(epoch, seq)| {
                let id = lives.get(&epoch)?;
                by_id.get_mut(id).map(|(_, s)| (s, seq))
            });
            let separate = flights.remove(&k[..]);
            let restored = owner.and_then(|(s, seq)| {
                let (d, embedded) = record::decode_delivery(&v)?;
                Some((s, d.delivery(seq, now, wall)?, separate.or(embedded)))
            });
            let Some((s, d, flight)) = restored else {
                gone.remove(&self.queue, k.clone());
                gone.remove(&self.flight, k);
                continue;
            };
            Flight::place(flight, d, s);
        }
        // Flight records whose delivery is gone: nothing of them is read again.
        for k in flights.into_keys() {
            gone.remove(&self.flight, k);
        }
        let mut sessions = Vec::with_capacity(by_id.len());
        let mut messages = 0;
        for (id, (rec, mut session)) in by_id {
            let offline_since = if rec.connected { alive } else { wall };
            let expiry_wall = match rec.expires_at {
                Some(t) => Some(t),
                None if rec.expiry_interval == u32::MAX => None,
                None => Some(offline_since + u64::from(rec.expiry_interval) * 1000),
            };
            if expiry_wall.is_some_and(|t| t <= wall) {
                gone.remove(&self.sessions, id.as_bytes().to_vec());
                for kv in self.queue.prefix(record::session_prefix(rec.epoch)) {
                    let k = kv.key().map_err(io)?;
                    gone.remove(&self.flight, k.clone());
                    gone.remove(&self.queue, k);
                }
                continue;
            }
            let will_wall = match (rec.will_at, &rec.will, rec.connected) {
                (Some(t), _, _) => Some(t),
                (None, Some(w), true) => Some(offline_since + u64::from(will_delay(w)) * 1000),
                _ => None,
            };
            session.after_restore();
            messages += session.queue.len() + session.inflight.len();
            let seqs = session.queue.iter().map(|d| d.seq);
            let last_seq = seqs
                .chain(session.inflight.iter().map(|(_, f)| f.delivery.seq))
                .max()
                .unwrap_or(0);
            sessions.push(RestoredSession {
                last_seq,
                session,
                epoch: rec.epoch,
                expires_at: expiry_wall.map(|t| record::from_wall(t, now, wall)),
                will_at: will_wall.map(|t| record::from_wall(t, now, wall)),
            });
        }
        let mut retained = Vec::new();
        for kv in self.retained.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            match record::decode::<StoredMessage>(&v).and_then(|m| m.message(now, wall)) {
                Some(m) => retained.push(Arc::new(m)),
                None => gone.remove(&self.retained, k),
            }
        }
        let mut delayed = Vec::new();
        for kv in self.delayed.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            let id = k.first_chunk::<8>().map(|b| u64::from_be_bytes(*b));
            match (id, record::decode::<DelayedMessage>(&v)) {
                (Some(id), Some(m)) => delayed.push((id, m)),
                _ => gone.remove(&self.delayed, k),
            }
        }
        let mut banned = Vec::new();
        for kv in self.banned.iter() {
            let (k, v) = kv.into_inner().map_err(io)?;
            match record::decode::<crate::banned::Ban>(&v).filter(|b| !b.expired(wall)) {
                Some(b) => banned.push(b),
                None => gone.remove(&self.banned, k),
            }
        }
        gone.commit().map_err(io)?;
        Ok(Recovered {
            sessions,
            retained,
            delayed,
            banned,
            messages,
            max_epoch,
        })
    }

    /// Removes everything (`durability.mode = "off"` after reading it back: what a crash would
    /// bring back later is stale).
    pub fn clear(&self) -> Result<(), String> {
        let mut b = self.db.batch();
        for ks in [
            &self.sessions,
            &self.queue,
            &self.flight,
            &self.retained,
            &self.delayed,
            &self.banned,
            &self.meta,
        ] {
            for kv in ks.iter() {
                b.remove(ks, kv.key().map_err(io)?);
            }
        }
        b.commit().map_err(io)?;
        self.db.persist(fjall::PersistMode::SyncAll).map_err(io)
    }

    /// Writes what an older version's files held, synced, so they can be removed.
    pub fn import(&self, old: legacy::Legacy) -> Result<(), String> {
        let mut ops = Vec::new();
        // Numbered as shards number theirs (see `shard::durable`), in a slot no shard uses.
        let mut epoch = record::wall_now() << 16 | 0xffff;
        for mut s in old.sessions {
            if s.expiry_interval == 0 {
                continue;
            }
            epoch += 1 << 16;
            s.keep_stored(epoch);
            session_ops(&mut s, false, (None, None), true, &mut ops);
        }
        ops.extend(old.retained.into_iter().map(Op::Retain));
        let mut folded = writer::Folded::new(self);
        for op in ops {
            writer::fold(self, &mut folded, op);
        }
        writer::commit(self, &mut folded).map_err(io)?;
        self.db.persist(fjall::PersistMode::SyncAll).map_err(io)
    }

    /// Bytes the store takes on disk.
    /// Counted in blocks, as `du` does: the journal is preallocated (sparse), and its length
    /// says nothing of what it holds.
    pub fn disk_bytes(&self) -> u64 {
        fn blocks(dir: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(entries) = std::fs::read_dir(dir) else {
                return 0;
            };
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => blocks(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        blocks(&self.path)
    }
}

/// The changes a session's log holds, as store changes: its record when it changed (with
/// whether it is connected and its offline deadlines: expiry, will), then its deliveries'
/// (all of them, or those aged one batch: [`crate::session::StoreLog::drain_ops`]).
pub fn session_ops(
    session: &mut Session,
    connected: bool,
    deadlines: (Option<Instant>, Option<Instant>),
    all: bool,
    out: &mut Vec<Op>,
) {
    let Some(log) = session.stored.as_mut() else {
        return;
    };
    let epoch = log.epoch;
    if log.take_meta() {
        let now = Instant::now();
        let wall = record::wall_now();
        let rec = StoredSession::of(session, epoch, connected, deadlines, now, wall);
        out.push(Op::Session {
            client_id: session.client_id.clone(),
            value: record::encode(&rec),
        });
    }
    if let Some(log) = session.stored.as_mut() {
        out.extend(log.drain_ops(all).map(|op| Op::Delivery { epoch, op }));
    }
}

fn will_delay(w: &crate::codec::Will) -> u32 {
    w.properties
        .as_ref()
        .and_then(|p| p.will_delay_interval)
        .unwrap_or(0)
}

impl StoreStats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
