//! Test fixtures: the real `ringmq` binary on a free loopback port (killed on drop, its log kept),
//! and a raw MQTT client over a real socket that speaks in our codec's packets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::*;

pub struct Broker {
    pub port: u16,
    child: Child,
    pub log: PathBuf,
    _dir: tempdir::Dir,
}

mod tempdir {
    use std::path::PathBuf;

    /// A scratch directory removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("ringmq-it-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Broker {
    pub fn start(shards: usize) -> Broker {
        Broker::with_config(shards, "")
    }

    /// Starts the broker with extra TOML appended under `[mqtt]`.
    pub fn with_config(shards: usize, mqtt_toml: &str) -> Broker {
        Broker::with_sections(shards, "", mqtt_toml)
    }

    /// Starts the broker with extra TOML under `[broker]` and under `[mqtt]`.
    pub fn with_sections(shards: usize, broker_toml: &str, mqtt_toml: &str) -> Broker {
        let dir = tempdir::Dir::new();
        let port = free_port();
        let cfg = dir.0.join("ringmq.toml");
        let text = format!("[broker]\npin_cores = false\n{broker_toml}\n\n[mqtt]\n{mqtt_toml}\n");
        std::fs::write(&cfg, text).expect("config");
        let log = dir.0.join("broker.log");
        let child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args(["run", "--config"])
            .arg(&cfg)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--shards",
                &shards.to_string(),
            ])
            .env("RINGMQ_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start ringmq");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw client: sends and receives whole packets, or bytes.
pub struct Raw {
    s: TcpStream,
    buf: BytesMut,
    pub proto: Protocol,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Raw {
    pub fn open(port: u16, proto: Protocol) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Raw {
            s,
            buf: BytesMut::new(),
            proto,
        }
    }

    /// Opens and completes CONNECT; panics unless the CONNACK is a success.
    pub fn connect(port: u16, proto: Protocol, id: &str, clean: bool) -> (Raw, ConnAck) {
        Raw::connect_with(port, connect_packet(proto, id, clean))
    }

    pub fn connect_with(port: u16, c: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(port, c.protocol);
        raw.send(&Packet::Connect(Box::new(c)));
        match raw.recv() {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason, ReasonCode::Success, "connack {ack:?}");
                (raw, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.proto, &mut out);
        self.s.write_all(&out).expect("write");
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("write");
    }

    /// The next packet within `d`: `Ok(None)` at end of stream, `Err(())` on timeout.
    pub fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, ()> {
        let deadline = Instant::now() + d;
        loop {
            match decode(&mut self.buf, self.proto, usize::MAX) {
                Ok(Some(p)) => return Ok(Some(p)),
                Ok(None) => {}
                Err(e) => panic!("broker sent a malformed packet: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            self.s.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(())
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// The next packet; `None` if the broker closed the connection. Panics after 5 s.
    pub fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .expect("timed out waiting for a packet")
    }

    /// Asserts nothing arrives within `d`.
    pub fn expect_silence(&mut self, d: Duration) {
        if let Ok(p) = self.recv_within(d) {
            panic!("expected nothing, got {p:?}");
        }
    }

    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the broker closes; returns what it sent before.
    pub fn until_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(p) = self.recv() {
            got.push(p);
        }
        got
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(vec![(filter.into(), SubOptions::qos(qos))], None)
    }

    pub fn subscribe_with(
        &mut self,
        filters: Vec<(bytestring::ByteString, SubOptions)>,
        props: Props,
    ) -> SubAck {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters,
            properties: props,
        }));
        match self.recv() {
            Some(Packet::SubAck(a)) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, pid: u16) {
        self.send(&Packet::Publish(publish(topic, payload, qos, pid)));
    }

    /// Publishes and waits for the QoS 1 or 2 acknowledgement (completing QoS 2).
    pub fn publish_acked(&mut self, topic: &str, payload: &[u8], qos: QoS, pid: u16) {
        self.publish(topic, payload, qos, pid);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                assert!(matches!(self.recv(), Some(Packet::PubAck(a)) if a.packet_id == pid))
            }
            QoS::ExactlyOnce => {
                assert!(matches!(self.recv(), Some(Packet::PubRec(a)) if a.packet_id == pid));
                self.send(&Packet::PubRel(PubResp::new(pid, ReasonCode::Success)));
                assert!(matches!(self.recv(), Some(Packet::PubComp(a)) if a.packet_id == pid));
            }
        }
    }

    /// Acknowledges a received publish as a well-behaved client does.
    pub fn ack(&mut self, p: &Publish) {
        let Some(id) = p.packet_id else { return };
        match p.qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(PubResp::new(id, ReasonCode::Success))),
            QoS::ExactlyOnce => {
                self.send(&Packet::PubRec(PubResp::new(id, ReasonCode::Success)));
                assert!(matches!(self.recv(), Some(Packet::PubRel(a)) if a.packet_id == id));
                self.send(&Packet::PubComp(PubResp::new(id, ReasonCode::Success)));
            }
            QoS::AtMostOnce => {}
        }
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        }));
    }

    /// Drops the socket without DISCONNECT (an abnormal close).
    pub fn drop_connection(self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

pub fn connect_packet(protocol: Protocol, id: &str, clean: bool) -> Connect {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: None,
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: None,
        payload: Bytes::copy_from_slice(payload),
    }
}

pub fn props(f: impl FnOnce(&mut Properties)) -> Props {
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

/// Waits for a condition the broker reaches asynchronously (a subscription on another shard).
pub fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}
