//! The io driver (`broker.driver`): every shard runs on the driver asked for and the admin status
//! and the log say which; `auto` falls back to epoll where io_uring is unavailable, and `io_uring`
//! there stops the start with the reason. `MONOIO_FORCE_LEGACY_DRIVER=1` makes monoio's io_uring
//! probe fail, standing in for a machine that blocks io_uring.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringmq::codec::*;

use crate::harness::{free_port, tempdir, Broker, Raw};

const BASE: &str = "[broker]\npin_cores = false\n";
const NO_URING: (&str, &str) = ("MONOIO_FORCE_LEGACY_DRIVER", "1");

/// Starts two shards with `env`, checks that the status and every shard report `expected` and
/// that a message goes through; returns the broker for further checks.
fn runs_on(env: &[(&str, &str)], expected: &str) -> Broker {
    let b = Broker::launch(2, BASE, tempdir::Dir::new(), env);
    let st = b.ctl_json(&["status"]);
    assert_eq!(st["driver"], expected, "{st}");
    let shards = st["shard_status"].as_array().expect("shard_status");
    assert_eq!(shards.len(), 2, "{st}");
    for s in shards {
        assert_eq!(s["driver"], expected, "the runtime itself: {st}");
    }
    b.wait_log(&format!("io driver driver=\"{expected}\""));
    let (mut sub, _) = Raw::connect(b.port, Protocol::V5, "drv-sub", true);
    sub.subscribe("drv/t", QoS::AtLeastOnce);
    let (mut publ, _) = Raw::connect(b.port, Protocol::V311, "drv-pub", true);
    publ.publish_acked("drv/t", b"on the driver", QoS::AtLeastOnce, 1);
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"on the driver");
    b
}

#[test]
fn runs_on_the_driver_asked_for() {
    runs_on(&[("RINGMQ_BROKER__DRIVER", "epoll")], "epoll");
    if ringmq::driver::uring_available() {
        runs_on(&[("RINGMQ_BROKER__DRIVER", "io_uring")], "io_uring");
        runs_on(&[("RINGMQ_BROKER__DRIVER", "auto")], "io_uring");
    }
}

#[test]
fn auto_falls_back_to_epoll_and_says_so() {
    let b = runs_on(&[("RINGMQ_BROKER__DRIVER", "auto"), NO_URING], "epoll");
    b.wait_log("falling back to the epoll driver");
}

#[test]
fn io_uring_where_unavailable_does_not_start() {
    let dir = tempdir::Dir::new();
    let cfg = dir.0.join("ringmq.toml");
    std::fs::write(&cfg, BASE).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["run", "--config"])
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .envs([("RINGMQ_BROKER__DRIVER", "io_uring"), NO_URING])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringmq");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker started on io_uring where it is unavailable");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("stderr");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("broker.driver is \"io_uring\", but io_uring is not available"),
        "{err}"
    );
}
