//! One MQTT client connection of the load generator: readiness-based non-blocking I/O (the
//! broker's own `sock` helpers) and the project's codec, so a client costs a socket and a few
//! small buffers.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringmq::codec::{
    decode, encode, Connect, Disconnect, Packet, Protocol, PubResp, Publish, QoS, ReasonCode,
    SubOptions, Subscribe,
};
use ringmq::sock;

use crate::session::Session;
use crate::target::TargetArgs;

const SMALL_READ: usize = 1024;
const BIG_READ: usize = 16 * 1024;

pub struct Client {
    stream: TcpStream,
    inbuf: BytesMut,
    /// Packets that came before the SUBACK `subscribe` waited for (a resumed session's queued
    /// messages), handed out first by `try_next`.
    early: VecDeque<Packet>,
    out: BytesMut,
    /// Bytes a read offers: small until a read fills it (a client that only connects holds
    /// about a kilobyte, not a 16 KiB buffer a million times over), then `BIG_READ`.
    read_room: usize,
    pub proto: Protocol,
    /// The CONNACK's: the broker resumed a session it kept for this client id.
    pub session_present: bool,
}

/// Why a client could not get connected.
#[derive(Debug)]
pub enum ConnectFailure {
    Io(io::Error),
    Refused(ReasonCode),
    Timeout,
    Closed,
}

/// A short label, as the failure table shows it.
impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Io(e) if e.kind() == ErrorKind::ConnectionRefused => {
                f.write_str("connection refused")
            }
            ConnectFailure::Io(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                f.write_str("no free source port (add --source addresses)")
            }
            ConnectFailure::Io(e) => write!(f, "io: {}", e.kind()),
            ConnectFailure::Refused(rc) => write!(f, "CONNACK {:?} (0x{:02x})", rc, *rc as u8),
            ConnectFailure::Timeout => f.write_str("timeout"),
            ConnectFailure::Closed => f.write_str("closed by broker"),
        }
    }
}

impl std::error::Error for ConnectFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectFailure::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Client {
    /// Connects one load-generator client to the target: TCP from `source`, CONNECT, CONNACK.
    pub async fn open(
        target: &TargetArgs,
        client_id: String,
        session: Session,
        keep_alive: u16,
        source: Option<IpAddr>,
    ) -> Result<Client, ConnectFailure> {
        Client::open_at(target, target.addr, client_id, session, keep_alive, source).await
    }

    /// As [`Client::open`], to `addr` rather than the target's address.
    pub async fn open_at(
        target: &TargetArgs,
        addr: SocketAddr,
        client_id: String,
        session: Session,
        keep_alive: u16,
        source: Option<IpAddr>,
    ) -> Result<Client, ConnectFailure> {
        // Every scenario validates --mqtt before it starts a client.
        let protocol = target.protocol().unwrap_or(Protocol::V311);
        let connect = session.connect(protocol, &client_id, keep_alive);
        Client::connect(addr, source, connect, target.connect_timeout()).await
    }

