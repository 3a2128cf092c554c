//! A cluster of three real nodes on loopback (their cluster ports on 127.0.0.1, .2 and .3),
//! driven by raw clients on different nodes: publishes cross nodes at every QoS, to wildcard
//! and shared subscribers, retained messages and wills are seen everywhere, a persistent
//! session taken over on another node comes with its window and queue, a killed node's routes
//! are dropped within the configured time, a node restarted on its data dir rejoins from its
//! own log, and a node left without a majority serves its own clients but refuses takeovers
//! until the cluster is whole again. A node cut off by the network (the nodes on hosts made of
//! network namespaces, see `netns`) is tested alive on both sides of the cut, and a node back
//! from a crash or a cut hands the sessions its clients left behind to where they went.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::netns::Lan;
use ringmq::codec::*;

const COOKIE: &str = "cluster-test-cookie-0123456789";
/// `cluster.node_timeout_ms` in these tests.
const NODE_TIMEOUT_MS: u64 = 1500;
/// How long a change that waits on failure detection or an election may take to show.
const CONVERGED: Duration = Duration::from_millis(NODE_TIMEOUT_MS * 8);

/// The file whose presence in a node's scratch dir makes its store fail.
const BROKEN_STORE: &str = "store-broken";

/// One node's fixed addresses (kept across its restarts).
struct Seat {
    name: String,
    listen: String,
    rpc: String,
    /// The network namespace it runs in (`None`: this process's).
    ns: Option<String>,
}

pub struct Cluster {
    seats: Vec<Seat>,
    shards: usize,
    /// More TOML for every node, after its `[cluster]` keys.
    extra: String,
    /// `None` while a node is down.
    pub nodes: Vec<Option<Broker>>,
}

thread_local! {
    /// What the last panic on this thread said, for [`Cluster`]'s `Drop` to repeat.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Wraps the panic hook once so that each panic's message, with the test's own lines it came
/// through, is also kept in [`LAST_PANIC`].
fn keep_panic_messages() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            let through: Vec<&str> = trace
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("at ./tests/"))
                .skip(1) // this hook
                .collect();
            let kept = format!("{info}\n{}", through.join("\n"));
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(kept));
            default(info);
        }));
    });
}

/// What a leader logs at every beat toward a node it cannot reach: left out of a failed
/// test's output, which it would fill.
const BEAT_NOISE: [&str; 2] = [
    "openraft::replication:",
    "openraft::engine::handler::replication_handler:",
];

/// Keeps of `log` the lines above debug level but the beat noise, the last `n` of them, each
/// run of lines alike but for their digits (a timestamp, a node's id) folded into its first and
/// a count.
fn log_tail(log: &str, n: usize) -> Vec<String> {
    let text = |l: &str| -> String { l.chars().filter(|c| !c.is_ascii_digit()).collect() };
    let mut out: Vec<(String, usize)> = Vec::new();
    for l in log.lines().filter(|l| {
        !l.contains(" DEBUG ")
            && !l.contains(" TRACE ")
            && !BEAT_NOISE.iter().any(|n| l.contains(n))
    }) {
        match out.last_mut() {
            Some((last, count)) if text(last) == text(l) => *count += 1,
            _ => out.push((l.to_string(), 0)),
        }
    }
    out[out.len().saturating_sub(n)..]
        .iter()
        .map(|(l, more)| match more {
            0 => l.clone(),
            _ => format!("{l}\n    (and {more} more like it)"),
        })
        .collect()
}

/// A failed test shows what each node still up logged above debug level, then what failed
/// again: CI keeps only the tail of the output, and a wait that failed there is explained by
/// its own output.
impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            eprintln!("---- node {i} ({}): its last log lines", self.name(i));
            for l in log_tail(&node.log_text(), 25) {
                eprintln!("{l}");
            }
        }
        if let Some(failure) = LAST_PANIC.with(|p| p.borrow_mut().take()) {
            eprintln!("---- the test failed: {failure}");
        }
    }
}

impl Cluster {
    /// Starts `n` nodes seeded with each other and waits until they agree on one cluster.
    pub fn start(n: usize, shards: usize) -> Cluster {
        Cluster::start_with(n, shards, "")
    }

    /// [`Cluster::start`] with `extra` TOML for every node, after its `[cluster]` keys.
    pub fn start_with(n: usize, shards: usize, extra: &str) -> Cluster {
        Cluster::seated(
            (1..=n)
                .map(|i| Seat {
                    name: format!("n{i}@127.0.0.{i}"),
                    listen: format!("127.0.0.{i}:{}", free_port_on(&format!("127.0.0.{i}"))),
                    rpc: format!("127.0.0.{i}:{}", free_port_on(&format!("127.0.0.{i}"))),
                    ns: None,
                })
                .collect(),
            shards,
            extra,
        )
    }

    /// Starts a node on each host of `lan` (its cluster ports on the host's bridge address,
    /// its clients' and admin listeners on the host's own loopback).
    pub fn on(lan: &Lan, n: usize, shards: usize) -> Cluster {
        Cluster::seated(
            (0..n)
                .map(|i| {
                    let h = lan.host(i);
                    Seat {
                        name: format!("n{}@{}", i + 1, h.ip),
                        listen: format!("{}:{}", h.ip, free_port()),
                        rpc: format!("{}:{}", h.ip, free_port()),
                        ns: Some(h.ns.clone()),
                    }
                })
                .collect(),
            shards,
            "",
        )
    }

