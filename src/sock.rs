//! Non-blocking reads and writes on a monoio socket (TCP or Unix), done by hand after a
//! readiness wait; used by the broker's connections and by the load generator's clients.
//!
//! Why not monoio's own reads: a pending io_uring read owns a buffer per connection, about
//! 4.7 KB of user memory per idle connection measured on this kernel, against about 0.6 KB when
//! the connection waits for readability and then reads into one buffer per shard. monoio's
//! `TcpStream` implements `AsRawFd` but not `AsFd`, so borrowing the socket for socket2 needs an
//! `unsafe` fd borrow, reading into a buffer's spare room an `unsafe` length update, and a
//! client bound to a source address sets `IP_BIND_ADDRESS_NO_PORT`, which socket2 lacks, with
//! an `unsafe` `setsockopt`: the crate's only `unsafe` code (`lib.rs` denies it everywhere
//! else).

use std::future::Future;
use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use bytes::BytesMut;
use monoio::net::{TcpStream, UnixStream};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// A connected stream socket a connection runs on: TCP, or a Unix socket of a `unix` listener.
pub trait Stream: AsRawFd + 'static {
    /// TCP: the socket may hibernate (its task given up, `shard::hibernate` brings it back as
    /// a TCP stream) and takes `TCP_NODELAY`.
    const TCP: bool;
    /// Ready to read (or closed); a readiness wait, so dropping it loses nothing.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + '_;
    /// Room to write.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + '_;
}

impl Stream for TcpStream {
    const TCP: bool = true;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        TcpStream::readable(self, false)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        TcpStream::writable(self, false)
    }
}

impl Stream for UnixStream {
    const TCP: bool = false;
    fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        UnixStream::readable(self, false)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        UnixStream::writable(self, false)
    }
}

fn with_sock<R>(stream: &impl AsRawFd, f: impl FnOnce(SockRef<'_>) -> R) -> R {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed (so stays open) for as long
    // as `fd` lives: this call.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    f(SockRef::from(&fd))
}

/// Readies a TCP socket monoio accepted (the cluster's forwarding connections): non-blocking, so
/// hand-made reads and writes never block the shard, and `TCP_NODELAY`, so packets leave when
/// written. A client's connection needs neither call: see `sock::accept` and
/// `listen::for_clients`.
pub fn prepare(stream: &TcpStream) -> io::Result<()> {
    with_sock(stream, |s| {
        s.set_nonblocking(true)?;
        s.set_nodelay(true)
    })
}

/// A second descriptor for the socket, which keeps it open after the stream is dropped.
pub fn duplicate(stream: &impl AsRawFd) -> io::Result<std::os::fd::OwnedFd> {
    with_sock(stream, |s| s.try_clone()).map(Into::into)
}

/// Reads what the socket holds (up to the buffer's spare room, grown to `min_room` first).
/// `Ok(0)` is end of stream; `WouldBlock` means nothing to read.
pub fn recv(stream: &impl AsRawFd, buf: &mut BytesMut, min_room: usize) -> io::Result<usize> {
    buf.reserve(min_room);
    let room = buf.capacity() - buf.len();
    recv_up_to(stream, buf, room)
}

/// Reads at most `max` bytes of what the socket holds, leaving the rest in it (a PROXY header
/// is read so, the client's own bytes after it staying for the connection).
pub fn recv_up_to(stream: &impl AsRawFd, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let n = with_sock(stream, |s| s.recv(&mut buf.spare_capacity_mut()[..max]))?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A connection waiting on the listening socket, accepted now (`WouldBlock`: none waits), already
/// non-blocking (no `fcntl` calls after it).
pub fn accept(listener: &impl AsRawFd) -> io::Result<(std::os::fd::OwnedFd, socket2::SockAddr)> {
    let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
    let (socket, addr) = with_sock(listener, |l| l.accept4(flags))?;
    Ok((socket.into(), addr))
}

/// Ends this side's writing (a FIN) while reads go on.
pub fn shutdown_write(stream: &impl AsRawFd) -> io::Result<()> {
    with_sock(stream, |s| s.shutdown(std::net::Shutdown::Write))
}

/// Writes as much of `bufs` as the socket takes now.
pub fn send(stream: &impl AsRawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    with_sock(stream, |s| (&*s).write_vectored(bufs))
}

/// Connects to `addr`, from `source` when given (to spread over many source addresses), with the
/// socket non-blocking and ready for `recv` and `send`.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = start_connect(addr, source)?;
    stream.writable(false).await?;
    if let Some(e) = with_sock(&stream, |s| s.take_error())? {
        return Err(e);
    }
    Ok(stream)
}

/// Leaves the port of a bind to `connect`, which picks one free for the 4-tuple at once. A
/// bind to port 0 searches the bind table for a port no other socket on the address holds:
/// measured in a burst of 10,000 connects over 8 source addresses, that search was 80 % of
/// the load generator's CPU (`inet_bind2_bucket_find`, `inet_bhash2_conflict`).
fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is `socket`'s, open while it is borrowed; the option value is a
    // live c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// As [`connect`], without waiting for the handshake: for a client that speaks first. Its first
/// `send` says `WouldBlock` while the handshake is under way (wait for writability then), or
/// the connect's error; on loopback it most often just goes, a readiness wait and a system call
/// less per connection in a connect burst.
pub fn start_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let kind = Type::STREAM.nonblocking();
    let socket = Socket::new(Domain::for_address(addr), kind, Some(Protocol::TCP))?;
    if let Some(src) = source {
        // With SO_REUSEADDR, what this connection leaves in TIME_WAIT on (src, port) does not
        // keep a listener from binding that port on `src` for the next minute.
        socket.set_reuse_address(true)?;
        bind_address_no_port(&socket)?;
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}
