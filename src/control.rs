//! The control plane: requests from outside the shards (the admin API, signals, shutdown) to
//! the shards, off the message path. Each shard has a small mutex-guarded queue that its pump
//! drains between ring batches (woken by the shard's doorbell); the answer comes back on a
//! channel as JSON. Nothing here is touched per message.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Auth;
use crate::config::Config;
use crate::ring::Doorbell;

/// What a shard answers: JSON, or an error for the caller.
pub type Reply = Result<serde_json::Value, String>;

/// Per-client and per-topic tracing to the log.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TraceSet {
    pub clients: Vec<String>,
    pub topics: Vec<String>,
}

impl TraceSet {
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.topics.is_empty()
    }
}

pub enum Request {
    /// Counters and gauges of the shard.
    Status,
    /// Clients whose session lives on the shard; with an id, that client only.
    Clients(Option<String>),
    /// Closes the client's connection (v5: DISCONNECT 0x98 administrative action).
    Kick(String),
    /// Subscriptions of the shard's sessions; with an id, that client's only.
    Subscriptions(Option<String>),
    Subscribe {
        client: String,
        filter: String,
        qos: u8,
    },
    Unsubscribe {
        client: String,
        filter: String,
    },
    /// The distinct filters the shard's sessions subscribe to.
    Topics,
    /// Retained messages (every shard holds a replica, so one shard is asked).
    Retained(Option<String>),
    /// Removes one retained message, or all (asked of every shard).
    CleanRetained(Option<String>),
    /// The bans (every shard holds them all, so one shard is asked).
    Banned,
    /// Adds a ban (asked of shard 0, which journals it and tells the others).
    Ban(crate::banned::Ban),
    /// Lifts a ban (likewise).
    Unban(crate::banned::BanKind, String),
    /// Delayed publishes the shard holds.
    Delayed,
    /// Cancels a delayed publish by id (hex; asked of every shard, one holds it).
    CancelDelayed(String),
    /// New configuration, credentials and certificates, applied to new decisions from now on.
    Reload(Arc<Config>, Arc<Auth>, crate::tls::TlsConfigs),
    Trace(Arc<TraceSet>),
    /// Shutdown, first step: stop accepting and publish the wills of connected clients.
    Drain,
    /// Shutdown, second step: DISCONNECT 0x8B to v5 clients, close every connection, flush.
    Close,
    /// Shutdown, last step: the shard's persistent sessions (JSON) for the data dir.
    Persist,
}

impl Request {
    /// A change the store keeps (when it journals): its answer waits until the store has it.
    pub fn is_kept(&self) -> bool {
        matches!(
            self,
            Request::Subscribe { .. }
                | Request::Unsubscribe { .. }
                | Request::CleanRetained(_)
                | Request::Ban(_)
                | Request::Unban(..)
                | Request::CancelDelayed(_)
        )
    }
}

/// One shard's queue of requests.
pub struct Queue {
    items: Mutex<Vec<(Request, SyncSender<Reply>)>>,
    bells: Arc<[Doorbell]>,
    shard: usize,
}

impl Queue {
    pub fn new(shard: usize, bells: Arc<[Doorbell]>) -> Queue {
        Queue {
            items: Mutex::new(Vec::new()),
            bells,
            shard,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    /// Takes every waiting request (the shard calls this).
    pub fn take(&self) -> Vec<(Request, SyncSender<Reply>)> {
        self.items
            .lock()
            .map(|mut q| std::mem::take(&mut *q))
            .unwrap_or_default()
    }

    fn push(&self, req: Request, tx: SyncSender<Reply>) {
        if let Ok(mut q) = self.items.lock() {
            q.push((req, tx));
        }
        self.bells[self.shard].ring();
    }
}

/// What outside threads hold to talk to the shards.
#[derive(Clone)]
pub struct Handle {
    queues: Arc<[Arc<Queue>]>,
}

/// How long a shard may take to answer before the caller gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl Handle {
    pub fn new(queues: Vec<Arc<Queue>>) -> Handle {
        Handle {
            queues: queues.into(),
        }
    }

    pub fn shards(&self) -> usize {
        self.queues.len()
    }

    /// Asks one shard and waits for its answer.
    pub fn ask(&self, shard: usize, req: Request) -> Reply {
        let (tx, rx) = sync_channel(1);
        self.queues[shard].push(req, tx);
        rx.recv_timeout(ANSWER_TIMEOUT)
            .map_err(|_| format!("shard {shard} did not answer"))?
    }

    /// Asks every shard (all at once) and collects their answers in shard order.
    pub fn ask_all(&self, make: impl Fn() -> Request) -> Vec<Reply> {
        let waiting: Vec<_> = self
            .queues
            .iter()
            .map(|q| {
                let (tx, rx) = sync_channel(1);
                q.push(make(), tx);
                rx
            })
            .collect();
        waiting
            .into_iter()
            .enumerate()
            .map(|(i, rx)| {
                rx.recv_timeout(ANSWER_TIMEOUT)
                    .map_err(|_| format!("shard {i} did not answer"))?
            })
            .collect()
    }
}
