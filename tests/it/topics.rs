//! EMQX's topic features (#15): rewrite rules on publish and subscribe with the ACL checked on
//! both topics, auto-subscribe at CONNECT, `$queue/` as a shared group, and each
//! shared-subscription strategy's distribution.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ringmq::codec::*;

use crate::harness::{tempdir, Broker, Raw, WAIT};

const BASE: &str = "[broker]\npin_cores = false\n";

/// A broker with `toml` after [broker] and an ACL file holding `rules` (no match: allow).
fn broker_with_acl(shards: usize, rules: &str, toml: &str) -> Broker {
    let dir = tempdir::Dir::new();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, rules).expect("acl");
    let toml = format!(
        "{BASE}{toml}\n[auth]\nacl_file = \"{}\"\nacl_nomatch = \"allow\"\n",
        acl.display()
    );
    Broker::launch(shards, &toml, dir, &[])
}

const REWRITES: &str = r#"
[[rewrite]]
action = "publish"
source = "old/#"
re = "^old/(.+)$"
dest = "new/$1"

[[rewrite]]
action = "publish"
source = "priv/#"
re = "^priv/(.+)$"
dest = "secret/$1"

[[rewrite]]
action = "publish"
source = "blocked/#"
re = "^blocked/(.+)$"
dest = "new/$1"

[[rewrite]]
action = "subscribe"
source = "alias/+"
re = "^alias/(\\w+)$"
dest = "new/$1"

[[rewrite]]
action = "subscribe"
source = "hidden/#"
re = "^hidden/(.+)$"
dest = "secret/$1"

[[rewrite]]
action = "all"
source = "mine/#"
re = "^mine/(.+)$"
dest = "users/${clientid}/$1"
"#;

const DENY_SECRET: &str = "\
deny all all secret/#
deny all publish blocked/#
";

#[test]
fn rewrite_rules_on_publish_and_subscribe_with_the_acl_on_both_topics() {
    let b = broker_with_acl(2, DENY_SECRET, REWRITES);
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "rw-sub", true);
    assert_eq!(
        sub.subscribe("alias/x", QoS::AtLeastOnce).reasons,
        [ReasonCode::GrantedQos1]
    );
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "rw-pub", true);
    assert_eq!(
        publ.publish_acked("old/x", b"1", QoS::AtLeastOnce, 1)
            .reason,
        ReasonCode::Success
    );
    let got = sub.recv_publish();
    assert_eq!((&*got.topic, &got.payload[..]), ("new/x", &b"1"[..]));
    sub.ack(&got);
    // The rewritten target is denied, then the topic as sent is: both refused.
    assert_eq!(
        publ.publish_acked("priv/x", b"2", QoS::AtLeastOnce, 2)
            .reason,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        publ.publish_acked("blocked/x", b"3", QoS::AtLeastOnce, 3)
            .reason,
        ReasonCode::NotAuthorized
    );
    sub.expect_silence(Duration::from_millis(200));
    assert_eq!(
        sub.subscribe("hidden/x", QoS::AtMostOnce).reasons,
        [ReasonCode::NotAuthorized]
    );
    // ${clientid} in the destination, for the subscription and the publish alike.
    let (mut me, _) = Raw::connect(b.port, Protocol::V5, "cA", true);
    assert_eq!(
        me.subscribe("mine/t", QoS::AtMostOnce).reasons,
        [ReasonCode::Success]
    );
    me.publish("mine/t", b"4", QoS::AtMostOnce, 0);
    assert_eq!(me.recv_publish().topic, "users/cA/t");
    // UNSUBSCRIBE names the filter as the client knows it, and is rewritten the same way.
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        filters: vec!["alias/x".into()],
        properties: None,
    }));
    match sub.recv() {
        Some(Packet::UnsubAck(a)) => assert_eq!(a.reasons, [ReasonCode::Success]),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    publ.publish_acked("old/x", b"5", QoS::AtLeastOnce, 5);
    sub.expect_silence(Duration::from_millis(200));
}

#[test]
fn a_bad_rewrite_rule_is_refused_by_name() {
    let dir = tempdir::Dir::new();
    let cfg = dir.0.join("bad.toml");
    std::fs::write(
        &cfg,
        "[[rewrite]]\naction = \"all\"\nsource = \"a/#\"\nre = \"(\"\ndest = \"b\"\n",
    )
    .expect("write");
    let (ok, _, err) = crate::harness::ringmq(
        &["check-config", "--config", cfg.to_str().expect("path")],
        &[],
    );
    assert!(!ok && err.contains("source \"a/#\""), "{err}");
}

const AUTO: &str = r#"
[[auto_subscribe]]
topic = "client/${clientid}/#"
qos = 1

[[auto_subscribe]]
topic = "user/${username}"

[[auto_subscribe]]
topic = "secret/${clientid}"
"#;

