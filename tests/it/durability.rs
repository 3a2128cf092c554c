//! Durable state: the broker is killed with SIGKILL (no shutdown path runs) in the middle of
//! traffic and started again on the same data dir. Nothing acknowledged is lost, nothing
//! acknowledged or cleared comes back, time spent down counts, a torn journal still starts,
//! a second broker cannot open the same dir, and a failing store acknowledges nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use crate::harness::*;
use ringmq::codec::*;

const BASE: &str = "[broker]\npin_cores = false\n";

/// The store has committed everything the broker handed it so far.
fn store_caught_up(b: &Broker) {
    // A handled packet's changes reach the storage thread at the end of the shard's tick.
    std::thread::sleep(Duration::from_millis(100));
    eventually("the store caught up", || {
        b.metric("ringmq_store_lag_batches") == Some(0.0)
    });
}

/// Reads publishes until `n` distinct payloads came (acknowledging each, QoS 2 flows
/// included), then expects silence; returns every payload in arrival order and how many
/// arrived more than once.
fn receive(c: &mut Raw, n: usize) -> (Vec<Vec<u8>>, usize) {
    let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut order = Vec::new();
    while seen.len() < n {
        match c.recv() {
            Some(Packet::Publish(p)) => {
                let id = p.packet_id.expect("QoS 1/2");
                if p.qos == QoS::ExactlyOnce {
                    c.send(&Packet::PubRec(PubResp::new(id, ReasonCode::Success)));
                } else {
                    c.send(&Packet::PubAck(PubResp::new(id, ReasonCode::Success)));
                }
                *seen.entry(p.payload.to_vec()).or_default() += 1;
                order.push(p.payload.to_vec());
            }
            Some(Packet::PubRel(r)) => {
                c.send(&Packet::PubComp(PubResp::new(
                    r.packet_id,
                    ReasonCode::Success,
                )));
            }
            other => panic!(
                "expected PUBLISH, got {other:?} after {} of {n}",
                seen.len()
            ),
        }
    }
    loop {
        match c.recv_within(Duration::from_millis(500)) {
            Ok(Some(Packet::PubRel(r))) => {
                c.send(&Packet::PubComp(PubResp::new(
                    r.packet_id,
                    ReasonCode::Success,
                )));
            }
            Err(()) => break,
            other => panic!("expected nothing more, got {other:?}"),
        }
    }
    let dups = seen.values().map(|n| n - 1).sum();
    (order, dups)
}

fn payloads(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i:05}").into_bytes())
        .collect()
}

fn acknowledged_messages_survive_kill_9(shards: usize, toml: &str) {
    const N: usize = 300;
    let b = Broker::with_toml(shards, toml);
    let (mut q1, _) = Raw::connect(b.port, Protocol::V311, "q1-sub", false);
    q1.subscribe("d/q1/#", QoS::AtLeastOnce);
    q1.disconnect();
    let q2_connect = || {
        let mut c = connect_packet(Protocol::V5, "q2-sub", false);
        c.properties = props(|p| p.session_expiry_interval = Some(600));
        c
    };
    let (mut q2, _) = Raw::connect_with(b.port, q2_connect());
    q2.subscribe("d/q2/#", QoS::ExactlyOnce);
    q2.disconnect();
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "publisher", true);
    for (i, m) in payloads("one-", N).iter().enumerate() {
        let a = p.publish_acked("d/q1/x", m, QoS::AtLeastOnce, (i + 1) as u16);
        assert_eq!(a.reason, ReasonCode::Success);
    }
    for (i, m) in payloads("two-", N).iter().enumerate() {
        let a = p.publish_acked("d/q2/x", m, QoS::ExactlyOnce, (i + 1) as u16);
        assert_eq!(a.reason, ReasonCode::Success);
    }
    let mut r = publish("d/retained", b"kept", QoS::AtLeastOnce, 1);
    r.retain = true;
    p.send(&Packet::Publish(r));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    // No wait for the store here: each PUBACK was the promise.
    let dir = b.kill9();

    let b = Broker::launch(shards, BASE, dir, &[]);
    assert_eq!(
        b.metric("ringmq_store_restored_messages"),
        Some((2 * N) as f64)
    );
    let (mut q1, ack) = Raw::connect(b.port, Protocol::V311, "q1-sub", false);
    assert!(
        ack.session_present,
        "{shards} shards: the session came back"
    );
    let (got, dups) = receive(&mut q1, N);
    assert_eq!(got, payloads("one-", N), "{shards} shards: all, in order");
    assert_eq!(dups, 0);
    let (mut q2, ack) = Raw::connect_with(b.port, q2_connect());
    assert!(ack.session_present);
    let (got, dups) = receive(&mut q2, N);
    assert_eq!(got, payloads("two-", N));
    assert_eq!(dups, 0);
    let (mut late, _) = Raw::connect(b.port, Protocol::V311, "late", true);
    late.subscribe("d/retained", QoS::AtMostOnce);
    let kept = late.recv_publish();
    assert!(kept.retain && &kept.payload[..] == b"kept");
}

