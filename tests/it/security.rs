//! Security and protection (#6): authentication (ringmq's and Mosquitto's password files),
//! ACLs on publish and subscribe (both file formats, placeholders, impersonation attempts),
//! reload without disconnects and a broken reload refused, every limit answered with its
//! code, overload refusal, and floods that leave other clients' messages untouched.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringmq::codec::*;

use crate::harness::{connack, connect_packet, publish, tempdir, Broker, Raw, WAIT};

const BASE: &str = "[broker]\npin_cores = false\n";

fn passwd(file: &Path, args: &[&str]) {
    let ok = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("passwd")
        .args(args.iter().take_while(|a| a.starts_with('-')))
        .arg(file)
        .args(args.iter().skip_while(|a| a.starts_with('-')))
        .status()
        .expect("ringmq passwd")
        .success();
    assert!(ok, "ringmq passwd {args:?}");
}

fn with_user(proto: Protocol, id: &str, user: Option<&str>, pw: Option<&str>) -> Connect {
    let mut c = connect_packet(proto, id, true);
    c.username = user.map(Into::into);
    c.password = pw.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    c
}

/// SUBSCRIBE to one filter; the SUBACK's reason for it.
fn granted(c: &mut Raw, filter: &str, qos: QoS) -> ReasonCode {
    c.subscribe(filter, qos).reasons[0]
}

/// Sends CONNECT and returns the CONNACK's reason (None when the broker closed without one).
fn auth_broker(extra: &str) -> (Broker, PathBuf) {
    let dir = tempdir::Dir::new();
    let file = dir.0.join("passwd");
    passwd(&file, &["-c", "-b", "alice", "wonderland"]);
    passwd(&file, &["-b", "bob", "builder"]);
    let toml = format!(
        "{BASE}[auth]\npassword_file = \"{}\"\n{extra}",
        file.display()
    );
    (Broker::launch(2, &toml, dir, &[]), file)
}

#[test]
fn passwords_are_hashed_and_checked() {
    let (b, file) = auth_broker("");
    let text = std::fs::read_to_string(&file).expect("passwd file");
    assert!(
        !text.contains("wonderland") && text.contains("alice:$7$"),
        "{text}"
    );
    use ReasonCode::*;
    let p = b.port;
    assert_eq!(
        connack(p, with_user(Protocol::V311, "a", None, None)),
        Some(NotAuthorized)
    );
    assert_eq!(
        connack(p, with_user(Protocol::V5, "a", None, None)),
        Some(NotAuthorized)
    );
    assert_eq!(
        connack(p, with_user(Protocol::V311, "a", Some("alice"), Some("x"))),
        Some(BadUserNameOrPassword)
    );
    assert_eq!(
        connack(p, with_user(Protocol::V5, "a", Some("alice"), Some("x"))),
        Some(BadUserNameOrPassword)
    );
    assert_eq!(
        connack(p, with_user(Protocol::V5, "a", Some("carol"), Some("x"))),
        Some(BadUserNameOrPassword)
    );
    assert_eq!(
        connack(p, with_user(Protocol::V5, "a", None, Some("wonderland"))),
        Some(BadUserNameOrPassword)
    );
    assert_eq!(
        connack(
            p,
            with_user(Protocol::V311, "a", Some("alice"), Some("wonderland"))
        ),
        Some(Success)
    );
    assert_eq!(
        connack(
            p,
            with_user(Protocol::V5, "b", Some("bob"), Some("builder"))
        ),
        Some(Success)
    );
    // A username holding U+0000 is malformed: the connection is closed without a session.
    let mut raw = Raw::open(p, Protocol::V311);
    let mut bytes = bytes::BytesMut::new();
    let mut c = with_user(Protocol::V311, "nul", Some("alice"), Some("wonderland"));
    c.username = Some("ali\u{1}e".into());
    encode(&Packet::Connect(Box::new(c)), Protocol::V311, &mut bytes);
    let at = bytes.iter().position(|&x| x == 1).expect("marker");
    bytes[at] = 0;
    raw.send_bytes(&bytes);
    assert!(!raw
        .until_closed()
        .iter()
        .any(|p| matches!(p, Packet::ConnAck(a) if a.reason == Success)));
    // Deleting a user takes effect on reload.
    passwd(&file, &["-D", "bob"]);
    b.signal("HUP");
    b.wait_log("configuration reloaded");
    assert_eq!(
        connack(
            p,
            with_user(Protocol::V5, "b", Some("bob"), Some("builder"))
        ),
        Some(BadUserNameOrPassword)
    );
    b.wait_log("authentication failed");
    let log = b.log_text();
    assert!(log.contains("peer=127.0.0.1:"));
    assert!(
        !log.contains("wonderland") && !log.contains("builder"),
        "passwords never logged"
    );
}

