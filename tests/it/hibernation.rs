//! Hibernation (`broker.hibernate_after`): idle plain-TCP connections give up their task and
//! get it back when their client sends, when a message is due for them, when they are kicked or
//! time out, and when their client goes away (its will is published).

use std::time::{Duration, Instant};

use ringmq::codec::*;

use crate::harness::{connect_packet, will, Broker, Raw};

const HIBERNATE: &str = "[broker]\npin_cores = false\nhibernate_after = 1\n";

/// The broker's count of hibernating connections.
pub fn hibernating(b: &Broker) -> u64 {
    let (_, text) = b.api("GET", "/metrics", None);
    text.lines()
        .find_map(|l| l.strip_prefix("ringmq_connections_hibernating "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `n` connections hibernate (they do after a second idle, checked every second).
pub fn until_hibernating(b: &Broker, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while hibernating(b) != n {
        assert!(
            Instant::now() < deadline,
            "{} hibernating, {n} expected",
            hibernating(b)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hibernating_connections_wake_for_messages_input_kicks_timeouts_and_wills() {
    let b = Broker::with_toml(2, HIBERNATE);
    let (mut s5, _) = Raw::connect(b.port, Protocol::V5, "sub5", true);
    s5.subscribe("h/#", QoS::AtLeastOnce);
    let (mut s3, _) = Raw::connect(b.port, Protocol::V311, "sub3", true);
    s3.subscribe("h/t", QoS::AtMostOnce);
    let mut w = connect_packet(Protocol::V311, "willing", true);
    w.will = Some(will("h/will", b"gone", QoS::AtLeastOnce));
    let (willing, _) = Raw::connect_with(b.port, w);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "pub", true);
    until_hibernating(&b, 4);

    // Output: a message for each subscriber, the publisher's PUBACK after its own wake.
    publ.publish_acked("h/t", b"one", QoS::AtLeastOnce, 1);
    let got = s5.recv_publish();
    assert_eq!(&got.payload[..], b"one");
    s5.ack(&got);
    assert_eq!(&s3.recv_publish().payload[..], b"one");
    until_hibernating(&b, 4);

    // Input: a PINGREQ is answered.
    s5.send(&Packet::PingReq);
    assert_eq!(s5.recv(), Some(Packet::PingResp));
    until_hibernating(&b, 4);

    // A kick reaches a hibernating client.
    let (ok, _, err) = b.ctl(&["clients", "kick", "sub3"]);
    assert!(ok, "{err}");
    assert_eq!(s3.until_closed(), Vec::<Packet>::new());
    // A client that goes away while hibernating: its will is published.
    willing.drop_connection();
    let will = s5.recv_publish();
    assert_eq!(
        (will.topic.as_ref(), &will.payload[..]),
        ("h/will", &b"gone"[..])
    );
    s5.ack(&will);
    until_hibernating(&b, 2);

    // Keep-alive: a silent client with a 2 s keep-alive is closed (0x8D) while hibernating.
    let mut k = connect_packet(Protocol::V5, "silent", true);
    k.keep_alive = 2;
    let (mut silent, _) = Raw::connect_with(b.port, k);
    let got = silent.until_closed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::KeepAliveTimeout),
        "{got:?}"
    );
    publ.publish_acked("h/t", b"two", QoS::AtLeastOnce, 2);
    assert_eq!(&s5.recv_publish().payload[..], b"two");
}

#[test]
fn hibernation_is_off_with_zero() {
    let b = Broker::with_toml(1, "[broker]\npin_cores = false\nhibernate_after = 0\n");
    let (mut c, _) = Raw::connect(b.port, Protocol::V311, "awake", true);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(hibernating(&b), 0);
    c.send(&Packet::PingReq);
    assert_eq!(c.recv(), Some(Packet::PingResp));
}
