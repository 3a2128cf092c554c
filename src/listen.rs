//! The listening sockets, made once at start: a TCP listener's port is first bound without
//! SO_REUSEPORT (so a port another process holds is an error, not a silent second listener),
//! then every shard gets a socket of its own on it with SO_REUSEPORT and the kernel spreads
//! connections over them. A Unix socket has no SO_REUSEPORT: it is made once, and every shard
//! accepts on a copy of its descriptor. Its file is removed again when the broker stops.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Endpoint};

/// One shard's socket for one configured listener.
pub enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// The sockets of every listener for every shard, the addresses they ended up on (port 0
/// picks one), and the Unix socket files to remove at the end.
pub struct Bound {
    pub per_shard: Vec<Vec<ListenSocket>>,
    pub endpoints: Vec<Endpoint>,
    pub files: SocketFiles,
}

/// Binds every configured listener for `shards` shards.
pub fn bind(cfg: &Config, shards: usize) -> Result<Bound, String> {
    let mut per_shard: Vec<Vec<ListenSocket>> = (0..shards).map(|_| Vec::new()).collect();
    let mut endpoints = Vec::new();
    let mut files = SocketFiles::default();
    for l in cfg.listeners.values() {
        let endpoint = l.endpoint();
        match &endpoint {
            Endpoint::Tcp(addr) => {
                let addr = claim_port(*addr)?;
                for socks in &mut per_shard {
                    let s = client_listener(addr)
                        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                    socks.push(ListenSocket::Tcp(s));
                }
                endpoints.push(Endpoint::Tcp(addr));
            }
            Endpoint::Unix(path) => {
                let listener = unix_listener(path, l.socket_mode)?;
                files.0.push(path.clone());
                for socks in &mut per_shard {
                    let s = listener
                        .try_clone()
                        .map_err(|e| format!("unix socket {}: {e}", path.display()))?;
                    socks.push(ListenSocket::Unix(s));
                }
                endpoints.push(endpoint);
            }
        }
    }
    Ok(Bound {
        per_shard,
        endpoints,
        files,
    })
}

/// `n` sockets on `addr` with SO_REUSEPORT (one per shard), the port claimed first.
pub fn reuseport(addr: SocketAddr, n: usize) -> Result<Vec<TcpListener>, String> {
    let addr = claim_port(addr)?;
    (0..n)
        .map(|_| reuseport_listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}")))
        .collect()
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn client_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    for_clients(reuseport_listener(addr)?)
}

/// A listening socket made ready for MQTT clients: non-blocking, and with `TCP_NODELAY`, which
/// Linux hands to every connection it accepts (a system call less per connection; `admit`
/// counts on it).
pub fn for_clients(listener: TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    socket2::SockRef::from(&listener).set_nodelay(true)?;
    Ok(listener)
}

/// Resolves the address to a concrete port (port 0 picks one) and fails if it is in use.
fn claim_port(addr: SocketAddr) -> Result<SocketAddr, String> {
    let probe = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    probe.local_addr().map_err(|e| e.to_string())
}

/// A Unix listening socket at `path` with permissions `mode`. A socket file nobody listens on
/// (left by a broker that was killed) is replaced; one a process listens on, or a file that is
/// not a socket, is an error.
fn unix_listener(path: &Path, mode: u32) -> Result<UnixListener, String> {
    let at = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(format!(
                "unix socket {at}: the path exists and is not a socket"
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!("unix socket {at}: another process listens on it"));
        }
        std::fs::remove_file(path).map_err(|e| format!("unix socket {at}: {e}"))?;
        tracing::info!(path = %at, "removed a stale unix socket file");
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("unix socket {at}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| listener.set_nonblocking(true))
        .map_err(|e| format!("unix socket {at}: {e}"))?;
    Ok(listener)
}

/// The Unix socket files this broker made; removed when dropped (the broker stopped).
#[derive(Default)]
pub struct SocketFiles(Vec<PathBuf>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};

    use super::*;

    /// What `admit` counts on: a connection accepted from a client listener is non-blocking
    /// and has `TCP_NODELAY` without a call of its own.
    #[test]
    fn accepted_connections_are_non_blocking_and_have_nodelay() {
        let listener = client_listener("127.0.0.1:0".parse().expect("addr")).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (fd, _) = loop {
            match crate::sock::accept(&listener) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                other => break other.expect("accept"),
            }
        };
        let mut accepted = std::net::TcpStream::from(fd);
        assert!(accepted.nodelay().expect("nodelay"));
        let read = accepted.read(&mut [0; 8]).expect_err("nothing was sent");
        assert_eq!(read.kind(), ErrorKind::WouldBlock);
    }
}
