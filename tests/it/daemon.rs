//! `ringmq start | stop | restart | ping` as an operator runs them, each a separate process
//! against a broker in the background: the pidfile, exit codes, a second start refused while one
//! runs, stop waiting for the graceful shutdown, stale pidfiles; and the install layout's rule
//! (an installed binary reads the system config, a checkout build does not).

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use ringmq::codec::*;

use crate::harness::{free_port, ringmq, tempdir, Raw};

/// A data dir, log dir and config for a background broker on free loopback ports; on drop it
/// stops whatever broker still runs there (a failed test leaves no process behind).
struct Daemon {
    dir: tempdir::Dir,
    port: u16,
    admin: u16,
}

impl Daemon {
    fn new() -> Daemon {
        let dir = tempdir::Dir::new();
        let (port, admin) = (free_port(), free_port());
        let toml = format!(
            "[broker]\npin_cores = false\nshards = 1\ndata_dir = \"{data}\"\nshutdown_timeout = 5\n\
             [listeners.tcp]\nbind = \"127.0.0.1:{port}\"\n\
             [admin]\nbind = \"127.0.0.1:{admin}\"\n\
             [log]\ndir = \"{log}\"\n",
            data = dir.0.join("data").display(),
            log = dir.0.join("log").display(),
        );
        std::fs::write(dir.0.join("ringmq.toml"), toml).expect("config");
        Daemon { dir, port, admin }
    }

    /// Runs `ringmq <cmd> -c <config>`: (success, stdout, stderr).
    fn cmd(&self, cmd: &str) -> (bool, String, String) {
        let cfg = self.dir.0.join("ringmq.toml");
        ringmq(
            &[cmd, "-c", cfg.to_str().expect("utf8")],
            &[("RINGMQ_LOG", "info")],
        )
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.0.join("data").join("ringmq.pid")
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log").join("console.log")).unwrap_or_default()
    }

    /// `start`, which must succeed; the pid it reports, checked against the pidfile.
    fn start(&self) -> u32 {
        let (ok, out, err) = self.cmd("start");
        assert!(ok, "start failed: {err}\n{}", self.console());
        let pid: u32 = out
            .split("(pid ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"));
        assert!(
            out.contains(&format!("tcp 127.0.0.1:{}", self.port))
                && out.contains(&format!("admin 127.0.0.1:{}", self.admin)),
            "start names the addresses: {out}"
        );
        assert_eq!(
            self.pid(),
            Some(pid),
            "the pidfile names the started broker"
        );
        assert!(alive(pid));
        pid
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.pid().is_some_and(alive) {
            let _ = self.cmd("stop");
        }
    }
}

/// A process that has not exited (a zombie has: it waits only to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

