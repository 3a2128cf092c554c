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

fn publish_qos1(topic: &str, pid: u16) -> Packet {
    Packet::Publish(Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(pid),
        ..harness_publish(topic, b"m")
    })
}

/// Shared groups are named by clients: when the last member of each leaves, nothing keyed by
/// its name stays behind on any shard (the round-robin turn lives with the group).
#[test]
fn shared_group_names_leave_nothing_behind() {
    let mut cfg = Config::default();
    cfg.mqtt.max_subscriptions = 500;
    let mut sim = Sim::new(2, cfg);
    let c = sim.client(1, "grouper", Protocol::V311);
    for i in 0..500 {
        sim.send(1, &c, subscribe(&format!("$share/g{i}/t")));
    }
    sim.settle();
    let publ = sim.client(0, "pub", Protocol::V311);
    sim.send(
        0,
        &publ,
        Packet::Publish(harness_publish("t", b"to every group")),
    );
    sim.settle();
    assert_eq!(Sim::publishes(&c), 500, "one copy per group");
    sim.close(1, &c);
    sim.settle();
    for sh in &sim.shards {
        assert!(sh.router.no_shared_groups(), "shard {}: groups left", sh.id);
    }
}

/// A ring to another shard that stays full: the backlog stops at `broker.max_ring_backlog`,
/// and publishes past it are refused (v5 PUBACK 0x97) and counted, never acknowledged.
#[test]
fn a_full_ring_backlog_refuses_publishes_instead_of_growing() {
    let mut cfg = Config::default();
    cfg.broker.max_ring_backlog = 16;
    let mut sim = Sim::new(2, cfg);
    let sub = sim.client(1, "far", Protocol::V311);
    sim.send(1, &sub, subscribe("t"));
    sim.settle();
    let publ = sim.client(0, "near", Protocol::V5);
    let mut taken = publish_qos1("t", 60_001);
    if let Packet::Publish(p) = &mut taken {
        p.qos = QoS::ExactlyOnce;
    }
    sim.send(0, &publ, taken.clone());
    sim.settle();
    assert!(
        matches!(&Sim::received(&publ)[..], [Packet::PubRec(r)] if r.reason == ReasonCode::Success)
    );
    Sim::publishes(&sub);
    // Shard 1 never runs: its ring (1,024 here) fills, then the backlog.
    let total = 1024 + 16 + 100;
    for i in 0..total {
        sim.send(0, &publ, publish_qos1("t", (i % 60_000 + 1) as u16));
    }
    let acks: Vec<ReasonCode> = Sim::received(&publ)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .collect();
    let refused = acks
        .iter()
        .filter(|r| **r == ReasonCode::QuotaExceeded)
        .count();
    assert_eq!(acks.len(), total, "every publish answered");
    assert_eq!(refused, 100, "refused past the bound");
    assert!(sim.shards[0].mesh.backlog_len(1) <= 16);
    let counted = sim.shards[0].stats.refusals(crate::stats::Refusal::Backlog);
    assert_eq!(counted, 100);
    // A QoS 2 message taken before is answered again as taken, backlog or not: a 0x97 would
    // end the client's flow while the broker keeps the id (and drops its next use of it).
    if let Packet::Publish(p) = &mut taken {
        p.dup = true;
    }
    sim.send(0, &publ, taken);
    assert!(
        matches!(&Sim::received(&publ)[..], [Packet::PubRec(r)] if r.reason == ReasonCode::Success)
    );
    sim.settle();
    assert_eq!(
        Sim::publishes(&sub),
        total - 100,
        "everything acknowledged arrives"
    );
}

