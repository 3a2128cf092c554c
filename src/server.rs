//! Boot and shutdown: bind every listener once without SO_REUSEPORT to prove the port is free,
//! load credentials and saved state, build the ring mesh, start one pinned thread per shard
//! (each with its own SO_REUSEPORT listeners), the admin API and the stats thread, then wait
//! for signals: SIGHUP reloads, SIGTERM/SIGINT shut down gracefully.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::auth::Auth;
use crate::broker::Broker;
use crate::cli::RunArgs;
use crate::cluster::{ShardLink, Trust};
use crate::config::{Config, Driver, DurabilityMode, Endpoint};
use crate::control::{Handle, Queue, TraceSet};
use crate::daemon::PidFile;
use crate::listen::{ListenSocket, SocketFiles};
use crate::logging::LogControl;
use crate::session::Message;
use crate::shard::{home_of, Boot, ClusterBoot, Listener, Restore};
use crate::stats::Shared;
use crate::store::legacy::Legacy;
use crate::store::{Store, StoreLink, StoreStats, Writer};
use bytestring::ByteString;

/// Where the shards accept connections.
pub enum Listeners {
    /// Every shard accepts on each configured listener (`crate::listen`).
    Configured,
    /// Each shard accepts on sockets of its own, one per configured listener in configuration
    /// order: a test puts a client on a chosen shard by the port it connects to.
    PerShard(Vec<Vec<TcpListener>>),
}

/// Starts the broker and blocks until a signal shuts it down. Once it listens it writes its
/// pidfile in the data dir (what `ringmq start` waits for), removed after the shutdown.
pub fn run(args: RunArgs, cfg: Config, log: LogControl) -> Result<(), String> {
    let pidfile = PidFile::of(&cfg.broker.data_dir);
    let mut written = None;
    let result = serve(args, cfg, log, Listeners::Configured, |broker| {
        written = Some(pidfile.write_own()?);
        wait_for_signals(broker)
    });
    drop(written);
    result
}

