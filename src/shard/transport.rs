//! What sits between the socket and the MQTT byte stream on `tls`, `ws` and `wss` listeners:
//! rustls and the WebSocket framing, driven by hand after the same readiness waits as plain TCP
//! (so the session layer never knows which listener a client came in on). A plain connection
//! has none of this: `Option<Box<Transport>>` costs it one pointer.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

use bytes::{Buf, BufMut, BytesMut};

use super::link::ConnLink;
use super::Listener;
use crate::config::PeerCertAsUsername;
use crate::sock;
use crate::ws;

struct WsState {
    path: String,
    origins: Vec<String>,
    upgraded: bool,
    /// The client sent a close frame (and it was answered).
    closed: bool,
    max_frame: u64,
    /// Bytes of a partial frame (or of the upgrade request).
    inbuf: BytesMut,
}

pub struct Transport {
    tls: Option<rustls::ServerConnection>,
    ws: Option<WsState>,
    /// Raw bytes read from the socket and not yet given to rustls.
    raw: BytesMut,
    /// Bytes waiting to be written to the socket.
    pending: BytesMut,
    peer_name: PeerCertAsUsername,
    peer_checked: bool,
    /// The pong for the last ping, owed while too much output waits (at most 127 bytes).
    owed_pong: Option<Vec<u8>>,
    /// Pongs superseded by a later ping before they could be sent.
    skipped_pongs: u32,
}

/// Pending output past which a pong waits (one at most, for the latest ping) until the client
/// has read it down: one that pings and never reads cannot make the broker hold its pongs.
const MAX_PENDING_FOR_PONG: usize = 64 * 1024;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, e.to_string())
}

impl Transport {
    /// The transport a connection on `l` needs, or `None` for plain TCP.
    pub fn for_listener(l: &Listener, max_packet: u32) -> io::Result<Option<Box<Transport>>> {
        let tls = match &l.tls {
            Some(cfg) => {
                let mut c = rustls::ServerConnection::new(cfg.clone()).map_err(invalid)?;
                c.set_buffer_limit(None);
                Some(c)
            }
            None => None,
        };
        let ws = l.cfg.kind.is_ws().then(|| WsState {
            path: l.cfg.path.clone(),
            origins: l.cfg.allowed_origins.clone(),
            upgraded: false,
            closed: false,
            max_frame: 2 * u64::from(max_packet),
            inbuf: BytesMut::new(),
        });
        if tls.is_none() && ws.is_none() {
            return Ok(None);
        }
        Ok(Some(Box::new(Transport {
            tls,
            ws,
            raw: BytesMut::new(),
            pending: BytesMut::new(),
            peer_name: if l.cfg.verify_peer {
                l.cfg.peer_cert_as_username
            } else {
                PeerCertAsUsername::None
            },
            peer_checked: false,
            owed_pong: None,
            skipped_pongs: 0,
        })))
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.owed_pong.is_some()
    }

