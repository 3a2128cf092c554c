//! What a persistent session owes the store: the changes to its deliveries since the shard
//! last collected them, and whether its own record (subscriptions, will, expiry, inbound QoS 2
//! ids) must be written again. The session records them as it changes, so no path that moves a
//! message (queued, sent, acknowledged, expired, handed to another group member) can forget to;
//! the shard collects them into one batch for the storage thread once it has held them for the
//! commit window, and a delivery made and done with meanwhile leaves nothing in the log. Clean
//! sessions have none of this.

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
    /// a message acknowledged within it costs the store nothing).
    pub(super) fn del(&mut self, seq: u64) {
        if seq == 0 {
            return;
        }
        match self.uncollected_put(seq) {
            Some(_) => self.ops.retain(|op| op_seq(op) != seq),
            None => self.ops.push(DeliveryOp::Del { seq }),
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

    /// Takes the waiting delivery ops, keeping the log's capacity for the next ones.
    pub fn drain_ops(&mut self) -> std::vec::Drain<'_, DeliveryOp> {
        self.first_put = None;
        self.ops.drain(..)
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
