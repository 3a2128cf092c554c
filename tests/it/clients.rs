//! rumqttc (v3.1.1 and v5) against the broker, and the load-shaped behaviours: a slow subscriber
//! flooded while others and the publisher carry on, and back-pressure when a ring is full.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use ringmq::codec::{Packet, Protocol, QoS};

use crate::harness::*;

fn rumqttc_v3_roundtrip(port: u16, n: usize) -> Vec<String> {
    let mut sub_opts = rumqttc::MqttOptions::new("rq-sub", "127.0.0.1", port);
    sub_opts.set_keep_alive(Duration::from_secs(10));
    let (sub, mut sub_conn) = rumqttc::Client::new(sub_opts, 64);
    sub.subscribe("rq/+", rumqttc::QoS::AtLeastOnce)
        .expect("subscribe");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for ev in sub_conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => tx.send(None).ok(),
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => tx
                    .send(Some(String::from_utf8_lossy(&p.payload).into_owned()))
                    .ok(),
                Err(_) => break,
                _ => Some(()),
            };
        }
    });
    assert_eq!(rx.recv_timeout(WAIT).expect("suback"), None);
    let (publ, mut pub_conn) =
        rumqttc::Client::new(rumqttc::MqttOptions::new("rq-pub", "127.0.0.1", port), 64);
    thread::spawn(move || for _ in pub_conn.iter() {});
    for i in 0..n {
        publ.publish("rq/x", rumqttc::QoS::AtLeastOnce, false, format!("m{i}"))
            .expect("publish");
    }
    (0..n)
        .map(|_| rx.recv_timeout(WAIT).expect("message").expect("a publish"))
        .collect()
}

#[test]
fn rumqttc_v311_pub_sub() {
    for shards in [1, 4] {
        let b = Broker::start(shards);
        let got = rumqttc_v3_roundtrip(b.port, 200);
        assert_eq!(
            got,
            (0..200).map(|i| format!("m{i}")).collect::<Vec<_>>(),
            "in order, once each"
        );
    }
}

#[test]
fn rumqttc_v5_pub_sub() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let b = Broker::start(4);
    let (sub, mut conn) = rumqttc::v5::Client::new(
        rumqttc::v5::MqttOptions::new("r5-sub", "127.0.0.1", b.port),
        64,
    );
    sub.subscribe("r5/#", Q5::ExactlyOnce).expect("subscribe");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::v5::Event::Incoming(P5::SubAck(_))) => tx.send(None).ok(),
                Ok(rumqttc::v5::Event::Incoming(P5::Publish(p))) => {
                    tx.send(Some((p.qos, p.payload.to_vec()))).ok()
                }
                Err(_) => break,
                _ => Some(()),
            };
        }
    });
    assert_eq!(rx.recv_timeout(WAIT).expect("suback"), None);
    let (publ, mut pconn) = rumqttc::v5::Client::new(
        rumqttc::v5::MqttOptions::new("r5-pub", "127.0.0.1", b.port),
        64,
    );
    thread::spawn(move || for _ in pconn.iter() {});
    for i in 0..50u8 {
        publ.publish("r5/a", Q5::ExactlyOnce, false, vec![i])
            .expect("publish");
    }
    for i in 0..50u8 {
        assert_eq!(
            rx.recv_timeout(WAIT).expect("message"),
            Some((Q5::ExactlyOnce, vec![i]))
        );
    }
}

/// Counts the publishes a raw subscriber receives (into `seen` as it goes) until `n` or silence.
fn count_publishes(mut s: Raw, n: usize, seen: Arc<AtomicUsize>) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut got = 0;
        while got < n {
            match s.recv_within(Duration::from_secs(5)) {
                Ok(Some(Packet::Publish(p))) => {
                    s.ack(&p);
                    got += 1;
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        got
    })
}

/// Publishes `n` QoS 1 messages with at most `window` not yet acknowledged and, end to end, not
/// yet seen by the subscribers counting into `seen` (closed loop: what they can keep up with).
fn publish_windowed(
    p: &mut Raw,
    topic: &str,
    n: usize,
    size: usize,
    window: usize,
    seen: &[Arc<AtomicUsize>],
) {
    let payload = vec![b'x'; size];
    let mut acked = 0;
    for i in 0..n {
        p.publish(topic, &payload, QoS::AtLeastOnce, (i % 60000) as u16 + 1);
        if i + 1 - acked >= window {
            assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
            acked += 1;
        }
        let deadline = std::time::Instant::now() + WAIT;
        while seen.iter().any(|s| s.load(Ordering::Relaxed) + window < i) {
            assert!(std::time::Instant::now() < deadline, "subscribers stalled");
            thread::yield_now();
        }
    }
    while acked < n {
        assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
        acked += 1;
    }
}

#[test]
fn slow_subscriber_is_dropped_for_alone() {
    let b = Broker::with_config(4, "max_outbound_bytes = 65536");
    let (mut slow, _) = Raw::connect(b.port, Protocol::V311, "slow", true);
    slow.subscribe("flood", QoS::AtMostOnce);
    let (mut fast, _) = Raw::connect(b.port, Protocol::V311, "fast", true);
    fast.subscribe("flood", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    const N: usize = 20_000;
    let seen = Arc::new(AtomicUsize::new(0));
    let fast_count = count_publishes(fast, N, seen.clone());
    publish_windowed(&mut publ, "flood", N, 1024, 100, &[seen]);
    assert_eq!(
        fast_count.join().expect("fast"),
        N,
        "the fast subscriber got everything"
    );
    // The slow one never read; the broker dropped its QoS 0 copies and counted them.
    slow.drop_connection();
    let deadline = std::time::Instant::now() + WAIT;
    let dropped = loop {
        let log = b.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("client=slow") && l.contains("disconnected"))
            .map(str::to_owned);
        if let Some(line) = line {
            break line;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no disconnect line for the slow client"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let n: u64 = dropped
        .split("dropped=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("dropped count");
    assert!(n > 0 && n < N as u64, "drops counted: {dropped}");
}

#[test]
fn full_rings_apply_back_pressure_without_loss() {
    let b = Broker::with_sections(4, "ring_capacity = 16", "");
    const SUBS: usize = 8;
    const N: usize = 3000;
    let seen: Vec<Arc<AtomicUsize>> = (0..SUBS).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let counters: Vec<_> = seen
        .iter()
        .enumerate()
        .map(|(i, seen)| {
            let (mut s, _) = Raw::connect(b.port, Protocol::V311, &format!("s{i}"), true);
            s.subscribe("bp", QoS::AtLeastOnce);
            count_publishes(s, N, seen.clone())
        })
        .collect();
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "pub", true);
    publish_windowed(&mut publ, "bp", N, 64, 500, &seen);
    for c in counters {
        assert_eq!(
            c.join().expect("subscriber"),
            N,
            "no message lost behind a full ring"
        );
    }
    // The rings filled and readers paused.
    b.wait_log("ring full");
}
