//! The connection task: accept, then one loop per connection that waits for readability, new
//! output or a close request. Reads go into the shard's shared buffer; only a frame split across
//! reads is kept per connection. Writes are non-blocking `writev`s of what is queued. A client
//! whose output backs up is no longer read from (its own TCP back-pressure), and neither is any
//! client while a ring to another shard is full. An idle plain-TCP connection's loop ends early
//! and its task with it: it hibernates (`super::hibernate`) until there is something to do.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::ErrorKind;
use std::mem::discriminant;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use smallvec::SmallVec;

use super::link::{Close, ConnLink, LinkState};
use super::transport::Transport;
use super::{hibernate, Accepted, Conn, Shard};
use crate::codec::{decode, Disconnect, Packet, ReasonCode};
use crate::sock::{self, Stream};

/// Bytes read per readiness event before giving other connections a turn.
const READ_BUDGET: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;
/// Room below which a plain read first takes a fresh `READ_CHUNK`. The packets of a read stay
/// slices of its buffer while their messages are in flight, so a buffer is seldom free to be
/// reused: asking for a whole chunk at every read allocated (and soon freed) 64 KiB per read.
const READ_ROOM: usize = 16 * 1024;

/// A listening socket connections are accepted from: a readiness wait, then every connection
/// waiting is taken without another wait (a burst of connects is accepted in one loop tick,
/// not one per tick).
pub(super) trait Accept: std::os::fd::AsRawFd {
    type Stream: Stream;
    /// Ready when connections wait (or the socket failed).
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + '_;
    /// A waiting connection and its client's address (a Unix socket's client: [`UNIX_PEER`]);
    /// `WouldBlock` when none waits.
    fn take(&self) -> std::io::Result<(Self::Stream, SocketAddr)>;
}

/// The address a Unix-socket client has in logs, `ctl` and ACL `ip` rules: it is on this
/// machine, and a Unix socket has no address of its own.
pub const UNIX_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl Accept for TcpListener {
    type Stream = TcpStream;
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        self.readable(false)
    }
    fn take(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (fd, addr) = sock::accept(self)?;
        let peer = addr.as_socket().unwrap_or(UNIX_PEER);
        Ok((TcpStream::from_std(std::net::TcpStream::from(fd))?, peer))
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    fn ready(&self) -> impl Future<Output = std::io::Result<()>> + '_ {
        self.readable(false)
    }
    fn take(&self) -> std::io::Result<(UnixStream, SocketAddr)> {
        let (fd, _) = sock::accept(self)?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        Ok((UnixStream::from_std(stream)?, UNIX_PEER))
    }
}

/// Connections accepted per readiness event before other tasks get a turn.
const ACCEPT_BATCH: usize = 256;