/// Online persistent subscribers: a publish whose deliveries they all acknowledged within the
/// commit window is acknowledged without a store write (the message was delivered), and one
/// they did not acknowledge only once its deliveries are stored. Killed at once after the
/// last PUBACK, the broker brings back exactly the messages the subscribers had not
/// acknowledged, on every subscriber's shard.
fn online_subscribers_lose_nothing_acknowledged(shards: usize) {
    const N: usize = 200;
    const ACKED: usize = 100;
    const INFLIGHT: usize = 32;
    const SUBS: usize = 3;
    let b = Broker::with_toml(shards, BASE);
    let subscribers: Vec<_> = (0..SUBS)
        .map(|i| {
            let (mut s, _) = Raw::connect(b.port, Protocol::V311, &format!("on-{i}"), false);
            s.subscribe("o/#", QoS::AtLeastOnce);
            // The first ACKED are acknowledged as they come; then the window fills unacknowledged.
            std::thread::spawn(move || {
                for k in 0..ACKED + INFLIGHT {
                    let p = s.recv_publish();
                    assert_eq!(&p.payload[..], payloads("m-", N)[k], "in order");
                    if k < ACKED {
                        s.ack(&p);
                    }
                }
                s
            })
        })
        .collect();
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "on-pub", true);
    for (i, m) in payloads("m-", N).iter().enumerate() {
        let a = p.publish_acked("o/x", m, QoS::AtLeastOnce, (i + 1) as u16);
        assert_eq!(a.reason, ReasonCode::Success);
    }
    let held: Vec<Raw> = subscribers
        .into_iter()
        .map(|t| t.join().expect("subscriber"))
        .collect();
    // No wait for the store: every PUBACK was the promise.
    let dir = b.kill9();
    drop(held);
    let b = Broker::launch(shards, BASE, dir, &[]);
    assert_eq!(
        b.metric("ringmq_store_restored_messages"),
        Some((SUBS * (N - ACKED)) as f64),
        "{shards} shards: what was acknowledged by the subscribers is not kept"
    );
    for i in 0..SUBS {
        let (mut s, ack) = Raw::connect(b.port, Protocol::V311, &format!("on-{i}"), false);
        assert!(ack.session_present);
        let (got, dups) = receive(&mut s, N - ACKED);
        assert_eq!(
            got,
            payloads("m-", N)[ACKED..],
            "{shards} shards, subscriber {i}"
        );
        assert_eq!(dups, 0);
    }
}

#[test]
fn online_subscribers_lose_nothing_acknowledged_on_one_shard() {
    online_subscribers_lose_nothing_acknowledged(1);
}

#[test]
fn online_subscribers_lose_nothing_acknowledged_on_four_shards() {
    online_subscribers_lose_nothing_acknowledged(4);
}

#[test]
fn acknowledged_messages_survive_kill_9_on_one_shard() {
    acknowledged_messages_survive_kill_9(1, BASE);
}

#[test]
fn acknowledged_messages_survive_kill_9_on_four_shards() {
    acknowledged_messages_survive_kill_9(4, BASE);
}

