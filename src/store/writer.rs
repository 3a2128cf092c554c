//! The storage thread. Shards send it one batch per loop tick over a channel (their only way
//! in); it takes every batch that waits, folds them into one fjall batch in arrival order (the
//! last change to a key wins, so a record written and deleted in the same group costs one
//! delete), commits it (written to the journal: kill -9 safe), fsyncs as the mode says, and
//! answers each shard with its last ticket and whether it was stored, ringing its doorbell. A
//! session that moves to another shard is sent after its old shard's batch, so the channel's
//! order is the order of its changes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{self, Flight, StoredDelivery, StoredMessage};
use super::{Op, Store, StoreStats, ALIVE};
use crate::config::{DurabilityConfig, DurabilityMode};
use crate::ring::Doorbell;
use crate::session::DeliveryOp;

/// One shard's changes of one loop tick.
pub struct Batch {
    pub shard: usize,
    pub ticket: u64,
    pub ops: Vec<Op>,
}

/// What the storage thread tells one shard: (last ticket, stored) pairs, in order.
#[derive(Default)]
pub struct Results {
    list: Mutex<Vec<(u64, bool)>>,
    ready: AtomicBool,
}

/// A shard's way to the storage thread.
pub struct StoreLink {
    tx: Sender<Batch>,
    results: Arc<Results>,
    stats: Arc<StoreStats>,
}

impl StoreLink {
    /// Hands a batch over; false when the storage thread is gone.
    pub fn send(&self, b: Batch) -> bool {
        self.stats.lag.fetch_add(1, Ordering::Relaxed);
        self.tx.send(b).is_ok()
    }

    /// Whether results wait.
    pub fn ready(&self) -> bool {
        self.results.ready.load(Ordering::Acquire)
    }

    /// Takes the waiting results.
    pub fn take(&self, out: &mut Vec<(u64, bool)>) {
        if self.results.ready.swap(false, Ordering::AcqRel) {
            if let Ok(mut l) = self.results.list.lock() {
                out.append(&mut l);
            }
        }
    }
}

/// The running storage thread.
pub struct Writer {
    handle: JoinHandle<()>,
}

impl Writer {
    /// Waits for the thread to commit what it was sent and sync (it ends once every shard's
    /// link is dropped); false if `deadline` came first.
    pub fn finish(self, deadline: Instant) -> bool {
        while !self.handle.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.handle.join().is_ok()
    }
}

/// Starts the storage thread for `shards` shards whose doorbells are `bells`.
pub fn spawn(
    store: Store,
    cfg: &DurabilityConfig,
    bells: Arc<[Doorbell]>,
    stats: Arc<StoreStats>,
) -> std::io::Result<(Writer, Vec<StoreLink>)> {
    let (tx, rx) = channel();
    let results: Vec<Arc<Results>> = (0..bells.len()).map(|_| Arc::default()).collect();
    let links = results
        .iter()
        .map(|r| StoreLink {
            tx: tx.clone(),
            results: r.clone(),
            stats: stats.clone(),
        })
        .collect();
    let mode = cfg.mode;
    let interval = Duration::from_millis(cfg.sync_interval_ms);
    let handle = std::thread::Builder::new()
        .name("ringmq-store".into())
        .spawn(move || {
            let mut w = Thread {
                store,
                mode,
                interval,
                stats,
                results,
                bells,
            };
            w.run(&rx);
        })?;
    Ok((Writer { handle }, links))
}

struct Thread {
    store: Store,
    mode: DurabilityMode,
    interval: Duration,
    stats: Arc<StoreStats>,
    results: Vec<Arc<Results>>,
    bells: Arc<[Doorbell]>,
}

/// Which keyspace a folded change goes to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ks {
    Sessions,
    Queue,
    Flight,
    Retained,
    Meta,
}

