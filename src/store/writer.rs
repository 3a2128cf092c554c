//! The storage thread. Shards send it one batch per commit window over a channel (their only
//! way in); it takes every batch that waits, folds them into one fjall batch in arrival order (the
//! last change to a key wins, so a record written and deleted in the same group costs one
//! delete), commits it (written to the journal: kill -9 safe), fsyncs as the mode says, and
//! answers each shard with its last ticket and whether it was stored, ringing its doorbell. A
//! session that moves to another shard is sent after its old shard's batch, so the channel's
//! order is the order of its changes.

use std::collections::BTreeMap;

use ahash::{AHashMap, AHashSet};
use fjall::Keyspace;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::record::{self, DeliveryKey, Flight, StoredDelivery, StoredMessage};
use super::{Op, Store, StoreStats, ALIVE};
use crate::config::{DurabilityConfig, DurabilityMode};
use crate::ring::Doorbell;
use crate::session::{Delivery, DeliveryOp};

/// One shard's changes of one commit window.
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

/// Which keyspace a folded record change goes to (deliveries are folded apart).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Ks {
    Sessions,
    Retained,
    Delayed,
    Banned,
    Meta,
}

/// What a group does to one delivery's records: for each, None leaves it, `Some(None)`
/// removes it, `Some(Some(v))` writes `v`. Values are encoded only at the commit, so a delivery
/// made and acknowledged within the group costs no encoding.
#[derive(Default)]
struct DeliveryChange {
    /// Made in this group: nothing of it exists on disk yet, and its flight state goes inside
    /// its queue record (one record per message sent at once, not two).
    new: bool,
    queue: Option<Option<Delivery>>,
    flight: Option<Option<Flight>>,
}

/// A group of batches folded: the last change to each key. A delivery made and acknowledged
/// within the group never reaches the disk.
pub(super) struct Folded {
    records: AHashMap<(Ks, Vec<u8>), Option<Vec<u8>>>,
    deliveries: AHashMap<DeliveryKey, DeliveryChange>,
    /// The deliveries with a flight record of their own on disk (sent after they were stored):
    /// only their removal writes a flight tombstone.
    flights: AHashSet<DeliveryKey>,
}

impl Folded {
    /// An empty fold over `store`, knowing its flight records.
    pub(super) fn new(store: &Store) -> Folded {
        let flights = store
            .flight
            .iter()
            .filter_map(|kv| kv.key().ok())
            .filter_map(|k| DeliveryKey::try_from(&k[..]).ok())
            .collect();
        Folded {
            records: AHashMap::new(),
            deliveries: AHashMap::new(),
            flights,
        }
    }

    fn set(&mut self, ks: Ks, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.records.insert((ks, key), value);
    }

    /// A delivery made, and its flight state when it was sent at once.
    fn put(&mut self, key: DeliveryKey, delivery: Delivery, flight: Option<Flight>) {
        let change = DeliveryChange {
            new: true,
            queue: Some(Some(delivery)),
            flight: flight.map(Some),
        };
        self.deliveries.insert(key, change);
    }

    /// A delivery sent (or released): its flight state.
    fn flight(&mut self, key: DeliveryKey, flight: Flight) {
        self.deliveries.entry(key).or_default().flight = Some(Some(flight));
    }

    /// A delivery done with: forgotten when made in this group, else its records removed.
    fn del(&mut self, key: DeliveryKey) {
        match self.deliveries.get(&key) {
            Some(d) if d.new => {
                self.deliveries.remove(&key);
            }
            _ => {
                let gone = DeliveryChange {
                    new: false,
                    queue: Some(None),
                    flight: Some(None),
                };
                self.deliveries.insert(key, gone);
            }
        }
    }
}

