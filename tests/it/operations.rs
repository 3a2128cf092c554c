//! Operations (#8): `ringmq ctl` against a running broker, the admin API's status codes and
//! JSON, a Prometheus scrape parsed as the text format, `$SYS` topics, config errors and
//! environment overrides, JSON logs to a file, and SIGTERM: wills out, v5 clients told 0x8B,
//! state saved to the data dir and back after a restart.

use std::collections::HashMap;
use std::time::Duration;

use ringmq::codec::*;

use crate::harness::{connect_packet, props, publish, ringmq, tempdir, Broker, Raw, WAIT};

const BASE: &str = "[broker]\npin_cores = false\n";

#[test]
fn ctl_drives_every_command() {
    let b = Broker::start(2);
    let (mut c1, _) = Raw::connect(b.port, Protocol::V5, "c1", true);
    c1.subscribe("a/b", QoS::AtLeastOnce);
    let (mut c2, _) = Raw::connect(b.port, Protocol::V311, "c2", true);
    c2.publish_acked("r/1", b"kept", QoS::AtLeastOnce, 1);
    let mut retained = publish("r/1", b"kept", QoS::AtMostOnce, 0);
    retained.retain = true;
    c2.send(&Packet::Publish(retained));
    c2.sync();

    let st = b.ctl_json(&["status"]);
    assert_eq!(st["shards"], 2);
    assert!(["io_uring", "epoll"].contains(&st["driver"].as_str().unwrap_or("")));
    assert_eq!(st["connections"], 2);
    assert_eq!(st["sessions"], 2);
    assert_eq!(st["subscriptions"], 1);
    assert_eq!(st["retained"], 1);
    assert!(st["uptime_secs"].is_u64() && st["msg_in_per_sec"].is_i64());
    let (ok, human, _) = b.ctl(&["status"]);
    assert!(
        ok && human.contains("driver: ") && human.contains("connections: 2"),
        "{human}"
    );

    let clients = b.ctl_json(&["clients", "list"]);
    let ids: Vec<&str> = clients
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["clientid"].as_str())
        .collect();
    assert!(ids.contains(&"c1") && ids.contains(&"c2"), "{clients}");
    let (ok, table, _) = b.ctl(&["clients", "list"]);
    assert!(
        ok && table.starts_with("clientid") && table.contains("c2"),
        "{table}"
    );
    let c1_info = b.ctl_json(&["clients", "show", "c1"]);
    assert_eq!(c1_info["proto_ver"], 5);
    assert_eq!(c1_info["topics"][0], "a/b");
    let (ok, _, err) = b.ctl(&["clients", "show", "nobody"]);
    assert!(!ok && err.contains("no such client"), "{err}");

    let subs = b.ctl_json(&["subscriptions", "show", "c1"]);
    assert_eq!(subs[0]["topic"], "a/b");
    assert_eq!(subs[0]["qos"], 1);
    assert_eq!(
        b.ctl_json(&["subscriptions", "list"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    b.ctl_json(&["subscriptions", "add", "c2", "x/+", "--qos", "1"]);
    c1.publish_acked("x/y", b"via admin", QoS::AtLeastOnce, 7);
    let got = c2.recv_publish();
    assert_eq!(&got.payload[..], b"via admin");
    c2.ack(&got);
    assert_eq!(
        b.ctl_json(&["topics", "list"]),
        serde_json::json!(["a/b", "x/+"])
    );
    b.ctl_json(&["subscriptions", "del", "c2", "x/+"]);
    c1.publish_acked("x/y", b"gone", QoS::AtLeastOnce, 8);
    c2.expect_silence(Duration::from_millis(300));

    let r = b.ctl_json(&["retained", "list"]);
    assert_eq!(r[0]["topic"], "r/1");
    assert_eq!(b.ctl_json(&["retained", "show", "r/1"])["payload"], "kept");
    assert_eq!(b.ctl_json(&["retained", "clean", "r/1"])["removed"], 1);
    assert_eq!(b.ctl_json(&["retained", "list"]), serde_json::json!([]));

    assert_eq!(
        b.ctl_json(&["log", "level", "debug,ringmq=trace"])["level"],
        "debug,ringmq=trace"
    );
    assert_eq!(b.ctl_json(&["log", "level"])["level"], "debug,ringmq=trace");
    let (ok, _, err) = b.ctl(&["log", "level", "ringmq=loudest"]);
    assert!(!ok && err.contains("bad log level"), "{err}");

    b.ctl_json(&["trace", "client", "c2"]);
    b.ctl_json(&["trace", "topic", "traced/#"]);
    assert_eq!(
        b.ctl_json(&["trace", "list"])["clients"],
        serde_json::json!(["c2"])
    );
    c2.publish_acked("traced/t", b"x", QoS::AtLeastOnce, 3);
    b.wait_log("PUBLISH in");
    b.wait_log("traced/#");

    assert!(b.ctl_json(&["config", "reload"])["reloaded"].as_bool() == Some(true));

    b.ctl_json(&["clients", "kick", "c1"]);
    let got = c1.until_closed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::AdministrativeAction),
        "{got:?}"
    );
}

