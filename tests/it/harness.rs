//! Test fixtures: the real `ringmq` binary on a free loopback port (killed on drop, its log kept),
//! and a raw MQTT client over a real socket that speaks in our codec's packets.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::codec::*;

use crate::netns;

pub struct Broker {
    pub port: u16,
    /// The admin API's port.
    pub admin: u16,
    child: Child,
    pub log: PathBuf,
    pub dir: tempdir::Dir,
}

pub mod tempdir {
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
            if !self.0.as_os_str().is_empty() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

/// Runs the `ringmq` binary with `args` and extra environment; (success, stdout, stderr).
pub fn ringmq(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run ringmq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port, never one handed out before in this test process (the kernel may
/// offer a just-closed probe port again, and two brokers, or a broker's MQTT and admin
/// listeners, would then collide).
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// [`free_port`], free on loopback address `ip` itself: a port free on 127.0.0.1 may be held
/// on 127.0.0.2 (by a connection a source-bound client left in TIME_WAIT, say).
pub fn free_port_on(ip: &str) -> u16 {
    fresh_listener_on(ip).local_addr().expect("addr").port()
}

/// A listener on a loopback port never handed out before in this test process. Besides the
/// collisions above: a port once given to a broker in a network namespace (`netns`) stays
/// recorded as that namespace's, and a client of a broker in this process's namespace that got
/// the same number again would be run in the other one.
pub fn fresh_listener() -> TcpListener {
    fresh_listener_on("127.0.0.1")
}

/// [`fresh_listener`] on loopback address `ip`.
fn fresh_listener_on(ip: &str) -> TcpListener {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind((ip, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return listener;
        }
    }
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
        Broker::with_toml(
            shards,
            &format!("[broker]\npin_cores = false\n{broker_toml}\n\n[mqtt]\n{mqtt_toml}\n"),
        )
    }

    /// Starts the broker with this whole configuration file (`[broker] pin_cores = false` is
    /// the caller's to set); its plain TCP listener on a free port replaces the file's
    /// listeners unless the file has some.
    pub fn with_toml(shards: usize, toml: &str) -> Broker {
        Broker::launch(shards, toml, tempdir::Dir::new(), &[])
    }

    /// Starts the broker in `dir` (kept across restarts: its data dir is `dir/data`), with
    /// extra environment variables.
    pub fn launch(shards: usize, toml: &str, dir: tempdir::Dir, env: &[(&str, &str)]) -> Broker {
        Broker::launch_in(None, shards, toml, dir, env)
    }

    /// [`Broker::launch`] in network namespace `ns` (see `netns`): its listeners are on that
    /// namespace's loopback, and this harness reaches them there.
    pub fn launch_in(
        ns: Option<&str>,
        shards: usize,
        toml: &str,
        dir: tempdir::Dir,
        env: &[(&str, &str)],
    ) -> Broker {
        let port = free_port();
        let admin = free_port();
        if let Some(ns) = ns {
            netns::place(ns, &[port, admin]);
        }
        let cfg = dir.0.join("ringmq.toml");
        std::fs::write(&cfg, toml).expect("config");
        let log = dir.0.join("broker.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
        cmd.args(["run", "--config"]).arg(&cfg).args([
            "--shards",
            &shards.to_string(),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ]);
        cmd.arg("--data-dir").arg(dir.0.join("data"));
        if !toml.contains("[listeners.") {
            cmd.args(["--listen", &format!("127.0.0.1:{port}")]);
        }
        cmd.envs(env.iter().copied());
        cmd.env("RINGMQ_LOG", "debug").stdout(Stdio::null()).stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log"),
        );
        let mut child = netns::within(admin, || cmd.spawn().expect("start ringmq"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while netns::within(admin, || TcpStream::connect(("127.0.0.1", admin))).is_err() {
            let exited = child.try_wait().ok().flatten();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "broker did not start ({exited:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker {
            port,
            admin,
            child,
            log,
            dir,
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the broker process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the status and the scratch
    /// directory (to start again on the same data dir).
    pub fn terminate(mut self) -> (std::process::ExitStatus, tempdir::Dir) {
        self.signal("TERM");
        let status = self.exited("SIGTERM");
        let dir = std::mem::replace(&mut self.dir, tempdir::Dir(PathBuf::new()));
        (status, dir)
    }

    /// Kills the broker with SIGKILL (no shutdown path runs) and returns its scratch directory,
    /// to start again on the same data dir as after a crash.
    pub fn kill9(mut self) -> tempdir::Dir {
        self.signal("KILL");
        self.exited("SIGKILL");
        std::mem::replace(&mut self.dir, tempdir::Dir(PathBuf::new()))
    }

    /// Waits (bounded) for the process to exit on its own after `what`.
    pub fn exited(&mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit after {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `ringmq ctl` against this broker; (success, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let url = format!("http://127.0.0.1:{}", self.admin);
        let mut all = vec!["ctl", "--url", &url];
        all.extend_from_slice(args);
        netns::within(self.admin, || ringmq(&all, &[]))
    }

    /// `ringmq ctl --json ...`, parsed; panics unless it succeeds.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.ctl(&all);
        assert!(ok, "ctl {args:?} failed: {err}");
        serde_json::from_str(&out).expect("ctl prints JSON")
    }

    /// An admin API request: (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        netns::within(self.admin, || {
            let resp = match (method, body) {
                ("GET", _) => agent.get(&url).call(),
                ("DELETE", _) => agent.delete(&url).call(),
                ("PUT", b) => agent.put(&url).send(b.unwrap_or("").to_string()),
                (_, b) => agent.post(&url).send(b.unwrap_or("").to_string()),
            };
            let mut resp = resp.expect("admin API answers");
            let status = resp.status().as_u16();
            (status, resp.body_mut().read_to_string().expect("body"))
        })
    }

    /// The value of a metric sample in `/metrics` (`name` with its labels, as printed).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.api("GET", "/metrics", None);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until the broker has seen `client_id`'s connection close (its session offline or
    /// gone).
    pub fn wait_offline(&self, client_id: &str) {
        eventually(&format!("{client_id} offline"), || {
            let (_, body) = self.api("GET", &format!("/api/v1/clients/{client_id}"), None);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            v["connected"] != serde_json::Value::Bool(true)
        });
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw client's socket: TCP, or a Unix socket (a `unix` listener).
pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn set_read_timeout(&self, d: Option<Duration>) -> std::io::Result<()> {
        match self {
            Sock::Tcp(s) => s.set_read_timeout(d),
            Sock::Unix(s) => s.set_read_timeout(d),
        }
    }

    fn shutdown(&self) -> std::io::Result<()> {
        match self {
            Sock::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Sock::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(buf),
            Sock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(buf),
            Sock::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A raw client: sends and receives whole packets, or bytes.
pub struct Raw {
    s: Sock,
    buf: BytesMut,
    pub proto: Protocol,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Raw {
    pub fn open(port: u16, proto: Protocol) -> Raw {
        let s = netns::within(port, || TcpStream::connect(("127.0.0.1", port))).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Raw::over(Sock::Tcp(s), proto)
    }

    /// A client on the Unix socket at `path`.
    pub fn open_unix(path: &Path, proto: Protocol) -> Raw {
        let s = UnixStream::connect(path).expect("connect to the unix socket");
        Raw::over(Sock::Unix(s), proto)
    }

    fn over(s: Sock, proto: Protocol) -> Raw {
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
        Raw::open(port, c.protocol).handshake(c)
    }

    /// Sends CONNECT on this socket; panics unless the CONNACK is a success.
    pub fn handshake(mut self, c: Connect) -> (Raw, ConnAck) {
        self.send(&Packet::Connect(Box::new(c)));
        match self.recv() {
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason, ReasonCode::Success, "connack {ack:?}");
                (self, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The socket, for a test that reads raw bytes.
    pub fn stream(&mut self) -> &mut Sock {
        &mut self.s
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        encode(p, self.proto, &mut out);
        self.s.write_all(&out).expect("write");
    }

    /// Sends the packets in one write, so a broker that closes the connection part way through
    /// them cannot fail the test with a broken pipe.
    pub fn send_all(&mut self, packets: impl IntoIterator<Item = Packet>) {
        let mut out = BytesMut::new();
        for p in packets {
            encode(&p, self.proto, &mut out);
        }
        self.send_bytes(&out);
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
    /// Publishes and completes the QoS flow; returns the PUBACK (or PUBREC).
    pub fn publish_acked(&mut self, topic: &str, payload: &[u8], qos: QoS, pid: u16) -> PubResp {
        self.publish(topic, payload, qos, pid);
        match qos {
            QoS::AtMostOnce => PubResp::new(pid, ReasonCode::Success),
            QoS::AtLeastOnce => match self.recv() {
                Some(Packet::PubAck(a)) if a.packet_id == pid => a,
                other => panic!("expected PUBACK {pid}, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                let rec = match self.recv() {
                    Some(Packet::PubRec(a)) if a.packet_id == pid => a,
                    other => panic!("expected PUBREC {pid}, got {other:?}"),
                };
                if !rec.reason.is_error() {
                    self.send(&Packet::PubRel(PubResp::new(pid, ReasonCode::Success)));
                    assert!(matches!(self.recv(), Some(Packet::PubComp(a)) if a.packet_id == pid));
                }
                rec
            }
        }
    }

    /// A PINGREQ round trip: everything sent before it has been handled by the broker.
    pub fn sync(&mut self) {
        self.send(&Packet::PingReq);
        match self.recv() {
            Some(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
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

    /// Sends DISCONNECT and waits for the broker to close the socket: it does so only after the
    /// session went offline, so what a test publishes next is queued, never sent to this link.
    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: None,
        }));
        self.until_closed();
    }

    /// Drops the socket without DISCONNECT (an abnormal close).
    pub fn drop_connection(self) {
        let _ = self.s.shutdown();
    }
}

/// The CONNACK's reason for this CONNECT (None: no CONNACK came).
pub fn connack(port: u16, c: Connect) -> Option<ReasonCode> {
    let mut raw = Raw::open(port, c.protocol);
    raw.send(&Packet::Connect(Box::new(c)));
    match raw.recv() {
        Some(Packet::ConnAck(a)) => Some(a.reason),
        _ => None,
    }
}

pub fn connect_packet(protocol: Protocol, id: &str, clean: bool) -> Connect {
    Connect::new(protocol, id, clean, 60)
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

/// A will without properties.
pub fn will(topic: &str, payload: &'static [u8], qos: QoS) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(payload),
        qos,
        retain: false,
        properties: None,
    }
}

pub fn props(f: impl FnOnce(&mut Properties)) -> Props {
    let mut p = Properties::default();
    f(&mut p);
    Some(Box::new(p))
}

/// Polls `check` (a metric, a listing, a log line: something the broker shows) until it
/// holds; panics after 5 s, naming `what`. For states no packet announces.
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(WAIT, what, check);
}

/// [`eventually`], with its own deadline.
pub fn eventually_within(wait: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + wait;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
