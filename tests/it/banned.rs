//! Banned clients: a CONNECT matching a ban by client id, username or peer address is refused
//! (v5 0x8A, v3 return code 5) until the ban expires or is lifted; adding a ban kicks a
//! connected client it matches, on whatever shard it is; bans survive kill -9.

use crate::harness::*;
use ringmq::codec::*;

const BASE: &str = "[broker]\npin_cores = false\n";

fn bans(b: &Broker) -> Vec<serde_json::Value> {
    match b.ctl_json(&["banned", "list"]) {
        serde_json::Value::Array(rows) => rows,
        other => panic!("banned list is not a list: {other}"),
    }
}

fn as_user(id: &str, user: &str) -> Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.username = Some(user.into());
    c
}

#[test]
fn each_kind_of_ban_refuses_with_the_right_code_until_lifted_or_expired() {
    let b = Broker::with_toml(2, BASE);
    let (ok, _, err) = b.ctl(&["banned", "add", "clientid", "bad-id", "--reason", "tests"]);
    assert!(ok, "ctl banned add: {err}");
    let (status, body) = b.api(
        "POST",
        "/api/v1/banned",
        Some(r#"{"as": "username", "who": "mallory", "reason": "spam", "duration": 3600}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = b.api(
        "POST",
        "/api/v1/banned",
        Some(r#"{"as": "peerhost", "who": "not-an-ip"}"#),
    );
    assert_eq!(status, 400);

    let v5 = connect_packet(Protocol::V5, "bad-id", true);
    assert_eq!(connack(b.port, v5), Some(ReasonCode::Banned));
    let v3 = connect_packet(Protocol::V311, "bad-id", true);
    assert_eq!(
        connack(b.port, v3),
        Some(ReasonCode::NotAuthorized),
        "v3: return code 5"
    );
    assert_eq!(
        connack(b.port, as_user("someone", "mallory")),
        Some(ReasonCode::Banned)
    );
    assert_eq!(
        connack(b.port, as_user("someone", "alice")),
        Some(ReasonCode::Success)
    );
    assert_eq!(b.metric("ringmq_banned_refused_total"), Some(3.0));
    let listed = bans(&b);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|r| r["as"] == "username"
        && r["who"] == "mallory"
        && r["reason"] == "spam"
        && r["until_ms"].is_u64()));
    assert!(
        listed
            .iter()
            .any(|r| r["as"] == "clientid" && r["until_ms"].is_null()),
        "permanent"
    );

    let (ok, _, err) = b.ctl(&["banned", "del", "clientid", "bad-id"]);
    assert!(ok, "ctl banned del: {err}");
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V5, "bad-id", true)),
        Some(ReasonCode::Success)
    );
    let (status, _) = b.api("DELETE", "/api/v1/banned/clientid/bad-id", None);
    assert_eq!(status, 404, "already lifted");

    // A peer ban (the loopback block, as CIDR) with an expiry: refused until it passes.
    let (ok, _, err) = b.ctl(&[
        "banned",
        "add",
        "peerhost",
        "127.0.0.0/8",
        "--duration",
        "1",
    ]);
    assert!(ok, "{err}");
    let until = bans(&b)
        .iter()
        .find(|r| r["as"] == "peerhost")
        .and_then(|r| r["until_ms"].as_u64())
        .expect("expiry");
    let refused = connack(b.port, connect_packet(Protocol::V5, "anyone", true));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    if now < until {
        assert_eq!(refused, Some(ReasonCode::Banned));
    }
    eventually("the peer ban expired", || {
        connack(b.port, connect_packet(Protocol::V5, "anyone", true)) == Some(ReasonCode::Success)
    });
    eventually("the sweep dropped it", || bans(&b).len() == 1);
}

#[test]
fn a_new_ban_kicks_the_client_and_bans_survive_kill_9() {
    let b = Broker::with_toml(3, BASE);
    let mut victims: Vec<Raw> = (0..3)
        .map(|i| Raw::connect(b.port, Protocol::V5, &format!("victim-{i}"), true).0)
        .collect();
    let (mut bystander, _) = Raw::connect(b.port, Protocol::V5, "bystander", true);
    for i in 0..3 {
        let (ok, _, err) = b.ctl(&["banned", "add", "clientid", &format!("victim-{i}")]);
        assert!(ok, "{err}");
    }
    for v in &mut victims {
        let got = v.until_closed();
        assert!(
            matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode::AdministrativeAction),
            "kicked with 0x98: {got:?}"
        );
    }
    bystander.sync();
    // An answered ban is in the store: killed at once, nothing waited for.
    let dir = b.kill9();
    let b = Broker::launch(3, BASE, dir, &[]);
    assert_eq!(bans(&b).len(), 3);
    for i in 0..3 {
        let c = connect_packet(Protocol::V5, &format!("victim-{i}"), true);
        assert_eq!(
            connack(b.port, c),
            Some(ReasonCode::Banned),
            "victim-{i} after the restart"
        );
    }
}

/// A ban the store cannot keep is refused to the operator, not answered as made.
#[test]
fn a_ban_the_store_cannot_keep_is_an_error() {
    let dir = tempdir::Dir::new();
    let trigger = dir.0.join("disk-broken");
    let env = trigger.to_str().expect("utf-8").to_string();
    let b = Broker::launch(2, BASE, dir, &[("RINGMQ_FAULT_STORE_FAILS", env.as_str())]);
    std::fs::write(&trigger, b"").expect("trigger");
    let (ok, _, err) = b.ctl(&["banned", "add", "clientid", "not-kept"]);
    assert!(!ok, "answered as made");
    assert!(err.contains("the store could not keep the change"), "{err}");
    std::fs::remove_file(&trigger).expect("heal");
    let (ok, _, err) = b.ctl(&["banned", "add", "clientid", "kept"]);
    assert!(ok, "{err}");
}