/// The broker serves real MQTT clients: one subscribes, another publishes, the message arrives.
fn serves_mqtt(port: u16) {
    let (mut sub, ack) = Raw::connect(port, Protocol::V311, "daemon-sub", true);
    assert_eq!(ack.reason, ReasonCode::Success);
    sub.subscribe("d/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(port, Protocol::V5, "daemon-pub", true);
    publisher.publish_acked("d/t", b"up", QoS::AtLeastOnce, 1);
    assert_eq!(&sub.recv_publish().payload[..], b"up");
}

#[test]
fn start_ping_restart_stop_as_processes() {
    let d = Daemon::new();
    let (ok, _, err) = d.cmd("ping");
    assert!(!ok, "ping with no broker exits 1");
    assert!(err.contains("cannot reach the admin API"), "{err}");
    let (ok, _, err) = d.cmd("stop");
    assert!(!ok && err.contains("not running"), "{err}");

    let first = d.start();
    serves_mqtt(d.port);
    let (ok, out, _) = d.cmd("ping");
    assert!(ok && out.trim() == "pong", "{out}");

    let (ok, _, err) = d.cmd("start");
    assert!(!ok, "a second start is refused");
    assert!(
        err.contains(&format!("already running (pid {first}")),
        "{err}"
    );
    assert_eq!(
        d.pid(),
        Some(first),
        "the refused start left the pidfile alone"
    );
    assert!(alive(first));

    let (ok, out, err) = d.cmd("restart");
    assert!(ok, "restart: {err}");
    assert!(out.contains(&format!("stopped (pid {first})")), "{out}");
    assert!(!alive(first), "restart stopped the first broker");
    let second = d.pid().expect("pidfile after restart");
    assert_ne!(second, first);
    assert!(out.contains(&format!("started (pid {second})")), "{out}");
    serves_mqtt(d.port);

    let (ok, out, err) = d.cmd("stop");
    assert!(ok, "stop: {err}");
    assert!(out.contains(&format!("stopped (pid {second})")), "{out}");
    assert!(!alive(second), "stop returns once the broker has exited");
    assert!(!d.pidfile().exists(), "the pidfile is gone after stop");
    assert_eq!(
        d.console().matches("shutdown complete").count(),
        2,
        "both brokers shut down gracefully: {}",
        d.console()
    );
    let (ok, _, _) = d.cmd("ping");
    assert!(!ok, "ping after stop exits 1");
    let (ok, _, err) = d.cmd("stop");
    assert!(!ok && err.contains("not running"), "{err}");
}

#[test]
fn stale_pidfiles_are_cleared() {
    let d = Daemon::new();
    let pid = d.start();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + crate::harness::WAIT * 4;
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "kill -9 did not end {pid}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(d.pid(), Some(pid), "a killed broker leaves its pidfile");
    let (ok, _, _) = d.cmd("ping");
    assert!(!ok, "ping of a killed broker exits 1");

    let (ok, out, err) = d.cmd("start");
    assert!(ok, "start over a stale pidfile: {err}");
    assert!(out.contains("removing the stale pidfile"), "{out}");
    let again = d.pid().expect("new pidfile");
    assert_ne!(again, pid);
    serves_mqtt(d.port);
    let (ok, _, err) = d.cmd("stop");
    assert!(ok, "{err}");

    // A pidfile naming a process that is not a broker (pid 1) is stale too: stop says so,
    // signals nothing and removes it.
    std::fs::write(d.pidfile(), "1\n").expect("pidfile");
    let (ok, _, err) = d.cmd("stop");
    assert!(!ok && err.contains("stale pidfile"), "{err}");
    assert!(!d.pidfile().exists());
}

#[test]
fn start_reports_why_the_broker_did_not_come_up() {
    let d = Daemon::new();
    let _taken = TcpListener::bind(("127.0.0.1", d.port)).expect("bind");
    let (ok, _, err) = d.cmd("start");
    assert!(!ok, "start fails when the port is taken");
    assert!(
        err.contains("exited") && err.contains(&format!("cannot listen on 127.0.0.1:{}", d.port)),
        "{err}"
    );
    assert!(!d.pidfile().exists());
}

/// A link to (or copy of) the test's broker binary outside cargo's target dir: an installed
/// binary as far as the configuration rule goes.
fn installed_binary(root: &Path) -> PathBuf {
    let bin = root.join("usr/bin/ringmq");
    std::fs::create_dir_all(bin.parent().expect("parent")).expect("dirs");
    let built = Path::new(env!("CARGO_BIN_EXE_ringmq"));
    if std::fs::hard_link(built, &bin).is_err() {
        std::fs::copy(built, &bin).expect("copy the binary");
    }
    bin
}

#[test]
fn an_installed_binary_reads_the_system_config_a_checkout_build_does_not() {
    let root = tempdir::Dir::new();
    let system = root.0.join("etc/ringmq/ringmq.toml");
    std::fs::create_dir_all(system.parent().expect("parent")).expect("dirs");
    std::fs::write(&system, "[listeners.tcp]\nbind = \"127.0.0.1:18999\"\n").expect("config");
    let env = [("RINGMQ_SYSTEM_CONFIG", system.to_str().expect("utf8"))];

    let installed = installed_binary(&root.0);
    let run = |cmd: &str| {
        let out = std::process::Command::new(&installed)
            .arg(cmd)
            .envs(env)
            .output()
            .expect("run");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = run("check-config");
    assert!(
        ok && text.contains(&format!("{}: ok", system.display())),
        "{text}"
    );
    let (ok, text) = run("print-config");
    assert!(
        ok && text.contains("127.0.0.1:18999"),
        "the installed binary read it: {text}"
    );

    let (ok, text, _) = ringmq(&["print-config"], &env);
    assert!(
        ok && text.contains("0.0.0.0:1883") && !text.contains("18999"),
        "{text}"
    );
    let (ok, text, _) = ringmq(&["check-config"], &env);
    assert!(
        ok && text.contains("the defaults: ok"),
        "a checkout build keeps its defaults: {text}"
    );
}