    fn seated(seats: Vec<Seat>, shards: usize, extra: &str) -> Cluster {
        keep_panic_messages();
        let n = seats.len();
        let mut c = Cluster {
            seats,
            shards,
            extra: extra.to_string(),
            nodes: Vec::new(),
        };
        for i in 0..n {
            let b = c.launch(i, tempdir::Dir::new());
            c.nodes.push(Some(b));
        }
        c.wait_agreed(n);
        c
    }

    fn toml(&self, i: usize) -> String {
        let me = &self.seats[i];
        let seeds: Vec<String> = self
            .seats
            .iter()
            .filter(|s| s.name != me.name)
            .map(|s| format!("{:?}", s.listen))
            .collect();
        format!(
            "[broker]\npin_cores = false\nnode_name = {:?}\n\n[cluster]\nenabled = true\n\
             listen = {:?}\nrpc_listen = {:?}\nseeds = [{}]\ncookie = {COOKIE:?}\n\
             node_timeout_ms = {NODE_TIMEOUT_MS}\n{}",
            me.name,
            me.listen,
            me.rpc,
            seeds.join(", "),
            self.extra
        )
    }

    fn launch(&self, i: usize, dir: tempdir::Dir) -> Broker {
        let ns = self.seats[i].ns.as_deref();
        let broken = dir.0.join(BROKEN_STORE);
        let broken = broken.to_str().expect("utf-8").to_string();
        let env = [("RINGMQ_FAULT_STORE_FAILS", broken.as_str())];
        Broker::launch_in(ns, self.shards, &self.toml(i), dir, &env)
    }

    /// Makes node `i`'s store fail its writes (as a full disk would), or write again.
    pub fn break_store(&self, i: usize, broken: bool) {
        let path = self.node(i).dir.0.join(BROKEN_STORE);
        if broken {
            std::fs::write(path, b"").expect("break the store");
        } else {
            std::fs::remove_file(path).expect("mend the store");
        }
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.seats[i].name
    }

    /// Node `i`'s view of member `name`: its route count, and whether it is down.
    pub fn routes_of(&self, i: usize, name: &str) -> Option<(u64, bool)> {
        self.view(i)["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| (m["routes"].as_u64().unwrap_or(0), m["down"] == true))
    }

    pub fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("node is up")
    }

