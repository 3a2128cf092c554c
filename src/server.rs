//! Boot: bind every listener once without SO_REUSEPORT to prove the port is free, build the ring
//! mesh, then start one pinned thread per shard, each with its own SO_REUSEPORT listeners.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};

use crate::config::Config;
use crate::stats::Stats;

/// Which io driver the shards run on.
pub fn driver_name() -> &'static str {
    if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Resolves each address to a concrete port (port 0 picks one) and fails if any is in use.
fn claim_ports(addrs: &[SocketAddr]) -> std::io::Result<Vec<SocketAddr>> {
    addrs
        .iter()
        .map(|addr| {
            let probe = TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?;
            probe.local_addr()
        })
        .collect()
}

/// Starts the broker and blocks until every shard thread ends (in practice: the process exits).
pub fn run(cfg: Config) -> std::io::Result<()> {
    let cfg = Arc::new(cfg);
    let shards = cfg.shard_count();
    let addrs = claim_ports(&cfg.broker.listen)?;
    let driver = driver_name();
    if driver == "epoll" {
        tracing::warn!("io_uring is not available (blocked by a seccomp profile or disabled by the kernel); falling back to the epoll driver");
    }
    let mut listeners: Vec<Vec<TcpListener>> = Vec::with_capacity(shards);
    for _ in 0..shards {
        listeners.push(
            addrs
                .iter()
                .map(|a| reuseport_listener(*a))
                .collect::<Result<_, _>>()?,
        );
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let stats: Vec<Arc<Stats>> = (0..shards).map(|_| Arc::new(Stats::default())).collect();
    let mut threads = Vec::with_capacity(shards);
    for ((id, ends), ls) in crate::ring::mesh(shards, cfg.broker.ring_capacity)
        .into_iter()
        .enumerate()
        .zip(listeners)
    {
        let cfg = cfg.clone();
        let core = (cfg.broker.pin_cores && !cores.is_empty()).then(|| cores[id % cores.len()]);
        let st = stats[id].clone();
        let t = std::thread::Builder::new()
            .name(format!("ringmq-shard-{id}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                if let Err(e) = crate::shard::run(id, shards, cfg, st, ends, ls) {
                    tracing::error!(shard = id, error = %e, "shard stopped");
                }
            })?;
        threads.push(t);
    }
    for a in &addrs {
        tracing::info!(listen = %a, shards, driver, "ringmq listening");
    }
    std::thread::Builder::new()
        .name("ringmq-stats".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(60));
            tracing::info!("stats {}", Stats::summary(&stats));
        })?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
