//! The byte stream of a forwarding connection between two nodes' shards: plain TCP, or mutual
//! TLS (`[cluster.tls]`) driven by hand after the same readiness waits, as the MQTT listeners
//! drive it (rustls needs no runtime of its own). All of it takes `&self`, so the task can keep
//! a readiness wait on the socket while it writes.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, ErrorKind, IoSlice, Read, Write};

use bytes::BytesMut;
use monoio::net::TcpStream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cluster::wire;
use crate::sock::{self, Stream};
use crate::tls::ClusterTls;

/// How much is read from the socket at a time.
const READ: usize = 64 * 1024;

pub(super) struct PeerIo {
    s: TcpStream,
    tls: Option<Tls>,
}

struct Tls {
    conn: RefCell<rustls::Connection>,
    /// The encrypted bytes of one read, kept between reads (its capacity reused).
    raw: RefCell<BytesMut>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.to_string())
}

/// Writes to the socket without waiting (rustls writes its records through it).
struct Socket<'a>(&'a TcpStream);

impl Write for Socket<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sock::send(self.0, &[IoSlice::new(b)])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl PeerIo {
    /// A connection this shard dialled to the node at `addr`.
    pub fn dialled(s: TcpStream, tls: Option<&ClusterTls>, addr: &str) -> io::Result<PeerIo> {
        let tls = match tls {
            Some(t) => Some(rustls::Connection::Client(t.dial(addr)?)),
            None => None,
        };
        Ok(PeerIo::over(s, tls))
    }

    /// A connection another node dialled to this shard.
    pub fn accepted(s: TcpStream, tls: Option<&ClusterTls>) -> io::Result<PeerIo> {
        let tls = match tls {
            Some(t) => Some(rustls::Connection::Server(t.accept()?)),
            None => None,
        };
        Ok(PeerIo::over(s, tls))
    }

    fn over(s: TcpStream, tls: Option<rustls::Connection>) -> PeerIo {
        let tls = tls.map(|mut c| {
            // What waits to be sent is bounded by the forwarder (publishers stop being read).
            c.set_buffer_limit(None);
            Tls {
                conn: RefCell::new(c),
                raw: RefCell::default(),
            }
        });
        PeerIo { s, tls }
    }

    /// Ready when the socket has something to read.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        Stream::readable(&self.s)
    }

    /// Writes all of `data` (encrypted first under TLS).
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        match &self.tls {
            None => self.send_raw(data).await,
            Some(tls) => {
                tls.conn.borrow_mut().writer().write_all(data)?;
                self.flush(&tls.conn).await
            }
        }
    }

    pub async fn write_frame(&self, v: &impl Serialize) -> io::Result<()> {
        self.write_all(&wire::frame(v).map_err(invalid)?).await
    }

    async fn send_raw(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match sock::send(&self.s, &[IoSlice::new(data)]) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => Stream::writable(&self.s).await?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the TLS records rustls has ready.
    async fn flush(&self, tls: &RefCell<rustls::Connection>) -> io::Result<()> {
        loop {
            let written = {
                let mut c = tls.borrow_mut();
                if !c.wants_write() {
                    return Ok(());
                }
                c.write_tls(&mut Socket(&self.s))
            };
            match written {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => Stream::writable(&self.s).await?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads what the socket holds, and puts its bytes (decrypted under TLS) in `buf`; an error
    /// at the end of the stream.
    pub async fn fill(&self, buf: &mut BytesMut) -> io::Result<()> {
        let Some(tls) = &self.tls else {
            return fill_raw(&self.s, buf);
        };
        {
            let mut raw = tls.raw.borrow_mut();
            raw.clear();
            let ended = fill_raw(&self.s, &mut raw);
            let mut c = tls.conn.borrow_mut();
            let mut rest = &raw[..];
            while !rest.is_empty() {
                c.read_tls(&mut rest)?;
                c.process_new_packets().map_err(invalid)?;
                if take_plain(&mut c, buf)? {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
            }
            ended?;
        }
        self.flush(&tls.conn).await
    }

    /// Reads one whole frame (keeping what follows it in `buf`).
    pub async fn read_frame<T: DeserializeOwned>(&self, buf: &mut BytesMut) -> io::Result<T> {
        loop {
            if let Some(f) = next_frame(buf)? {
                return Ok(f);
            }
            self.readable().await?;
            self.fill(buf).await?;
        }
    }
}

/// Moves the plaintext rustls holds to `buf`; true once the peer closed the TLS session.
fn take_plain(c: &mut rustls::Connection, buf: &mut BytesMut) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match c.reader().read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what the socket holds into `buf`; an error at the end of the stream.
fn fill_raw(s: &TcpStream, buf: &mut BytesMut) -> io::Result<()> {
    loop {
        match sock::recv(s, buf, READ) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The next whole frame in `buf`, if one is there (its bytes taken).
pub(super) fn next_frame<T: DeserializeOwned>(buf: &mut BytesMut) -> io::Result<Option<T>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = wire::frame_len([buf[0], buf[1], buf[2], buf[3]]).map_err(invalid)?;
    if buf.len() < 4 + n {
        return Ok(None);
    }
    let frame = buf.split_to(4 + n);
    wire::decode(&frame[4..]).map(Some).map_err(invalid)
}