#[test]
fn mosquitto_password_and_acl_files_are_read_as_is() {
    let dir = tempdir::Dir::new();
    let pw = dir.0.join("mosq_passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&pw)
        .args(["dave", "s3cret"])
        .status()
        .expect("mosquitto_passwd (installed by tests/run.sh)")
        .success();
    assert!(ok);
    let acl = dir.0.join("mosq_acl");
    std::fs::write(
        &acl,
        "# Mosquitto ACL\ntopic read public/#\n\nuser dave\ntopic readwrite dave/#\ntopic deny dave/secret\npattern write clients/%c/status\n",
    )
    .expect("acl");
    let toml = format!(
        "{BASE}[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\n",
        pw.display(),
        acl.display()
    );
    let b = Broker::launch(2, &toml, dir, &[]);
    let (mut d, _) = Raw::connect_with(
        b.port,
        with_user(Protocol::V5, "dv", Some("dave"), Some("s3cret")),
    );
    let (mut ds, _) = Raw::connect_with(
        b.port,
        with_user(Protocol::V5, "dv-sub", Some("dave"), Some("s3cret")),
    );
    assert_eq!(
        connack(
            b.port,
            with_user(Protocol::V5, "x", Some("dave"), Some("nope"))
        ),
        Some(ReasonCode::BadUserNameOrPassword)
    );
    assert_eq!(
        granted(&mut ds, "dave/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    assert_eq!(
        granted(&mut ds, "public/#", QoS::AtLeastOnce),
        ReasonCode::NotAuthorized,
        "public is the anonymous section's"
    );
    assert_eq!(
        d.publish_acked("dave/x", b"1", QoS::AtLeastOnce, 1).reason,
        ReasonCode::Success
    );
    assert_eq!(
        d.publish_acked("dave/secret", b"1", QoS::AtLeastOnce, 2)
            .reason,
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        d.publish_acked("clients/dv/status", b"1", QoS::AtLeastOnce, 3)
            .reason,
        ReasonCode::Success
    );
    assert_eq!(
        d.publish_acked("clients/other/status", b"1", QoS::AtLeastOnce, 4)
            .reason,
        ReasonCode::NotAuthorized
    );
    let got = ds.recv_publish();
    assert_eq!(got.topic, "dave/x");
}

fn acl_broker(rules: &str, extra: &str) -> (Broker, PathBuf) {
    let dir = tempdir::Dir::new();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, rules).expect("acl");
    let toml = format!("{BASE}[auth]\nacl_file = \"{}\"\n{extra}", acl.display());
    (Broker::launch(2, &toml, dir, &[]), acl)
}

const RULES: &str = "\
deny  all subscribe eq #
allow user alice publish sensors/%u/#
allow all subscribe sensors/#
allow all all devices/${clientid}/#
allow ip 127.0.0.0/8 subscribe $SYS/#
";

#[test]
fn acl_rules_on_publish_and_subscribe() {
    let (b, _) = acl_broker(RULES, "");
    let (mut watch, _) = Raw::connect(b.port, Protocol::V5, "watcher", true);
    assert_eq!(
        granted(&mut watch, "sensors/#", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1
    );
    assert_eq!(
        granted(&mut watch, "#", QoS::AtMostOnce),
        ReasonCode::NotAuthorized
    );
    assert_eq!(
        granted(&mut watch, "other/+", QoS::AtMostOnce),
        ReasonCode::NotAuthorized
    );
    let (mut sys, _) = Raw::connect(b.port, Protocol::V5, "sys", true);
    assert_eq!(
        granted(&mut sys, "$SYS/#", QoS::AtMostOnce),
        ReasonCode::Success
    );
    assert_eq!(
        granted(&mut sys, "$share/g/sensors/x", QoS::AtMostOnce),
        ReasonCode::Success
    );
    let (mut v3, _) = Raw::connect(b.port, Protocol::V311, "v3sub", true);
    assert_eq!(
        granted(&mut v3, "secret/#", QoS::AtMostOnce),
        ReasonCode::UnspecifiedError
    );

    let (mut alice, _) =
        Raw::connect_with(b.port, with_user(Protocol::V5, "a1", Some("alice"), None));
    assert_eq!(
        alice
            .publish_acked("sensors/alice/t", b"ok", QoS::AtLeastOnce, 1)
            .reason,
        ReasonCode::Success
    );
    assert_eq!(
        alice
            .publish_acked("sensors/bob/t", b"no", QoS::AtLeastOnce, 2)
            .reason,
        ReasonCode::NotAuthorized
    );
    let got = watch.recv_publish();
    assert_eq!(got.topic, "sensors/alice/t");
    watch.ack(&got);
    // v3: a refused publish is acknowledged (v3 has no code) and dropped.
    let (mut alice3, _) =
        Raw::connect_with(b.port, with_user(Protocol::V311, "a3", Some("alice"), None));
    alice3.publish_acked("sensors/bob/t", b"dropped", QoS::AtLeastOnce, 1);
    watch.expect_silence(Duration::from_millis(300));

    // %c: own devices only; a client id with wildcards cannot widen the rule.
    let (mut dev, _) = Raw::connect(b.port, Protocol::V5, "dev1", true);
    assert_eq!(
        granted(&mut dev, "devices/dev1/#", QoS::AtMostOnce),
        ReasonCode::Success
    );
    assert_eq!(
        granted(&mut dev, "devices/dev2/#", QoS::AtMostOnce),
        ReasonCode::NotAuthorized
    );
    let (mut sneaky, _) = Raw::connect(b.port, Protocol::V5, "+", true);
    assert_eq!(
        granted(&mut sneaky, "devices/+/#", QoS::AtMostOnce),
        ReasonCode::NotAuthorized
    );
    let (mut sneaky2, _) = Raw::connect(b.port, Protocol::V5, "#", true);
    assert_eq!(
        sneaky2
            .publish_acked("devices/x/y", b"", QoS::AtLeastOnce, 1)
            .reason,
        ReasonCode::NotAuthorized
    );
    // A will on a forbidden topic refuses the connection.
    let mut c = connect_packet(Protocol::V5, "willy", true);
    c.will = Some(crate::harness::will("forbidden/w", b"w", QoS::AtMostOnce));
    assert_eq!(connack(b.port, c), Some(ReasonCode::NotAuthorized));
    let m = b.api("GET", "/metrics", None).1;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ringmq_acl_denied_total ") && !l.ends_with(" 0")),
        "{m}"
    );
}

#[test]
fn reload_applies_without_disconnects_and_a_broken_file_keeps_the_old_rules() {
    let (b, acl) = acl_broker("allow all subscribe #\n", "acl_nomatch = \"deny\"\n");
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "rl-sub", true);
    sub.subscribe("x/#", QoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "rl-pub", true);
    assert_eq!(
        p.publish_acked("x/1", b"a", QoS::AtLeastOnce, 1).reason,
        ReasonCode::NotAuthorized
    );
    std::fs::write(&acl, "allow all subscribe #\nallow all publish x/#\n").expect("acl");
    let (ok, out, err) = b.ctl(&["config", "reload"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        p.publish_acked("x/1", b"b", QoS::AtLeastOnce, 2).reason,
        ReasonCode::Success
    );
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"b");
    sub.ack(&got);
    std::fs::write(&acl, "allow all subscribe #\nallow everybody publish x/#\n").expect("acl");
    let (ok, _, err) = b.ctl(&["config", "reload"]);
    assert!(
        !ok && err.contains(&format!("{}:2:", acl.display())) && err.contains("unknown who"),
        "{err}"
    );
    b.signal("HUP");
    b.wait_log("reload failed");
    assert_eq!(
        p.publish_acked("x/1", b"c", QoS::AtLeastOnce, 3).reason,
        ReasonCode::Success,
        "old rules kept"
    );
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"c");
    sub.ack(&got);
    let st = b.ctl_json(&["status"]);
    assert_eq!(
        st["connections"], 2,
        "nobody was disconnected by the reloads"
    );
}

