//! Listeners beyond plain TCP (#7), from Rust: TLS with a test CA made here (rcgen), mutual
//! TLS with the certificate's CN as the username (and the ACL seeing it), refused handshakes
//! counted, and WebSocket clients that send garbage, unmasked or oversize frames or close
//! mid-packet being disconnected alone; a PROXY protocol header ahead of the TLS handshake.
//! paho-mqtt and MQTT.js runs are in tests/python.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use ringmq::codec::*;

use crate::harness::{connect_packet, free_port, publish, tempdir, Broker, Raw, WAIT};

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate (CN
/// `device-7`), as PEM files in `dir`; plus a client certificate from another CA.
pub fn make_certs(dir: &Path) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ringmq test CA");
    let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write pem");
    write("ca.pem", ca.pem());
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    write("server.pem", server.pem());
    write("server.key", server_key.serialize_pem());
    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(DnType::CommonName, "device-7");
    let client = client.signed_by(&client_key, &ca).expect("client cert");
    write("client.pem", client.pem());
    write("client.key", client_key.serialize_pem());
    let other_key = KeyPair::generate().expect("key");
    let mut other = CertificateParams::new(Vec::<String>::new()).expect("params");
    other
        .distinguished_name
        .push(DnType::CommonName, "intruder");
    let other = other.self_signed(&other_key).expect("other cert");
    write("other.pem", other.pem());
    write("other.key", other_key.serialize_pem());
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(dir: &Path, port: u16, cert: Option<&str>) -> std::io::Result<TlsStream> {
    tls_client_after(dir, port, cert, &[])
}

/// A TLS client that first sends `header` in the clear (as a load balancer's PROXY header).
fn tls_client_after(
    dir: &Path,
    port: u16,
    cert: Option<&str>,
    header: &[u8],
) -> std::io::Result<TlsStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match cert {
        Some(name) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).expect("cert")],
                PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.write_all(header)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends a packet and reads the next one over any byte stream.
