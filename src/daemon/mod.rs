//! `ringmq start | stop | restart | ping`: the broker as a background process, the way an EMQX
//! operator drives `emqx start | stop | ping`. `start` runs `ringmq run` detached (its own
//! process group, stdin closed, output appended to `<log.dir>/console.log`) and returns once the
//! broker has written its pidfile, which it does when its listeners are up; `stop` sends SIGTERM
//! and waits for the graceful shutdown. systemd running `ringmq run` in the foreground stays the
//! recommended way to keep a broker up.

mod pidfile;

use std::io::{Read, Seek, SeekFrom};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use pidfile::{Owner, PidFile};

use crate::cli::RunArgs;
use crate::config::{Config, Endpoint};
use crate::ctl::{self, Call};

/// How long `start` waits for the broker to listen (reading a large store back comes first).
const START_WAIT: Duration = Duration::from_secs(120);
/// What `stop` waits beyond `broker.shutdown_timeout` for the process to be gone.
const STOP_MARGIN_SECS: u64 = 5;
const POLL: Duration = Duration::from_millis(50);
/// Lines of the console log `start` prints when the broker exits before listening.
const TAIL_LINES: usize = 20;

/// `ringmq start`: refused while a broker runs on the data dir; a stale pidfile is removed.
pub fn start(args: &RunArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    let pidfile = PidFile::of(&cfg.broker.data_dir);
    match pidfile.owner() {
        Owner::Running(pid) => {
            return Err(format!(
                "already running (pid {pid}, {})",
                pidfile.path().display()
            ))
        }
        Owner::Stale => {
            println!(
                "removing the stale pidfile {} (its broker is gone)",
                pidfile.path().display()
            );
            pidfile.remove();
        }
        Owner::None => {}
    }
    let console = cfg.log.dir.join("console.log");
    let io_err = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    std::fs::create_dir_all(&cfg.log.dir).map_err(|e| io_err(&cfg.log.dir, e))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&console)
        .map_err(|e| io_err(&console, e))?;
    let from = out.metadata().map_or(0, |m| m.len());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child = Command::new(exe)
        .arg("run")
        .args(args.to_args())
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| io_err(&console, e))?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the broker: {e}"))?;
    let pid = child.id();
    let deadline = Instant::now() + START_WAIT;
    while pidfile.pid() != Some(pid) {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the broker exited ({status}) before it listened; {}:\n{}",
                console.display(),
                tail(&console, from)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the broker (pid {pid}) is not listening after {} s; see {}",
                START_WAIT.as_secs(),
                console.display()
            ));
        }
        std::thread::sleep(POLL);
    }
    println!("ringmq started (pid {pid}): {}", addresses(&cfg));
    Ok(())
}

/// `ringmq stop`: an error when no broker runs on the data dir.
pub fn stop(args: &RunArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    let pidfile = PidFile::of(&cfg.broker.data_dir);
    match pidfile.owner() {
        Owner::Running(pid) => stop_pid(&cfg, &pidfile, pid),
        Owner::Stale => {
            pidfile.remove();
            Err(format!(
                "not running (removed the stale pidfile {})",
                pidfile.path().display()
            ))
        }
        Owner::None => Err(format!(
            "not running (no pidfile {})",
            pidfile.path().display()
        )),
    }
}

/// `ringmq restart`: stops the broker when one runs, then starts one.
pub fn restart(args: &RunArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    let pidfile = PidFile::of(&cfg.broker.data_dir);
    if let Owner::Running(pid) = pidfile.owner() {
        stop_pid(&cfg, &pidfile, pid)?;
    }
    start(args)
}

/// `ringmq ping`: the admin API answers (any answer but a server error), or, with the API
/// disabled, the first listener accepts a connection.
pub fn ping(args: &RunArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    if cfg.admin.enabled {
        let base = ctl::base_url(Some(&cfg));
        let (status, body) = ctl::request(
            &base,
            cfg.admin.token.as_deref(),
            Call::Get("status".into()),
        )?;
        if status >= 500 {
            return Err(format!("the admin API at {base} answered {status}: {body}"));
        }
    } else {
        let endpoint = cfg
            .listeners
            .values()
            .next()
            .map(|l| l.endpoint())
            .ok_or("no listener configured")?;
        match endpoint {
            Endpoint::Tcp(bind) => {
                let addr = ctl::dial_address(bind);
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map_err(|e| format!("no answer on {addr}: {e}"))?;
            }
            Endpoint::Unix(path) => {
                std::os::unix::net::UnixStream::connect(&path)
                    .map_err(|e| format!("no answer on {}: {e}", path.display()))?;
            }
        }
    }
    println!("pong");
    Ok(())
}

/// Sends SIGTERM and waits for the process to be gone (its graceful shutdown takes at most
/// `broker.shutdown_timeout`), then removes the pidfile if the broker left it.
fn stop_pid(cfg: &Config, pidfile: &PidFile, pid: u32) -> Result<(), String> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| format!("bad pid {pid} in {}", pidfile.path().display()))?;
    rustix::process::kill_process(target, rustix::process::Signal::TERM)
        .map_err(|e| format!("cannot signal pid {pid}: {e}"))?;
    let wait = Duration::from_secs(cfg.broker.shutdown_timeout + STOP_MARGIN_SECS);
    let deadline = Instant::now() + wait;
    while pidfile::is_ringmq(pid) {
        if Instant::now() > deadline {
            return Err(format!(
                "pid {pid} did not exit within {} s of SIGTERM (broker.shutdown_timeout + {STOP_MARGIN_SECS} s)",
                wait.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
    pidfile.remove_if(pid);
    println!("ringmq stopped (pid {pid})");
    Ok(())
}

/// The configured listeners and admin API, as `start` reports them.
fn addresses(cfg: &Config) -> String {
    let mut parts: Vec<String> = cfg
        .listeners
        .iter()
        .map(|(name, l)| format!("{name} {}", l.endpoint()))
        .collect();
    if cfg.admin.enabled {
        parts.push(format!("admin {}", cfg.admin.bind));
    }
    parts.join(", ")
}

/// The last lines written to `path` from byte `from` on.
fn tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(from)).is_ok() {
            let _ = f.read_to_string(&mut text);
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