/// A group of batches folded: the last value (or removal) of each key. A delivery put and
/// deleted within the group (sent, acknowledged) never reaches the disk: its key is new (a
/// session's sequence numbers only grow), so there is nothing older to delete.
#[derive(Default)]
pub(super) struct Folded(
    BTreeMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    ahash::AHashSet<Vec<u8>>,
);

impl Folded {
    fn set(&mut self, ks: Ks, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.0.insert((ks, key), value);
    }

    /// A delivery created in this group.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.1.insert(key.clone());
        self.set(Ks::Queue, key, Some(value));
    }

    /// A delivery done with: forgotten if created in this group, else removed.
    fn del(&mut self, key: Vec<u8>) {
        if self.1.remove(&key) {
            self.0.remove(&(Ks::Flight, key.clone()));
            self.0.remove(&(Ks::Queue, key));
        } else {
            self.set(Ks::Flight, key.clone(), None);
            self.set(Ks::Queue, key, None);
        }
    }
}

impl Thread {
    fn run(&mut self, rx: &Receiver<Batch>) {
        let mut unsynced: Option<Instant> = None;
        let mut last_alive: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            let wait = match unsynced {
                Some(t) => self.interval.saturating_sub(t.elapsed()),
                None => Duration::from_secs(1),
            };
            let mut group = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(b) => group.push(b),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while group.len() < 1024 {
                match rx.try_recv() {
                    Ok(b) => group.push(b),
                    Err(_) => break,
                }
            }
            let alive_due = last_alive.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if group.is_empty() && !alive_due {
                self.sync_if_due(&mut unsynced, true);
                continue;
            }
            let mut folded = Folded::default();
            let mut records = 0;
            for b in &group {
                records += b.ops.len();
                for op in &b.ops {
                    fold(&self.store, &mut folded, op);
                }
            }
            if alive_due {
                last_alive = Some(Instant::now());
                folded.set(
                    Ks::Meta,
                    ALIVE.to_vec(),
                    Some(record::encode(&record::wall_now())),
                );
                self.stats
                    .disk_bytes
                    .store(self.store.disk_bytes(), Ordering::Relaxed);
            }
            let mut ok = self.commit(folded);
            if ok {
                unsynced.get_or_insert_with(Instant::now);
                let force = self.mode == DurabilityMode::Power && !group.is_empty();
                ok = self.sync_if_due(&mut unsynced, force);
            }
            self.stats
                .records
                .fetch_add(records as u64, Ordering::Relaxed);
            self.stats
                .batches
                .fetch_add(group.len() as u64, Ordering::Relaxed);
            self.stats
                .lag
                .fetch_sub(group.len() as u64, Ordering::Relaxed);
            if !ok && !group.is_empty() {
                self.stats
                    .failures
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                if failing_since.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    failing_since = Some(Instant::now());
                    tracing::error!(
                        batches = group.len(),
                        records,
                        "the store cannot write: what these batches carried is not acknowledged"
                    );
                }
            }
            self.answer(&group, ok);
        }
        if self.store.db.persist(fjall::PersistMode::SyncAll).is_ok() {
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Syncs the journal when the interval has passed (or `force`); false if the sync failed.
    fn sync_if_due(&self, unsynced: &mut Option<Instant>, force: bool) -> bool {
        let Some(since) = *unsynced else {
            return true;
        };
        if !force && since.elapsed() < self.interval {
            return true;
        }
        *unsynced = None;
        match self.store.db.persist(fjall::PersistMode::SyncData) {
            Ok(()) => {
                self.stats.syncs.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_sync_ms
                    .store(record::wall_now(), Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "store fsync failed");
                false
            }
        }
    }
}