fn exchange(s: &mut impl ReadWriteExt, p: Packet, proto: Protocol) -> std::io::Result<Packet> {
    let mut b = BytesMut::new();
    encode(&p, proto, &mut b);
    s.write_all(&b)?;
    s.flush()?;
    let mut buf = BytesMut::new();
    loop {
        if let Ok(Some(p)) = decode(&mut buf, proto, 1 << 20) {
            return Ok(p);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// CONNECT over `s`; the CONNACK's reason.
fn connect_over(
    s: &mut impl ReadWriteExt,
    id: &str,
    proto: Protocol,
) -> std::io::Result<ReasonCode> {
    let c = Packet::Connect(Box::new(connect_packet(proto, id, true)));
    match exchange(s, c, proto)? {
        Packet::ConnAck(a) => Ok(a.reason),
        other => Err(std::io::Error::other(format!(
            "expected CONNACK, got {other:?}"
        ))),
    }
}

/// A v5 QoS 1 PUBLISH over `s`; the PUBACK's reason.
fn publish_over(s: &mut impl ReadWriteExt, topic: &str, payload: &[u8], pid: u16) -> ReasonCode {
    let p = Packet::Publish(publish(topic, payload, QoS::AtLeastOnce, pid));
    match exchange(s, p, Protocol::V5) {
        Ok(Packet::PubAck(a)) => a.reason,
        other => panic!("expected PUBACK {pid}, got {other:?}"),
    }
}

trait ReadWriteExt: Read + Write {}
impl<T: Read + Write> ReadWriteExt for T {}

fn tls_broker(dir: tempdir::Dir, fail_if_no_cert: bool, extra: &str) -> (Broker, u16) {
    make_certs(&dir.0);
    let tls = free_port();
    let tcp = free_port();
    let d = dir.0.display();
    let toml = format!(
        "[broker]\npin_cores = false\nhibernate_after = 1\n\
         [listeners.tcp]\nbind = \"127.0.0.1:{tcp}\"\n\
         [listeners.tls]\ntype = \"tls\"\nbind = \"127.0.0.1:{tls}\"\n\
         certfile = \"{d}/server.pem\"\nkeyfile = \"{d}/server.key\"\ncafile = \"{d}/ca.pem\"\n\
         verify_peer = true\nfail_if_no_peer_cert = {fail_if_no_cert}\npeer_cert_as_username = \"cn\"\n{extra}"
    );
    let mut b = Broker::launch(2, &toml, dir, &[]);
    b.port = tcp;
    (b, tls)
}

#[test]
fn tls_connections_never_hibernate_and_plain_ones_next_to_them_do() {
    let dir = tempdir::Dir::new();
    let certs = dir.0.clone();
    let (b, tls) = tls_broker(dir, false, "");
    let mut secure = tls_client(&certs, tls, None).expect("TLS handshake");
    assert_eq!(
        connect_over(&mut secure, "secure", Protocol::V5).expect("CONNACK"),
        ReasonCode::Success
    );
    let (mut plain, _) = Raw::connect(b.port, Protocol::V5, "plain", true);
    crate::hibernation::until_hibernating(&b, 1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        crate::hibernation::hibernating(&b),
        1,
        "the TLS client stays awake"
    );
    assert_eq!(publish_over(&mut secure, "t", b"x", 1), ReasonCode::Success);
    plain.send(&Packet::PingReq);
    assert_eq!(plain.recv(), Some(Packet::PingResp));
}

#[test]
fn a_proxy_header_comes_before_the_tls_handshake() {
    let dir = tempdir::Dir::new();
    let certs = dir.0.clone();
    let (b, tls) = tls_broker(dir, false, "proxy_protocol = true\n");
    let client = "192.0.2.44:4444".parse().expect("address");
    let header =
        ringmq::proxy_protocol::v2_header(client, "10.0.0.1:8883".parse().expect("address"));
    let mut s = tls_client_after(&certs, tls, None, &header).expect("TLS after the header");
    assert_eq!(
        connect_over(&mut s, "behind", Protocol::V5).expect("CONNACK"),
        ReasonCode::Success
    );
    let shown = b.ctl_json(&["clients", "show", "behind"]);
    assert_eq!(shown["ipaddress"], "192.0.2.44:4444", "{shown}");
    // A TLS client that skips the header is closed before its handshake completes.
    assert!(tls_client(&certs, tls, None).is_err());
}

#[test]
fn tls_and_mutual_tls_with_the_cn_as_username() {
    let dir = tempdir::Dir::new();
    let acl = dir.0.join("acl");
    std::fs::write(
        &acl,
        "allow all subscribe #\nallow user device-7 publish %u/#\n",
    )
    .expect("acl");
    let (b, tls) = tls_broker(
        dir,
        false,
        &format!("[auth]\nacl_file = \"{}\"\n", acl.display()),
    );
    let certs = acl.parent().expect("dir").to_path_buf();
    let (mut sub, _) = Raw::connect(b.port, Protocol::V311, "tcp-sub", true);
    sub.subscribe("#", QoS::AtLeastOnce);

    let mut dev = tls_client(&certs, tls, Some("client")).expect("mTLS handshake");
    assert_eq!(
        connect_over(&mut dev, "d7", Protocol::V5).expect("connack"),
        ReasonCode::Success
    );
    assert_eq!(
        publish_over(&mut dev, "device-7/temp", b"21", 1),
        ReasonCode::Success
    );
    let got = sub.recv_publish();
    assert_eq!(
        (got.topic.as_ref(), &got.payload[..]),
        ("device-7/temp", &b"21"[..])
    );
    sub.ack(&got);

    let mut anon = tls_client(&certs, tls, None).expect("TLS without a client certificate");
    connect_over(&mut anon, "anon", Protocol::V5).expect("connack");
    assert_eq!(
        publish_over(&mut anon, "device-7/temp", b"x", 1),
        ReasonCode::NotAuthorized,
        "no certificate, no username"
    );

    // Plain bytes on the TLS port: a failed handshake, counted, nobody else affected.
    let mut plain = TcpStream::connect(("127.0.0.1", tls)).expect("connect");
    plain.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = plain.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00");
    let mut rest = Vec::new();
    let _ = plain.read_to_end(&mut rest);
    let m = b.api("GET", "/metrics", None).1;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ringmq_handshake_failures_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    assert_eq!(
        publish_over(&mut dev, "device-7/temp", b"22", 2),
        ReasonCode::Success
    );
    let got = sub.recv_publish();
    sub.ack(&got);

    // Publishes, DISCONNECT and close_notify in one burst: every publish still counts.
    let mut bytes = BytesMut::new();
    for i in 0..50u8 {
        let p = publish("device-7/burst", &[i], QoS::AtMostOnce, 0);
        encode(&Packet::Publish(p), Protocol::V5, &mut bytes);
    }
    let bye = Disconnect {
        reason: ReasonCode::Success,
        properties: None,
    };
    encode(&Packet::Disconnect(bye), Protocol::V5, &mut bytes);
    dev.write_all(&bytes).expect("burst");
    dev.conn.send_close_notify();
    dev.flush().expect("flush");
    drop(dev);
    for i in 0..50u8 {
        assert_eq!(&sub.recv_publish().payload[..], &[i]);
    }
}

#[test]
fn mutual_tls_refuses_missing_and_foreign_certificates() {
    let dir = tempdir::Dir::new();
    let certs = dir.0.clone();
    let (_b, tls) = tls_broker(dir, true, "");
    let refused = |cert: Option<&str>| match tls_client(&certs, tls, cert) {
        Err(_) => true,
        Ok(mut s) => connect_over(&mut s, "x", Protocol::V311).is_err(),
    };
    assert!(refused(None), "no certificate");
    assert!(refused(Some("other")), "a certificate from another CA");
    assert!(!refused(Some("client")), "the CA's client certificate");
}

/// A raw WebSocket client: the upgrade, then masked frames by hand.
struct WsRaw(TcpStream);

impl WsRaw {
    fn open(port: u16, path: &str) -> (WsRaw, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        s.write_all(req.as_bytes()).expect("upgrade");
        let mut resp = Vec::new();
        let mut byte = [0u8; 1];
        while !resp.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            resp.push(byte[0]);
        }
        (WsRaw(s), String::from_utf8_lossy(&resp).into_owned())
    }

    fn frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let _ = self.0.write_all(&ws_frame(opcode, payload, masked));
    }

    fn packet(&mut self, p: &Packet, proto: Protocol) {
        let mut b = BytesMut::new();
        encode(p, proto, &mut b);
        self.frame(2, &b, true);
    }

    /// Reads frames until the connection closes; returns the opcodes and whether it closed.
    fn until_closed(&mut self) -> (Vec<u8>, bool) {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match self.0.read(&mut chunk) {
                Ok(0) => break (opcodes(&all), true),
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(_) => break (opcodes(&all), false),
            }
        }
    }
}

