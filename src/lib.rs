//! ringmq: a thread-per-core MQTT 3.1/3.1.1/5.0 broker.
//!
//! # Layout
//! - [`codec`]: the MQTT wire format, pure functions over bytes.
//! - [`topic`]: topic names and filters, shared-subscription parsing, the matching trie.
//! - [`session`]: per-client MQTT state (QoS flows, queue, aliases, will); no I/O.
//! - [`retained`]: the retained-message store.
//! - [`banned`]: banned clients (client id, username, peer address), each shard's replica.
//! - [`store`]: the crash-safe store (fjall) and its storage thread, fed by the shards.
//! - [`cluster`]: several nodes as one broker: Raft (openraft) on a side thread for membership,
//!   routes, retained messages and the session registry; publishes forwarded between nodes.
//! - [`ring`]: the SPSC mesh between shards and the messages that cross it.
//! - [`shard`]: one event loop per core: listeners, connections, routing, timers.
//! - [`sock`]: non-blocking socket I/O after readiness waits; the crate's only `unsafe` (an fd
//!   borrow, a buffer length and a socket option), allowed there alone.
//! - [`driver`]: the io driver under the shards (io_uring or epoll, by `broker.driver`).
//! - [`server`]: boot, signals (reload, graceful shutdown), pinned shard threads.
//! - [`listen`]: the listening sockets: TCP with SO_REUSEPORT per shard, Unix shared by all.
//! - [`broker`]: the running broker's handle for the admin API, metrics and signals.
//! - [`control`]: requests from outside threads to the shards (admin, reload, shutdown).
//! - [`auth`]: password file, ACL file, anonymous policy.
//! - [`proxy_protocol`]: the PROXY protocol v1/v2 header a load balancer sends first.
//! - [`tls`], [`ws`]: rustls configuration for TLS listeners, client-certificate names;
//!   the WebSocket upgrade and framing.
//! - [`admin`], [`metrics`], [`ctl`]: the admin HTTP API and web dashboard, Prometheus text,
//!   `ringmq ctl`.
//! - [`config`], [`cli`], [`stats`], [`logging`]: configuration, command line, counters, logs.
//! - [`doctor`]: checks the machine's kernel settings against a connection target.
//! - [`daemon`]: `ringmq start | stop | restart | ping`, the broker's pidfile.
//! - `fault` (debug builds): fault injection for the integration tests.

#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod alarms;
pub mod auth;
pub mod banned;
pub mod broker;
pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod doctor;
pub mod driver;
#[cfg(debug_assertions)]
pub mod fault;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod proxy_protocol;
pub mod retained;
pub mod ring;
pub mod server;
pub mod session;
pub mod shard;
#[allow(unsafe_code)]
pub mod sock;
pub mod stats;
pub mod store;
pub mod tls;
pub mod topic;
pub mod ws;
