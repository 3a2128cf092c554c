//! What a persistent session owes the store: the changes to its deliveries since the shard
//! last collected them, and whether its own record (subscriptions, will, expiry, inbound QoS 2
//! ids) must be written again. The session records them as it changes, so no path that moves a
//! message (queued, sent, acknowledged, expired, handed to another group member) can forget to;
//! the shard collects them once per loop tick into one batch for the storage thread. Clean
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
    meta_dirty: bool,
}

impl StoreLog {
    /// A log whose sequence numbers continue after `last_seq` (0 for a new session).
    pub fn new(epoch: u64, last_seq: u64) -> StoreLog {
        StoreLog {
            epoch,
            next_seq: last_seq,
            ops: Vec::new(),
            meta_dirty: true,
        }
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(super) fn push(&mut self, op: DeliveryOp) {
        self.ops.push(op);
    }

    pub(super) fn del(&mut self, seq: u64) {
        if seq > 0 {
            self.ops.push(DeliveryOp::Del { seq });
        }
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
        self.ops.drain(..)
    }
}