/// A rumqttc client that sends every publish it receives on the channel (topic, payload).
fn rumqttc_listener(
    port: u16,
    id: &str,
    user: &str,
    clean: bool,
) -> mpsc::Receiver<(String, Vec<u8>)> {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_credentials(user, "");
    opts.set_clean_session(clean);
    let (client, mut conn) = rumqttc::Client::new(opts, 16);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _keep = client;
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    if tx.send((topic, p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    if tx.send(("connack".into(), Vec::new())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

#[test]
fn auto_subscribe_at_connect_is_templated_acl_checked_and_gets_retained() {
    let b = broker_with_acl(2, DENY_SECRET, AUTO);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "auto-pub", true);
    let mut retained = crate::harness::publish("client/auto1/r", b"kept", QoS::AtLeastOnce, 1);
    retained.retain = true;
    publ.send(&Packet::Publish(retained));
    assert!(matches!(publ.recv(), Some(Packet::PubAck(_))));
    let rx = rumqttc_listener(b.port, "auto1", "ann", false);
    let first = rx.recv_timeout(WAIT).expect("connack");
    assert_eq!(first.0, "connack");
    assert_eq!(
        rx.recv_timeout(WAIT).expect("retained"),
        ("client/auto1/r".into(), b"kept".to_vec())
    );
    b.wait_log("auto-subscribe not authorized");
    publ.publish_acked("client/auto1/x", b"a", QoS::AtLeastOnce, 2);
    publ.publish_acked("user/ann", b"u", QoS::AtLeastOnce, 3);
    publ.publish_acked("client/other/x", b"no", QoS::AtLeastOnce, 4);
    publ.publish_acked("secret/auto1", b"no", QoS::AtLeastOnce, 5);
    let mut got: Vec<_> = (0..2)
        .map(|_| rx.recv_timeout(WAIT).expect("message"))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("client/auto1/x".to_string(), b"a".to_vec()),
            ("user/ann".to_string(), b"u".to_vec())
        ]
    );
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "nothing else"
    );
    let subs = b.ctl_json(&["subscriptions", "show", "auto1"]);
    assert!(subs.to_string().contains("client/auto1/#"), "{subs}");
}

/// Subscribes `n` v5 members to `filter` and publishes `count` messages to `topic` from
/// `publishers` clients in turn; returns how many each member got (each message once).
fn distribution(
    b: &Broker,
    filter: &str,
    n: usize,
    publishers: &[&str],
    topics: &[&str],
    count: u16,
) -> Vec<Vec<(String, String)>> {
    let mut members: Vec<Raw> = (0..n)
        .map(|i| {
            let (mut m, _) = Raw::connect(b.port, Protocol::V5, &format!("member{i}"), true);
            assert_eq!(
                m.subscribe(filter, QoS::AtLeastOnce).reasons,
                [ReasonCode::GrantedQos1]
            );
            m
        })
        .collect();
    let mut pubs: Vec<Raw> = publishers
        .iter()
        .map(|id| Raw::connect(b.port, Protocol::V5, id, true).0)
        .collect();
    for i in 0..count {
        let p = usize::from(i) % pubs.len();
        let topic = topics[usize::from(i) % topics.len()];
        pubs[p].publish_acked(topic, &i.to_be_bytes(), QoS::AtLeastOnce, i + 1);
    }
    let mut seen = Vec::new();
    let mut per_member = Vec::new();
    for m in members.iter_mut() {
        let mut mine = Vec::new();
        while let Ok(Some(Packet::Publish(p))) = m.recv_within(Duration::from_millis(300)) {
            m.ack(&p);
            let i = u16::from_be_bytes([p.payload[0], p.payload[1]]);
            seen.push(i);
            let publisher = publishers[usize::from(i) % publishers.len()].to_string();
            mine.push((publisher, p.topic.to_string()));
        }
        per_member.push(mine);
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..count).collect::<Vec<_>>(),
        "each message to exactly one member"
    );
    per_member
}

#[test]
fn queue_prefix_is_a_shared_group() {
    let b = Broker::start(2);
    let got = distribution(&b, "$queue/q/+", 3, &["qp"], &["q/x"], 30);
    assert!(
        got.iter().all(|m| !m.is_empty()),
        "every member takes some: {got:?}"
    );
}

/// How many members got a message that `is` picks out.
fn holders(got: &[Vec<(String, String)>], is: impl Fn(&(String, String)) -> bool) -> usize {
    got.iter().filter(|m| m.iter().any(&is)).count()
}

fn strategy_broker(shards: usize, strategy: &str) -> Broker {
    Broker::with_config(
        shards,
        &format!("shared_subscription_strategy = \"{strategy}\"\n"),
    )
}

