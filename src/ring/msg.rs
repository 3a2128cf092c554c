//! What crosses between shards. Everything here is `Send`: messages and retained copies are
//! shared by `Arc`, sessions move by `Box` on a takeover.

use std::sync::Arc;

use bytestring::ByteString;

use crate::session::{Message, Session};

/// The shard and token to answer with `XMsg::Stored` once a session handed over by another
/// node is stored here (that node forgets it only then).
pub type Confirm = (usize, u64);

pub enum XMsg {
    /// A publish for the receiving shard's own (non-shared) subscribers. With `confirm`, the
    /// publisher waits to acknowledge it: the receiver answers `Stored` with the token once
    /// what it queued for persistent sessions is stored.
    Publish {
        msg: Arc<Message>,
        confirm: Option<u64>,
    },
    /// A publish for one member of the shared subscription `group` (its full `$share/...`
    /// filter) on the receiving shard; `confirm` as for `Publish`.
    Shared {
        group: ByteString,
        msg: Arc<Message>,
        confirm: Option<u64>,
    },
    /// The answer to a publish's `confirm`: whether what it created here was stored.
    Stored { token: u64, stored: bool },
    /// A retained message set, or cleared by an empty payload, for every shard's replica.
    Retain(Arc<Message>),

    /// Shard `shard` gained its first (`add`) or lost its last subscriber to `filter`. With
    /// `ack`, the receiver answers `InterestAck` with it: a SUBACK waits for every shard's.
    Interest {
        filter: ByteString,
        shard: usize,
        add: bool,
        ack: Option<u64>,
    },
    /// A shard applied the interest change carrying this token.
    InterestAck(u64),
    /// A CONNECT on `shard` claims `client_id`; sent to the id's home shard.
    Claim {
        client_id: ByteString,
        shard: usize,
        token: u64,
        clean_start: bool,
    },
    /// From the home shard to the current owner: close the old connection and hand the session
    /// to `shard`.
    Takeover {
        client_id: ByteString,
        shard: usize,
        token: u64,
        clean_start: bool,
    },
    /// To the shard of a waiting CONNECT: go ahead, with the session when one continues.
    Grant(Grant),
    /// To the home shard: the session of `client_id` claimed with `token` has ended.
    Release { client_id: ByteString, token: u64 },
    /// To the shard holding `client_id` under claim `token`: a newer connection on another
    /// node took the id; close this one (0x8E). With `hand_to` (the node's slot and its
    /// claim's epoch, or `MERGE`) the persistent session is handed over to that node.
    Evict {
        client_id: ByteString,
        token: u64,
        hand_to: Option<(usize, u64)>,
    },
    /// To the home shard of `client_id`: its persistent session, handed over by another node
    /// to the connection that claimed it with `epoch` (none: that node had none to hand);
    /// `confirm` is told once it is stored.
    Moved {
        client_id: ByteString,
        epoch: u64,
        session: Option<Box<Session>>,
        confirm: Option<Confirm>,
    },
    /// To the shard holding `client_id` under claim `token`: a session of the same client
    /// that came from another node after its claim stopped waiting; what it still owes the
    /// client goes into this session.
    Merge {
        client_id: ByteString,
        token: u64,
        session: Box<Session>,
        confirm: Option<Confirm>,
    },
    /// A ban made on the sending shard, for every replica (it kicks matching clients).
    Ban(Arc<crate::banned::Ban>),
    /// A ban lifted on the sending shard.
    Unban(crate::banned::BanKind, String),
    /// To an `$exclusive/` filter's home shard: `client_id`, subscribing on `shard`, asks to
    /// hold it; answered with `ExclusiveAnswer` carrying `token`.
    ExclusiveClaim {
        filter: ByteString,
        client_id: ByteString,
        shard: usize,
        token: u64,
    },
    /// The home shard's answer to `ExclusiveClaim`.
    ExclusiveAnswer {
        filter: ByteString,
        token: u64,
        granted: bool,
    },
    /// To the filter's home shard: `client_id` no longer holds it; `ack`, a token of the
    /// sending shard's, asks for an `ExclusiveReleased`.
    ExclusiveRelease {
        filter: ByteString,
        client_id: ByteString,
        ack: Option<u64>,
    },
    /// The home shard's answer to an `ExclusiveRelease` with an `ack`.
    ExclusiveReleased(u64),
}

pub struct Grant {
    pub client_id: ByteString,
    pub token: u64,
    pub session: Option<Box<Session>>,
    /// The home shard refuses the connection (a banned, flapping client id).
    pub refused: Option<crate::codec::ReasonCode>,
    /// The shard and token to tell once `session` is stored: one handed over by another node,
    /// whose answer (and the old node's forgetting it) waits for that.
    pub confirm: Option<Confirm>,
}
