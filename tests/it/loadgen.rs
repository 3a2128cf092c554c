//! ringmq-loadgen against the real broker (and Mosquitto): its counts must add up, it must say
//! clearly when a target is bad, and it must work against any broker.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use crate::harness::*;

fn loadgen_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_ringmq")).with_file_name("ringmq-loadgen");
    assert!(
        bin.exists(),
        "build the workspace first (cargo build --workspace): {}",
        bin.display()
    );
    bin
}

fn loadgen(port: u16, args: &[&str]) -> (serde_json::Value, Output) {
    let out = Command::new(loadgen_bin())
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--threads",
            "2",
            "--json",
        ])
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    (json, out)
}

fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn pubsub(port: u16, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["pubsub", "--duration", "1.5", "--warmup", "0.5"];
    args.extend_from_slice(extra);
    let (json, out) = loadgen(port, &args);
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json
}

#[test]
fn qos1_and_qos2_deliver_everything_exactly_once() {
    let b = Broker::start(4);
    for qos in ["1", "2"] {
        let r = pubsub(
            b.port,
            &[
                "--publishers",
                "5",
                "--subscribers",
                "5",
                "--qos",
                qos,
                "--inflight",
                "20",
            ],
        );
        let published = num(&r, "published");
        assert!(published > 0);
        assert_eq!(
            num(&r, "expected"),
            published,
            "pairs: one delivery per message"
        );
        assert_eq!(num(&r, "delivered"), published, "QoS {qos}: all delivered");
        assert_eq!(num(&r, "duplicated"), 0);
        assert!(num(&r, "measured_delivered") > 0);
    }
}

#[test]
fn fan_out_fan_in_and_shared_counts_are_consistent() {
    let b = Broker::start(4);
    let r = pubsub(
        b.port,
        &[
            "--publishers",
            "1",
            "--subscribers",
            "20",
            "--pub-topic",
            "fan/out",
            "--sub-topic",
            "fan/+",
            "--qos",
            "1",
        ],
    );
    assert_eq!(num(&r, "expected"), num(&r, "published") * 20);
    assert_eq!(num(&r, "delivered"), num(&r, "expected"));
    let r = pubsub(
        b.port,
        &[
            "--publishers",
            "10",
            "--subscribers",
            "1",
            "--pub-topic",
            "in/{i}",
            "--sub-topic",
            "in/#",
            "--qos",
            "0",
            "--rate",
            "200",
        ],
    );
    assert!(
        num(&r, "delivered") <= num(&r, "expected"),
        "QoS 0 never over-delivers"
    );
    assert_eq!(num(&r, "duplicated"), 0);
    let r = pubsub(
        b.port,
        &[
            "--publishers",
            "2",
            "--subscribers",
            "4",
            "--pub-topic",
            "work/{i}",
            "--sub-topic",
            "$share/g/work/+",
            "--qos",
            "1",
            "--rate",
            "300",
        ],
    );
    assert_eq!(
        num(&r, "expected"),
        num(&r, "published"),
        "a shared group takes each message once"
    );
    assert_eq!(num(&r, "delivered"), num(&r, "published"));
}

#[test]
fn conn_over_two_processes_and_several_source_addresses() {
    let b = Broker::start(2);
    let (r, out) = loadgen(
        b.port,
        &[
            "--procs",
            "2",
            "--source",
            "127.0.0.1,127.0.0.2-127.0.0.4",
            "conn",
            "-n",
            "400",
            "--rate",
            "2000",
            "--hold",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(num(&r, "connections_wanted"), 400);
    assert_eq!(num(&r, "connected"), 400);
    assert_eq!(num(&r, "still_open"), 400);
    assert!(r["connect_latency"]["recorded"]
        .as_array()
        .is_some_and(|v| !v.is_empty()));
}

#[test]
fn bad_targets_get_one_clear_line() {
    let port = free_port();
    let (r, out) = loadgen(port, &["conn", "-n", "5", "--hold", "0"]);
    assert!(out.status.success());
    assert_eq!(num(&r, "connected"), 0);
    assert_eq!(r["failures"]["connection refused"].as_u64(), Some(5));
    let (_, out) = loadgen(port, &["pubsub", "--size", "4"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size must be at least"), "{err}");
    assert!(!err.contains("panicked"));
}

struct Mosquitto(Child);

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn works_against_mosquitto() {
    let Ok(path) = which("mosquitto") else {
        panic!("mosquitto is not installed: tests/run.sh installs it");
    };
    let port = free_port();
    let child = Command::new(path)
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let _guard = Mosquitto(child);
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = pubsub(
        port,
        &[
            "--publishers",
            "3",
            "--subscribers",
            "3",
            "--qos",
            "1",
            "--inflight",
            "10",
        ],
    );
    assert!(num(&r, "published") > 0);
    assert_eq!(num(&r, "delivered"), num(&r, "published"));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

#[test]
fn the_default_thread_count_drives_each_client_once() {
    let b = Broker::start(2);
    let out = Command::new(loadgen_bin())
        .args(["--addr", &format!("127.0.0.1:{}", b.port), "--json"])
        .args(["conn", "-n", "400", "--rate", "2000", "--hold", "1"])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("json report");
    assert_eq!(num(&json, "connected"), 400, "{json}");
    assert_eq!(num(&json, "still_open"), 400, "{json}");
    assert!(
        json["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{json}"
    );
}

#[test]
fn total_rate_is_split_between_publishers() {
    let b = Broker::start(2);
    let json = pubsub(
        b.port,
        &[
            "--publishers",
            "4",
            "--subscribers",
            "4",
            "--total-rate",
            "400",
        ],
    );
    assert!(
        json["scenario"]
            .as_str()
            .is_some_and(|s| s.contains("rate=100/s")),
        "{}",
        json["scenario"]
    );
    assert_eq!(num(&json, "delivered"), num(&json, "published"));
}