    /// The node's view of the cluster (`GET /api/v1/cluster`).
    pub fn view(&self, i: usize) -> serde_json::Value {
        let (status, body) = self.node(i).api("GET", "/api/v1/cluster", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// Waits until every running node sees `members` members, all voters, the same leader and
    /// the same applied log.
    pub fn wait_agreed(&self, members: usize) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let views: Vec<serde_json::Value> = up.iter().map(|i| self.view(*i)).collect();
            // What every node must agree on of each member (its forwarded count and lag are
            // this node's own view).
            let agreed_on = |v: &serde_json::Value| -> Vec<serde_json::Value> {
                let list = v["members"].as_array().cloned().unwrap_or_default();
                list.iter()
                    .map(|m| serde_json::json!([m["name"], m["voter"], m["routes"], m["down"]]))
                    .collect()
            };
            // Every node of these tests is a voter: one still a learner is not through joining.
            let agreed = views.iter().all(|v| {
                v["members"].as_array().map_or(0, Vec::len) == members
                    && agreed_on(v).iter().all(|m| m[1] == true)
                    && !v["leader"].is_null()
                    && v["leader"] == views[0]["leader"]
                    && agreed_on(v) == agreed_on(&views[0])
                    && v["last_applied"] == views[0]["last_applied"]
            });
            if agreed {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes never agreed: {views:#?}\n{}",
                self.node(up[0]).log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `i` with SIGKILL; its scratch dir, to start it again.
    pub fn kill9(&mut self, i: usize) -> tempdir::Dir {
        self.nodes[i].take().expect("node is up").kill9()
    }

    /// Stops node `i` (SIGTERM, waited for); its scratch dir, to start it again.
    pub fn stop(&mut self, i: usize) -> tempdir::Dir {
        self.nodes[i].take().expect("node is up").terminate().1
    }

    /// Starts node `i` again on its data dir.
    pub fn restart(&mut self, i: usize, dir: tempdir::Dir) {
        let b = self.launch(i, dir);
        self.nodes[i] = Some(b);
    }
}

fn v5(port: u16, id: &str) -> Raw {
    Raw::connect(port, Protocol::V5, id, true).0
}

/// A v5 CONNECT resuming (or starting) a session kept for 10 minutes.
fn persistent(id: &str) -> Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties = props(|p| p.session_expiry_interval = Some(600));
    c
}

/// A persistent session `id` on node `at`, subscribed to `{prefix}/#` and offline, holding `n`
/// QoS 1 messages `{prefix}/1` to `{prefix}/n` acknowledged to a publisher on node `via`.
fn owed_session(cl: &Cluster, at: usize, id: &str, prefix: &str, n: u16, via: usize) {
    let (mut sub, _) = Raw::connect_with(cl.node(at).port, persistent(id));
    sub.subscribe(&format!("{prefix}/#"), QoS::AtLeastOnce);
    sub.disconnect();
    cl.node(at).wait_offline(id);
    let mut publ = v5(cl.node(via).port, &format!("{id}-pub"));
    for i in 1..=n {
        publ.publish_acked(&format!("{prefix}/{i}"), b"acked", QoS::AtLeastOnce, i);
    }
    publ.disconnect();
}

/// Reads one publish and acknowledges it (QoS 1 and 2 alike).
fn take(c: &mut Raw) -> Publish {
    let p = c.recv_publish();
    c.ack(&p);
    p
}

#[test]
fn publishes_cross_nodes_at_every_qos_to_wildcard_subscribers_right_after_the_suback() {
    let cl = Cluster::start(3, 2);
    let mut b = v5(cl.node(1).port, "sub-b");
    let mut c = v5(cl.node(2).port, "sub-c");
    let mut a = v5(cl.node(0).port, "pub-a");
    // The SUBACK comes once every node routes the filter here: no wait after it.
    b.subscribe("room/+/temp", QoS::ExactlyOnce);
    c.subscribe("room/#", QoS::AtLeastOnce);
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let payload = format!("m{i}");
        if qos == QoS::AtMostOnce {
            a.publish("room/1/temp", payload.as_bytes(), qos, 0);
            a.sync();
        } else {
            let r = a.publish_acked("room/1/temp", payload.as_bytes(), qos, i as u16);
            assert_eq!(r.reason, ReasonCode::Success);
        }
        for (who, sub, granted) in [
            ("B", &mut b, QoS::ExactlyOnce),
            ("C", &mut c, QoS::AtLeastOnce),
        ] {
            let p = take(sub);
            assert_eq!(&p.topic[..], "room/1/temp", "{who}");
            assert_eq!(&p.payload[..], payload.as_bytes(), "{who}");
            assert_eq!(
                p.qos,
                qos.min(granted),
                "{who} gets min(published, granted)"
            );
        }
    }
    // Neither wildcard matches this one: nothing crosses.
    a.publish_acked("hall/1/temp", b"x", QoS::AtLeastOnce, 9);
    b.expect_silence(Duration::from_millis(300));
    // Unsubscribing on C removes its route: B alone gets the next one.
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        filters: vec!["room/#".into()],
        properties: None,
    }));
    assert!(matches!(c.recv(), Some(Packet::UnsubAck(_))));
    eventually("the route of C is gone from A", || {
        cl.view(0)["members"]
            .as_array()
            .expect("members")
            .iter()
            .all(|m| m["routes"].as_u64() == Some(u64::from(m["name"] == "n2@127.0.0.2")))
    });
    a.publish_acked("room/2/temp", b"y", QoS::AtLeastOnce, 10);
    assert_eq!(&take(&mut b).payload[..], b"y");
    c.expect_silence(Duration::from_millis(300));
    // A's count of what it forwarded matches what B and C received from it.
    let forwarded = |node: &str| {
        cl.node(0).metric(&format!(
            "ringmq_cluster_forwarded_total{{node=\"{node}\"}}"
        ))
    };
    assert_eq!(forwarded("n2@127.0.0.2"), Some(4.0), "3 + room/2/temp to B");
    assert_eq!(forwarded("n3@127.0.0.3"), Some(3.0), "3 to C");
    assert_eq!(cl.node(0).metric("ringmq_cluster_members"), Some(3.0));
    assert_eq!(
        cl.node(0)
            .metric("ringmq_cluster_peer_up{node=\"n2@127.0.0.2\"}"),
        Some(1.0)
    );
}

