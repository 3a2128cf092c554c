//! The broker run in the test's own process through `server::serve`, with a socket of its own
//! for each shard: every client is placed on the shard the test chooses, so the cross-shard
//! paths (forwarding, takeover with the session moving, shared groups, retained replicas)
//! are exercised on purpose rather than left to the kernel's hashing. The broker's handle is
//! at hand too (metrics rendered in-process).

use std::net::TcpListener;

use ringmq::codec::*;
use ringmq::config::Config;
use ringmq::logging::LogControl;
use ringmq::server::{serve, Listeners};

use crate::harness::*;

/// Runs a broker of `shards` shards in this process; `body` gets each shard's port.
fn in_process(shards: usize, body: impl FnOnce(&ringmq::broker::Broker, &[u16])) {
    let dir = tempdir::Dir::new();
    let mut cfg = Config::default();
    cfg.broker.pin_cores = false;
    cfg.broker.data_dir = dir.0.join("data");
    cfg.admin.enabled = false;
    let sockets: Vec<Vec<TcpListener>> = (0..shards).map(|_| vec![fresh_listener()]).collect();
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s[0].local_addr().expect("addr").port())
        .collect();
    let result = serve(
        ringmq::cli::RunArgs::default(),
        cfg,
        LogControl::detached(),
        Listeners::PerShard(sockets),
        |broker| {
            body(broker, &ports);
            Ok(())
        },
    );
    assert_eq!(result, Ok(()), "graceful shutdown");
}

#[test]
fn a_publish_crosses_to_the_subscribers_shard() {
    in_process(2, |broker, port| {
        let (mut sub, _) = Raw::connect(port[1], Protocol::V311, "on-1", true);
        sub.subscribe("x/+", QoS::AtLeastOnce);
        let (mut publ, _) = Raw::connect(port[0], Protocol::V311, "on-0", true);
        for i in 1..=10u16 {
            publ.publish_acked("x/y", &i.to_be_bytes(), QoS::AtLeastOnce, i);
            let got = sub.recv_publish();
            assert_eq!(&got.payload[..], &i.to_be_bytes());
            sub.ack(&got);
        }
        let metrics = ringmq::metrics::render(broker);
        assert!(
            metrics.contains("ringmq_messages_received_total{qos=\"1\"} 10"),
            "{metrics}"
        );
    });
}

#[test]
fn a_takeover_moves_the_session_and_its_queue_across_shards() {
    in_process(2, |_, port| {
        let mut c = connect_packet(Protocol::V5, "mover", false);
        c.properties = props(|p| p.session_expiry_interval = Some(600));
        let (mut first, _) = Raw::connect_with(port[0], c.clone());
        first.subscribe("q", QoS::AtLeastOnce);
        first.disconnect();
        let (mut publ, _) = Raw::connect(port[1], Protocol::V311, "filler", true);
        for i in 1..=3u16 {
            publ.publish_acked("q", &[i as u8], QoS::AtLeastOnce, i);
        }
        let (mut moved, ack) = Raw::connect_with(port[1], c.clone());
        assert!(ack.session_present, "the session came from shard 0");
        for i in 1..=3u8 {
            let got = moved.recv_publish();
            assert_eq!(
                &got.payload[..],
                &[i],
                "queued on shard 0, delivered on shard 1"
            );
            moved.ack(&got);
        }
        // Back to shard 0 while connected on shard 1: the old connection is told 0x8E.
        let (_back, ack) = Raw::connect_with(port[0], c);
        assert!(ack.session_present);
        assert!(
            matches!(&moved.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver)
        );
    });
}

#[test]
fn a_shared_group_spans_shards_and_retained_messages_every_replica() {
    in_process(3, |_, port| {
        let mut members: Vec<Raw> = (0..3)
            .map(|s| {
                let (mut m, _) = Raw::connect(port[s], Protocol::V5, &format!("m{s}"), true);
                m.subscribe("$share/g/jobs", QoS::AtMostOnce);
                m
            })
            .collect();
        let (mut publ, _) = Raw::connect(port[0], Protocol::V5, "boss", true);
        for i in 0..30u8 {
            publ.publish("jobs", &[i], QoS::AtMostOnce, 0);
        }
        let mut r = publish("state", b"kept", QoS::AtLeastOnce, 40);
        r.retain = true;
        publ.send(&Packet::Publish(r));
        assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
        let mut seen = Vec::new();
        for m in &mut members {
            let mut got = 0;
            while let Ok(Some(Packet::Publish(_))) =
                m.recv_within(std::time::Duration::from_millis(300))
            {
                got += 1;
            }
            seen.push(got);
        }
        assert_eq!(
            seen.iter().sum::<usize>(),
            30,
            "each job to one member: {seen:?}"
        );
        assert!(
            seen.iter().all(|n| *n > 0),
            "every shard's member had a turn: {seen:?}"
        );
        for (s, p) in port.iter().enumerate() {
            let (mut late, _) = Raw::connect(*p, Protocol::V311, &format!("late{s}"), true);
            late.subscribe("state", QoS::AtMostOnce);
            assert_eq!(
                &late.recv_publish().payload[..],
                b"kept",
                "replica on shard {s}"
            );
        }
    });
}