#[test]
fn shared_subscription_strategies_distribute_as_named() {
    // Round robin: even on one shard.
    let b = strategy_broker(1, "round_robin");
    let got = distribution(&b, "$share/g/rr", 3, &["p"], &["rr"], 30);
    assert!(got.iter().all(|m| m.len() == 10), "{got:?}");
    drop(b);
    // Sticky: one member takes all, across shards.
    let b = strategy_broker(2, "sticky");
    let got = distribution(&b, "$share/g/st", 3, &["p1", "p2"], &["st"], 30);
    assert_eq!(got.iter().filter(|m| !m.is_empty()).count(), 1, "{got:?}");
    drop(b);
    // Hash by client id: each publisher's messages to one member.
    let b = strategy_broker(2, "hash_clientid");
    let pubs = ["h1", "h2", "h3", "h4", "h5", "h6"];
    let got = distribution(&b, "$share/g/hc", 3, &pubs, &["hc"], 60);
    for p in pubs {
        assert_eq!(holders(&got, |(who, _)| who == p), 1, "{p}: {got:?}");
    }
    drop(b);
    // Hash by topic: each topic to one member.
    let b = strategy_broker(2, "hash_topic");
    let topics = ["ht/a", "ht/b", "ht/c", "ht/d", "ht/e", "ht/f"];
    let got = distribution(&b, "$share/g/ht/+", 3, &["p"], &topics, 60);
    for t in topics {
        assert_eq!(holders(&got, |(_, topic)| topic == t), 1, "{t}: {got:?}");
    }
    drop(b);
    // Random: every member gets some of 60.
    let b = strategy_broker(2, "random");
    let got = distribution(&b, "$share/g/rn", 3, &["p"], &["rn"], 60);
    assert!(got.iter().all(|m| !m.is_empty()), "{got:?}");
}

#[test]
fn exclusive_subscription_is_refused_to_a_second_client_on_any_shard() {
    let b = Broker::start(2);
    // Enough clients that both shards take some (the kernel spreads connections by port).
    let mut clients: Vec<Raw> = (0..6)
        .map(|i| Raw::connect(b.port, Protocol::V5, &format!("ex{i}"), true).0)
        .collect();
    let reasons: Vec<ReasonCode> = clients
        .iter_mut()
        .map(|c| c.subscribe("$exclusive/ex/t", QoS::AtLeastOnce).reasons[0])
        .collect();
    assert_eq!(reasons[0], ReasonCode::GrantedQos1);
    assert!(
        reasons[1..].iter().all(|r| *r == ReasonCode::QuotaExceeded),
        "{reasons:?}"
    );
    // The holder may subscribe again; it receives what is published to the inner filter.
    assert_eq!(
        clients[0]
            .subscribe("$exclusive/ex/t", QoS::AtLeastOnce)
            .reasons,
        [ReasonCode::GrantedQos1]
    );
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "ex-pub", true);
    publ.publish_acked("ex/t", b"x", QoS::AtLeastOnce, 1);
    let got = clients[0].recv_publish();
    assert_eq!(got.topic, "ex/t");
    clients[0].ack(&got);
    // Released on unsubscribe: the next client gets it.
    clients[0].send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["$exclusive/ex/t".into()],
        properties: None,
    }));
    assert!(matches!(clients[0].recv(), Some(Packet::UnsubAck(_))));
    assert_eq!(
        clients[1]
            .subscribe("$exclusive/ex/t", QoS::AtMostOnce)
            .reasons,
        [ReasonCode::Success]
    );
    // Released when the session ends (the arbiter hears of it after the DISCONNECT, with
    // nothing to wait on): the others try in turn until one gets it, and then only that one.
    let holder = clients.remove(1);
    holder.disconnect();
    let deadline = Instant::now() + WAIT;
    let mut reasons = Vec::new();
    while !reasons.contains(&ReasonCode::Success) && Instant::now() < deadline {
        reasons.extend(
            clients[1..]
                .iter_mut()
                .map(|c| c.subscribe("$exclusive/ex/t", QoS::AtMostOnce).reasons[0]),
        );
    }
    let granted = reasons
        .iter()
        .filter(|r| **r == ReasonCode::Success)
        .count();
    assert_eq!(granted, 1, "{reasons:?}");
}

#[test]
fn an_exclusive_hold_outlives_a_crash_with_its_session() {
    // Kept sessions are split by client id across 4 shards, filters by their own hash: the
    // holder's shard and the filter's arbiter differ for some of these.
    let filters: Vec<String> = (0..4).map(|i| format!("$exclusive/kept/{i}")).collect();
    let b = Broker::start(4);
    let (mut holder, _) = Raw::connect(b.port, Protocol::V311, "ex-holder", false);
    for f in &filters {
        assert_eq!(
            holder.subscribe(f, QoS::AtLeastOnce).reasons,
            [ReasonCode::GrantedQos1]
        );
    }
    drop(holder);
    let dir = b.kill9();
    let b = Broker::launch(4, "[broker]\npin_cores = false\n", dir, &[]);
    let (mut other, _) = Raw::connect(b.port, Protocol::V5, "ex-other", true);
    for f in &filters {
        assert_eq!(
            other.subscribe(f, QoS::AtLeastOnce).reasons,
            [ReasonCode::QuotaExceeded],
            "{f}: the restored session still holds it"
        );
    }
    // The holder comes back to its session and still receives on the inner filters.
    let (mut holder, ack) = Raw::connect(b.port, Protocol::V311, "ex-holder", false);
    assert!(ack.session_present);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V5, "ex-pub2", true);
    for i in 0..4 {
        publ.publish_acked(&format!("kept/{i}"), b"x", QoS::AtLeastOnce, 1);
        let got = holder.recv_publish();
        assert_eq!(got.topic, format!("kept/{i}"));
        holder.ack(&got);
    }
}