    /// Reads from the socket and appends the MQTT bytes it carried to `mqtt`. `Ok(0)` is the
    /// end of the connection (EOF, TLS close_notify, a WebSocket close); errors are fatal to it.
    pub fn recv(
        &mut self,
        stream: &impl AsRawFd,
        mqtt: &mut BytesMut,
        link: &ConnLink,
        chunk: usize,
    ) -> io::Result<usize> {
        let n = sock::recv(stream, &mut self.raw, chunk)?;
        if n == 0 {
            return Ok(0);
        }
        let mut plain = match self.ws.as_mut() {
            Some(ws) => std::mem::take(&mut ws.inbuf),
            None => BytesMut::new(),
        };
        let target: &mut BytesMut = if self.ws.is_some() { &mut plain } else { mqtt };
        let open = match self.tls.as_mut() {
            Some(tls) => {
                let open = Self::decrypt(tls, &mut self.raw, target, &mut self.pending);
                if !self.peer_checked && !tls.is_handshaking() {
                    self.peer_checked = true;
                    let name = tls
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::tls::peer_name(c, self.peer_name));
                    if let Some(name) = name {
                        link.extras().cert_user = Some(name.into());
                    }
                }
                open?
            }
            None => {
                target.extend_from_slice(&self.raw);
                self.raw.clear();
                true
            }
        };
        if self.ws.is_some() {
            let open_ws = self.unframe(plain, mqtt)?;
            return Ok(if open && open_ws { n } else { 0 });
        }
        Ok(if open { n } else { 0 })
    }

    /// Feeds rustls and moves the plaintext out; false once the peer sent close_notify.
    fn decrypt(
        tls: &mut rustls::ServerConnection,
        raw: &mut BytesMut,
        out: &mut BytesMut,
        pending: &mut BytesMut,
    ) -> io::Result<bool> {
        let mut open = true;
        let mut rd: &[u8] = raw;
        while !rd.is_empty() {
            tls.read_tls(&mut rd).map_err(invalid)?;
            let state = tls.process_new_packets();
            let mut w = (&mut *pending).writer();
            while tls.wants_write() {
                tls.write_tls(&mut w)?;
            }
            let state = state.map_err(invalid)?;
            let want = state.plaintext_bytes_to_read();
            if want > 0 {
                let start = out.len();
                out.resize(start + want, 0);
                tls.reader().read_exact(&mut out[start..])?;
            }
            if state.peer_has_closed() {
                open = false;
            }
        }
        raw.clear();
        Ok(open)
    }

    /// The WebSocket stage: the upgrade, then frames; false once the client closed.
    fn unframe(&mut self, mut plain: BytesMut, mqtt: &mut BytesMut) -> io::Result<bool> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(true);
        };
        if !ws.upgraded {
            match ws::accept(&mut plain, &ws.path, &ws.origins) {
                Ok(None) => {
                    ws.inbuf = plain;
                    return Ok(true);
                }
                Ok(Some(resp)) => {
                    ws.upgraded = true;
                    self.emit(&[&resp])?;
                }
                Err(e) => {
                    self.emit(&[e.http_response()])?;
                    return Err(invalid(e));
                }
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            return Ok(true);
        };
        let result = ws::unframe(&mut plain, mqtt, ws.max_frame);
        ws.inbuf = plain;
        match result {
            Ok(ctl) => {
                ws.closed |= ctl.closed;
                if !ctl.pong.is_empty() {
                    if self.pending.len() > MAX_PENDING_FOR_PONG {
                        if self.owed_pong.replace(ctl.pong).is_some() {
                            self.skipped_pongs += 1;
                        }
                    } else {
                        self.emit(&[&ctl.pong])?;
                    }
                }
                if !ctl.reply.is_empty() {
                    self.emit(&[&ctl.reply])?;
                }
                Ok(!ctl.closed)
            }
            Err(e) => {
                let code: u16 = match e {
                    ws::WsError::TooLarge(_) => 1009,
                    _ => 1002,
                };
                let mut close = Vec::new();
                ws::frame(&mut close, 0x8, &[&code.to_be_bytes()]);
                self.emit(&[&close])?;
                Err(invalid(e))
            }
        }
    }

    /// Pongs skipped since the last call (for the shard's counters).
    pub fn take_skipped_pongs(&mut self) -> u32 {
        std::mem::take(&mut self.skipped_pongs)
    }

    /// Queues bytes for the socket, through TLS when there is TLS.
    fn emit(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => {
                for p in parts {
                    tls.writer().write_all(p)?;
                }
                let mut w = (&mut self.pending).writer();
                while tls.wants_write() {
                    tls.write_tls(&mut w)?;
                }
            }
            None => {
                for p in parts {
                    self.pending.extend_from_slice(p);
                }
            }
        }
        Ok(())
    }

    /// Wraps MQTT bytes for the wire: one binary frame for WebSocket, records for TLS.
    pub fn wrap(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        if self.ws.as_ref().is_some_and(|w| w.upgraded) {
            let len = parts.iter().map(|p| p.len()).sum();
            let (header, n) = ws::frame_header(0x2, len);
            let mut framed: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            framed.push(&header[..n]);
            framed.extend_from_slice(parts);
            return self.emit(&framed);
        }
        self.emit(parts)
    }

    /// Says goodbye at the transport level: TLS close_notify, WebSocket close frame.
    pub fn close(&mut self) {
        if self.ws.as_ref().is_some_and(|w| w.upgraded && !w.closed) {
            let mut close = Vec::new();
            ws::frame(&mut close, 0x8, &[&1000u16.to_be_bytes()]);
            let _ = self.emit(&[&close]);
        }
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let mut w = (&mut self.pending).writer();
            while tls.wants_write() {
                if tls.write_tls(&mut w).is_err() {
                    break;
                }
            }
        }
    }

    /// Writes what is pending (and then an owed pong); `Ok(true)` when all of it went out.
    pub fn send_pending(&mut self, stream: &impl AsRawFd) -> io::Result<(bool, usize)> {
        let mut written = 0;
        loop {
            if self.pending.is_empty() {
                match self.owed_pong.take() {
                    Some(pong) => self.emit(&[&pong])?,
                    None => break,
                }
            }
            match sock::send(stream, &[io::IoSlice::new(&self.pending)]) {
                Ok(n) => {
                    self.pending.advance(n);
                    written += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok((false, written)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.pending.capacity() > 64 * 1024 {
            self.pending = BytesMut::new();
        }
        Ok((true, written))
    }
}