pub async fn accept_loop<L: Accept>(shard: Rc<RefCell<Shard>>, listener: L, index: usize) {
    loop {
        let mut failed = listener.ready().await.err();
        for _ in 0..ACCEPT_BATCH {
            match listener.take() {
                Ok((stream, peer)) => {
                    let proxied = shard
                        .borrow()
                        .listeners
                        .get(index)
                        .is_some_and(|l| l.cfg.proxy_protocol);
                    if proxied {
                        monoio::spawn(super::proxied::accept(shard.clone(), stream, peer, index));
                    } else if let Some(conn) = admit::<L::Stream>(&shard, peer, index) {
                        monoio::spawn(serve(shard.clone(), stream, conn));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            // Out of descriptors, most often: the socket stays ready, so wait a little.
            tracing::warn!(error = %e, "accept failed");
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

enum Event {
    Readable,
    Output,
}

/// Sets up a connection's link and transport and registers it with the shard. Its socket needs
/// nothing more: `sock::accept` made it non-blocking, and it has the listener's `TCP_NODELAY`.
pub(super) fn admit<S: Stream>(
    shard: &Rc<RefCell<Shard>>,
    peer: SocketAddr,
    listener: usize,
) -> Option<Accepted> {
    let now = Instant::now();
    let mut sh = shard.borrow_mut();
    let max = sh.cfg.mqtt.max_packet_size;
    let transport = sh
        .listeners
        .get(listener)
        .map(|l| Transport::for_listener(l, max))
        .transpose();
    let transport = match transport {
        Ok(t) => t.flatten(),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot set up the connection's transport");
            return None;
        }
    };
    let link = Rc::new(ConnLink::new(peer, now, listener));
    let refusal = sh.admit_connection(listener, now);
    if let Some(reason) = refusal {
        tracing::info!(%peer, ?reason, "refusing a new connection");
    }
    link.refusal.set(refusal);
    sh.stats.connections.inc();
    let idx = sh.conns.insert(Conn {
        link: link.clone(),
        hibernating: None,
        plain: S::TCP && transport.is_none(),
    });
    Some(Accepted {
        link,
        transport,
        idx,
    })
}

/// The connection's task. A plain function returning an `async move` block rather than an
/// `async fn`: an `async fn` keeps its arguments twice in the task (as captures and as locals),
/// and every idle connection would pay for the copy.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice: 128 bytes more per idle connection"
)]
pub(super) fn serve<S: Stream>(
    shard: Rc<RefCell<Shard>>,
    stream: S,
    mut conn: Accepted,
) -> impl Future<Output = ()> {
    async move {
        while drive(&shard, &stream, &conn.link, &mut conn.transport).await {
            if hibernate::hibernate(&shard, &stream, &conn) {
                return;
            }
        }
        finish(&stream, &conn.link, &mut conn.transport).await;
        shard.borrow_mut().connection_ended(conn.idx, &conn.link);
        linger(&stream).await;
    }
}

/// The connection's loop, until it closes (false) or has been idle long enough to hibernate
/// (true). Kept apart from `finish` so the two futures' states overlap in the task instead of
/// adding up (this is most of an idle connection's memory); an `async` block for the same reason
/// as `serve`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice: 32 bytes more per idle connection"
)]
fn drive<'a, S: Stream>(
    shard: &'a Rc<RefCell<Shard>>,
    stream: &'a S,
    link: &'a Rc<ConnLink>,
    transport: &'a mut Option<Box<Transport>>,
) -> impl Future<Output = bool> + 'a {
    async move {
        let mut partial = BytesMut::new();
        // What already came (a CONNECT sent right behind the handshake, a resumed client's
        // packet) is read before the first readiness wait: one loop tick sooner.
        let mut eof = read(shard, stream, link, &mut partial, transport);
        let mut readable = pin!(Some(stream.readable()));
        // Boxed, and only while output waits for room: inline it would sit in every idle task.
        let mut writable = None;
        loop {
            // Read once per turn of the loop, and only when needed: a clock read is a
            // measurable part of a message's cost.
            let mut clock = None;
            let mut now = || *clock.get_or_insert_with(Instant::now);
            match flush(stream, link, transport) {
                Ok(0) => {}
                Ok(n) => {
                    link.touch(now());
                    shard.borrow().stats.bytes_out.add(n as i64);
                }
                Err(_) => return false,
            }
            if link.is_closing() || eof {
                return false;
            }
            // Right after the flush, before any wait: queued messages move up as soon as the
            // output has room, or they would sit there until something else woke the task.
            let drained = link.out.borrow().len() <= shard.borrow().cfg.mqtt.max_outbound_bytes / 2;
            if drained {
                if let Some(key) = link.session() {
                    shard.borrow_mut().pump_session(key, now());
                }
            }
            // Plain TCP with no split frame held: hibernating is up to the shard's conditions.
            let plain_idle = S::TCP && transport.is_none() && partial.is_empty();
            if plain_idle && shard.borrow().may_hibernate(link) {
                return true;
            }
            if let Some(until) = link.take_throttle() {
                // Boxed: monoio's timer is 640 bytes, and inline it would sit in every idle task.
                Box::pin(monoio::time::sleep(until.saturating_duration_since(now()))).await;
                decode_all(&mut shard.borrow_mut(), link, &mut partial, Instant::now());
                continue;
            }
            let (want_read, ring_blocked) = {
                let sh = shard.borrow();
                let out_full = link.out.borrow().len() > sh.cfg.mqtt.max_outbound_bytes;
                let claiming = link.state.get().awaits_connect();
                let ring_blocked = sh.blocked();
                (!out_full && !claiming && !ring_blocked, ring_blocked)
            };
            let want_write = !link.out.borrow().is_empty()
                || transport.as_ref().is_some_and(|t| t.has_pending());
            if want_write && writable.is_none() {
                writable = Some(Box::pin(stream.writable()));
            }
            // Only the kind of state: 8 bytes less in every idle task than the state itself.
            let state_before = discriminant(&link.state.get());
            // The first poll follows the loop's own hibernation check; only a wake (the sweep's
            // nudge, among others) needs the clock read again.
            let doze = want_read && plain_idle;
            let mut woken = false;
            // A `move` closure holding flags by value and four references: 40 bytes less in every
            // idle task than capturing each local by reference.
            let (readable_now, writable_now) = (&mut readable, &mut writable);
            let event = poll_fn(move |cx| {
                if want_read {
                    if let Some(r) = readable_now.as_mut().as_pin_mut() {
                        if r.poll(cx).is_ready() {
                            return Poll::Ready(Event::Readable);
                        }
                    }
                } else if ring_blocked {
                    if !shard.borrow().blocked() {
                        return Poll::Ready(Event::Output);
                    }
                    shard.borrow_mut().mesh.wait_for_ring(link);
                }
                if let Some(w) = writable_now.as_mut() {
                    if w.as_mut().poll(cx).is_ready() {
                        *writable_now = None;
                        return Poll::Ready(Event::Output);
                    }
                }
                let out_pending = !link.out.borrow().is_empty() && !want_write;
                if out_pending
                    || link.is_closing()
                    || discriminant(&link.state.get()) != state_before
                    || (woken && doze && shard.borrow().may_hibernate(link))
                {
                    return Poll::Ready(Event::Output);
                }
                link.register(cx.waker());
                woken = true;
                Poll::Pending
            })
            .await;
            if let Event::Readable = event {
                readable.set(Some(stream.readable()));
                eof = read(shard, stream, link, &mut partial, transport);
            } else if discriminant(&link.state.get()) != state_before && !partial.is_empty() {
                // Packets that arrived behind the CONNECT wait in `partial` until it is granted.
                decode_all(&mut shard.borrow_mut(), link, &mut partial, Instant::now());
            }
        }
    }
}