/// Starts the broker on `listeners`, then calls `until` with it, which returns when the broker
/// is to stop (`run` waits for SIGTERM there; a test runs its clients), and shuts down
/// gracefully.
pub fn serve(
    args: RunArgs,
    cfg: Config,
    log: LogControl,
    listeners: Listeners,
    until: impl FnOnce(&Broker) -> Result<(), String>,
) -> Result<(), String> {
    let (sockets, addrs, _socket_files) = match listeners {
        Listeners::Configured => {
            let b = crate::listen::bind(&cfg, cfg.shard_count())?;
            (b.per_shard, b.endpoints, b.files)
        }
        Listeners::PerShard(per_shard) => {
            let first = per_shard.first().ok_or("no shard sockets")?;
            let addrs = first
                .iter()
                .map(|l| l.local_addr().map(Endpoint::Tcp))
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            let per_shard = per_shard
                .into_iter()
                .map(|socks| {
                    socks
                        .into_iter()
                        .map(|l| crate::listen::for_clients(l).map(ListenSocket::Tcp))
                        .collect::<std::io::Result<Vec<_>>>()
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            (per_shard, addrs, SocketFiles::default())
        }
    };
    let shards = sockets.len();
    if addrs.len() != cfg.listeners.len() {
        return Err("one socket per configured listener on every shard".into());
    }
    let asked = cfg.broker.driver;
    let io = crate::driver::resolve(asked)?;
    if asked == Driver::Auto && io == Driver::Epoll {
        tracing::warn!("io_uring is not available (blocked by a seccomp profile or disabled by the kernel); falling back to the epoll driver");
    }
    let driver = io.name();
    tracing::info!(driver, asked = asked.name(), "io driver");
    let auth = Arc::new(Auth::load(&cfg)?);
    tracing::info!(auth = %auth.describe(), "credentials loaded");
    let tls = crate::tls::configs(&cfg)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let shared = Arc::new(Shared::new(shards, addrs.len()));
    let cfg = Arc::new(cfg);
    let ends = crate::ring::mesh(shards, cfg.broker.ring_capacity);
    let bells = ends.first().map(|(_, i)| i.bells()).ok_or("no shards")?;
    let (writer, links, saved, db) = open_store(&cfg, bells.clone(), &shared.store)?;
    let mut clustered = start_cluster(&cfg, &db, bells, shards)?;
    let cluster = clustered.as_ref().map(|(c, _)| c.clone());
    let queues: Vec<Arc<Queue>> = ends
        .iter()
        .enumerate()
        .map(|(i, (_, inbox))| Arc::new(Queue::new(i, inbox.bells())))
        .collect();
    let checks = password_checkers(&cfg, shards, &ends)?;
    let mut threads = Vec::with_capacity(shards);
    let shard_ends = ends.into_iter().zip(checks).zip(links).enumerate();
    for (((id, ((ends, checks), store)), socks), restore) in shard_ends.zip(sockets).zip(saved) {
        let boot = Boot {
            id,
            shards,
            cfg: cfg.clone(),
            auth: auth.clone(),
            shared: shared.clone(),
            control: queues[id].clone(),
            listeners: Listener::for_shard(&cfg, &tls, shards),
            checks,
            driver: io,
            store,
            cluster: clustered.as_mut().map(|(_, boots)| boots.remove(0)),
        };
        let core = (cfg.broker.pin_cores && !cores.is_empty()).then(|| cores[id % cores.len()]);
        let t = std::thread::Builder::new()
            .name(format!("ringmq-shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                if let Err(e) = crate::shard::run(boot, ends, socks, restore) {
                    tracing::error!(shard = id, error = %e, "shard stopped");
                }
            })
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    let bound: Vec<(String, Endpoint)> = cfg.listeners.keys().cloned().zip(addrs).collect();
    for ((name, a), l) in bound.iter().zip(cfg.listeners.values()) {
        tracing::info!(listener = %name, kind = ?l.kind, listen = %a, shards, driver, "ringmq listening");
    }
    let broker = Arc::new(Broker {
        handle: Handle::new(queues),
        shared: shared.clone(),
        cfg: Mutex::new(cfg.clone()),
        log,
        trace: Mutex::new(TraceSet::default()),
        driver,
        bound,
        args,
        cluster,
    });
    if cfg.admin.enabled {
        let addr = crate::admin::start(broker.clone())?;
        tracing::info!(admin = %addr, "admin API listening");
    }
    spawn_stats_thread(broker.clone())?;
    until(&broker)?;
    let timeout = Duration::from_secs(broker.config().broker.shutdown_timeout);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let b = broker.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(b.shutdown());
    });
    let deadline = Instant::now() + timeout;
    let unwritten = |shared: &Shared| {
        format!(
            "{} store batches not written",
            shared.store.lag.load(Ordering::Relaxed)
        )
    };
    let result = match done_rx.recv_timeout(timeout) {
        Ok(Ok(())) => {
            for t in threads {
                let _ = t.join();
            }
            if writer.finish(deadline) {
                tracing::info!("shutdown complete");
                Ok(())
            } else {
                let what = unwritten(&shared);
                tracing::error!(%what, "the store did not finish within broker.shutdown_timeout");
                Err(format!("shutdown: the store did not finish: {what}"))
            }
        }
        Ok(Err(e)) => Err(format!("shutdown: {e}")),
        Err(_) => {
            let what = unwritten(&shared);
            tracing::error!(
                secs = timeout.as_secs(),
                %what,
                "shutdown took longer than broker.shutdown_timeout; exiting"
            );
            Err(format!(
                "shutdown took longer than broker.shutdown_timeout ({} s): {what}",
                timeout.as_secs()
            ))
        }
    };
    broker.log.flush();
    result
}

