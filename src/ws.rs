//! MQTT over WebSocket (RFC 6455, as MQTT 5.0 section 6 and 3.1.1 section 6 use it): the HTTP
//! upgrade (subprotocol `mqtt`, a configurable path, an optional `Origin` allow-list) and the
//! framing. Pure functions over bytes, like the codec: the connection task feeds them what it
//! read and writes what they return. MQTT packets may span frames and a frame may hold several
//! packets: payloads are simply appended to the MQTT byte stream.

use base64::Engine;
use bytes::{Buf, BytesMut};
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest HTTP upgrade request accepted.
const MAX_REQUEST: usize = 8192;

/// Why a WebSocket connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("bad upgrade request: {0}")]
    BadRequest(&'static str),
    #[error("wrong path {0:?}")]
    WrongPath(String),
    #[error("origin not allowed")]
    Origin,
    #[error("client frames must be masked")]
    Unmasked,
    #[error("text frames are not MQTT")]
    Text,
    #[error("frame of {0} bytes over the limit")]
    TooLarge(u64),
    #[error("control frame of {0} bytes or fragmented (at most 125, FIN set)")]
    BadControl(u64),
    #[error("unknown opcode {0}")]
    Opcode(u8),
    #[error("closed by the client")]
    Closed,
}

impl WsError {
    /// The HTTP answer to a refused upgrade.
    pub fn http_response(&self) -> &'static [u8] {
        match self {
            WsError::WrongPath(_) => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            WsError::Origin => {
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            _ => b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        }
    }
}

/// Parses an upgrade request from the front of `buf`: `Ok(None)` while incomplete, else the
/// 101 response to send (the request is consumed).
pub fn accept(
    buf: &mut BytesMut,
    path: &str,
    origins: &[String],
) -> Result<Option<Vec<u8>>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(WsError::BadRequest("request too large")),
        Err(_) => return Err(WsError::BadRequest("not HTTP")),
    };
    if req.method != Some("GET") {
        return Err(WsError::BadRequest("not GET"));
    }
    let req_path = req.path.unwrap_or("").split('?').next().unwrap_or("");
    if req_path != path {
        return Err(WsError::WrongPath(req_path.to_string()));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return Err(WsError::BadRequest("not a WebSocket upgrade"));
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return Err(WsError::BadRequest("WebSocket version must be 13"));
    }
    let key = header("Sec-WebSocket-Key").ok_or(WsError::BadRequest("no Sec-WebSocket-Key"))?;
    if !origins.is_empty() && !header("Origin").is_some_and(|o| origins.iter().any(|a| a == o)) {
        return Err(WsError::Origin);
    }
    let protocol = header("Sec-WebSocket-Protocol").and_then(|v| {
        v.split(',')
            .map(str::trim)
            .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"))
            .map(str::to_string)
    });
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    buf.advance(len);
    Ok(Some(resp.into_bytes()))
}

/// What one call to [`unframe`] found besides MQTT bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// The pong for the last ping (RFC 6455 5.5.3: earlier ones need no answer of their own, so
    /// a ping flood costs one pong per read, not one per ping).
    pub pong: Vec<u8>,
    /// The close echo.
    pub reply: Vec<u8>,
    /// The client sent a close frame.
    pub closed: bool,
}

/// The largest payload of a control frame (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Moves the payload of every whole data frame at the front of `buf` into `mqtt`, answering
/// the last ping; leaves a partial frame in `buf`. `max` bounds a frame's payload.
pub fn unframe(buf: &mut BytesMut, mqtt: &mut BytesMut, max: u64) -> Result<Control, WsError> {
    let mut ctl = Control::default();
    loop {
        if buf.len() < 2 {
            return Ok(ctl);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b1 & 0x80 == 0 {
            return Err(WsError::Unmasked);
        }
        let (len, header) = match b1 & 0x7f {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return Ok(ctl),
            n => (u64::from(n), 2),
        };
        if len > max {
            return Err(WsError::TooLarge(len));
        }
        if b0 & 0x08 != 0 && (len > MAX_CONTROL_PAYLOAD || b0 & 0x80 == 0) {
            // Control frames are short and never fragmented (RFC 6455 5.5).
            return Err(WsError::BadControl(len));
        }
        let total = header + 4 + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(ctl);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header..header + 4]);
        buf.advance(header + 4);
        let mut payload = buf.split_to(len as usize);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match b0 & 0x0f {
            0 | 2 => mqtt.extend_from_slice(&payload),
            1 => return Err(WsError::Text),
            8 => {
                frame(&mut ctl.reply, 0x8, &[&payload[..payload.len().min(2)]]);
                ctl.closed = true;
                return Ok(ctl);
            }
            9 => {
                ctl.pong.clear();
                frame(&mut ctl.pong, 0xA, &[&payload]);
            }
            10 => {}
            op => return Err(WsError::Opcode(op)),
        }
    }
}