#[test]
fn connection_limits_answer_with_their_codes() {
    let b = Broker::with_toml(
        2,
        &format!("{BASE}max_connections = 2\n[mqtt]\nmax_client_id_len = 8\n"),
    );
    let (_a, _) = Raw::connect(b.port, Protocol::V5, "l1", true);
    let (_b, _) = Raw::connect(b.port, Protocol::V311, "l2", true);
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V5, "l3", true)),
        Some(ReasonCode::QuotaExceeded)
    );
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V311, "l4", true)),
        Some(ReasonCode::ServerUnavailable)
    );
    drop(_b);
    crate::harness::eventually("l2's connection closed", || {
        b.metric("ringmq_connections") == Some(1.0)
    });
    assert_eq!(
        connack(
            b.port,
            connect_packet(Protocol::V5, "much-too-long-id", true)
        ),
        Some(ReasonCode::ClientIdentifierNotValid)
    );
}

#[test]
fn subscription_retained_and_queue_limits() {
    let b = Broker::with_toml(
        2,
        &format!("{BASE}[mqtt]\nmax_subscriptions = 2\nmax_retained_messages = 1\nmax_retained_payload = 8\nmax_topic_length = 20\nmax_queued_bytes = 10\n"),
    );
    let (mut c, _) = Raw::connect(b.port, Protocol::V5, "subs", true);
    assert_eq!(granted(&mut c, "a", QoS::AtMostOnce), ReasonCode::Success);
    assert_eq!(granted(&mut c, "b", QoS::AtMostOnce), ReasonCode::Success);
    assert_eq!(
        granted(&mut c, "c", QoS::AtMostOnce),
        ReasonCode::QuotaExceeded
    );
    assert_eq!(
        granted(&mut c, "a", QoS::AtLeastOnce),
        ReasonCode::GrantedQos1,
        "re-subscribing is not a new one"
    );
    assert_eq!(
        granted(&mut c, "this/filter/is/far/too/long", QoS::AtMostOnce),
        ReasonCode::TopicFilterInvalid
    );
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "ret", true);
    for (topic, payload) in [
        ("r/1", &b"small"[..]),
        ("r/2", b"second"),
        ("r/3", b"far too large"),
    ] {
        let mut m = publish(topic, payload, QoS::AtLeastOnce, 1);
        m.retain = true;
        p.send(&Packet::Publish(m));
        assert!(matches!(p.recv(), Some(Packet::PubAck(_))));
    }
    let mut retained = serde_json::Value::Null;
    crate::harness::eventually("the retained listing settles", || {
        retained = b.ctl_json(&["retained", "list"]);
        retained.as_array().map(Vec::len) == Some(1)
    });
    assert_eq!(retained.as_array().map(Vec::len), Some(1), "{retained}");
    assert_eq!(retained[0]["topic"], "r/1");
    // A long topic name closes the publisher with 0x90.
    p.send(&Packet::Publish(publish(
        "a/very/long/topic/name/here",
        b"x",
        QoS::AtMostOnce,
        0,
    )));
    let got = p.until_closed();
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::TopicNameInvalid),
        "{got:?}"
    );
    // Queued bytes: an offline session keeps at most 10 payload bytes.
    let mut q = connect_packet(Protocol::V5, "queued", false);
    q.properties = crate::harness::props(|pr| pr.session_expiry_interval = Some(60));
    let (mut qc, _) = Raw::connect_with(b.port, q.clone());
    qc.subscribe("q", QoS::AtLeastOnce);
    qc.disconnect();
    let (mut p2, _) = Raw::connect(b.port, Protocol::V5, "qp", true);
    for i in 1..=5 {
        p2.publish_acked("q", b"1234", QoS::AtLeastOnce, i);
    }
    let (mut qc, _) = Raw::connect_with(b.port, q);
    let mut n = 0;
    while let Ok(Some(Packet::Publish(pkt))) = qc.recv_within(Duration::from_millis(500)) {
        qc.ack(&pkt);
        n += 1;
    }
    assert_eq!(n, 2, "two 4-byte payloads fit in 10 bytes");
}