#[test]
fn shared_groups_pick_one_member_cluster_wide_and_retained_and_wills_are_seen_everywhere() {
    let cl = Cluster::start(3, 1);
    let mut b = v5(cl.node(1).port, "share-b");
    let mut c = v5(cl.node(2).port, "share-c");
    b.subscribe("$share/g/jobs", QoS::AtLeastOnce);
    c.subscribe("$share/g/jobs", QoS::AtLeastOnce);
    let mut a = v5(cl.node(0).port, "jobs-a");
    let n = 40;
    for i in 0..n {
        a.publish_acked("jobs", format!("{i}").as_bytes(), QoS::AtLeastOnce, i + 1);
    }
    let mut got = Vec::new();
    for sub in [&mut b, &mut c] {
        while let Ok(Some(Packet::Publish(p))) = sub.recv_within(Duration::from_millis(500)) {
            sub.ack(&p);
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    got.sort_by_key(|s| s.parse::<u32>().unwrap_or(0));
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(
        got, want,
        "each message went to exactly one member of the group"
    );

    // A retained message set on A is there for a subscriber on C.
    let r = Publish {
        retain: true,
        ..publish("state/door", b"open", QoS::AtLeastOnce, 50)
    };
    a.send(&Packet::Publish(r));
    assert!(matches!(a.recv(), Some(Packet::PubAck(_))));
    eventually("C holds the retained message", || {
        cl.view(2)["retained"].as_u64() == Some(1)
    });
    let mut late = v5(cl.node(2).port, "late-c");
    late.subscribe("state/#", QoS::AtLeastOnce);
    let p = take(&mut late);
    assert_eq!(
        (&p.topic[..], &p.payload[..], p.retain),
        ("state/door", &b"open"[..], true)
    );

    // A will published on B's node reaches a subscriber on A.
    a.subscribe("wills/#", QoS::AtLeastOnce);
    let mut connect = connect_packet(Protocol::V5, "dies-b", true);
    connect.will = Some(will("wills/dies-b", b"gone", QoS::AtLeastOnce));
    let (dying, ack) = Raw::connect_with(cl.node(1).port, connect);
    assert_eq!(ack.reason, ReasonCode::Success);
    dying.drop_connection();
    let p = take(&mut a);
    assert_eq!(
        (&p.topic[..], &p.payload[..]),
        ("wills/dies-b", &b"gone"[..])
    );
}

#[test]
fn a_killed_node_loses_its_routes_in_time_and_rejoins_from_its_own_log() {
    let mut cl = Cluster::start(3, 1);
    let mut c = v5(cl.node(2).port, "on-c");
    c.subscribe("alerts/#", QoS::AtLeastOnce);
    let (kept, _) = Raw::connect_with(cl.node(2).port, persistent("kept-on-c"));
    kept.disconnect();
    assert_eq!(cl.routes_of(0, "n3@127.0.0.3"), Some((1, false)));
    drop(c);
    let applied_before = cl.view(0)["last_applied"].as_u64().expect("applied");
    let dir = cl.kill9(2);
    let killed = Instant::now();
    let deadline = Instant::now() + CONVERGED;
    while cl.routes_of(0, "n3@127.0.0.3") != Some((0, true)) {
        assert!(
            Instant::now() < deadline,
            "C's routes were never dropped: {:#}",
            cl.view(0)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped_after = killed.elapsed();
    assert!(
        cl.routes_of(1, "n3@127.0.0.3").is_some(),
        "C stays a member while it is away"
    );
    // Its clients go elsewhere meanwhile, and the cluster still routes between A and B.
    let mut moved = v5(cl.node(1).port, "on-c");
    moved.subscribe("alerts/#", QoS::AtLeastOnce);
    // A persistent session kept on the dead node cannot come: it starts anew, counted.
    let (_, ack) = Raw::connect_with(cl.node(1).port, persistent("kept-on-c"));
    assert!(!ack.session_present);
    assert_eq!(
        cl.node(1)
            .metric("ringmq_cluster_sessions_started_anew_total"),
        Some(1.0)
    );
    let mut a = v5(cl.node(0).port, "alerter");
    a.publish_acked("alerts/fire", b"now", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut moved).payload[..], b"now");

    // Back on its data dir, C rejoins from its own log (no snapshot sent) and routes again.
    cl.restart(2, dir);
    cl.wait_agreed(3);
    assert!(
        cl.view(2)["last_applied"].as_u64().expect("applied") > applied_before,
        "C caught up"
    );
    let log = cl.node(2).log_text();
    assert!(
        !log.contains("installed a snapshot") && !log.contains("formed the cluster"),
        "C caught up from its log:\n{log}"
    );
    let mut back = v5(cl.node(2).port, "back-c");
    back.subscribe("alerts/#", QoS::AtLeastOnce);
    assert_eq!(cl.routes_of(0, "n3@127.0.0.3"), Some((1, false)));
    a.publish_acked("alerts/flood", b"later", QoS::AtLeastOnce, 2);
    assert_eq!(&take(&mut back).payload[..], b"later");
    assert_eq!(&take(&mut moved).payload[..], b"later");
    eprintln!("routes of a killed node dropped after {dropped_after:?}");
}

/// Publishes 40 QoS 1 messages to `roll/x` through node `via`, each acknowledged; their payloads
/// are added to `acked`.
fn publish_acknowledged(cl: &Cluster, via: usize, acked: &mut BTreeSet<String>) {
    let mut p = v5(cl.node(via).port, &format!("roller-{}", acked.len()));
    for pid in 1..=40u16 {
        let payload = format!("m{}", acked.len());
        p.publish_acked("roll/x", payload.as_bytes(), QoS::AtLeastOnce, pid);
        acked.insert(payload);
    }
    p.disconnect();
}

/// Reads until every message in `owed` has come (duplicates allowed).
fn receive_all(sub: &mut Raw, mut owed: BTreeSet<String>) {
    while !owed.is_empty() {
        let p = take(sub);
        owed.remove(&*String::from_utf8_lossy(&p.payload));
    }
}

/// Publishes QoS 1 messages to `roll/x` on `port` as fast as they are acknowledged, until the
/// connection ends; the payloads acknowledged with success.
fn publish_until_closed(port: u16, tag: &str) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    let mut p = v5(port, &format!("until-closed-{tag}"));
    for pid in 1..=u16::MAX {
        let payload = format!("{tag}-{pid}");
        let mut out = bytes::BytesMut::new();
        let packet = Packet::Publish(publish("roll/x", payload.as_bytes(), QoS::AtLeastOnce, pid));
        encode(&packet, Protocol::V5, &mut out);
        if p.stream().write_all(&out).is_err() {
            break;
        }
        match p.recv_within(WAIT) {
            Ok(Some(Packet::PubAck(a))) if a.packet_id == pid && !a.reason.is_error() => {
                acked.insert(payload);
            }
            _ => break,
        }
    }
    acked
}

/// Node `restarted` stops and starts again on its data dir while node `via` publishes: the
/// messages acknowledged before, during and after (the last through the restarted node), and
/// those a publisher on the restarted node had acknowledged until it went down.
fn restart_while_publishing(cl: &mut Cluster, restarted: usize, via: usize) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    publish_acknowledged(cl, via, &mut acked);
    let port = cl.node(restarted).port;
    let tag = format!("through-{restarted}");
    let through = std::thread::spawn(move || publish_until_closed(port, &tag));
    std::thread::sleep(Duration::from_millis(300));
    let dir = cl.stop(restarted);
    let through = through.join().expect("publisher");
    assert!(
        through.len() > 10,
        "the publisher was going: {}",
        through.len()
    );
    acked.extend(through);
    publish_acknowledged(cl, via, &mut acked);
    cl.restart(restarted, dir);
    cl.wait_agreed(3);
    publish_acknowledged(cl, restarted, &mut acked);
    acked
}

#[test]
fn a_rolling_restart_loses_no_acknowledged_message_of_a_session_on_a_node_that_stays_up() {
    let mut cl = Cluster::start(3, 2);
    let (mut sub, _) = Raw::connect_with(cl.node(0).port, persistent("steady"));
    sub.subscribe("roll/#", QoS::AtLeastOnce);
    // C restarts while the session on A is connected, then B while it is offline.
    let acked = restart_while_publishing(&mut cl, 2, 1);
    receive_all(&mut sub, acked);
    sub.disconnect();
    cl.node(0).wait_offline("steady");
    let acked = restart_while_publishing(&mut cl, 1, 2);
    let (mut sub, ack) = Raw::connect_with(cl.node(0).port, persistent("steady"));
    assert!(ack.session_present);
    receive_all(&mut sub, acked);
}

#[test]
fn a_client_id_connected_again_on_another_node_closes_the_older_connection() {
    let cl = Cluster::start(3, 2);
    let sessions = |cl: &Cluster, i: usize| cl.view(i)["sessions"].as_u64();
    let mut first = v5(cl.node(0).port, "roamer");
    eventually("the registry has the claim on every node", || {
        (0..3).all(|i| sessions(&cl, i) == Some(1))
    });
    // The same id on C, resuming (clean start 0, no expiry): A closes its older connection
    // once the claim is applied there, and has no session to hand over, which it says at once.
    let resume = connect_packet(Protocol::V5, "roamer", false);
    let (mut second, ack) = Raw::connect_with(cl.node(2).port, resume);
    assert!(!ack.session_present);
    assert_eq!(
        cl.node(2)
            .metric("ringmq_cluster_sessions_started_anew_total"),
        Some(0.0),
        "C did not give up waiting for a hand-over"
    );
    assert!(
        matches!(&first.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
        "the older connection gets 0x8E"
    );
    assert_eq!(
        cl.node(0).metric("ringmq_cluster_evictions_total"),
        Some(1.0)
    );
    assert_eq!(
        cl.node(2).metric("ringmq_cluster_evictions_total"),
        Some(0.0)
    );
    // The newer one keeps working.
    second.subscribe("roam/#", QoS::AtLeastOnce);
    let mut b = v5(cl.node(1).port, "roam-pub");
    b.publish_acked("roam/1", b"here", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut second).payload[..], b"here");
    // Its session ends with its connection: the registry lets the id go.
    second.disconnect();
    b.disconnect();
    eventually("the registry is empty on every node", || {
        (0..3).all(|i| sessions(&cl, i) == Some(0))
    });
}

#[test]
fn a_persistent_session_taken_over_on_another_node_comes_with_its_window_and_queue() {
    let mut cl = Cluster::start(3, 2);
    let (a, c) = ("n1@127.0.0.1", "n3@127.0.0.3");
    let (mut sub, ack) = Raw::connect_with(cl.node(0).port, persistent("mover"));
    assert!(!ack.session_present);
    sub.subscribe("move/#", QoS::AtLeastOnce);
    let mut publ = v5(cl.node(1).port, "move-pub");
    // One message in its window (sent, never acknowledged), five queued while it is away.
    publ.publish_acked("move/0", b"window", QoS::AtLeastOnce, 1);
    assert_eq!(&sub.recv_publish().payload[..], b"window");
    sub.drop_connection();
    cl.node(0).wait_offline("mover");
    for i in 1..=5u16 {
        publ.publish_acked(&format!("move/{i}"), b"queued", QoS::AtLeastOnce, i + 1);
    }
    // The client comes back on C: A hands the session over before C's CONNACK.
    let (mut moved, ack) = Raw::connect_with(cl.node(2).port, persistent("mover"));
    assert!(ack.session_present, "the session came from A");
    let again = take(&mut moved);
    assert!(again.dup, "the window's message is sent again with DUP");
    assert_eq!(&again.payload[..], b"window");
    for i in 1..=5 {
        assert_eq!(take(&mut moved).topic, format!("move/{i}"));
    }
    let counted = |i: usize, m: &str| cl.node(i).metric(&format!("ringmq_cluster_sessions_{m}"));
    assert_eq!(counted(2, "taken_over_total"), Some(1.0));
    eventually("C's answer reached A", || {
        counted(0, "handed_over_total") == Some(1.0)
    });
    let (status, _) = cl.node(0).api("GET", "/api/v1/clients/mover", None);
    assert_eq!(status, 404, "A holds the session no more");
    // Its subscription moved with it: the route is C's now.
    eventually("the route moved from A to C", || {
        cl.routes_of(1, a) == Some((0, false)) && cl.routes_of(1, c) == Some((1, false))
    });
    publ.publish_acked("move/6", b"after", QoS::AtLeastOnce, 7);
    assert_eq!(&take(&mut moved).payload[..], b"after");
    // Taken over again, back on A while connected on C: C's connection gets 0x8E.
    let (mut back, ack) = Raw::connect_with(cl.node(0).port, persistent("mover"));
    assert!(ack.session_present);
    assert!(
        matches!(&moved.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
        "the older connection gets 0x8E"
    );
    eventually("the route moved back to A", || {
        cl.routes_of(1, a) == Some((1, false)) && cl.routes_of(1, c) == Some((0, false))
    });
    publ.publish_acked("move/7", b"home", QoS::AtLeastOnce, 8);
    assert_eq!(&take(&mut back).payload[..], b"home");
    back.expect_silence(Duration::from_millis(300));
    // C's records of it went once A answered: C's next start brings nothing back.
    eventually("A's answer reached C", || {
        counted(2, "handed_over_total") == Some(1.0)
    });
    let dir = cl.stop(2);
    cl.restart(2, dir);
    cl.wait_agreed(3);
    let (status, _) = cl.node(2).api("GET", "/api/v1/clients/mover", None);
    assert_eq!(status, 404, "nothing stale comes back on C");
}

#[test]
fn a_session_restored_by_a_restart_is_handed_over_too() {
    let mut cl = Cluster::start(3, 2);
    owed_session(&cl, 0, "restored", "kept", 1, 1);
    // A restarts (its registry claims void): the session read back from its store is
    // registered again, so a takeover on C still finds it there.
    let dir = cl.kill9(0);
    cl.restart(0, dir);
    cl.wait_agreed(3);
    eventually("the restored session is registered on every node", || {
        (0..3).all(|i| cl.view(i)["sessions"].as_u64() == Some(1))
    });
    let (mut moved, ack) = Raw::connect_with(cl.node(2).port, persistent("restored"));
    assert!(ack.session_present, "the session came from A's store");
    assert_eq!(take(&mut moved).topic, "kept/1");
}

#[test]
fn a_node_back_from_a_crash_hands_its_queue_to_the_session_its_client_started_elsewhere() {
    let mut cl = Cluster::start(3, 2);
    let a = cl.name(0).to_string();
    owed_session(&cl, 0, "stranded", "owed", 3, 1);
    // A dies holding three acknowledged messages; its client comes back on C and starts anew.
    // A, the first node, usually leads: its death takes an election before the drop. (How
    // soon the drop comes is another test's; this one waits as long as a loaded CI needs.)
    let dir = cl.kill9(0);
    eventually_within(CONVERGED * 3, "A's routes are dropped", || {
        cl.routes_of(1, &a) == Some((0, true))
    });
    let (mut moved, ack) = Raw::connect_with(cl.node(2).port, persistent("stranded"));
    assert!(!ack.session_present, "A is down: the session starts anew");
    // Back on its data dir, A hands the old session's messages to the client's session on C.
    cl.restart(0, dir);
    cl.wait_agreed(3);
    for i in 1..=3 {
        assert_eq!(take(&mut moved).topic, format!("owed/{i}"));
    }
    assert_eq!(
        cl.node(2)
            .metric("ringmq_cluster_session_messages_merged_total"),
        Some(3.0)
    );
    eventually("C's answer reached A, which dropped the session", || {
        cl.node(0)
            .metric("ringmq_cluster_sessions_handed_over_total")
            == Some(1.0)
            && cl.node(0).api("GET", "/api/v1/clients/stranded", None).0 == 404
    });
    eventually("the registry still gives the id to C", || {
        (0..3).all(|i| cl.view(i)["sessions"].as_u64() == Some(1))
    });
}

#[test]
fn a_session_the_new_node_could_not_store_stays_with_the_old_one_and_comes_later() {
    let mut cl = Cluster::start(3, 1);
    owed_session(&cl, 0, "fragile", "frag", 2, 1);
    // C cannot write: it takes the session but cannot keep it, and says so; A keeps its
    // records (counted) instead of forgetting them.
    cl.break_store(2, true);
    let (moved, _) = Raw::connect_with(cl.node(2).port, persistent("fragile"));
    let lost = |cl: &Cluster| cl.node(0).metric("ringmq_cluster_sessions_lost_total");
    eventually("A heard that C did not store the session", || {
        lost(&cl) == Some(1.0)
    });
    assert_eq!(
        cl.node(0)
            .metric("ringmq_cluster_sessions_handed_over_total"),
        Some(0.0)
    );
    drop(moved);
    cl.break_store(2, false);
    // A, restarted, reads the session back and hands it to C, where the client is again
    // (C's own copy, kept in memory, sends them too: at least once).
    let (mut again, _) = Raw::connect_with(cl.node(2).port, persistent("fragile"));
    let dir = cl.kill9(0);
    cl.restart(0, dir);
    cl.wait_agreed(3);
    eventually("A's copy of the session reached C", || {
        cl.node(2)
            .metric("ringmq_cluster_session_messages_merged_total")
            == Some(2.0)
    });
    let mut got = BTreeSet::new();
    while got.len() < 2 {
        got.insert(take(&mut again).topic.to_string());
    }
    assert_eq!(got, BTreeSet::from(["frag/1".into(), "frag/2".into()]));
    eventually("C stored it this time, and told A", || {
        cl.node(0)
            .metric("ringmq_cluster_sessions_handed_over_total")
            == Some(1.0)
    });
}

#[test]
fn a_node_without_a_majority_serves_its_clients_refuses_takeovers_and_converges_when_healed() {
    let mut cl = Cluster::start(3, 1);
    let (kept, _) = Raw::connect_with(cl.node(0).port, persistent("kept-on-a"));
    kept.disconnect();
    let dirs = [cl.kill9(1), cl.kill9(2)];
    eventually("A knows it has no leader", || {
        cl.view(0)["leader"].is_null()
    });
    // Its own clients go on: subscriptions (answered at once), publishes, its own sessions.
    let mut sub = v5(cl.node(0).port, "alone-sub");
    sub.subscribe("alone/#", QoS::AtLeastOnce);
    let mut publ = v5(cl.node(0).port, "alone-pub");
    publ.publish_acked("alone/1", b"still", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut sub).payload[..], b"still");
    let (_, ack) = Raw::connect_with(cl.node(0).port, persistent("kept-on-a"));
    assert!(
        ack.session_present,
        "a session held here resumes without the cluster"
    );
    // A session it does not hold may be on the other side: the takeover is refused (0x88),
    // for MQTT 3.1.1 too (return code 3).
    assert_eq!(
        connack(cl.node(0).port, persistent("from-elsewhere")),
        Some(ReasonCode::ServerUnavailable)
    );
    let v3 = connect_packet(Protocol::V311, "from-elsewhere-3", false);
    assert_eq!(
        connack(cl.node(0).port, v3),
        Some(ReasonCode::ServerUnavailable)
    );
    // Healed, the cluster converges without an operator: one leader, A's route everywhere.
    let [d1, d2] = dirs;
    cl.restart(1, d1);
    cl.restart(2, d2);
    cl.wait_agreed(3);
    eventually("A's route, held back while alone, is everywhere", || {
        (0..3).all(|i| cl.routes_of(i, "n1@127.0.0.1") == Some((1, false)))
    });
    let mut far = v5(cl.node(2).port, "far-pub");
    far.publish_acked("alone/2", b"healed", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut sub).payload[..], b"healed");
    // The refused CONNECT left no claim behind: the id resumes (anew) now.
    let (_, ack) = Raw::connect_with(cl.node(0).port, persistent("from-elsewhere"));
    assert!(!ack.session_present);
}

