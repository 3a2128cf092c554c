//! What the cluster's Raft log carries and what its engine is made of: node ids and node
//! records, the commands nodes propose (route changes, retained messages, the session
//! registry, a silent node's routes dropped) and their answers.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A node's id in the Raft group: a hash of its name (`broker.node_name`, unique in a cluster).
pub type NodeId = u64;

/// The id of the node named `name` (FNV-1a, stable across versions and platforms).
pub fn node_id(name: &str) -> NodeId {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A node as its peers know it: its name, where its consensus service is, where forwarded
/// publishes go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub addr: String,
    pub rpc: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.addr)
    }
}

/// A retained message as the cluster replicates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retained {
    pub topic: String,
    /// The message as the store keeps it (`store::record::StoredMessage`, encoded); `None`
    /// clears the topic.
    pub stored: Option<Vec<u8>>,
    /// The node it was published on (which set it in its own replica at once).
    pub origin: NodeId,
}

/// A change to the replicated state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Node `node` gained subscribers to `add` and lost its last ones to `remove` (each filter's
    /// node-wide 0 <-> 1 transitions, batched).
    Routes {
        node: NodeId,
        add: Vec<String>,
        remove: Vec<String>,
    },
    /// Node `node`'s whole set of routes, replacing what the cluster had for it (sent when it
    /// starts, and when it finds its routes were dropped).
    RouteSet { node: NodeId, filters: Vec<String> },
    /// Node `node` was silent past `cluster.node_timeout_ms`: its routes are dropped until it
    /// sends its route set again.
    Down { node: NodeId },
    /// A retained message set or cleared.
    Retain(Retained),
    /// The session registry, batched: on `node`, the client ids in `claims` connected (each
    /// with its connection's epoch: a later connection has a larger one) and those in
    /// `releases` ended their session (with the epoch they claimed with). Where a client id is
    /// claimed on two nodes, the larger epoch keeps it and the other connection is closed.
    /// `started`: the node (re)started, so none of its earlier claims holds any more. A claim
    /// marked `true` resumes a persistent session, which its node waits for
    /// ([`super::state::Effect::Claimed`]) and the node that held it hands over.
    Sessions {
        node: NodeId,
        started: bool,
        claims: Vec<(String, u64, bool)>,
        releases: Vec<(String, u64)>,
    },
}

/// The answer to a command, once applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    #[default]
    Done,
    /// A route change from a node the cluster had dropped for silence: not taken. The node
    /// sends its whole set (`RouteSet`) before it tells a subscriber its route is in place.
    NodeDown,
}

openraft::declare_raft_types!(
    /// The cluster's Raft types.
    pub Types:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<Types>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<Types>;
pub type Entry = openraft::Entry<Types>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::storage::Snapshot<Types>;

/// A storage failure as openraft takes it.
pub fn storage_error(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}