#[test]
fn publish_rate_flapping_and_connect_rate() {
    let b = Broker::with_toml(
        2,
        &format!("{BASE}[limits]\npublish_rate = 20\npublish_burst = 5\nflapping_max_connects = 3\nflapping_window = 60\nflapping_ban = 60\n"),
    );
    let (mut fast5, _) = Raw::connect(b.port, Protocol::V5, "fast5", true);
    fast5.send_all(
        (1..=50u16).map(|i| Packet::Publish(publish("flood", b"x", QoS::AtLeastOnce, i))),
    );
    let got = fast5.until_closed();
    assert!(
        got.iter().any(
            |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::MessageRateTooHigh)
        ),
        "{got:?}"
    );
    // v3 has no such code: the client is read more slowly, never disconnected, nothing lost.
    let (mut fast3, _) = Raw::connect(b.port, Protocol::V311, "fast3", true);
    for i in 1..=30u16 {
        fast3.send(&Packet::Publish(publish(
            "flood",
            b"x",
            QoS::AtLeastOnce,
            i,
        )));
    }
    let mut acks = 0;
    while acks < 30 {
        match fast3.recv_within(WAIT) {
            Ok(Some(Packet::PubAck(_))) => acks += 1,
            other => panic!("v3 flooder: {other:?}"),
        }
    }
    let m = b.api("GET", "/metrics", None).1;
    assert!(m
        .lines()
        .any(|l| l.starts_with("ringmq_rate_limited_total ") && !l.ends_with(" 0")));

    for _ in 0..3 {
        let (c, _) = Raw::connect(b.port, Protocol::V5, "flapper", true);
        c.disconnect();
    }
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V5, "flapper", true)),
        Some(ReasonCode::Banned)
    );
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V5, "steady", true)),
        Some(ReasonCode::Success)
    );

    let rate = Broker::with_toml(
        1,
        &format!(
            "{BASE}[listeners.tcp]\nbind = \"127.0.0.1:{}\"\nmax_connect_rate = 2\n",
            crate::harness::free_port()
        ),
    );
    let port: u16 = rate.ctl_json(&["status"])["listeners"][0]["bind"]
        .as_str()
        .and_then(|a| a.rsplit(':').next()?.parse().ok())
        .expect("listener port");
    let codes: Vec<_> = (0..6)
        .map(|i| connack(port, connect_packet(Protocol::V5, &format!("r{i}"), true)))
        .collect();
    assert!(
        codes.contains(&Some(ReasonCode::ConnectionRateExceeded)),
        "{codes:?}"
    );
}