/// `power` mode: each acknowledgement waits for the journal's fsync.
#[test]
fn acknowledged_messages_survive_kill_9_in_power_mode() {
    let toml = format!("{BASE}[durability]\nmode = \"power\"\n");
    acknowledged_messages_survive_kill_9(2, &toml);
    let b = Broker::with_toml(1, &toml);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "p-sub", false);
    s.subscribe("p/#", QoS::AtLeastOnce);
    s.disconnect();
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "p-pub", true);
    let before = b.metric("ringmq_store_syncs_total").unwrap_or(0.0);
    for i in 0..20u16 {
        p.publish_acked("p/x", b"synced", QoS::AtLeastOnce, i + 1);
    }
    let after = b.metric("ringmq_store_syncs_total").unwrap_or(0.0);
    assert!(
        after - before >= 20.0,
        "one fsync per acknowledged batch: {before} -> {after}"
    );
}

/// A SUBACK to a persistent session is a promise too: killed right after it, the broker comes
/// back with the subscription, and a message published then is queued for it.
#[test]
fn a_suback_means_the_subscription_survives_kill_9() {
    // A long commit window: a SUBACK sent before its subscription is stored would be
    // followed by the kill well before the store writes it.
    let toml = format!("{BASE}[durability]\ncommit_window_us = 500000\n");
    let b = Broker::with_toml(2, &toml);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "quick", false);
    let granted = s.subscribe("quick/#", QoS::AtLeastOnce);
    assert_eq!(granted.reasons, [ReasonCode::GrantedQos1]);
    let dir = b.kill9();
    let b = Broker::launch(2, &toml, dir, &[]);
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "later", true);
    p.publish_acked("quick/x", b"after the crash", QoS::AtLeastOnce, 1);
    let (mut s, ack) = Raw::connect(b.port, Protocol::V311, "quick", false);
    assert!(ack.session_present);
    assert_eq!(receive(&mut s, 1).0, [b"after the crash".to_vec()]);
}

/// A subscriber that acknowledged everything gets nothing again after a crash, and a cleared
/// retained message stays cleared (the stale-state bug of the JSON files).
#[test]
fn nothing_acknowledged_or_cleared_comes_back() {
    let b = Broker::with_toml(2, BASE);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "reader", false);
    s.subscribe("a/#", QoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "writer", true);
    for i in 0..50u16 {
        p.publish_acked("a/b", format!("m{i}").as_bytes(), QoS::AtLeastOnce, i + 1);
    }
    let (got, _) = receive(&mut s, 50);
    assert_eq!(got.len(), 50);
    s.sync();
    let mut r = publish("a/retained", b"soon gone", QoS::AtLeastOnce, 900);
    r.retain = true;
    p.send(&Packet::Publish(r.clone()));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    r.payload = bytes::Bytes::new();
    r.packet_id = Some(901);
    p.send(&Packet::Publish(r));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    let _ = receive(&mut s, 2);
    s.sync();
    store_caught_up(&b);
    let dir = b.kill9();

    let b = Broker::launch(2, BASE, dir, &[]);
    let (mut s, ack) = Raw::connect(b.port, Protocol::V311, "reader", false);
    assert!(ack.session_present);
    s.expect_silence(Duration::from_millis(500));
    let (mut fresh, _) = Raw::connect(b.port, Protocol::V311, "fresh", true);
    fresh.subscribe("a/retained", QoS::AtMostOnce);
    fresh.expect_silence(Duration::from_millis(300));
}

/// Session expiry counts the time the broker was down: a session whose expiry passed while the
/// broker was dead is gone at the restart; one with time left is still there.
#[test]
fn a_session_that_expired_while_down_is_gone() {
    let b = Broker::with_toml(1, BASE);
    for (id, secs) in [("short", 1u32), ("long", 600)] {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties = props(|p| p.session_expiry_interval = Some(secs));
        let (mut s, _) = Raw::connect_with(b.port, c);
        s.subscribe("e/#", QoS::AtLeastOnce);
        s.disconnect();
    }
    store_caught_up(&b);
    let dir = b.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    let b = Broker::launch(1, BASE, dir, &[]);
    let resume = |id: &str| {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties = props(|p| p.session_expiry_interval = Some(600));
        Raw::connect_with(b.port, c).1.session_present
    };
    assert!(!resume("short"), "expired while the broker was down");
    assert!(resume("long"));
}