/// Reads and handles what the socket holds; true at end of stream or on a fatal error.
fn read(
    shard: &Rc<RefCell<Shard>>,
    stream: &impl Stream,
    link: &Rc<ConnLink>,
    partial: &mut BytesMut,
    transport: &mut Option<Box<Transport>>,
) -> bool {
    let mut sh = shard.borrow_mut();
    let mut buf = if partial.is_empty() {
        std::mem::take(&mut sh.rbuf)
    } else {
        std::mem::take(partial)
    };
    let now = Instant::now();
    let mut total = 0;
    let mut eof = false;
    // A plain socket that gave less than the room offered is drained for now: the next read
    // would only say EAGAIN (a system call per readiness event), the next readiness wait says
    // when more came.
    let mut drained = false;
    while total < READ_BUDGET && !drained {
        let got = match transport {
            None => {
                make_room(&mut buf);
                sock::recv(stream, &mut buf, READ_ROOM)
            }
            Some(t) => {
                let got = t.recv(stream, &mut buf, link, READ_CHUNK);
                let skipped = t.take_skipped_pongs();
                if skipped > 0 {
                    let what = crate::stats::Refusal::WsPing;
                    sh.stats.refused_n(what, i64::from(skipped));
                }
                got
            }
        };
        match got {
            Ok(0) => {
                // TLS and WebSocket may hand over their last packets with the close itself.
                decode_all(&mut sh, link, &mut buf, now);
                eof = true;
                break;
            }
            Ok(n) => {
                total += n;
                sh.stats.bytes_in.add(n as i64);
                drained = transport.is_none() && buf.len() < buf.capacity();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.kind() == ErrorKind::InvalidData {
                    sh.stats.handshake_failures.inc();
                }
                tracing::debug!(peer = %link.peer, error = %e, "read failed");
                eof = true;
                break;
            }
        }
        if link.session().is_some() {
            link.heard(now);
        }
        if !decode_all(&mut sh, link, &mut buf, now) {
            break;
        }
    }
    sh.handle_own(now);
    if !link.state.get().awaits_connect() && !buf.is_empty() {
        // A CONNECT granted just now, by its own shard: what came behind it goes on.
        decode_all(&mut sh, link, &mut buf, now);
        sh.handle_own(now);
    }
    if link.is_closing() {
        buf.clear();
    }
    let (kept, back) = keep_partial(buf);
    *partial = kept;
    if let Some(back) = back {
        if sh.rbuf.capacity() < back.capacity() {
            sh.rbuf = back;
        }
    }
    eof
}

