//! PROXY protocol listeners (#15): a raw client sends the v1 or v2 header a load balancer
//! would, and the broker takes the address in it for the client's: the ACL's `ip` rule allows
//! or denies by it and `ctl clients show` shows it. A malformed or missing header closes that
//! connection alone (logged and counted) while a client on the same listener carries on.

use std::net::SocketAddr;
use std::time::Duration;

use ringmq::codec::*;
use ringmq::proxy_protocol::v2_header;

use crate::harness::{connect_packet, free_port, tempdir, Broker, Raw};

/// Lets 192.0.2.0/24 publish to `t` and everyone subscribe; nothing else.
const RULES: &str = "allow ip 192.0.2.0/24 publish t\nallow all subscribe #\n";

fn proxied_broker() -> (Broker, u16) {
    let dir = tempdir::Dir::new();
    let acl = dir.0.join("acl");
    std::fs::write(&acl, RULES).expect("acl");
    let port = free_port();
    let toml = format!(
        "[broker]\npin_cores = false\n[auth]\nacl_file = \"{}\"\n\
         [listeners.lb]\ntype = \"tcp\"\nbind = \"127.0.0.1:{port}\"\nproxy_protocol = true\n\
         proxy_protocol_timeout = 1\n",
        acl.display()
    );
    (Broker::launch(2, &toml, dir, &[]), port)
}

/// Connects through the "load balancer": `header`, then CONNECT in the same write (as a proxy
/// forwards a client that spoke at once).
fn connect_behind(port: u16, header: &[u8], proto: Protocol, id: &str) -> Raw {
    let mut raw = Raw::open(port, proto);
    let mut bytes = header.to_vec();
    let mut connect = bytes::BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect_packet(proto, id, true))),
        proto,
        &mut connect,
    );
    bytes.extend_from_slice(&connect);
    raw.send_bytes(&bytes);
    match raw.recv() {
        Some(Packet::ConnAck(a)) if a.reason == ReasonCode::Success => raw,
        other => panic!("{id}: expected a CONNACK, got {other:?}"),
    }
}

fn v2(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().expect("address");
    let lb = if source.is_ipv4() {
        "10.0.0.1:1883"
    } else {
        "[2001:db8::1]:1883"
    };
    v2_header(source, lb.parse().expect("address"))
}

#[test]
fn the_header_address_is_the_clients_for_the_acl_and_ctl() {
    let (b, port) = proxied_broker();
    let mut sub = connect_behind(
        port,
        b"PROXY TCP4 198.51.100.1 10.0.0.1 1 1883\r\n",
        Protocol::V5,
        "sub",
    );
    sub.subscribe("t", QoS::AtLeastOnce);
    let allowed: [(&str, Vec<u8>); 2] = [
        (
            "v1-ok",
            b"PROXY TCP4 192.0.2.10 10.0.0.1 40001 1883\r\n".to_vec(),
        ),
        ("v2-ok", v2("192.0.2.11:40002")),
    ];
    let mut clients = Vec::new();
    for (id, header) in &allowed {
        let mut c = connect_behind(port, header, Protocol::V5, id);
        let ack = c.publish_acked("t", id.as_bytes(), QoS::AtLeastOnce, 1);
        assert_eq!(ack.reason, ReasonCode::Success, "{id}");
        assert_eq!(&sub.recv_publish().payload[..], id.as_bytes());
        clients.push(c);
    }
    let shown = b.ctl_json(&["clients", "show", "v2-ok"]);
    assert_eq!(shown["ipaddress"], "192.0.2.11:40002", "{shown}");
    // Outside the allowed range, and the proxy's own address (v2 LOCAL, v1 UNKNOWN) is the
    // loopback the test connects from: all denied.
    let denied: [(&str, Vec<u8>); 5] = [
        (
            "v1-far",
            b"PROXY TCP4 203.0.113.5 10.0.0.1 40003 1883\r\n".to_vec(),
        ),
        (
            "v1-six",
            b"PROXY TCP6 2001:db8::5 2001:db8::1 40004 1883\r\n".to_vec(),
        ),
        ("v2-six", v2("[2001:db8::6]:40005")),
        ("v1-unknown", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v2-local", {
            let mut h = v2("192.0.2.12:40006");
            h[12] = 0x20;
            h
        }),
    ];
    for (id, header) in &denied {
        let mut c = connect_behind(port, header, Protocol::V5, id);
        let ack = c.publish_acked("t", id.as_bytes(), QoS::AtLeastOnce, 1);
        assert_eq!(ack.reason, ReasonCode::NotAuthorized, "{id}");
        clients.push(c);
    }
    let shown = b.ctl_json(&["clients", "show", "v1-six"]);
    assert_eq!(shown["ipaddress"], "[2001:db8::5]:40004", "{shown}");
    let shown = b.ctl_json(&["clients", "show", "v2-local"]);
    assert!(
        shown["ipaddress"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{shown}"
    );
    // v3.1.1 behind the proxy too.
    let mut c3 = connect_behind(port, &v2("192.0.2.13:40007"), Protocol::V311, "v3-ok");
    c3.publish_acked("t", b"v3", QoS::AtLeastOnce, 1);
    assert_eq!(&sub.recv_publish().payload[..], b"v3");
    sub.expect_silence(Duration::from_millis(50));
}

#[test]
fn a_bad_or_missing_header_closes_only_that_connection() {
    let (b, port) = proxied_broker();
    let mut good = connect_behind(port, &v2("192.0.2.20:1"), Protocol::V311, "good");
    good.subscribe("t", QoS::AtMostOnce);
    let mut bad_v2 = v2("192.0.2.21:1");
    bad_v2[13] = 0x41;
    for bad in [
        b"PROXY TCP4 192.0.2.22 nonsense 1 2\r\n".to_vec(),
        bad_v2,
        // No header at all: MQTT straight away.
        vec![0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0],
    ] {
        let mut raw = Raw::open(port, Protocol::V311);
        raw.send_bytes(&bad);
        assert_eq!(raw.until_closed(), [], "{bad:?}");
    }
    // Silent: closed once proxy_protocol_timeout has passed.
    let mut silent = Raw::open(port, Protocol::V311);
    assert_eq!(silent.until_closed(), []);
    good.sync();
    let mut p = connect_behind(port, &v2("192.0.2.23:1"), Protocol::V311, "p");
    p.publish_acked("t", b"still", QoS::AtLeastOnce, 1);
    assert_eq!(&good.recv_publish().payload[..], b"still");
    b.wait_log("closing a connection without a valid PROXY header");
    let refused = b.metric("ringmq_limit_refusals_total{what=\"proxy_header\"}");
    assert_eq!(refused, Some(4.0));
}