/// A journal cut short (a crash in the middle of a write) still starts: the tail is dropped at
/// the last whole batch, the log says so, and the broker serves.
#[test]
fn a_truncated_journal_still_starts() {
    let b = Broker::with_toml(1, BASE);
    let (s, _) = Raw::connect(b.port, Protocol::V311, "torn", false);
    drop(s);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "torn", false);
    s.subscribe("t/#", QoS::AtLeastOnce);
    s.disconnect();
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "p", true);
    for (i, m) in payloads("torn-", 200).iter().enumerate() {
        p.publish_acked("t/x", m, QoS::AtLeastOnce, (i + 1) as u16);
    }
    let dir = b.kill9();
    let journal = std::fs::read_dir(dir.0.join("data/store"))
        .expect("store dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max()
        .expect("a journal file");
    // The journal is preallocated: its data ends at the last non-zero byte.
    let bytes = std::fs::read(&journal).expect("journal");
    let end = bytes.iter().rposition(|b| *b != 0).expect("journal data") + 1;
    assert!(end > 500, "journal of {end} bytes");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .expect("open journal");
    f.set_len((end - 37) as u64).expect("truncate");
    drop(f);

    let b = Broker::launch(1, BASE, dir, &[]);
    let restored = b.metric("ringmq_store_restored_messages").expect("metric");
    assert!((150.0..200.0).contains(&restored), "{restored} restored");
    let (mut s, ack) = Raw::connect(b.port, Protocol::V311, "torn", false);
    assert!(ack.session_present);
    let (got, dups) = receive(&mut s, restored as usize);
    assert_eq!(
        got,
        payloads("torn-", restored as usize),
        "a prefix, in order"
    );
    assert_eq!(dups, 0);
    b.wait_log("restored from the store");
}

/// SO_REUSEPORT would let a second broker bind the same port silently: the store's lock on the
/// data dir refuses it instead.
#[test]
fn a_second_broker_cannot_open_the_same_data_dir() {
    let b = Broker::with_toml(1, BASE);
    let data = b.dir.0.join("data");
    let (ok, _, err) = ringmq(
        &[
            "run",
            "--shards",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ]
        .iter()
        .copied()
        .chain([data.to_str().expect("utf-8 path")])
        .collect::<Vec<_>>(),
        &[],
    );
    assert!(!ok);
    assert!(err.contains("in use by another broker"), "{err}");
}

/// A store that cannot write: a v5 publisher whose message would be queued gets PUBACK 0x80,
/// a v3 one is disconnected, each counted; a publish that needs no store is acknowledged as
/// usual; once the store writes again, so does the broker.
#[test]
fn a_failing_store_acknowledges_nothing_it_did_not_keep() {
    let dir = tempdir::Dir::new();
    let trigger = dir.0.join("disk-broken");
    let trigger_env = trigger.to_str().expect("utf-8").to_string();
    let b = Broker::launch(
        2,
        BASE,
        dir,
        &[("RINGMQ_FAULT_STORE_FAILS", trigger_env.as_str())],
    );
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "offline", false);
    s.subscribe("f/kept", QoS::AtLeastOnce);
    s.disconnect();
    let (mut live, _) = Raw::connect(b.port, Protocol::V311, "live", true);
    live.subscribe("f/live", QoS::AtLeastOnce);
    store_caught_up(&b);
    std::fs::write(&trigger, b"").expect("trigger");

    let (mut v5, _) = Raw::connect(b.port, Protocol::V5, "v5-pub", true);
    let a = v5.publish_acked("f/kept", b"x", QoS::AtLeastOnce, 1);
    assert_eq!(a.reason, ReasonCode::UnspecifiedError);
    let a = v5.publish_acked("f/live", b"not stored, not needed", QoS::AtLeastOnce, 2);
    assert_eq!(a.reason, ReasonCode::Success);
    assert_eq!(&live.recv_publish().payload[..], b"not stored, not needed");
    let (mut v3, _) = Raw::connect(b.port, Protocol::V311, "v3-pub", true);
    v3.publish("f/kept", b"y", QoS::AtLeastOnce, 1);
    assert!(v3.until_closed().is_empty(), "v3: disconnected, no PUBACK");
    assert!(b.metric("ringmq_store_failures_total").unwrap_or(0.0) >= 2.0);
    b.wait_log("the store cannot write");

    let mut c = connect_packet(Protocol::V5, "v5-kept", false);
    c.properties = props(|p| p.session_expiry_interval = Some(600));
    let (mut kept, _) = Raw::connect_with(b.port, c);
    let refused = kept.subscribe("f/other", QoS::AtLeastOnce);
    assert_eq!(
        refused.reasons,
        [ReasonCode::UnspecifiedError],
        "SUBACK 0x80"
    );

    std::fs::remove_file(&trigger).expect("repair");
    let a = v5.publish_acked("f/kept", b"z", QoS::AtLeastOnce, 3);
    assert_eq!(a.reason, ReasonCode::Success);
}