impl Thread {
    fn run(&mut self, rx: &Receiver<Batch>) {
        let mut unsynced: Option<Instant> = None;
        // Reused: a group's maps keep their capacity for the next one.
        let mut folded = Folded::new(&self.store);
        let mut last_alive: Option<Instant> = None;
        let mut failing_since: Option<Instant> = None;
        loop {
            let wait = match unsynced {
                Some(t) => self.interval.saturating_sub(t.elapsed()),
                None => Duration::from_secs(1),
            };
            let mut group = Vec::new();
            let mut closed = false;
            match rx.recv_timeout(wait) {
                Ok(b) => group.push(b),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Takes every batch that waits: one commit (and fsync) serves all. The shards held
            // theirs for the commit window already.
            while !group.is_empty() && group.len() < 1024 {
                match rx.try_recv() {
                    Ok(b) => group.push(b),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let alive_due = last_alive.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if group.is_empty() && !alive_due {
                self.sync_if_due(&mut unsynced, true);
                continue;
            }
            let mut records = 0;
            for b in &mut group {
                records += b.ops.len();
                for op in b.ops.drain(..) {
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
            let mut ok = self.commit(&mut folded);
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
            if closed {
                break;
            }
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
pub(super) fn fold(store: &Store, f: &mut Folded, op: Op) {
    match op {
        Op::Session { client_id, value } => {
            let key = client_id.as_bytes().to_vec();
            f.set(Ks::Sessions, key, Some(value));
        }
        Op::Delivery { epoch, op } => fold_delivery(f, epoch, op),
        Op::EndSession { client_id, epoch } => {
            f.set(Ks::Sessions, client_id.as_bytes().to_vec(), None);
            let prefix = record::session_prefix(epoch);
            let mut keys: Vec<DeliveryKey> = f
                .deliveries
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .copied()
                .collect();
            keys.extend(
                store
                    .queue
                    .prefix(prefix)
                    .filter_map(|kv| kv.key().ok())
                    .filter_map(|k| DeliveryKey::try_from(&k[..]).ok()),
            );
            for k in keys {
                f.del(k);
            }
        }
        Op::Retain(m) => {
            let v = record::encode(&StoredMessage::of(&m, Instant::now(), record::wall_now()));
            f.set(Ks::Retained, m.topic.as_bytes().to_vec(), Some(v));
        }
        Op::Unretain(topic) => f.set(Ks::Retained, topic.as_bytes().to_vec(), None),
        Op::ExpireRetained(topic) => {
            let key = topic.as_bytes().to_vec();
            let wall = record::wall_now();
            let expired = |v: &[u8]| {
                record::decode::<StoredMessage>(v)
                    .is_none_or(|m| m.expires_at.is_some_and(|t| t <= wall))
            };
            let stale = match f.records.get(&(Ks::Retained, key.clone())) {
                Some(change) => change.as_deref().is_some_and(expired),
                None => store
                    .retained
                    .get(&key)
                    .ok()
                    .flatten()
                    .is_some_and(|v| expired(&v)),
            };
            if stale {
                f.set(Ks::Retained, key, None);
            }
        }
        Op::Delay(id, m) => {
            let key = id.to_be_bytes().to_vec();
            f.set(Ks::Delayed, key, Some(record::encode(&*m)));
        }
        Op::Undelay(id) => f.set(Ks::Delayed, id.to_be_bytes().to_vec(), None),
        Op::Ban(b) => {
            let key = crate::banned::Ban::key(b.kind, &b.value).into_bytes();
            f.set(Ks::Banned, key, Some(record::encode(&*b)));
        }
        Op::Unban(key) => f.set(Ks::Banned, key.as_bytes().to_vec(), None),
    }
}

fn fold_delivery(f: &mut Folded, epoch: u64, op: DeliveryOp) {
    let key = |seq| record::delivery_key(epoch, seq);
    match op {
        DeliveryOp::Put { seq, delivery, pid } => f.put(
            key(seq),
            delivery,
            pid.map(|pid| Flight {
                pid,
                released: false,
            }),
        ),
        DeliveryOp::Sent { seq, pid } => f.flight(
            key(seq),
            Flight {
                pid,
                released: false,
            },
        ),
        DeliveryOp::Released { seq, pid } => f.flight(
            key(seq),
            Flight {
                pid,
                released: true,
            },
        ),
        DeliveryOp::Del { seq } => f.del(key(seq)),
    }
}

/// Writes a folded group as one atomic batch (emptying it, its capacity kept for the next);
/// its bytes.
pub(super) fn commit(s: &Store, folded: &mut Folded) -> fjall::Result<u64> {
    let mut batch = s.db.batch();
    let mut bytes = 0u64;
    let mut write = |ks: &Keyspace, key: &[u8], value: Option<Vec<u8>>| {
        bytes += key.len() as u64;
        match value {
            Some(v) => {
                bytes += v.len() as u64;
                batch.insert(ks, key, v);
            }
            None => batch.remove(ks, key),
        }
    };
    for ((ks, key), value) in folded.records.drain() {
        let ks = match ks {
            Ks::Sessions => &s.sessions,
            Ks::Retained => &s.retained,
            Ks::Delayed => &s.delayed,
            Ks::Banned => &s.banned,
            Ks::Meta => &s.meta,
        };
        write(ks, &key, value);
    }
    let (now, wall) = (Instant::now(), record::wall_now());
    for (key, d) in folded.deliveries.drain() {
        let mut flight = d.flight;
        if let Some(queue) = d.queue {
            let value = queue.map(|delivery| {
                let embedded = if d.new { flight.take().flatten() } else { None };
                record::encode_delivery(&StoredDelivery::of(&delivery, now, wall), embedded)
            });
            write(&s.queue, &key, value);
        }
        match flight {
            Some(Some(f)) => {
                folded.flights.insert(key);
                write(&s.flight, &key, Some(record::encode(&f)));
            }
            Some(None) if folded.flights.remove(&key) => write(&s.flight, &key, None),
            _ => {}
        }
    }
    batch.commit().map(|()| bytes)
}

impl Thread {
    /// Commits a folded group; false on failure (injected ones included, in debug builds).
    fn commit(&self, folded: &mut Folded) -> bool {
        #[cfg(debug_assertions)]
        if crate::fault::store_fails() {
            folded.records.clear();
            folded.deliveries.clear();
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
