//! What travels between nodes, and how a connection proves both ends hold the cookie.
//!
//! Frames are a 4-byte big-endian length and a postcard body, at most [`MAX_FRAME`] bytes.
//! Every connection, consensus or forwarding, starts with a mutual challenge: the dialling
//! node sends its id and a random nonce, the other answers with its id, its own nonce and an
//! HMAC-SHA256 over both nonces keyed with the cookie, and the dialler answers with its HMAC.
//! A node that cannot prove it holds the cookie gets nothing else, and neither does one that
//! talks to an impostor. The handshake is pure (messages in, messages out) so that the consensus
//! side (tokio) and the shards (monoio) share it.

use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::{Command, NodeId, NodeInfo, Reply, Types};

/// The largest frame a node takes (a snapshot chunk, a batch of log entries).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Bumped when a frame's meaning changes: nodes of other versions are refused at the hello.
pub const VERSION: u32 = 2;

/// What a node proves itself with, on every connection it makes or takes: the cookie, over
/// mutual TLS when `[cluster.tls]` is set.
#[derive(Clone)]
pub struct Trust {
    pub cookie: Arc<str>,
    pub tls: Option<Arc<crate::tls::ClusterTls>>,
}

/// The dialling side's first frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub node: NodeId,
    pub nonce: [u8; 32],
}

/// The answering side's first frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub node: NodeId,
    pub nonce: [u8; 32],
    pub proof: [u8; 32],
}

/// The dialling side's proof.
#[derive(Debug, Serialize, Deserialize)]
pub struct Proof {
    pub proof: [u8; 32],
}

/// The HMAC a side sends: over the role, both nonces (its peer's first) and its own id.
fn proof(cookie: &str, role: &[u8], theirs: &[u8; 32], mine: &[u8; 32], me: NodeId) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(cookie.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(role);
    mac.update(theirs);
    mac.update(mine);
    mac.update(&me.to_be_bytes());
    mac.finalize().into_bytes().into()
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    // Without randomness the handshake would repeat itself: a node that cannot draw any
    // does not talk (a zero nonce is refused by the peer below).
    let _ = getrandom::fill(&mut n);
    n
}

/// The dialling side of a handshake.
pub struct Dialling {
    cookie: String,
    me: NodeId,
    nonce: [u8; 32],
}

impl Dialling {
    pub fn start(cookie: &str, me: NodeId) -> (Dialling, Hello) {
        let d = Dialling {
            cookie: cookie.to_string(),
            me,
            nonce: nonce(),
        };
        let hello = Hello {
            version: VERSION,
            node: me,
            nonce: d.nonce,
        };
        (d, hello)
    }

    /// Checks the answer; the proof to send back and the peer's id.
    pub fn finish(self, w: &Welcome) -> Result<(Proof, NodeId), &'static str> {
        let expected = proof(&self.cookie, b"answer", &self.nonce, &w.nonce, w.node);
        if w.nonce == [0; 32] || !constant_eq(&expected, &w.proof) {
            return Err("the peer does not hold this cluster's cookie");
        }
        let mine = proof(&self.cookie, b"dial", &w.nonce, &self.nonce, self.me);
        Ok((Proof { proof: mine }, w.node))
    }
}

/// The answering side of a handshake.
pub struct Answering {
    cookie: String,
    peer: NodeId,
    theirs: [u8; 32],
    mine: [u8; 32],
}