/// `durability.mode = "off"`: memory only, saved at a graceful shutdown and read back; a crash
/// afterwards brings back nothing of that old save (it was removed once read).
#[test]
fn off_mode_saves_at_shutdown_and_a_crash_brings_back_nothing_stale() {
    let off = format!("{BASE}[durability]\nmode = \"off\"\n");
    let b = Broker::with_toml(2, &off);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "sleeper", false);
    s.subscribe("o/#", QoS::AtLeastOnce);
    s.disconnect();
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "p", true);
    for i in 0..5u16 {
        p.publish_acked("o/x", format!("m{i}").as_bytes(), QoS::AtLeastOnce, i + 1);
    }
    let (status, dir) = b.terminate();
    assert!(status.success());

    let b = Broker::launch(2, &off, dir, &[]);
    let (mut s, ack) = Raw::connect(b.port, Protocol::V311, "sleeper", false);
    assert!(ack.session_present);
    let (got, _) = receive(&mut s, 5);
    assert_eq!(got, payloads_m(5));
    s.sync();
    let dir = b.kill9();

    let b = Broker::launch(2, &off, dir, &[]);
    let (mut s, ack) = Raw::connect(b.port, Protocol::V311, "sleeper", false);
    assert!(
        !ack.session_present,
        "memory only: the crash lost it, nothing stale came back"
    );
    s.expect_silence(Duration::from_millis(300));
}

fn payloads_m(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("m{i}").into_bytes()).collect()
}

/// The data dir stays proportional to what is live, not to what went through: 200 MB of
/// queued-then-acknowledged messages leave it far below that.
#[test]
fn the_data_dir_stays_bounded_under_traffic() {
    let b = Broker::with_toml(
        1,
        &format!("{BASE}[mqtt]\nmax_queued_messages = 100000\nmax_queued_bytes = 0\n"),
    );
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "drain", false);
    s.subscribe("big/#", QoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "big-pub", true);
    let payload = vec![0x5au8; 64 * 1024];
    let rounds = 3200;
    for i in 0..rounds {
        p.publish_acked("big/x", &payload, QoS::AtLeastOnce, (i % 60000 + 1) as u16);
        let m = s.recv_publish();
        s.ack(&m);
    }
    s.sync();
    store_caught_up(&b);
    let written = b
        .metric("ringmq_store_written_bytes_total")
        .expect("metric");
    assert!(written > 200e6, "{written} bytes went through the store");
    let bound = 140.0 * 1024.0 * 1024.0;
    eventually("the store's journal was trimmed", || {
        (dir_size(&b.dir.0.join("data/store")) as f64) < bound
    });
    // The broker's own figure agrees (counted in blocks too, once a second).
    eventually("ringmq_store_disk_bytes is under the bound", || {
        b.metric("ringmq_store_disk_bytes")
            .is_some_and(|v| v > 0.0 && v < bound)
    });
}

fn dir_size(p: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            // Blocks, not length: the journal is preallocated sparsely.
            let m = e.metadata().map(|m| (m.is_dir(), m.blocks() * 512));
            match m {
                Ok((true, _)) => dir_size(&e.path()),
                Ok((false, len)) => len,
                Err(_) => 0,
            }
        })
        .sum()
}