    /// TCP connect, CONNECT, and wait for CONNACK (within `timeout`).
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        connect: Connect,
        timeout: Duration,
    ) -> Result<Client, ConnectFailure> {
        let work = async {
            // The CONNECT goes as soon as the socket takes it: `flush` waits for the handshake
            // only if it is not over yet.
            let stream = sock::start_connect(addr, source).map_err(ConnectFailure::Io)?;
            let mut c = Client {
                stream,
                inbuf: BytesMut::new(),
                early: VecDeque::new(),
                out: BytesMut::new(),
                read_room: SMALL_READ,
                proto: connect.protocol,
                session_present: false,
            };
            c.send(&Packet::Connect(Box::new(connect)))
                .await
                .map_err(ConnectFailure::Io)?;
            match c.next().await.map_err(ConnectFailure::Io)? {
                Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => {
                    c.session_present = a.session_present;
                    Ok(c)
                }
                Some(Packet::ConnAck(a)) => Err(ConnectFailure::Refused(a.reason)),
                _ => Err(ConnectFailure::Closed),
            }
        };
        match monoio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ConnectFailure::Timeout),
        }
    }

    /// Encodes `p` into the output buffer (sent by `flush`).
    pub fn queue(&mut self, p: &Packet) {
        encode(p, self.proto, &mut self.out);
    }

    pub fn queued(&self) -> usize {
        self.out.len()
    }

    pub async fn send(&mut self, p: &Packet) -> io::Result<()> {
        self.queue(p);
        self.flush().await
    }

    /// Subscribes to one filter and waits for the SUBACK; false when it refused, an error when
    /// the broker closed first. What came before it is kept for `try_next`.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<bool> {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![(filter.into(), SubOptions::qos(qos))],
            properties: None,
        };
        self.send(&Packet::Subscribe(sub)).await?;
        loop {
            match self.decode()? {
                Some(Packet::SubAck(a)) => return Ok(!a.reasons.iter().any(|r| r.is_error())),
                Some(p) => self.early.push_back(p),
                None => self.read_more().await?,
            }
        }
    }

    /// A normal DISCONNECT; errors are moot, the connection is ending either way.
    pub async fn disconnect(&mut self) {
        let _ = self
            .send(&Packet::Disconnect(Disconnect {
                reason: ReasonCode::Success,
                properties: None,
            }))
            .await;
    }

    /// Writes everything queued, waiting for writability when the socket is full.
    pub async fn flush(&mut self) -> io::Result<()> {
        while !self.try_flush()? {
            self.stream.writable(false).await?;
        }
        Ok(())
    }

    /// Writes what the socket takes now; false when some is left (the socket is full).
    pub fn try_flush(&mut self) -> io::Result<bool> {
        while !self.out.is_empty() {
            match sock::send(&self.stream, &[IoSlice::new(&self.out)]) {
                Ok(n) => {
                    let _ = self.out.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// A packet already received, without waiting.
    pub fn try_next(&mut self) -> io::Result<Option<Packet>> {
        match self.early.pop_front() {
            Some(p) => Ok(Some(p)),
            None => self.decode(),
        }
    }

    /// The next PUBLISH already received, without waiting: it is acknowledged (PUBACK, PUBREC)
    /// and a PUBREL answered with its PUBCOMP on the way, in the output buffer (sent by
    /// `flush`); other packets are passed over.
    pub fn try_next_publish(&mut self) -> io::Result<Option<Publish>> {
        while let Some(p) = self.try_next()? {
            match p {
                Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => {
                            self.queue(&Packet::PubAck(PubResp::new(id, ReasonCode::Success)))
                        }
                        (QoS::ExactlyOnce, Some(id)) => {
                            self.queue(&Packet::PubRec(PubResp::new(id, ReasonCode::Success)))
                        }
                        _ => {}
                    }
                    return Ok(Some(p));
                }
                Packet::PubRel(r) => self.queue(&Packet::PubComp(PubResp::new(
                    r.packet_id,
                    ReasonCode::Success,
                ))),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The next packet in the input buffer, if a whole one is there.
    fn decode(&mut self) -> io::Result<Option<Packet>> {
        decode(&mut self.inbuf, self.proto, usize::MAX)
            .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))
    }

    /// Reads what the socket holds now; false at end of stream.
    pub fn fill(&mut self) -> io::Result<bool> {
        loop {
            match sock::recv(&self.stream, &mut self.inbuf, self.read_room) {
                Ok(0) => return Ok(false),
                Ok(n) if n >= self.read_room => self.read_room = BIG_READ,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the socket is readable (cancel-safe: nothing is lost if dropped).
    pub async fn readable(&self) -> io::Result<()> {
        self.stream.readable(false).await
    }

    /// Waits until the socket is readable and reads what it holds; an error once the broker
    /// closed the connection. Cancel-safe, as `readable`.
    pub async fn read_more(&mut self) -> io::Result<()> {
        self.readable().await?;
        if self.fill()? {
            Ok(())
        } else {
            Err(io::Error::new(ErrorKind::UnexpectedEof, "closed by broker"))
        }
    }

    /// The next packet; `None` once the broker closed the connection.
    pub async fn next(&mut self) -> io::Result<Option<Packet>> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(Some(p));
            }
            self.readable().await?;
            if !self.fill()? {
                return self.try_next();
            }
            if self.inbuf.is_empty() && self.inbuf.capacity() > 64 * 1024 {
                self.inbuf = BytesMut::new();
            }
        }
    }
}
