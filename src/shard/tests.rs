//! Shard behaviour that depends on the order in which cross-shard messages arrive, driven
//! deterministically through [`super::sim::Sim`].

use bytes::Bytes;

use super::sim::{connect, Sim};
use crate::codec::*;
use crate::config::Config;

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 9,
        filters: vec![(filter.into(), SubOptions::qos(QoS::AtMostOnce))],
        properties: None,
    })
}

/// A SUBACK that waits for other shards' interest acks belongs to the session that asked: when
/// that client is gone and another took its session slot meanwhile, the newcomer gets neither
/// the SUBACK nor the retained messages of a subscription it never made.
#[test]
fn a_late_suback_never_reaches_the_client_that_reused_the_slot() {
    let mut sim = Sim::new(2, Config::default());
    let keeper = sim.id_homed_at(0, "keeper");
    let retainer = sim.connect(0, connect(Protocol::V311, &keeper));
    sim.settle();
    let mut retained = harness_publish("secret/t", b"for a only");
    retained.retain = true;
    sim.send(0, &retainer, Packet::Publish(retained));
    sim.settle();
    let a_id = sim.id_homed_at(0, "a");
    let a = sim.connect(0, connect(Protocol::V311, &a_id));
    sim.settle();
    Sim::received(&a);
    // A subscribes to a filter new to shard 0: the SUBACK waits for shard 1's ack. Before it
    // comes, A goes and B takes A's slot on shard 0.
    sim.send(0, &a, subscribe("secret/#"));
    sim.close(0, &a);
    let b_id = sim.id_homed_at(0, "b");
    let b = sim.connect(0, connect(Protocol::V311, &b_id));
    while sim.step(0) {}
    assert!(
        matches!(&Sim::received(&b)[..], [Packet::ConnAck(c)] if c.reason == ReasonCode::Success)
    );
    sim.settle();
    let late = Sim::received(&b);
    assert!(late.is_empty(), "B got what A asked for: {late:?}");
}

fn harness_publish(topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: None,
        properties: None,
        payload: Bytes::from_static(payload),
    }
}