/// Two CONNECTs for one client id on the same shard while its session lives on a third: the
/// second supersedes the first, whatever order the takeover and the grant arrive in, and it is
/// granted (it never waits on a claim superseded by itself).
#[test]
fn a_claim_is_never_superseded_by_itself() {
    let mut sim = Sim::new(3, Config::default());
    let id = sim.id_homed_at(1, "twice");
    let mut persistent = connect(Protocol::V311, &id);
    persistent.clean_start = false;
    let owner = sim.connect(2, persistent.clone());
    sim.settle();
    Sim::received(&owner);
    let first = sim.connect(0, persistent.clone());
    let second = sim.connect(0, persistent);
    // Home hears both claims: the first makes shard 2 hand the session over, the second asks
    // shard 0 (the owner-to-be) to give way.
    while sim.step(1) {}
    // Shard 0 sees the second takeover before shard 2's grant of the first.
    while sim.step(0) {}
    sim.settle();
    let got = Sim::received(&second);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason == ReasonCode::Success),
        "the second CONNECT is granted: {got:?}"
    );
    assert!(
        Sim::received(&first)
            .iter()
            .all(|p| !matches!(p, Packet::ConnAck(_))),
        "the first was superseded before its grant"
    );
    assert!(first.is_closing());
}

fn unsubscribe(filter: &str) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id: 10,
        filters: vec![filter.into()],
        properties: None,
    })
}

/// An UNSUBACK of an `$exclusive/` filter goes out only once its arbiter has let go, so a
/// client that subscribes after seeing it, on any shard, gets the filter (the arbiter would
/// otherwise see its claim first when both reach it in one batch).
#[test]
fn an_exclusive_unsuback_waits_until_its_arbiter_let_go() {
    let mut sim = Sim::new(2, Config::default());
    let filter = (0..)
        .map(|i| format!("$exclusive/t{i}"))
        .find(|f| super::home_of(f, 2) == 0)
        .expect("a filter homed at shard 0");
    let holder = sim.client(1, "holder", Protocol::V5);
    let next = sim.client(0, "next", Protocol::V5);
    sim.send(1, &holder, subscribe(&filter));
    sim.settle();
    assert!(matches!(&Sim::received(&holder)[..], [Packet::SubAck(s)] if !s.reasons[0].is_error()));
    sim.send(1, &holder, unsubscribe(&filter));
    assert!(
        Sim::received(&holder).is_empty(),
        "UNSUBACK before the arbiter let go"
    );
    while sim.step(0) {}
    while sim.step(1) {}
    assert!(
        matches!(&Sim::received(&holder)[..], [Packet::UnsubAck(u)] if u.reasons == [ReasonCode::Success])
    );
    sim.send(0, &next, subscribe(&filter));
    sim.settle();
    assert!(
        matches!(&Sim::received(&next)[..], [Packet::SubAck(s)] if s.reasons == [ReasonCode::Success]),
        "the filter is free once the UNSUBACK is out"
    );
}

/// The retained messages of an auto-subscription go out once every shard knows its filter: a
/// client that has one may count on a message published anywhere after it reaching it.
#[test]
fn auto_subscribed_retained_waits_for_every_shard() {
    let cfg: Config =
        toml::from_str("[[auto_subscribe]]\ntopic = \"auto/${clientid}\"").expect("auto_subscribe");
    let mut sim = Sim::new(2, cfg);
    let id = sim.id_homed_at(1, "sub");
    let publisher = sim.client(0, "pub", Protocol::V5);
    let mut retained = harness_publish(&format!("auto/{id}"), b"kept");
    retained.retain = true;
    sim.send(0, &publisher, Packet::Publish(retained));
    sim.settle();
    let sub = sim.connect(1, connect(Protocol::V5, &id));
    while sim.step(1) {}
    assert!(
        matches!(&Sim::received(&sub)[..], [Packet::ConnAck(_)]),
        "retained before shard 0 knows the filter"
    );
    sim.settle();
    assert!(matches!(&Sim::received(&sub)[..], [Packet::Publish(p)] if p.retain));
    sim.send(
        0,
        &publisher,
        Packet::Publish(harness_publish(&format!("auto/{id}"), b"next")),
    );
    sim.settle();
    assert_eq!(Sim::publishes(&sub), 1);
}
