//! The PROXY protocol header (HAProxy's spec, versions 1 and 2) that a load balancer (HAProxy,
//! AWS NLB) sends before anything else on a connection, naming the client's real address. Pure
//! parsing of network bytes, no I/O: `listeners.*.proxy_protocol` reads a header through it
//! before MQTT (and before TLS) and puts the address it gives in place of the peer's.
//!
//! [`parse`] never asks for a byte past the header: it says how many more bytes are certainly
//! part of it (one at a time for a v1 line, whose end is only known once seen; the announced
//! length for v2), so the caller reads exactly those and leaves the client's first MQTT or TLS
//! bytes in the socket, and no readiness wait spins on bytes it has only peeked at.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const V1_PREFIX: &[u8] = b"PROXY ";
/// A v1 line is at most 107 bytes, CRLF included (spec 2.1).
const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED: usize = 16;
/// The longest v2 header taken (addresses and TLVs): NLB and HAProxy send far less.
pub const V2_MAX: usize = 4096;
/// Enough to tell the versions apart (the shortest header, `PROXY UNKNOWN\r\n`, is 15 bytes).
const SNIFF: usize = 8;

/// Why a header is refused: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line without CRLF within 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line")]
    V1Malformed,
    #[error("PROXY v2 with an unknown version or command")]
    V2Command,
    #[error("PROXY v2 with an unknown address family")]
    V2Family,
    #[error("PROXY v2 addresses longer than the header")]
    V2Short,
    #[error("PROXY v2 header over 4096 bytes")]
    V2TooLong,
}

/// What parsing the bytes read so far came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read this many more bytes (all of them header) and parse again.
    Need(usize),
    /// The whole header is the bytes given. `None`: keep the connection's own address (v1
    /// `UNKNOWN`, v2 `LOCAL`, an unspecified or Unix family).
    Done(Option<SocketAddr>),
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Result<Step, ProxyError> {
    if buf.len() < SNIFF {
        return Ok(Step::Need(SNIFF - buf.len()));
    }
    if buf.starts_with(V1_PREFIX) {
        v1(buf)
    } else if buf[..SNIFF] == V2_SIGNATURE[..SNIFF] {
        v2(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

fn v1(buf: &[u8]) -> Result<Step, ProxyError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Step::Need(1));
    };
    if end + 2 != buf.len() {
        // Only reachable when handed more than was asked for.
        return Err(ProxyError::V1Malformed);
    }
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| ProxyError::V1Malformed)?;
    let mut fields = line.split(' ');
    let proto = fields.next().ok_or(ProxyError::V1Malformed)?;
    if proto == "UNKNOWN" {
        return Ok(Step::Done(None));
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(s), Some(d), Some(sp), Some(dp), None) => (s, d, sp, dp),
        _ => return Err(ProxyError::V1Malformed),
    };
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        match proto {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(ProxyError::V1Malformed),
        }
        .map_err(|_| ProxyError::V1Malformed)
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyError::V1Malformed);
        }
        s.parse().map_err(|_| ProxyError::V1Malformed)
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    ip(dst)?;
    port(dport)?;
    Ok(Step::Done(Some(source)))
}

fn v2(buf: &[u8]) -> Result<Step, ProxyError> {
    if buf.len() < V2_FIXED {
        return Ok(Step::Need(V2_FIXED - buf.len()));
    }
    if buf[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if V2_FIXED + len > V2_MAX {
        return Err(ProxyError::V2TooLong);
    }
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Command);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2Command),
    };
    if buf.len() < V2_FIXED + len {
        return Ok(Step::Need(V2_FIXED + len - buf.len()));
    }
    let addr = &buf[V2_FIXED..V2_FIXED + len];
    if local {
        // The proxy's own connection (a health check): the family is ignored (spec 2.2).
        return Ok(Step::Done(None));
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let source = match fam >> 4 {
        0 | 3 => None,
        1 => {
            let a: [u8; 12] = addr
                .get(..12)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2Short)?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port(&a[8..10])))
        }
        2 => {
            let a: [u8; 36] = addr
                .get(..36)
                .and_then(|a| a.try_into().ok())
                .ok_or(ProxyError::V2Short)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                port(&a[32..34]),
            ))
        }
        _ => return Err(ProxyError::V2Family),
    };
    Ok(Step::Done(source))
}