/// Folds one change into a group: the last change to a key wins.
pub(super) fn fold(store: &Store, f: &mut Folded, op: &Op) {
    {
        match op {
            Op::Session { client_id, value } => {
                f.set(
                    Ks::Sessions,
                    client_id.as_bytes().to_vec(),
                    Some(value.clone()),
                );
            }
            Op::Delivery {
                client_id,
                epoch,
                op,
            } => fold_delivery(f, client_id, *epoch, op),
            Op::EndSession { client_id, epoch } => {
                f.set(Ks::Sessions, client_id.as_bytes().to_vec(), None);
                let prefix = record::session_prefix(client_id, *epoch);
                let mut keys: Vec<Vec<u8>> =
                    f.0.range((Ks::Queue, prefix.clone())..)
                        .map(|((_, k), _)| k)
                        .take_while(|k| k.starts_with(&prefix))
                        .cloned()
                        .collect();
                keys.extend(
                    store
                        .queue
                        .prefix(&prefix)
                        .filter_map(|kv| kv.key().ok())
                        .map(|k| k.to_vec()),
                );
                for k in keys {
                    f.del(k);
                }
            }
            Op::Retain(m) => {
                let now = Instant::now();
                let v = record::encode(&StoredMessage::of(m, now, record::wall_now()));
                f.set(Ks::Retained, m.topic.as_bytes().to_vec(), Some(v));
            }
            Op::Unretain(topic) => f.set(Ks::Retained, topic.as_bytes().to_vec(), None),
        }
    }
}

fn fold_delivery(f: &mut Folded, client_id: &str, epoch: u64, op: &DeliveryOp) {
    {
        let key = |seq| record::delivery_key(client_id, epoch, seq);
        let flight = |pid, released| Some(record::encode(&Flight { pid, released }));
        match op {
            DeliveryOp::Put { seq, delivery, pid } => {
                let now = Instant::now();
                let v = StoredDelivery::of(delivery, now, record::wall_now());
                f.put(key(*seq), record::encode(&v));
                if let Some(pid) = pid {
                    f.set(Ks::Flight, key(*seq), flight(*pid, false));
                }
            }
            DeliveryOp::Sent { seq, pid } => f.set(Ks::Flight, key(*seq), flight(*pid, false)),
            DeliveryOp::Released { seq, pid } => {
                f.set(Ks::Flight, key(*seq), flight(*pid, true));
            }
            DeliveryOp::Del { seq } => f.del(key(*seq)),
        }
    }
}

/// Writes a folded group as one atomic batch; its bytes.
pub(super) fn commit(s: &Store, folded: Folded) -> fjall::Result<u64> {
    {
        let mut batch = s.db.batch();
        let mut bytes = 0u64;
        for ((ks, key), value) in folded.0 {
            let ks = match ks {
                Ks::Sessions => &s.sessions,
                Ks::Queue => &s.queue,
                Ks::Flight => &s.flight,
                Ks::Retained => &s.retained,
                Ks::Meta => &s.meta,
            };
            bytes += key.len() as u64;
            match value {
                Some(v) => {
                    bytes += v.len() as u64;
                    batch.insert(ks, key, v);
                }
                None => batch.remove(ks, key),
            }
        }
        batch.commit().map(|()| bytes)
    }
}

impl Thread {
    /// Commits a folded group; false on failure (injected ones included, in debug builds).
    fn commit(&self, folded: Folded) -> bool {
        #[cfg(debug_assertions)]
        if crate::fault::store_fails() {
            return false;
        }
        match commit(&self.store, folded) {
            Ok(bytes) => {
                self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "store commit failed");
                false
            }
        }
    }

    /// Tells each shard of the group its last ticket's fate and rings its doorbell.
    fn answer(&self, group: &[Batch], ok: bool) {
        let mut last: BTreeMap<usize, u64> = BTreeMap::new();
        for b in group {
            last.insert(b.shard, b.ticket);
        }
        for (shard, ticket) in last {
            if let Some(r) = self.results.get(shard) {
                if let Ok(mut l) = r.list.lock() {
                    l.push((ticket, ok));
                }
                r.ready.store(true, Ordering::Release);
            }
            if let Some(bell) = self.bells.get(shard) {
                bell.ring();
            }
        }
    }
}