#[test]
fn the_operator_sees_the_members_removes_a_dead_node_and_a_node_leaves_and_comes_back() {
    let mut cl = Cluster::start(3, 1);
    let names = |cl: &Cluster, i: usize| -> Vec<String> {
        let v = cl.node(i).ctl_json(&["cluster", "status"]);
        let mut n: Vec<String> = v["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&cl, 0),
        ["n1@127.0.0.1", "n2@127.0.0.2", "n3@127.0.0.3"]
    );
    let (ok, out, _) = cl.node(1).ctl(&["cluster", "status"]);
    assert!(ok && out.contains("n3@127.0.0.3"), "{out}");
    // A member cannot join another cluster without leaving first.
    let (ok, _, err) = cl.node(0).ctl(&["cluster", "join", "127.0.0.9:1"]);
    assert!(!ok && err.contains("leave"), "{err}");

    // C leaves: the others go on as two, C serves its own clients alone.
    let (ok, out, err) = cl.node(2).ctl(&["cluster", "leave"]);
    assert!(ok, "{out}{err}");
    eventually("A and B see two members", || {
        names(&cl, 0).len() == 2 && names(&cl, 1).len() == 2
    });
    let mut alone = v5(cl.node(2).port, "alone-sub");
    alone.subscribe("local/#", QoS::AtLeastOnce);
    let mut p = v5(cl.node(2).port, "alone-pub");
    p.publish_acked("local/1", b"still here", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut alone).payload[..], b"still here");
    drop((alone, p));
    let (_, ack) = Raw::connect_with(cl.node(2).port, persistent("alone-kept"));
    assert_eq!(ack.reason, ReasonCode::Success, "no registry to wait for");
    // Restarted, it starts without its old Raft state and joins again through its seeds.
    let dir = cl.stop(2);
    cl.restart(2, dir);
    cl.wait_agreed(3);
    assert!(cl.node(2).log_text().contains("left its cluster"));

    // B is killed for good; the operator removes it by name.
    drop(cl.kill9(1));
    let (ok, out, err) = cl.node(0).ctl(&["cluster", "remove", "n2@127.0.0.2"]);
    assert!(ok, "{out}{err}");
    cl.wait_agreed(2);
    assert_eq!(names(&cl, 0), ["n1@127.0.0.1", "n3@127.0.0.3"]);
    let (ok, _, err) = cl.node(0).ctl(&["cluster", "remove", "nobody"]);
    assert!(!ok && err.contains("no member"), "{err}");
}