/// One WebSocket frame as a client (masked) or, for the negative test, unmasked.
fn ws_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut v = vec![0x80 | opcode];
    let m = if masked { 0x80 } else { 0 };
    if payload.len() < 126 {
        v.push(m | payload.len() as u8);
    } else {
        v.push(m | 126);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    let key = [9u8, 8, 7, 6];
    if masked {
        v.extend_from_slice(&key);
    }
    v.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b }),
    );
    v
}

fn opcodes(mut b: &[u8]) -> Vec<u8> {
    let mut ops = Vec::new();
    while b.len() >= 2 {
        let (len, h) = match b[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            n => (usize::from(n), 2),
        };
        ops.push(b[0] & 0x0f);
        b = &b[(h + len).min(b.len())..];
    }
    ops
}

/// MQTT.js ends with a DISCONNECT and then a WebSocket close frame: the broker has closed by
/// the time the close frame comes, and it must still read it (and more) instead of resetting the
/// connection, which fails the client's write with EPIPE. The client then sees the broker's own
/// close frame and a clean end of stream.
#[test]
fn a_websocket_close_after_disconnect_meets_no_reset() {
    let ws = free_port();
    let _b = Broker::with_toml(
        1,
        &format!("[broker]\npin_cores = false\n[listeners.ws]\ntype = \"ws\"\nbind = \"127.0.0.1:{ws}\"\n"),
    );
    let (mut c, _) = WsRaw::open(ws, "/mqtt");
    c.packet(
        &Packet::Connect(Box::new(connect_packet(Protocol::V5, "ws-bye", true))),
        Protocol::V5,
    );
    c.packet(
        &Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        }),
        Protocol::V5,
    );
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        c.0.write_all(&ws_frame(8, &1000u16.to_be_bytes(), true))
            .expect("the broker still reads");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.0.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (ops, closed) = c.until_closed();
    assert!(closed && ops.ends_with(&[8]), "{ops:?} closed={closed}");
}

