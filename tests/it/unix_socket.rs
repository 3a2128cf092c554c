//! A `unix` listener (Mosquitto's `listener 0 /path`): local clients on a Unix socket reach TCP
//! clients and back (two shards accepting on it), with the file's permission bits as configured; a stale
//! socket file left by a killed broker is replaced, one a live broker holds is refused, a path
//! that is not a socket is refused, and the file goes with a graceful stop. mosquitto_sub's
//! `--unix` is the third-party client.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use ringmq::codec::*;

use crate::harness::{connect_packet, free_port, ringmq, tempdir, Broker, Raw};

fn config(port: u16, socket: &Path) -> String {
    format!(
        "[broker]\npin_cores = false\n\n[listeners.tcp]\nbind = \"127.0.0.1:{port}\"\n\n\
         [listeners.local]\ntype = \"unix\"\nsocket_path = \"{}\"\nsocket_mode = 0o600\n",
        socket.display()
    )
}

fn unix_client(path: &Path, id: &str) -> Raw {
    Raw::open_unix(path, Protocol::V5)
        .handshake(connect_packet(Protocol::V5, id, true))
        .0
}

#[test]
fn unix_socket_clients_talk_to_tcp_clients() {
    let dir = tempdir::Dir::new();
    let socket = dir.0.join("mqtt.sock");
    let port = free_port();
    let b = Broker::launch(2, &config(port, &socket), dir, &[]);
    let meta = std::fs::metadata(&socket).expect("the socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket_mode");

    // Unix subscribers (two shards accept on the socket) get what a TCP client publishes.
    let mut subs: Vec<Raw> = (0..6)
        .map(|i| unix_client(&socket, &format!("local-{i}")))
        .collect();
    for s in &mut subs {
        s.subscribe("from/tcp", QoS::AtLeastOnce);
    }
    let (mut tcp, _) = Raw::connect(port, Protocol::V5, "remote", true);
    tcp.subscribe("from/unix/#", QoS::AtLeastOnce);
    tcp.publish_acked("from/tcp", b"over tcp", QoS::AtLeastOnce, 1);
    for s in &mut subs {
        let p = s.recv_publish();
        assert_eq!(
            (&p.topic[..], &p.payload[..]),
            ("from/tcp", &b"over tcp"[..])
        );
        s.ack(&p);
    }
    // And a Unix publisher reaches the TCP subscriber, its QoS 1 acknowledged.
    for (i, s) in subs.iter_mut().enumerate() {
        let topic = format!("from/unix/{i}");
        let ack = s.publish_acked(&topic, b"over unix", QoS::AtLeastOnce, 7);
        assert_eq!(ack.reason, ReasonCode::Success);
        let p = tcp.recv_publish();
        assert_eq!(&p.topic[..], topic);
        tcp.ack(&p);
    }

    // Mosquitto's own client on the socket.
    let sub = Command::new("mosquitto_sub")
        .args(["--unix", socket.to_str().expect("utf-8 path")])
        .args([
            "-t",
            "to/mosquitto",
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            "mosq-unix",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients)");
    crate::harness::eventually("mosquitto_sub subscribed", || {
        b.ctl_json(&["subscriptions", "list"])
            .to_string()
            .contains("to/mosquitto")
    });
    tcp.publish_acked("to/mosquitto", b"hello unix", QoS::AtLeastOnce, 2);
    let out = sub.wait_with_output().expect("mosquitto_sub output");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello unix");

    // The clients are listed with the local address a Unix socket stands for.
    let listed = b.ctl_json(&["clients", "show", "local-0"]);
    assert!(listed.to_string().contains("127.0.0.1"), "{listed}");

    let (status, _) = b.terminate();
    assert!(status.success());
    assert!(!socket.exists(), "a graceful stop removes the socket file");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = tempdir::Dir::new();
    let socket = dir.0.join("mqtt.sock");
    // What a killed broker leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let b = Broker::launch(1, &config(free_port(), &socket), dir, &[]);
    b.wait_log("removed a stale unix socket file");
    drop(unix_client(&socket, "after-stale"));

    // A second broker (its own data dir and port) on the same path is refused.
    let other = tempdir::Dir::new();
    let cfg = other.0.join("ringmq.toml");
    std::fs::write(&cfg, config(free_port(), &socket)).expect("config");
    let data = other.0.join("data");
    let args = [
        "run",
        "-c",
        cfg.to_str().expect("path"),
        "--admin",
        "127.0.0.1:0",
    ];
    let (ok, _, err) = ringmq(
        &[&args[..], &["--data-dir", data.to_str().expect("path")]].concat(),
        &[],
    );
    assert!(!ok, "a second broker on a live socket must not start");
    assert!(err.contains("another process listens on it"), "{err}");
    // The first broker still serves it.
    let mut c = unix_client(&socket, "still-there");
    c.sync();

    // A path that is not a socket is never removed.
    let file = other.0.join("not-a-socket");
    std::fs::write(&file, "keep me").expect("file");
    std::fs::write(&cfg, config(free_port(), &file)).expect("config");
    let (ok, _, err) = ringmq(
        &[&args[..], &["--data-dir", data.to_str().expect("path")]].concat(),
        &[],
    );
    assert!(!ok);
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "keep me");
}

#[test]
fn a_unix_listener_needs_a_path() {
    let dir = tempdir::Dir::new();
    let cfg = dir.0.join("ringmq.toml");
    std::fs::write(&cfg, "[listeners.local]\ntype = \"unix\"\n").expect("config");
    let (ok, _, err) = ringmq(&["check-config", "-c", cfg.to_str().expect("path")], &[]);
    assert!(!ok);
    assert!(err.contains("listeners.local.socket_path"), "{err}");
}