#[test]
fn overload_refuses_new_connections_and_keeps_old_ones() {
    let b = Broker::with_toml(2, &format!("{BASE}[overload]\nmemory_budget_mb = 1\n"));
    let (mut old, _) = Raw::connect(b.port, Protocol::V5, "old", true);
    b.wait_log("refusing new connections");
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V5, "new5", true)),
        Some(ReasonCode::ServerBusy)
    );
    assert_eq!(
        connack(b.port, connect_packet(Protocol::V311, "new3", true)),
        Some(ReasonCode::ServerUnavailable)
    );
    old.send(&Packet::PingReq);
    assert!(
        matches!(old.recv(), Some(Packet::PingResp)),
        "an existing client is served"
    );
}

#[test]
fn floods_leave_other_clients_whole() {
    let b = Broker::with_toml(
        2,
        &format!("{BASE}[limits]\npublish_rate = 1000\npublish_burst = 100\n"),
    );
    let (mut s, _) = Raw::connect(b.port, Protocol::V5, "calm-sub", true);
    s.subscribe("calm", QoS::AtLeastOnce);
    let (mut p, _) = Raw::connect(b.port, Protocol::V5, "calm-pub", true);
    let port = b.port;
    let connect_flood = std::thread::spawn(move || {
        let mut n = 0;
        for i in 0..300 {
            let mut raw = Raw::open(port, Protocol::V311);
            raw.send(&Packet::Connect(Box::new(connect_packet(
                Protocol::V311,
                &format!("cf{i}"),
                true,
            ))));
            if matches!(raw.recv(), Some(Packet::ConnAck(_))) {
                n += 1;
            }
        }
        n
    });
    let publish_flood = std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut bytes = bytes::BytesMut::new();
        let c = connect_packet(Protocol::V5, "flooder", true);
        encode(&Packet::Connect(Box::new(c)), Protocol::V5, &mut bytes);
        for _ in 0..5000 {
            encode(
                &Packet::Publish(publish("flood/x", &[0u8; 512], QoS::AtMostOnce, 0)),
                Protocol::V5,
                &mut bytes,
            );
        }
        // The broker disconnects the flooder (0x96) part way: later writes may fail.
        let _ = f.write_all(&bytes);
    });
    for i in 1..=200u16 {
        std::thread::sleep(Duration::from_millis(2));
        p.publish_acked("calm", &i.to_be_bytes(), QoS::AtLeastOnce, i);
        let got = s.recv_publish();
        assert_eq!(&got.payload[..], &i.to_be_bytes());
        s.ack(&got);
    }
    assert_eq!(connect_flood.join().expect("connect flood"), 300);
    publish_flood.join().expect("publish flood");
    b.wait_log("publish rate exceeded");
    let st = b.ctl_json(&["clients", "show", "calm-sub"]);
    assert_eq!(st["connected"], true);
}