/// The `sessions.json` and `retained.json` an older version wrote at shutdown are imported
/// once: the session comes back with its subscription and queued message, the retained
/// message too, and the files are gone (they can never bring stale state back).
#[test]
fn an_older_versions_files_are_imported_once_and_removed() {
    use ringmq::session::{Admit, Delivery, Message, Session, SessionLimits, Subscription};
    let dir = tempdir::Dir::new();
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let now = std::time::Instant::now();
    let msg = |topic: &str, payload: &'static [u8], retain| {
        let p = bytes::Bytes::from_static(payload);
        let m = Message::new(
            topic.into(),
            p,
            QoS::AtLeastOnce,
            retain,
            None,
            "old".into(),
            now,
        );
        std::sync::Arc::new(m)
    };
    let mut s = Session::new("old-client".into(), Protocol::V311);
    s.expiry_interval = 3600;
    let sub = Subscription {
        options: SubOptions::qos(QoS::AtLeastOnce),
        id: None,
    };
    s.subscriptions.insert("old/#".into(), sub);
    let limits = SessionLimits {
        max_queued: 10,
        max_queued_bytes: 0,
        queue_qos0: false,
    };
    let d = Delivery {
        msg: msg("old/x", b"queued before the upgrade", false),
        qos: QoS::AtLeastOnce,
        retain: false,
        sub_ids: Default::default(),
        group: None,
        seq: 0,
        owed: None,
    };
    assert!(matches!(s.admit(d, false, &limits), Admit::Queued));
    let sessions = serde_json::to_vec(&vec![s]).expect("json");
    std::fs::write(data.join("sessions.json"), sessions).expect("sessions.json");
    let retained = serde_json::to_vec(&vec![msg("old/retained", b"kept", true)]).expect("json");
    std::fs::write(data.join("retained.json"), retained).expect("retained.json");

    let b = Broker::launch(2, BASE, dir, &[]);
    assert!(!data.join("sessions.json").exists() && !data.join("retained.json").exists());
    b.wait_log("imported sessions.json and retained.json");
    let (mut c, ack) = Raw::connect(b.port, Protocol::V311, "old-client", false);
    assert!(ack.session_present);
    let (got, dups) = receive(&mut c, 1);
    assert_eq!(
        (got, dups),
        (vec![b"queued before the upgrade".to_vec()], 0)
    );
    let (mut fresh, _) = Raw::connect(b.port, Protocol::V311, "fresh", true);
    fresh.subscribe("old/retained", QoS::AtMostOnce);
    let kept = fresh.recv_publish();
    assert!(kept.retain && &kept.payload[..] == b"kept");
    let dir = b.kill9();
    let b = Broker::launch(2, BASE, dir, &[]);
    // Nothing left to import: the session and the retained message came from the store.
    assert!(!data.join("sessions.json").exists());
    assert_eq!(b.metric("ringmq_store_restored_sessions"), Some(1.0));
    assert_eq!(b.metric("ringmq_store_restored_retained"), Some(1.0));
}

/// A retained message with a message expiry interval is purged by the sweep once it expires,
/// from every replica and from the store (counted), whether or not anyone reads it.
#[test]
fn expired_retained_messages_are_purged_in_the_background() {
    let b = Broker::with_toml(2, BASE);
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "retainer", true);
    let mut short = publish("exp/short", b"brief", QoS::AtLeastOnce, 1);
    short.retain = true;
    short.properties = props(|pr| pr.message_expiry_interval = Some(1));
    p.send(&Packet::Publish(short));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    let mut kept = publish("exp/kept", b"stays", QoS::AtLeastOnce, 2);
    kept.retain = true;
    p.send(&Packet::Publish(kept));
    assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    eventually("the expired one purged", || {
        b.metric("ringmq_retained_expired_total") == Some(1.0)
    });
    assert_eq!(b.metric("ringmq_retained_messages"), Some(1.0));
    let listed = b.ctl_json(&["retained", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let (mut late, _) = Raw::connect(b.port, Protocol::V5, "late", true);
    late.subscribe("exp/#", QoS::AtMostOnce);
    assert_eq!(&late.recv_publish().payload[..], b"stays");
    late.expect_silence(Duration::from_millis(300));
    store_caught_up(&b);
    let dir = b.kill9();
    let b = Broker::launch(2, BASE, dir, &[]);
    assert_eq!(b.metric("ringmq_store_restored_retained"), Some(1.0));
}