#[test]
fn api_status_codes_and_json_shapes() {
    let b = Broker::start(2);
    let (_c, _) = Raw::connect(b.port, Protocol::V5, "api-c", true);
    let (code, body) = b.api("GET", "/api/v1/status", None);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    for key in [
        "version",
        "uptime_secs",
        "shards",
        "driver",
        "connections",
        "sessions",
        "subscriptions",
        "retained",
        "msg_in_per_sec",
        "listeners",
    ] {
        assert!(!v[key].is_null(), "status has {key}: {v}");
    }
    assert_eq!(v["shard_status"].as_array().map(Vec::len), Some(2));
    assert_eq!(b.api("GET", "/api/v1/health", None).0, 200);
    assert_eq!(b.api("GET", "/api/v1/clients/api-c", None).0, 200);
    assert_eq!(b.api("GET", "/api/v1/clients/nope", None).0, 404);
    assert_eq!(b.api("DELETE", "/api/v1/clients/nope", None).0, 404);
    assert_eq!(b.api("GET", "/api/v1/nothing-here", None).0, 404);
    assert_eq!(b.api("POST", "/api/v1/subscribe", Some("{not json")).0, 400);
    assert_eq!(
        b.api(
            "POST",
            "/api/v1/subscribe",
            Some("{\"clientid\":\"api-c\"}")
        )
        .0,
        400
    );
    let bad = b.api(
        "POST",
        "/api/v1/subscribe",
        Some(r#"{"clientid":"api-c","topic":"a/#/b"}"#),
    );
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert_eq!(
        b.api("PUT", "/api/v1/log/level", Some(r#"{"level":"info"}"#))
            .0,
        200
    );
    assert_eq!(b.api("GET", "/api/v1/retained/none/here", None).0, 404);
}

#[test]
fn admin_token_is_required_when_set() {
    let b = Broker::with_toml(1, &format!("{BASE}[admin]\ntoken = \"s3cret\"\n"));
    assert_eq!(b.api("GET", "/api/v1/status", None).0, 401);
    let (ok, _, err) = b.ctl(&["status"]);
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let (ok, out, err) = b.ctl(&["--token", "s3cret", "status"]);
    assert!(ok && out.contains("shards: 1"), "{out}{err}");
}

/// Parses the Prometheus text format: every sample line is `name{labels} value`, every family
/// has HELP and TYPE.
fn scrape(b: &Broker) -> HashMap<String, f64> {
    let (code, text) = b.api("GET", "/metrics", None);
    assert_eq!(code, 200);
    let mut samples = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let name = it.next().expect("name");
            assert!(matches!(it.next(), Some("gauge" | "counter")), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().expect("name");
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = key.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
        samples.insert(
            key.to_string(),
            value.parse::<f64>().expect("numeric value"),
        );
    }
    samples
}

#[test]
fn prometheus_scrape_counts_what_happened() {
    let b = Broker::start(2);
    let (mut s, _) = Raw::connect(b.port, Protocol::V311, "m-sub", true);
    s.subscribe("m/t", QoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "m-pub", true);
    for i in 1..=5 {
        p.publish_acked("m/t", b"12345", QoS::AtLeastOnce, i);
        let got = s.recv_publish();
        s.ack(&got);
    }
    let mut bad = Raw::open(b.port, Protocol::V311);
    bad.send_bytes(&[0x10, 0x02, 0xff, 0xff]);
    let _ = bad.until_closed();
    crate::harness::eventually("the bad connection counted as closed", || {
        b.metric("ringmq_connections") == Some(2.0)
    });
    let m = scrape(&b);
    assert_eq!(m["ringmq_connections"], 2.0);
    assert_eq!(m["ringmq_sessions"], 2.0);
    assert_eq!(m["ringmq_subscriptions"], 1.0);
    assert_eq!(m["ringmq_messages_received_total{qos=\"1\"}"], 5.0);
    assert_eq!(m["ringmq_messages_sent_total{qos=\"1\"}"], 5.0);
    assert!(m["ringmq_bytes_received_total"] > 50.0);
    assert!(m["ringmq_bytes_sent_total"] > 50.0);
    assert_eq!(m["ringmq_protocol_errors_total"], 1.0);
    for key in [
        "ringmq_messages_dropped_total{reason=\"queue_full\"}",
        "ringmq_auth_failures_total",
        "ringmq_loop_lag_microseconds{shard=\"1\"}",
        "ringmq_ring_occupancy{shard=\"0\"}",
        "ringmq_memory_resident_bytes",
    ] {
        assert!(m.contains_key(key), "{key} missing");
    }
}

#[test]
fn sys_topics_and_client_events() {
    let b = Broker::with_toml(2, &format!("{BASE}[sys]\ninterval = 1\n"));
    let (mut w, _) = Raw::connect(b.port, Protocol::V5, "sys-watch", true);
    w.subscribe("$SYS/brokers/+/clients/+/connected", QoS::AtMostOnce);
    w.subscribe("$SYS/brokers/+/uptime", QoS::AtMostOnce);
    let (_ev, _) = Raw::connect(b.port, Protocol::V311, "ev1", true);
    let mut saw_event = false;
    let mut saw_uptime = false;
    while !(saw_event && saw_uptime) {
        let p = w.recv_publish();
        if p.topic.ends_with("/clients/ev1/connected") {
            let v: serde_json::Value = serde_json::from_slice(&p.payload).expect("json event");
            assert_eq!(v["clientid"], "ev1");
            assert_eq!(v["proto_ver"], 4);
            assert!(v["ipaddress"].is_string());
            saw_event = true;
        }
        if p.topic == "$SYS/brokers/ringmq@127.0.0.1/uptime" {
            assert!(std::str::from_utf8(&p.payload)
                .expect("utf8")
                .parse::<u64>()
                .is_ok());
            saw_uptime = true;
        }
    }
    let (mut wr, _) = Raw::connect(b.port, Protocol::V5, "sys-writer", true);
    wr.send(&Packet::Publish(publish(
        "$SYS/brokers/x/uptime",
        b"0",
        QoS::AtLeastOnce,
        9,
    )));
    match wr.recv() {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_config_names_the_key_and_env_overrides_apply() {
    let dir = tempdir::Dir::new();
    let good = dir.0.join("good.toml");
    std::fs::write(&good, ringmq::config::DEFAULT_TOML).expect("write");
    let (ok, out, _) = ringmq(&["check-config", "-c", good.to_str().expect("utf8")], &[]);
    assert!(ok && out.contains(": ok"), "{out}");
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nmax_inflight = 8\nmax_inflihgt = 9\n").expect("write");
    let (ok, _, err) = ringmq(&["check-config", "-c", bad.to_str().expect("utf8")], &[]);
    assert!(
        !ok && err.contains("max_inflihgt") && err.contains("line 3"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "[listeners.t]\ntype = \"tls\"\nbind = \"0.0.0.0:8883\"\n",
    )
    .expect("write");
    let (ok, _, err) = ringmq(&["check-config", "-c", bad.to_str().expect("utf8")], &[]);
    assert!(!ok && err.contains("listeners.t.certfile"), "{err}");
    let (ok, _, err) = ringmq(&["check-config"], &[("RINGMQ_MQTT__MAX_INFLIGHT", "lots")]);
    assert!(!ok && err.contains("max_inflight"), "{err}");
    let (ok, out, err) = ringmq(
        &["print-config"],
        &[
            ("RINGMQ_MQTT__MAX_PACKET_SIZE", "2048"),
            ("RINGMQ_LISTENERS__TCP__BIND", "127.0.0.1:1999"),
        ],
    );
    assert!(
        ok && out.contains("max_packet_size = 2048") && out.contains("127.0.0.1:1999"),
        "{out}{err}"
    );
    let (ok, out, _) = ringmq(&["print-config", "--default"], &[]);
    assert!(ok && out == ringmq::config::DEFAULT_TOML);

    let b = Broker::launch(
        1,
        BASE,
        tempdir::Dir::new(),
        &[("RINGMQ_MQTT__MAX_PACKET_SIZE", "300")],
    );
    let (_c, ack) = Raw::connect(b.port, Protocol::V5, "env", true);
    assert_eq!(
        ack.properties.and_then(|p| p.maximum_packet_size),
        Some(300)
    );
}

#[test]
fn json_logs_to_a_rotating_file() {
    let dir = tempdir::Dir::new();
    let logs = dir.0.join("logs");
    let toml = format!(
        "{BASE}[log]\nformat = \"json\"\noutput = \"file\"\ndir = \"{}\"\n",
        logs.display()
    );
    let b = Broker::launch(1, &toml, dir, &[("RINGMQ_LOG", "info")]);
    let mut bad = Raw::open(b.port, Protocol::V311);
    bad.send_bytes(&[0x20, 0x02, 0, 0]);
    let _ = bad.until_closed();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text: String = std::fs::read_dir(&logs)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let refused = lines.iter().find(|l| l["message"] == "closing connection");
        if let Some(l) = refused {
            assert!(lines.iter().any(|l| l["message"] == "ringmq listening"));
            assert!(
                l["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:")),
                "{l}"
            );
            assert_eq!(l["level"], "INFO");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON refusal line in {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_delivers_wills_tells_v5_clients_and_keeps_state() {
    let b = Broker::start(2);
    let (mut watch, _) = Raw::connect(b.port, Protocol::V5, "watch", true);
    watch.subscribe("wills/#", QoS::AtLeastOnce);
    let mut dying = connect_packet(Protocol::V311, "dying", true);
    dying.will = Some(crate::harness::will(
        "wills/dying",
        b"gone",
        QoS::AtLeastOnce,
    ));
    let (_dying, _) = Raw::connect_with(b.port, dying);
    let mut keep = connect_packet(Protocol::V5, "keeper", false);
    keep.properties = props(|p| p.session_expiry_interval = Some(600));
    let (mut k, _) = Raw::connect_with(b.port, keep.clone());
    k.subscribe("kept/#", QoS::AtLeastOnce);
    let mut r = publish("kept/retained", b"still here", QoS::AtMostOnce, 0);
    r.retain = true;
    k.send(&Packet::Publish(r));
    assert_eq!(&k.recv_publish().payload[..], b"still here");

    b.signal("TERM");
    let will = watch.recv_publish();
    assert_eq!(will.topic, "wills/dying");
    assert_eq!(&will.payload[..], b"gone");
    watch.ack(&will);
    let rest = watch.until_closed();
    assert!(
        rest.iter().any(
            |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::ServerShuttingDown)
        ),
        "{rest:?}"
    );
    let (status, dir) = b.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(dir.0.join("data/store").is_dir());
    assert!(
        !dir.0.join("data/sessions.json").exists(),
        "one format: the store"
    );

    let b = Broker::launch(3, BASE, dir, &[]);
    b.wait_log("restored from the store");
    let (mut k, ack) = Raw::connect_with(b.port, keep);
    assert!(ack.session_present, "the persistent session came back");
    let (mut p, _) = Raw::connect(b.port, Protocol::V311, "after", true);
    p.publish_acked("kept/x", b"after restart", QoS::AtLeastOnce, 1);
    let got = k.recv_publish();
    assert_eq!(&got.payload[..], b"after restart");
    k.ack(&got);
    p.subscribe("kept/retained", QoS::AtMostOnce);
    let got = p.recv_publish();
    assert!(got.retain && &got.payload[..] == b"still here");
}