/// Readies `buf` for a plain read: a fresh `READ_CHUNK` only once less than `READ_ROOM` is left.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_ROOM {
        buf.reserve(READ_CHUNK);
    }
}

/// What stays of a read buffer once its whole packets were handled: the split frame to keep
/// (empty if none) and, unless the frame kept it, the buffer to give back to the shard.
///
/// A split frame shorter than a read chunk, or one sitting in a buffer more than twice its
/// size, is copied into a buffer of its own: a connection holding part of a packet pins about
/// what it sent, not a read buffer. A longer one keeps its buffer and grows in place, so a
/// large packet trickling in is copied once per doubling (and under a chunk per read before
/// that) instead of once whole per read: quadratic, and any client could ask for it.
fn keep_partial(mut buf: BytesMut) -> (BytesMut, Option<BytesMut>) {
    if buf.len() >= READ_CHUNK && buf.capacity() <= 2 * buf.len() {
        return (buf, None);
    }
    let kept = if buf.is_empty() {
        BytesMut::new()
    } else {
        BytesMut::from(&buf[..])
    };
    buf.clear();
    (kept, Some(buf))
}

/// Decodes and handles every whole packet in `buf` (read at `now`); false when reading must
/// pause (closing, a CONNECT waiting for its password verdict or grant, or a throttled
/// publisher).
fn decode_all(sh: &mut Shard, link: &Rc<ConnLink>, buf: &mut BytesMut, now: Instant) -> bool {
    let max = sh.cfg.mqtt.max_packet_size as usize;
    loop {
        if link.is_closing() || link.state.get().awaits_connect() || link.throttled() {
            return false;
        }
        match decode(buf, link.protocol.get(), max) {
            Ok(Some(packet)) => {
                if let Err(close) = sh.handle(link, packet, now) {
                    refuse(sh, link, close);
                    return false;
                }
            }
            Ok(None) => return true,
            Err(e) => {
                let close = Close::new(e.reason_code(), e.to_string());
                refuse(sh, link, close);
                return false;
            }
        }
    }
}

/// Closes a connection for a protocol error, answering with CONNACK before CONNECT completes.
pub(super) fn refuse(sh: &mut Shard, link: &Rc<ConnLink>, close: Close) {
    sh.stats.protocol_errors.inc();
    if link.state.get() == LinkState::New {
        sh.refuse_connect(link, close.reason);
    }
    let client = link
        .session()
        .and_then(|k| sh.sessions.get(k))
        .map(|s| s.session.client_id.clone())
        .unwrap_or_default();
    tracing::info!(%client, peer = %link.peer, reason = ?close.reason, why = %close.why, "closing connection");
    link.close(close);
}

/// Writes what the socket takes now, returning how much; an error means the connection is gone.
fn flush(
    stream: &impl Stream,
    link: &ConnLink,
    transport: &mut Option<Box<Transport>>,
) -> std::io::Result<usize> {
    let Some(t) = transport else {
        return flush_plain(stream, link);
    };
    let mut written = 0;
    loop {
        let (all, n) = t.send_pending(stream)?;
        written += n;
        if !all {
            return Ok(written);
        }
        let mut out = link.out.borrow_mut();
        if out.is_empty() {
            return Ok(written);
        }
        let taken = {
            let slices = out.slices();
            let parts: SmallVec<[&[u8]; 64]> = slices.iter().map(|s| &s[..]).collect();
            t.wrap(&parts)?;
            parts.iter().map(|p| p.len()).sum()
        };
        out.advance(taken);
    }
}