/// A v2 PROXY header for `source` (to `dest`), as a load balancer sends it: for tests and the
/// fuzz target's seeds.
pub fn v2_header(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(0x21);
    match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.extend_from_slice(&[0x11, 0, 12]);
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                IpAddr::V6(ip) => ip.octets(),
            };
            h.extend_from_slice(&[0x21, 0, 36]);
            h.extend_from_slice(&v6(s));
            h.extend_from_slice(&v6(d));
        }
    }
    h.extend_from_slice(&source.port().to_be_bytes());
    h.extend_from_slice(&dest.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` the way a connection does: only what `parse` asks for.
    fn read(bytes: &[u8]) -> Result<(Option<SocketAddr>, usize), ProxyError> {
        let mut have = 0;
        loop {
            match parse(&bytes[..have])? {
                Step::Done(addr) => return Ok((addr, have)),
                Step::Need(n) => {
                    assert!(n > 0);
                    have += n;
                    assert!(have <= bytes.len(), "asked past the input");
                }
            }
        }
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn v1_lines_and_nothing_past_them() {
        let mut line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 1883\r\n".to_vec();
        let len = line.len();
        line.extend_from_slice(&[0x10, 0x0c]);
        assert_eq!(read(&line), Ok((addr("192.0.2.7:56324"), len)));
        let v6 = b"PROXY TCP6 2001:db8::7 ::1 4000 1883\r\nMQTT";
        assert_eq!(read(v6), Ok((addr("[2001:db8::7]:4000"), v6.len() - 4)));
        assert_eq!(read(b"PROXY UNKNOWN\r\n"), Ok((None, 15)));
        assert_eq!(
            read(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").map(|r| r.0),
            Ok(None)
        );
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 1883\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +1 1883\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2 3\r\n",
        ] {
            assert_eq!(
                read(bad),
                Err(ProxyError::V1Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'x'; 120]].concat();
        assert_eq!(read(&long), Err(ProxyError::V1TooLong));
        assert_eq!(
            read(b"\x10\x0c\0\x04MQTT\x04\x02"),
            Err(ProxyError::NotProxy)
        );
    }

    #[test]
    fn v2_inet_inet6_local_and_unspec() {
        let dest: SocketAddr = "10.0.0.1:1883".parse().expect("addr");
        let mut h = v2_header("192.0.2.9:40000".parse().expect("addr"), dest);
        let len = h.len();
        h.extend_from_slice(b"\x10rest");
        assert_eq!(read(&h), Ok((addr("192.0.2.9:40000"), len)));
        let h6 = v2_header(
            "[2001:db8::9]:5".parse().expect("addr"),
            "[::1]:1883".parse().expect("addr"),
        );
        assert_eq!(read(&h6), Ok((addr("[2001:db8::9]:5"), 16 + 36)));
        // LOCAL: addresses ignored, whatever the family says.
        let mut local = h[..len].to_vec();
        local[12] = 0x20;
        assert_eq!(read(&local), Ok((None, len)));
        // PROXY with UNSPEC, and with TLVs after the addresses.
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert_eq!(read(&unspec), Ok((None, 16)));
        let mut tlv = h[..len].to_vec();
        tlv[15] += 5;
        tlv.extend_from_slice(&[0x04, 0, 2, b'h', b'i']);
        assert_eq!(read(&tlv), Ok((addr("192.0.2.9:40000"), len + 5)));
    }

    #[test]
    fn v2_refusals() {
        let h = v2_header(
            "192.0.2.9:1".parse().expect("addr"),
            "10.0.0.1:2".parse().expect("addr"),
        );
        let with = |i: usize, b: u8| {
            let mut h = h.clone();
            h[i] = b;
            h
        };
        assert_eq!(read(&with(12, 0x11)), Err(ProxyError::V2Command));
        assert_eq!(read(&with(12, 0x22)), Err(ProxyError::V2Command));
        assert_eq!(read(&with(13, 0x41)), Err(ProxyError::V2Family));
        assert_eq!(read(&with(15, 4)[..20]), Err(ProxyError::V2Short));
        assert_eq!(read(&with(11, b'X')), Err(ProxyError::NotProxy));
        let mut huge = h[..16].to_vec();
        huge[14] = 0xff;
        assert_eq!(read(&huge), Err(ProxyError::V2TooLong));
    }
}