impl Answering {
    pub fn start(
        cookie: &str,
        me: NodeId,
        h: &Hello,
    ) -> Result<(Answering, Welcome), &'static str> {
        if h.version != VERSION {
            return Err("the peer speaks another version of the cluster protocol");
        }
        if h.nonce == [0; 32] {
            return Err("the peer sent no nonce");
        }
        let mine = nonce();
        let welcome = Welcome {
            node: me,
            nonce: mine,
            proof: proof(cookie, b"answer", &h.nonce, &mine, me),
        };
        let a = Answering {
            cookie: cookie.to_string(),
            peer: h.node,
            theirs: h.nonce,
            mine,
        };
        Ok((a, welcome))
    }

    /// Checks the dialler's proof; the peer's id.
    pub fn finish(self, p: &Proof) -> Result<NodeId, &'static str> {
        let expected = proof(&self.cookie, b"dial", &self.mine, &self.theirs, self.peer);
        if constant_eq(&expected, &p.proof) {
            Ok(self.peer)
        } else {
            Err("the peer does not hold this cluster's cookie")
        }
    }
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A frame's bytes: length and body.
pub fn frame(v: &impl Serialize) -> Result<Vec<u8>, String> {
    let body = postcard::to_allocvec(v).map_err(|e| e.to_string())?;
    if body.len() > MAX_FRAME {
        return Err(format!("a frame of {} bytes is over the limit", body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The length a frame header announces, refused past [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, String> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(format!("a frame of {n} bytes is over the limit"));
    }
    Ok(n)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    postcard::from_bytes(body).map_err(|e| format!("a malformed frame: {e}"))
}

/// A frame on a forwarding connection (shard to node). Publishes are numbered per connection
/// life of the sending shard (`Begin`), so one sent again after a reconnection is taken once.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forward {
    /// The first frame: the sending shard and the life of its connection state (with the node,
    /// its stream of numbered frames; a new life numbers from 1 again).
    Begin { shard: u32, life: u64 },
    /// A publish for the receiving node's plain subscribers, on every one of its shards; with
    /// `confirm`, answered by `Back::Done` once what it made there is stored or delivered.
    Publish {
        seq: u64,
        msg: crate::store::record::StoredMessage,
        confirm: bool,
    },
    /// A publish for one member of the shared subscription `group` (its full `$share/...`
    /// filter) on the receiving node: the sender's pick of a node.
    Shared {
        seq: u64,
        group: String,
        msg: crate::store::record::StoredMessage,
        confirm: bool,
    },
    /// The persistent session of `client_id`, taken over on the receiving node by the
    /// connection that claimed the id with `epoch` (none: the sender had no session to hand).
    Session {
        seq: u64,
        client_id: String,
        epoch: u64,
        moved: Option<crate::store::record::MovedSession>,
    },
}

/// A frame back on a forwarding connection (node to shard).
#[derive(Debug, Serialize, Deserialize)]
pub enum Back {
    /// What publish `seq` made on this node is stored (or delivered), or could not be.
    Done { seq: u64, stored: bool },
}

/// A request on a consensus connection.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<Types>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<Types>),
    /// A command proposed by a node that is not the leader, to be proposed by this one.
    Write(Command),
    /// A node asks to be made a member (a voter, or a learner).
    Join {
        node: NodeId,
        info: NodeInfo,
        voter: bool,
    },
    /// Remove a node from the membership.
    Remove(NodeId),
    /// Who are you, and do you know a cluster?
    Status,
    /// Liveness, answered at once.
    Ping,
    /// Has the node applied the log up to this index? (Answered when it has, or after a while.)
    Applied(u64),
}

/// The answer to a [`Request`], same variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Write(Result<(u64, Reply), String>),
    Join(Result<(), String>),
    Remove(Result<(), String>),
    Status(Status),
    Pong,
    Applied(bool),
}

/// A node's answer to [`Request::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub node: NodeId,
    pub name: String,
    /// Whether it is a member of a cluster (it has a membership).
    pub member: bool,
    pub leader: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_prove_the_cookie_and_a_wrong_one_fails_either_way() {
        let (d, hello) = Dialling::start("s3cret-cookie-of-16", 1);
        let (a, welcome) = Answering::start("s3cret-cookie-of-16", 2, &hello).expect("hello");
        let (p, peer) = d.finish(&welcome).expect("the answer proves the cookie");
        assert_eq!(peer, 2);
        assert_eq!(a.finish(&p), Ok(1));

        let (d, hello) = Dialling::start("s3cret-cookie-of-16", 1);
        let (_, welcome) = Answering::start("another-cookie-here", 2, &hello).expect("hello");
        assert!(d.finish(&welcome).is_err(), "an impostor is not believed");

        let (d, hello) = Dialling::start("another-cookie-here", 1);
        let (a, welcome) = Answering::start("s3cret-cookie-of-16", 2, &hello).expect("hello");
        // The dialler cannot check the answer, and a proof made with its cookie fails.
        assert!(d.finish(&welcome).is_err());
        let forged = Proof { proof: [7; 32] };
        assert!(a.finish(&forged).is_err());
    }

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let f = frame(&Request::Ping).expect("frame");
        let n = frame_len([f[0], f[1], f[2], f[3]]).expect("len");
        assert!(matches!(decode::<Request>(&f[4..4 + n]), Ok(Request::Ping)));
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()).is_err());
        assert!(decode::<Request>(&[0xff, 0xff, 0xff]).is_err());
    }
}