#[test]
fn a_cut_off_node_serves_its_own_the_majority_goes_on_and_all_converge_when_healed() {
    let lan = Lan::new(3);
    let cl = Cluster::on(&lan, 3, 1);
    let (a, b, c) = (cl.node(0).port, cl.node(1).port, cl.node(2).port);
    let c_name = cl.name(2).to_string();
    let mut on_c = v5(c, "on-c");
    on_c.subscribe("part/#", QoS::AtLeastOnce);
    for (port, id) in [(c, "kept-on-c"), (a, "kept-on-a")] {
        Raw::connect_with(port, persistent(id)).0.disconnect();
    }
    // A session on C holding an acknowledged message for its client, who is away.
    owed_session(&cl, 2, "owed-on-c", "owed", 1, 0);
    let mut from_a = v5(a, "from-a");
    from_a.publish_acked("part/1", b"before", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut on_c).payload[..], b"before");

    lan.cut(2);
    // The majority drops C's routes within the configured time and goes on: a new route, a
    // publish from A to B, a takeover from A to B.
    eventually_within(CONVERGED, "A and B drop C's routes", || {
        (0..2).all(|i| cl.routes_of(i, &c_name) == Some((0, true)))
    });
    let mut on_b = v5(b, "on-b");
    on_b.subscribe("majority/#", QoS::AtLeastOnce);
    from_a.publish_acked("majority/1", b"goes on", QoS::AtLeastOnce, 2);
    assert_eq!(&take(&mut on_b).payload[..], b"goes on");
    let (_, ack) = Raw::connect_with(b, persistent("kept-on-a"));
    assert!(ack.session_present, "the majority hands sessions over");
    eventually(
        "B stored the session (with no message in it) and told A",
        || {
            cl.node(0)
                .metric("ringmq_cluster_sessions_handed_over_total")
                == Some(1.0)
        },
    );
    // The client of the session on C comes back on B meanwhile: it starts anew there.
    let (mut owed, ack) = Raw::connect_with(b, persistent("owed-on-c"));
    assert!(
        !ack.session_present,
        "C is cut off: the session starts anew"
    );
    // C, cut off, knows it has no leader. It serves its own clients (a new subscription held
    // back from the cluster, a publish) and the sessions it holds, but refuses to take over
    // one it does not (0x88).
    eventually_within(CONVERGED, "C sees no leader", || {
        cl.view(2)["leader"].is_null()
    });
    let mut late = v5(c, "late-on-c");
    late.subscribe("late/#", QoS::AtLeastOnce);
    let mut from_c = v5(c, "from-c");
    from_c.publish_acked("part/2", b"local", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut on_c).payload[..], b"local");
    let (_, ack) = Raw::connect_with(c, persistent("kept-on-c"));
    assert!(ack.session_present, "C's own session resumes on C");
    assert_eq!(
        connack(c, persistent("kept-on-a")),
        Some(ReasonCode::ServerUnavailable)
    );
    // One clean-session id connected on both sides, first on C.
    let (mut twin_c, _) = Raw::connect(c, Protocol::V5, "twin", true);
    let (mut twin_a, _) = Raw::connect(a, Protocol::V5, "twin", true);

    lan.heal(2);
    cl.wait_agreed(3);
    // Healed without an operator: C's routes, the one held back included, are everywhere.
    eventually_within(CONVERGED, "C's two routes are everywhere again", || {
        (0..3).all(|i| cl.routes_of(i, &c_name) == Some((2, false)))
    });
    // The id connected twice keeps the newer connection: C's gets 0x8E.
    assert!(
        matches!(&twin_c.until_closed()[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
        "the older twin gets 0x8E"
    );
    twin_a.sync();
    // C hands the message its session held to the session the client started on B.
    assert_eq!(take(&mut owed).topic, "owed/1");
    assert_eq!(
        cl.node(1)
            .metric("ringmq_cluster_session_messages_merged_total"),
        Some(1.0)
    );
    // Messages cross the healed link both ways.
    let mut from_b = v5(b, "from-b");
    from_b.publish_acked("late/1", b"healed", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut late).payload[..], b"healed");
    from_c.publish_acked("majority/2", b"from c", QoS::AtLeastOnce, 2);
    assert_eq!(&take(&mut on_b).payload[..], b"from c");
}