#[test]
fn reload_applies_listener_limits_by_name() {
    let dir = tempdir::Dir::new();
    let cfg = dir.0.join("ringmq.toml");
    let (tcp, other) = (crate::harness::free_port(), crate::harness::free_port());
    let listener = |max: usize| {
        format!("{BASE}[listeners.tcp]\nbind = \"127.0.0.1:{tcp}\"\nmax_connections = {max}\n")
    };
    let b = Broker::launch(2, &listener(0), dir, &[]);
    let (_a, _) = Raw::connect(tcp, Protocol::V5, "lim-a", true);
    let (_b, _) = Raw::connect(tcp, Protocol::V5, "lim-b", true);
    // A listener named before "tcp" is added: it waits for a restart, and "tcp" still gets
    // its own new settings.
    let added = format!("[listeners.aaa]\nbind = \"127.0.0.1:{other}\"\n");
    std::fs::write(&cfg, listener(2) + &added).expect("config");
    let (ok, out, err) = b.ctl(&["config", "reload"]);
    assert!(ok, "{out}{err}");
    b.wait_log("listener addresses and types change only at restart");
    assert_eq!(
        connack(tcp, connect_packet(Protocol::V5, "lim-c", true)),
        Some(ReasonCode::QuotaExceeded)
    );
}

/// Passwords are verified on checker threads, never on a shard: a CONNECT with packets
/// pipelined behind it waits for its verdict and then has them all handled in order, a wrong
/// password gets 0x86 (v3: 4), and a flood of wrong passwords (each new, so none is
/// remembered) leaves another pair's QoS 1 exchange lossless.
#[test]
fn password_checks_wait_off_the_shard_and_keep_order() {
    let (b, _file) = auth_broker("password_threads = 1\n");
    let mut raw = Raw::open(b.port, Protocol::V5);
    raw.send_all([
        Packet::Connect(Box::new(with_user(
            Protocol::V5,
            "pipelined",
            Some("alice"),
            Some("wonderland"),
        ))),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("own/t".into(), SubOptions::qos(QoS::AtLeastOnce))],
            properties: None,
        }),
        Packet::Publish(publish("own/t", b"to myself", QoS::AtLeastOnce, 2)),
    ]);
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        match raw.recv() {
            Some(Packet::ConnAck(a)) => kinds.push(format!("connack {:?}", a.reason)),
            Some(Packet::SubAck(_)) => kinds.push("suback".into()),
            Some(Packet::PubAck(_)) => kinds.push("puback".into()),
            Some(Packet::Publish(p)) => kinds.push(format!("publish {:?}", p.payload)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds[0], "connack Success");
    for k in ["suback", "puback", "publish b\"to myself\""] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing: {kinds:?}");
    }
    let (mut sub, _) = Raw::connect_with(
        b.port,
        with_user(Protocol::V311, "sub", Some("bob"), Some("builder")),
    );
    sub.subscribe("pair/t", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect_with(
        b.port,
        with_user(Protocol::V311, "pub", Some("bob"), Some("builder")),
    );
    let flood = std::thread::spawn({
        let port = b.port;
        move || {
            for i in 0..100 {
                let wrong = format!("guess-{i}");
                let proto = if i % 2 == 0 {
                    Protocol::V5
                } else {
                    Protocol::V311
                };
                let c = with_user(proto, &format!("guess{i}"), Some("alice"), Some(&wrong));
                assert_eq!(
                    connack(port, c),
                    Some(ReasonCode::BadUserNameOrPassword),
                    "guess {i}"
                );
            }
        }
    });
    for i in 1..=200u16 {
        publ.publish_acked("pair/t", &i.to_be_bytes(), QoS::AtLeastOnce, i);
        let got = sub.recv_publish();
        assert_eq!(&got.payload[..], &i.to_be_bytes(), "in order, none lost");
        sub.ack(&got);
    }
    flood.join().expect("flood");
    assert_eq!(b.metric("ringmq_auth_failures_total"), Some(100.0));
}
