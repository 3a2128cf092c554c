//! ringmq-loadgen against the real broker (and Mosquitto): its counts must add up, it must say
//! clearly when a target is bad, and it must work against any broker.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;

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

fn loadgen_cmd(port: u16) -> Command {
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["--addr", &format!("127.0.0.1:{port}"), "--json"]);
    cmd
}

/// The JSON report: the last line loadgen printed on stdout.
fn report(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn loadgen(port: u16, args: &[&str]) -> (serde_json::Value, Output) {
    let out = loadgen_cmd(port)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .expect("run loadgen");
    (report(&out.stdout), out)
}

/// A loadgen run in the background, its stderr lines passed on as they come.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: String,
}

impl Running {
    fn start(port: u16, args: &[&str]) -> Running {
        let mut child = loadgen_cmd(port)
            .args(["--threads", "2"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run loadgen");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            lines,
            stderr: String::new(),
        }
    }

    /// Waits until loadgen says something containing `needle` on stderr.
    fn wait_for(&mut self, needle: &str) {
        loop {
            let Ok(line) = self.lines.recv() else {
                panic!("loadgen ended without saying {needle:?}:\n{}", self.stderr);
            };
            self.stderr.push_str(&line);
            self.stderr.push('\n');
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Waits for the end: the report, the exit status, and all it said on stderr.
    fn finish(mut self) -> (serde_json::Value, ExitStatus, String) {
        let out = self.child.wait_with_output().expect("wait for loadgen");
        for line in self.lines.iter() {
            self.stderr.push_str(&line);
            self.stderr.push('\n');
        }
        (report(&out.stdout), out.status, self.stderr)
    }
}

/// The established TCP connections whose local port is `port` (the broker's, on its listener),
/// as `ss` counts them.
fn sockets_on(port: u16) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
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
fn conn_over_processes_holds_every_connection_for_the_whole_hold() {
    let b = Broker::start(2);
    let pid = b.pid().to_string();
    let mut run = Running::start(
        b.port,
        &[
            "--procs",
            "2",
            "--source",
            "127.0.0.1,127.0.0.2-127.0.0.4",
            "--broker-pid",
            &pid,
            "conn",
            "-n",
            "400",
            "--rate",
            "2000",
            "--hold",
            "3",
            "--settle",
            "1",
        ],
    );
    run.wait_for("holding 400 connections");
    let (code, body) = b.api("GET", "/api/v1/status", None);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(
        status["connections"], 400,
        "the broker's count during the hold"
    );
    assert_eq!(
        sockets_on(b.port),
        400,
        "the broker's sockets during the hold"
    );
    let (r, exit, stderr) = run.finish();
    assert!(exit.success(), "{stderr}");
    assert_eq!(num(&r, "connections_wanted"), 400);
    assert_eq!(num(&r, "connected"), 400);
    assert_eq!(num(&r, "still_open"), 400, "{r}");
    assert_eq!(
        r["broker"]["sockets"].as_u64(),
        Some(400),
        "what the broker held at the end of the hold: {r}"
    );
    let held = num(&r, "held_until_ns") - num(&r, "held_from_ns");
    assert!(held >= 3_000_000_000, "held {held} ns, not the whole hold");
    assert!(r["connect_latency"]["recorded"]
        .as_array()
        .is_some_and(|v| !v.is_empty()));
}

#[test]
fn connections_lost_mid_hold_are_reported_closed_and_fail_the_run() {
    let b = Broker::start(1);
    let mut run = Running::start(
        b.port,
        &[
            "--procs", "2", "conn", "-n", "100", "--rate", "0", "--hold", "120",
        ],
    );
    run.wait_for("holding 100 connections");
    b.signal("KILL");
    let (r, exit, stderr) = run.finish();
    assert!(!exit.success(), "{stderr}");
    assert_eq!(num(&r, "connected"), 100);
    assert_eq!(num(&r, "still_open"), 0, "{r}");
    assert_eq!(
        r["failures"]["closed while held"].as_u64(),
        Some(100),
        "{r}"
    );
    assert!(
        stderr.contains("held 0 of 100 connections to the end of the hold"),
        "{stderr}"
    );
}

#[test]
fn pubsub_over_processes_adds_up_and_samples_the_broker() {
    let b = Broker::start(2);
    let pid = b.pid().to_string();
    let (r, out) = loadgen(
        b.port,
        &[
            "--procs",
            "2",
            "--broker-pid",
            &pid,
            "pubsub",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--publishers",
            "4",
            "--subscribers",
            "4",
            "--qos",
            "1",
            "--inflight",
            "10",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(num(&r, "published") > 0);
    assert_eq!(num(&r, "delivered"), num(&r, "published"));
    assert!(num(&r, "measured_delivered") > 0);
    assert!(
        r["broker"]["cpu_secs"].as_f64().is_some_and(|c| c > 0.0),
        "{r}"
    );
}

#[test]
fn bad_targets_get_one_clear_line() {
    let port = free_port();
    let (r, out) = loadgen(port, &["conn", "-n", "5", "--hold", "0"]);
    assert!(!out.status.success(), "no connection held: a failed run");
    assert_eq!(num(&r, "connected"), 0);
    assert_eq!(r["failures"]["connection refused"].as_u64(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("held 0 of 5 connections"), "{err}");
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
    let out = loadgen_cmd(b.port)
        .args(["conn", "-n", "400", "--rate", "2000", "--hold", "1"])
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = report(&out.stdout);
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