/// Opens the store in the data dir (refused when another broker holds it), brings in an older
/// version's files once, reads everything back before any listener opens (split by home
/// shard), and starts the storage thread. With `durability.mode = "off"` the store is emptied
/// once read: it is written again only at the next graceful shutdown.
/// The storage thread, each shard's way to it and its share of what was kept, and the store's
/// database (the cluster keeps its Raft log there too).
type Opened = (Writer, Vec<StoreLink>, Vec<Restore>, fjall::Database);

fn open_store(
    cfg: &Config,
    bells: Arc<[crate::ring::Doorbell]>,
    stats: &Arc<StoreStats>,
) -> Result<Opened, String> {
    let dir = &cfg.broker.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("broker.data_dir {}: {e}", dir.display()))?;
    let store = Store::open(dir, &cfg.durability)?;
    let started = Instant::now();
    if let Some(old) = Legacy::read(dir) {
        let (sessions, retained) = (old.sessions.len(), old.retained.len());
        store.import(old)?;
        Legacy::remove(dir);
        tracing::info!(
            sessions,
            retained,
            "imported sessions.json and retained.json into the store; removed them"
        );
    }
    let got = store.recover(Instant::now())?;
    let ms = started.elapsed().as_millis() as u64;
    let relaxed = Ordering::Relaxed;
    stats
        .restored_sessions
        .store(got.sessions.len() as u64, relaxed);
    stats.restored_messages.store(got.messages as u64, relaxed);
    stats
        .restored_retained
        .store(got.retained.len() as u64, relaxed);
    stats.restore_ms.store(ms, relaxed);
    stats.disk_bytes.store(store.disk_bytes(), relaxed);
    tracing::info!(
        sessions = got.sessions.len(),
        messages = got.messages,
        retained = got.retained.len(),
        delayed = got.delayed.len(),
        ms,
        mode = cfg.durability.mode.name(),
        "restored from the store"
    );
    if cfg.durability.mode == DurabilityMode::Off {
        store.clear()?;
    }
    let shards = bells.len();
    let retained: Arc<[Arc<Message>]> = got.retained.into();
    let banned: Arc<[crate::banned::Ban]> = got.banned.into();
    let max_delayed_id = got.delayed.iter().map(|(id, _)| *id).max().unwrap_or(0);
    // Every shard learns every restored subscription before it accepts a connection: a
    // publish that came in before the owning shard's interest message would be lost.
    let interest: Arc<[(ByteString, usize)]> = got
        .sessions
        .iter()
        .flat_map(|s| {
            let home = home_of(&s.session.client_id, shards);
            s.session
                .subscriptions
                .keys()
                .map(move |f| (f.clone(), home))
        })
        .collect();
    let mut parts: Vec<Restore> = (0..shards)
        .map(|_| Restore {
            interest: interest.clone(),
            sessions: Vec::new(),
            retained: retained.clone(),
            max_epoch: got.max_epoch,
            delayed: Vec::new(),
            max_delayed_id,
            banned: banned.clone(),
            exclusive: Vec::new(),
        })
        .collect();
    for (id, m) in got.delayed {
        parts[(id % shards as u64) as usize].delayed.push((id, m));
    }
    for s in got.sessions {
        for filter in s.session.subscriptions.keys() {
            if crate::topic::parse_exclusive(filter).is_some() {
                let holder = (filter.clone(), s.session.client_id.clone());
                parts[home_of(filter, shards)].exclusive.push(holder);
            }
        }
        parts[home_of(&s.session.client_id, shards)]
            .sessions
            .push(s);
    }
    let db = store.database();
    let (writer, links) = crate::store::spawn(store, &cfg.durability, bells, stats.clone())
        .map_err(|e| e.to_string())?;
    Ok((writer, links, parts, db))
}