fn flush_plain(stream: &impl Stream, link: &ConnLink) -> std::io::Result<usize> {
    let mut out = link.out.borrow_mut();
    let mut written = 0;
    while !out.is_empty() {
        let n = {
            let slices = out.slices();
            match sock::send(stream, &slices) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(written),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        out.advance(n);
        written += n;
    }
    Ok(written)
}

/// Sends the v5 DISCONNECT a close calls for, and what is queued, with a bounded wait.
async fn finish(stream: &impl Stream, link: &ConnLink, transport: &mut Option<Box<Transport>>) {
    let close = link.close_reason();
    if let Some(close) = &close {
        if link.connacked.get()
            && link.protocol.get().is_v5()
            && close.reason != ReasonCode::Success
        {
            link.send(&Packet::Disconnect(Disconnect {
                reason: close.reason,
                properties: None,
            }));
        }
    }
    if transport.is_some() {
        let _ = flush(stream, link, transport);
        if let Some(t) = transport.as_mut() {
            t.close();
        }
    }
    let unsent = |t: &Option<Box<Transport>>| {
        !link.out.borrow().is_empty() || t.as_ref().is_some_and(|t| t.has_pending())
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while unsent(transport) && Instant::now() < deadline {
        if flush(stream, link, transport).is_err() {
            break;
        }
        if !unsent(transport) {
            break;
        }
        // Boxed: monoio's timer is 640 bytes, and inline it would sit in every idle task.
        let wait = Box::pin(monoio::time::timeout(
            std::time::Duration::from_millis(100),
            stream.writable(),
        ));
        let _ = wait.await;
    }
}

/// How long a closed connection waits for the client to close its side too.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes a closed connection reads and throws away while it waits.
const LINGER_BYTES: usize = 64 * 1024;

/// Half-closes and reads what the client still sends until it closes too (or `LINGER` passes,
/// or `LINGER_BYTES` came). Closing a socket with unread bytes makes the kernel answer with a
/// reset, which can throw away the goodbye just sent (a CONNACK or DISCONNECT with its reason, a
/// WebSocket close) before the client reads it, and fails the client's own goodbye (a WebSocket
/// close frame after its DISCONNECT) with EPIPE. The session is already gone: only the socket
/// and this task wait.
async fn linger(stream: &impl Stream) {
    if sock::shutdown_write(stream).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut buf = BytesMut::new();
    let mut thrown = 0;
    while thrown < LINGER_BYTES {
        match sock::recv(stream, &mut buf, 4096) {
            Ok(0) => return,
            Ok(n) => {
                thrown += n;
                buf.clear();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = Box::pin(monoio::time::timeout(left, stream.readable()));
                if left.is_zero() || wait.await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1 MB frame arriving 1,400 bytes at a time, read as `read` does (into the kept split
    /// frame once there is one): past the first read chunk its bytes move only when the buffer
    /// grows, not at every read; and a short split frame never pins a big buffer.
    #[test]
    fn a_trickled_frame_is_not_copied_at_every_read() {
        let mut rbuf = BytesMut::new();
        let mut partial = BytesMut::new();
        let segment = [7u8; 1400];
        let mut moves = 0;
        let mut last = std::ptr::null();
        for _ in 0..(1 << 20) / segment.len() {
            let mut buf = if partial.is_empty() {
                std::mem::take(&mut rbuf)
            } else {
                std::mem::take(&mut partial)
            };
            make_room(&mut buf);
            buf.extend_from_slice(&segment);
            let (kept, back) = keep_partial(buf);
            if let Some(back) = back {
                rbuf = back;
            }
            if kept.as_ptr() != last {
                moves += 1;
                last = kept.as_ptr();
            }
            partial = kept;
        }
        assert_eq!(partial.len(), 748 * 1400);
        let mut big = BytesMut::with_capacity(5 * READ_CHUNK);
        big.extend_from_slice(&[1u8; 5000]);
        let (kept, back) = keep_partial(big);
        assert_eq!(
            (kept.len(), kept.capacity()),
            (5000, 5000),
            "copied, not pinned"
        );
        assert!(
            back.is_some_and(|b| b.capacity() >= 5 * READ_CHUNK),
            "the buffer goes back"
        );
        // Under 64 KiB it is copied at each read (under 64 KiB each), then at each doubling.
        assert!(moves < 70, "the frame moved {moves} times in 748 reads");
    }
}