/// `[cluster.tls]` with the test CA's `cert` (`make_certs` names) for the name `localhost`.
fn cluster_tls(dir: &std::path::Path, cert: &str) -> String {
    format!(
        "\n[cluster.tls]\ncertfile = {:?}\nkeyfile = {:?}\ncafile = {:?}\n\
         server_name = \"localhost\"\n",
        dir.join(format!("{cert}.pem")),
        dir.join(format!("{cert}.key")),
        dir.join("ca.pem"),
    )
}

#[test]
fn over_cluster_tls_nodes_route_and_a_node_without_a_certificate_of_the_ca_is_refused() {
    let certs = tempdir::Dir::new();
    crate::listeners::make_certs(&certs.0);
    let cl = Cluster::start_with(3, 2, &cluster_tls(&certs.0, "server"));
    assert!(cl.node(0).log_text().contains("tls=true"));
    // Consensus (the cluster agreed) and forwarding cross TLS.
    let mut sub = v5(cl.node(2).port, "tls-sub");
    sub.subscribe("secure/#", QoS::AtLeastOnce);
    let mut publ = v5(cl.node(0).port, "tls-pub");
    publ.publish_acked("secure/1", b"sealed", QoS::AtLeastOnce, 1);
    assert_eq!(&take(&mut sub).payload[..], b"sealed");
    // A node with the cookie but a certificate no CA of the cluster signed never joins.
    let intruder = Broker::launch(
        1,
        &format!(
            "[broker]\npin_cores = false\nnode_name = \"n4@127.0.0.4\"\n\n[cluster]\n\
             enabled = true\nlisten = \"127.0.0.4:{}\"\nrpc_listen = \"127.0.0.4:{}\"\n\
             seeds = [{:?}]\ncookie = {COOKIE:?}\nnode_timeout_ms = {NODE_TIMEOUT_MS}\n{}",
            free_port_on("127.0.0.4"),
            free_port_on("127.0.0.4"),
            cl.seats[0].listen,
            cluster_tls(&certs.0, "other"),
        ),
        tempdir::Dir::new(),
        &[],
    );
    eventually("the seed refused the intruder's certificate", || {
        cl.node(0)
            .log_text()
            .contains("refused a cluster connection error=invalid peer certificate")
    });
    std::thread::sleep(Duration::from_millis(NODE_TIMEOUT_MS));
    assert_eq!(cl.view(0)["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        intruder.ctl_json(&["cluster", "status"])["members"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "the intruder is in no cluster"
    );
}