/// In a cluster: starts the cluster thread, and makes each shard's way to it and its socket on
/// `cluster.rpc_listen`.
fn start_cluster(
    cfg: &Config,
    db: &fjall::Database,
    bells: Arc<[crate::ring::Doorbell]>,
    shards: usize,
) -> Result<Option<(crate::cluster::Reporter, Vec<ClusterBoot>)>, String> {
    if !cfg.cluster.enabled {
        return Ok(None);
    }
    let links: Vec<Arc<ShardLink>> = (0..shards)
        .map(|i| Arc::new(ShardLink::new(i, bells.clone())))
        .collect();
    let rpc = crate::listen::reuseport(cfg.cluster.rpc_listen, shards)?;
    let tls = cfg
        .cluster
        .tls
        .as_ref()
        .map(crate::tls::ClusterTls::new)
        .transpose();
    let trust = Trust {
        cookie: cfg.cluster.cookie.clone().unwrap_or_default().into(),
        tls: tls.map_err(|e| format!("cluster.tls: {e}"))?,
    };
    let name = &cfg.broker.node_name;
    let reporter = crate::cluster::start(&cfg.cluster, name, trust.clone(), db, links.clone())?;
    let boots = links
        .into_iter()
        .zip(rpc)
        .map(|(link, rpc)| ClusterBoot {
            reporter: reporter.clone(),
            link,
            name: name.clone(),
            trust: trust.clone(),
            rpc: Some(rpc),
        })
        .collect();
    tracing::info!(node = %name, listen = %cfg.cluster.listen, rpc = %cfg.cluster.rpc_listen, tls = cfg.cluster.tls.is_some(), "cluster node started");
    Ok(Some((reporter, boots)))
}

/// The password checker threads (`auth.password_threads`, 0: one per four CPUs) and each
/// shard's end of them.
fn password_checkers(
    cfg: &Config,
    shards: usize,
    ends: &[(crate::ring::Outbox, crate::ring::Inbox)],
) -> Result<Vec<crate::auth::checker::ShardChecks>, String> {
    let threads = match cfg.auth.password_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get() / 4),
        n => n,
    };
    let bells = ends
        .first()
        .map(|(_, inbox)| inbox.bells())
        .ok_or("no shards")?;
    let queue = cfg.auth.max_pending_checks * shards;
    crate::auth::checker::spawn(shards, threads, queue, bells).map_err(|e| e.to_string())
}

/// Blocks until SIGTERM or SIGINT; reloads on SIGHUP.
fn wait_for_signals(broker: &Broker) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                tracing::info!("SIGHUP: reloading");
                let _ = broker.reload();
            }
            _ => {
                tracing::info!(signal = sig, "shutting down");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Once a second: the memory budget check and the alarms; once a minute: a summary line in the log.
fn spawn_stats_thread(broker: Arc<Broker>) -> Result<(), String> {
    std::thread::Builder::new()
        .name("ringmq-stats".into())
        .spawn(move || {
            let mut tick = 0u64;
            let mut last = broker.shared.messages();
            loop {
                std::thread::sleep(Duration::from_secs(1));
                tick += 1;
                let now = broker.shared.messages();
                broker.shared.rate_in.set(now.0 - last.0);
                broker.shared.rate_out.set(now.1 - last.1);
                last = now;
                let overload = &broker.config().overload;
                let budget = overload.memory_budget_bytes();
                let rss = Shared::rss_bytes();
                let over = budget > 0 && rss > budget;
                let was = broker.shared.memory_over.swap(over, Ordering::Relaxed);
                if over != was {
                    if over {
                        tracing::warn!(
                            rss,
                            budget,
                            "memory over overload.memory_budget_mb: refusing new connections"
                        );
                    } else {
                        tracing::info!("memory back under budget: accepting new connections");
                    }
                }
                broker.shared.alarms.sweep(&broker.shared, overload, rss);
                if tick.is_multiple_of(60) {
                    tracing::info!("stats {}", broker.shared.summary());
                }
            }
        })
        .map(|_| ())
        .map_err(|e| e.to_string())
}