#[test]
fn websocket_clients_that_misbehave_are_disconnected_alone() {
    let ws = free_port();
    let tcp = free_port();
    let mut b = Broker::with_toml(
        2,
        &format!(
            "[broker]\npin_cores = false\n[mqtt]\nmax_packet_size = 1024\n\
             [listeners.tcp]\nbind = \"127.0.0.1:{tcp}\"\n[listeners.ws]\ntype = \"ws\"\nbind = \"127.0.0.1:{ws}\"\n"
        ),
    );
    b.port = tcp;
    let (mut sub, _) = Raw::connect(tcp, Protocol::V311, "ws-watch", true);
    sub.subscribe("ws/#", QoS::AtLeastOnce);

    let mut garbage = TcpStream::connect(("127.0.0.1", ws)).expect("connect");
    garbage.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = garbage.write_all(b"\x16\x03\x01 not http at all\r\n\r\n");
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let (_wrong, resp) = WsRaw::open(ws, "/other");
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

    let (mut unmasked, resp) = WsRaw::open(ws, "/mqtt");
    assert!(
        resp.starts_with("HTTP/1.1 101") && resp.contains("Sec-WebSocket-Protocol: mqtt"),
        "{resp}"
    );
    unmasked.frame(2, b"\x10\x00", false);
    let (ops, closed) = unmasked.until_closed();
    assert!(closed && ops.contains(&8), "{ops:?}");

    let (mut big, _) = WsRaw::open(ws, "/mqtt");
    big.frame(2, &[0u8; 4000], true);
    let (ops, closed) = big.until_closed();
    assert!(closed && ops.contains(&8), "oversize frame: {ops:?}");

    let (mut half, _) = WsRaw::open(ws, "/mqtt");
    half.packet(
        &Packet::Connect(Box::new(connect_packet(Protocol::V311, "half", true))),
        Protocol::V311,
    );
    let mut b311 = BytesMut::new();
    encode(
        &Packet::Publish(publish("ws/half", b"never", QoS::AtMostOnce, 0)),
        Protocol::V311,
        &mut b311,
    );
    half.frame(2, &b311[..b311.len() - 3], true);
    half.frame(8, &1000u16.to_be_bytes(), true);
    let (_, closed) = half.until_closed();
    assert!(closed);

    // A well-behaved WebSocket client: packets split across frames and two packets in one.
    let (mut good, _) = WsRaw::open(ws, "/mqtt");
    let mut c = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet(Protocol::V5, "ws-good", true))),
        Protocol::V5,
        &mut c,
    );
    good.frame(2, &c[..5], true);
    good.frame(0, &c[5..], true);
    let mut two = BytesMut::new();
    encode(
        &Packet::Publish(publish("ws/a", b"one", QoS::AtMostOnce, 0)),
        Protocol::V5,
        &mut two,
    );
    encode(
        &Packet::Publish(publish("ws/b", b"two", QoS::AtMostOnce, 0)),
        Protocol::V5,
        &mut two,
    );
    good.frame(2, &two, true);
    good.frame(9, b"ping", true);
    for want in ["ws/a", "ws/b"] {
        let got = match sub.recv_within(WAIT) {
            Ok(Some(Packet::Publish(p))) => p,
            other => panic!("{other:?}: {}", b.log_text()),
        };
        assert_eq!(got.topic, want);
    }
    sub.expect_silence(Duration::from_millis(200));
    // Frames and the close frame in one write: the frames before the close all count.
    let mut burst = BytesMut::new();
    for i in 0..20u8 {
        encode(
            &Packet::Publish(publish("ws/burst", &[i], QoS::AtMostOnce, 0)),
            Protocol::V5,
            &mut burst,
        );
    }
    let mut both = ws_frame(2, &burst, true);
    both.extend(ws_frame(8, &1000u16.to_be_bytes(), true));
    good.0.write_all(&both).expect("burst and close");
    for i in 0..20u8 {
        assert_eq!(&sub.recv_publish().payload[..], &[i]);
    }
    let (ops, closed) = good.until_closed();
    assert!(
        closed && ops.contains(&2) && ops.contains(&0xA),
        "CONNACK, pong: {ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| **o == 8).count(),
        1,
        "one close frame: {ops:?}"
    );
}