/// The header of an unmasked frame (server to client) with `opcode` and `len` payload bytes:
/// the bytes and how many of them are used.
pub fn frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= usize::from(u16::MAX) {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Appends one unmasked frame with `opcode` holding `parts` in order.
pub fn frame(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let (h, n) = frame_header(opcode, len);
    out.extend_from_slice(&h[..n]);
    for p in parts {
        out.extend_from_slice(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![0x80 | opcode];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn upgrade_answers_with_the_rfc_example_key() {
        let req = "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        let mut buf = BytesMut::from(&req.as_bytes()[..20]);
        assert_eq!(accept(&mut buf, "/mqtt", &[]), Ok(None));
        let mut buf = BytesMut::from(req.as_bytes());
        let resp = String::from_utf8(
            accept(&mut buf, "/mqtt", &[])
                .expect("ok")
                .expect("complete"),
        )
        .expect("utf8");
        assert!(
            resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{resp}"
        );
        assert!(resp.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(req.replace("/mqtt", "/other").as_bytes());
        assert!(matches!(
            accept(&mut buf, "/mqtt", &[]),
            Err(WsError::WrongPath(_))
        ));
        let mut buf = BytesMut::from(req.as_bytes());
        assert_eq!(
            accept(&mut buf, "/mqtt", &["https://ok".into()]),
            Err(WsError::Origin)
        );
    }

    #[test]
    fn frames_split_and_joined_carry_the_mqtt_stream() {
        let mut wire = masked(2, b"\x30\x03\x00\x01a");
        wire.extend(masked(9, b"hi"));
        wire.extend(masked(0, b"\xc0\x00"));
        let mut mqtt = BytesMut::new();
        let mut buf = BytesMut::new();
        let mut replies = Vec::new();
        for chunk in wire.chunks(3) {
            buf.extend_from_slice(chunk);
            let c = unframe(&mut buf, &mut mqtt, 1024).expect("valid");
            replies.extend(c.pong);
        }
        assert_eq!(&mqtt[..], b"\x30\x03\x00\x01a\xc0\x00");
        assert_eq!(replies, vec![0x8A, 2, b'h', b'i']);
        let mut flood = BytesMut::new();
        for i in 0..1000u32 {
            flood.extend_from_slice(&masked(9, &i.to_be_bytes()));
        }
        let c = unframe(&mut flood, &mut mqtt, 1024).expect("pings");
        assert_eq!(
            c.pong,
            [&[0x8A, 4][..], &999u32.to_be_bytes()].concat(),
            "one pong, the last"
        );
        let mut long_ping = BytesMut::from(&masked(9, &[0u8; 126])[..]);
        assert_eq!(
            unframe(&mut long_ping, &mut mqtt, 1024),
            Err(WsError::BadControl(126))
        );
        let mut fragmented_ping = BytesMut::from(&masked(9, b"x")[..]);
        fragmented_ping[0] &= 0x7f;
        assert_eq!(
            unframe(&mut fragmented_ping, &mut mqtt, 1024),
            Err(WsError::BadControl(1))
        );
        let big = masked(2, &[0u8; 300]);
        assert_eq!(
            unframe(&mut BytesMut::from(&big[..]), &mut mqtt, 100),
            Err(WsError::TooLarge(300))
        );
        let mut unmasked = BytesMut::from(&[0x82u8, 1, 0][..]);
        assert_eq!(
            unframe(&mut unmasked, &mut mqtt, 100),
            Err(WsError::Unmasked)
        );
        let mut text = BytesMut::from(&masked(1, b"x")[..]);
        assert_eq!(unframe(&mut text, &mut mqtt, 100), Err(WsError::Text));
        let mut close = BytesMut::from(&masked(8, &[3, 232])[..]);
        let c = unframe(&mut close, &mut mqtt, 100).expect("close");
        assert!(c.closed && c.reply == vec![0x88, 2, 3, 232]);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        let mut out = Vec::new();
        frame(&mut out, 2, &[b"ab", b"c"]);
        assert_eq!(out, vec![0x82, 3, b'a', b'b', b'c']);
        let mut out = Vec::new();
        frame(&mut out, 2, &[&[0u8; 200]]);
        assert_eq!(&out[..4], &[0x82, 126, 0, 200]);
    }
}
