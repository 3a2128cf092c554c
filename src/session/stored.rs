//! What a persistent session owes the store: the changes to its deliveries since the shard
//! last collected them, and whether its own record (subscriptions, will, expiry, inbound QoS 2
//! ids) must be written again. The session records them as it changes, so no path that moves a
//! message (queued, sent, acknowledged, expired, handed to another group member) can forget to;
//! the shard collects them into batches for the storage thread, one per commit window, and a
//! delivery made and done with meanwhile leaves nothing in the log. A batch takes only what was
//! already in the log when the previous batch was taken, so every delivery waits at least one
//! whole window before the store hears of it (a delivery made at the end of a window would
//! otherwise have no time to be acknowledged). Clean sessions have none of this.

use super::Delivery;

/// One change to a stored delivery, keyed by the session's sequence number for it.
#[derive(Debug)]
pub enum DeliveryOp {
    /// A new delivery: queued (`pid` None) or already sent with that packet id.
    Put {
        seq: u64,
        delivery: Delivery,
        pid: Option<u16>,
    },
    /// Sent with this packet id (PUBLISH out, waiting for PUBACK or PUBREC).
    Sent { seq: u64, pid: u16 },
    /// PUBREC came: waiting for PUBCOMP after our PUBREL.
    Released { seq: u64, pid: u16 },
    /// Done with: acknowledged, expired, dropped or handed to another member.
    Del { seq: u64 },
}

#[derive(Debug)]
pub struct StoreLog {
    /// Which life of this client id the records belong to: a session that ends and starts
    /// again writes under a new epoch, so the end's deletes never meet the new records.
    pub epoch: u64,
    next_seq: u64,
    ops: Vec<DeliveryOp>,
    /// How many of `ops` (from the front) were there when the last batch was taken: the next
    /// batch takes these.
    aged: usize,
    /// The `seq` of the first `Put` in `ops` (the lowest: they are logged in order).
    first_put: Option<u64>,
    meta_dirty: bool,
}

impl StoreLog {
    /// A log whose sequence numbers continue after `last_seq` (0 for a new session).
    pub fn new(epoch: u64, last_seq: u64) -> StoreLog {
        StoreLog {
            epoch,
            next_seq: last_seq,
            ops: Vec::new(),
            aged: 0,
            first_put: None,
            meta_dirty: true,
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn push(&mut self, op: DeliveryOp) {
        match op {
            DeliveryOp::Put { seq, .. } => {
                self.first_put.get_or_insert(seq);
            }
            // Sent before it was collected: its Put says so.
            DeliveryOp::Sent { seq, pid } => {
                let put = self.uncollected_put(seq).map(|i| &mut self.ops[i]);
                if let Some(DeliveryOp::Put { pid: sent, .. }) = put {
                    *sent = Some(pid);
                    return;
                }
            }
            DeliveryOp::Released { .. } | DeliveryOp::Del { .. } => {}
        }
        self.ops.push(op);
    }

    /// The delivery `seq` is done with. One whose `Put` is still in the log never reaches the
    /// store: its ops are dropped instead (the shard holds its log for the commit window, so
    /// a message acknowledged within it costs the store nothing), and true says so.
    pub(super) fn del(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        match self.uncollected_put(seq) {
            Some(_) => {
                let aged = self.aged;
                let mut at = 0;
                let mut removed_aged = 0;
                self.ops.retain(|op| {
                    let keep = op_seq(op) != seq;
                    removed_aged += usize::from(!keep && at < aged);
                    at += 1;
                    keep
                });
                self.aged -= removed_aged;
                true
            }
            None => {
                self.ops.push(DeliveryOp::Del { seq });
                false
            }
        }
    }

    /// Where delivery `seq`'s `Put` waits in the log, if it does. Puts are logged in `seq`
    /// order, so one below the log's first is not there; the search looks at most
    /// `SEARCHED` ops (past them the delivery is simply deleted in the store).
    fn uncollected_put(&self, seq: u64) -> Option<usize> {
        const SEARCHED: usize = 256;
        if self.first_put.is_none_or(|first| seq < first) {
            return None;
        }
        self.ops
            .iter()
            .take(SEARCHED)
            .position(|op| matches!(op, DeliveryOp::Put { seq: s, .. } if *s == seq))
    }

    pub fn mark_meta(&mut self) {
        self.meta_dirty = true;
    }

    /// Whether anything waits to be collected.
    pub fn is_dirty(&self) -> bool {
        self.meta_dirty || !self.ops.is_empty()
    }

    /// Whether the session record must be rewritten (once: the flag is cleared).
    pub fn take_meta(&mut self) -> bool {
        std::mem::take(&mut self.meta_dirty)
    }

    /// Takes the delivery ops for a batch, keeping the log's capacity for the next ones:
    /// with `all`, every one (a session leaving the shard, a shutdown); else those that were
    /// already there at the last batch, the rest waiting for the next.
    pub fn drain_ops(&mut self, all: bool) -> std::vec::Drain<'_, DeliveryOp> {
        let taken = if all { self.ops.len() } else { self.aged };
        self.aged = self.ops.len() - taken;
        self.first_put = self.ops[taken..].iter().find_map(|op| match op {
            DeliveryOp::Put { seq, .. } => Some(*seq),
            _ => None,
        });
        self.ops.drain(..taken)
    }
}

fn op_seq(op: &DeliveryOp) -> u64 {
    match op {
        DeliveryOp::Put { seq, .. }
        | DeliveryOp::Sent { seq, .. }
        | DeliveryOp::Released { seq, .. }
        | DeliveryOp::Del { seq } => *seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::session::Message;
    use std::sync::Arc;

    fn put(log: &mut StoreLog) -> u64 {
        let seq = log.next_seq();
        let msg = Message::new(
            "t".into(),
            bytes::Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            None,
            "p".into(),
            std::time::Instant::now(),
        );
        let delivery = Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Default::default(),
            group: None,
            seq,
            owed: None,
        };
        log.push(DeliveryOp::Put {
            seq,
            delivery,
            pid: Some(1),
        });
        seq
    }

    fn taken(log: &mut StoreLog, all: bool) -> Vec<(bool, u64)> {
        log.drain_ops(all)
            .map(|op| (matches!(op, DeliveryOp::Put { .. }), op_seq(&op)))
            .collect()
    }

    /// A batch takes what was in the log at the previous batch: every delivery waits a whole
    /// window, and one done with meanwhile never reaches the store, before or after it aged.
    #[test]
    fn a_delivery_waits_one_batch_before_it_is_taken() {
        let mut log = StoreLog::new(1, 0);
        let a = put(&mut log);
        assert!(
            taken(&mut log, false).is_empty(),
            "too young for this batch"
        );
        let b = put(&mut log);
        assert_eq!(taken(&mut log, false), [(true, a)]);
        let c = put(&mut log);
        assert!(log.del(b), "b aged but was not taken: dropped");
        assert!(log.del(c), "c is young: dropped");
        assert!(taken(&mut log, false).is_empty());
        assert!(!log.del(a), "a was taken: the store hears of its end");
        assert!(
            taken(&mut log, false).is_empty(),
            "its end waits a batch too"
        );
        assert_eq!(taken(&mut log, false), [(false, a)]);
        let d = put(&mut log);
        assert_eq!(
            taken(&mut log, true),
            [(true, d)],
            "all: a departure or a shutdown"
        );
        assert!(log.ops.is_empty());
    }
}
