//! `--procs N`: the parent runs this binary N times as `child`, each driving its share of the
//! clients, and talks to each over its stdin and stdout, a line at a time:
//! - parent -> child: the run as JSON (target, with the child's index, and scenario); `GO` once
//!   every child is ready; in `conn`, `RELEASE` at the end of the hold;
//! - child -> parent: `PROGRESS up sent received errors` (its live counters, which the parent
//!   sums into its progress line), `READY` once its clients are connected, `REPORT {json}`.
//!
//! The parent times the run (the hold; pubsub's measured window), samples the broker over it,
//! and merges the children's reports.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::target::{Progress, TargetArgs};
use crate::{conn, pubsub, Scenario};

/// What a child runs: the parent's target and scenario, with the child's index set.
#[derive(Serialize, Deserialize)]
struct Run {
    target: TargetArgs,
    scenario: Scenario,
}

/// How often a child passes its counters on.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A child process runs its share of the run it reads from stdin and reports it on stdout.
pub fn child(progress: &Arc<Progress>) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let run: Run = serde_json::from_str(&line)?;
    anyhow::ensure!(run.target.child.is_some(), "a child needs its index");
    let p = progress.clone();
    std::thread::spawn(move || {
        while !p.done.load(Ordering::Relaxed) {
            std::thread::sleep(PROGRESS_EVERY);
            send_progress(&p);
        }
    });
    let report = crate::run_scenario(&run.target, &run.scenario, progress)?;
    tell_parent(&format!("REPORT {}", serde_json::to_string(&report)?));
    Ok(())
}

/// A line to the parent; a parent gone leaves nobody to tell, so errors are moot.
fn tell_parent(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn send_progress(p: &Progress) {
    let counts: Vec<String> = p
        .shown()
        .iter()
        .map(|c| c.load(Ordering::Relaxed).to_string())
        .collect();
    tell_parent(&format!("PROGRESS {}", counts.join(" ")));
}

/// A child passes on its counters, says READY and waits for the parent's GO; a lone process
/// goes on at once.
pub fn ready_then_wait(target: &TargetArgs, progress: &Progress) {
    if target.child.is_none() {
        return;
    }
    // The parent's count of connections up is current when it hears READY.
    send_progress(progress);
    tell_parent("READY");
    wait_for_parent();
}

/// A child waits for the parent's next line (`GO`, `RELEASE`); a closed stdin (the parent is
/// gone) lets it go on.
pub fn wait_for_parent() {
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
}

enum Event {
    Ready,
    Report(Box<Report>),
    Gone,
}

/// The running children; killed if dropped before they are done.
struct Children {
    procs: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::Receiver<(usize, Event)>,
}

impl Children {
    fn spawn(
        target: &TargetArgs,
        scenario: &Scenario,
        progress: &Arc<Progress>,
    ) -> anyhow::Result<Children> {
        let exe = std::env::current_exe()?;
        let (tx, events) = mpsc::channel();
        let mut kids = Children {
            procs: Vec::new(),
            stdins: Vec::new(),
            events,
        };
        for k in 0..target.procs {
            let mut child = Command::new(&exe)
                .arg("child")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
            kids.procs.push(child);
            let (Some(mut stdin), Some(stdout)) = (stdin, stdout) else {
                anyhow::bail!("child process {k} has no pipes");
            };
            let run = Run {
                target: TargetArgs {
                    child: Some(k),
                    broker_pid: None,
                    json: false,
                    ..target.clone()
                },
                scenario: scenario.clone(),
            };
            writeln!(stdin, "{}", serde_json::to_string(&run)?)?;
            kids.stdins.push(stdin);
            let (tx, progress) = (tx.clone(), progress.clone());
            std::thread::spawn(move || listen(k, stdout, &progress, &tx));
        }
        Ok(kids)
    }

    /// Tells every child the same word. A child that is gone is found out by `reports`.
    fn say(&mut self, word: &str) {
        for s in &mut self.stdins {
            let _ = writeln!(s, "{word}");
        }
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        for _ in 0..self.procs.len() {
            if let (k, Event::Report(_) | Event::Gone) = self.events.recv()? {
                anyhow::bail!("child process {k} ended before it was ready");
            }
        }
        Ok(())
    }

    /// Waits for every child to end and merges their reports.
    fn reports(mut self) -> anyhow::Result<Report> {
        let mut got: Vec<Option<Report>> = self.procs.iter().map(|_| None).collect();
        let mut gone = 0;
        while gone < got.len() {
            match self.events.recv()? {
                (k, Event::Report(r)) => got[k] = Some(*r),
                (_, Event::Gone) => gone += 1,
                (_, Event::Ready) => {}
            }
        }
        for c in &mut self.procs {
            c.wait()?;
        }
        let mut merged: Option<Report> = None;
        for (k, r) in got.into_iter().enumerate() {
            let r = r.ok_or_else(|| anyhow::anyhow!("child process {k} ended without a report"))?;
            match &mut merged {
                None => merged = Some(r),
                Some(m) => m.merge(&r),
            }
        }
        merged.ok_or_else(|| anyhow::anyhow!("no child process reported"))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.procs {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Reads one child's lines: adds its counters to ours and passes the rest on as events.
fn listen(k: usize, stdout: ChildStdout, progress: &Progress, tx: &mpsc::Sender<(usize, Event)>) {
    let mut last = [0u64; 4];
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(counts) = line.strip_prefix("PROGRESS ") {
            let now: Vec<u64> = counts
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if now.len() == last.len() {
                for ((c, was), n) in progress.shown().iter().zip(&mut last).zip(now) {
                    // Wrapping: the count of connections up also goes down.
                    c.fetch_add(n.wrapping_sub(*was), Ordering::Relaxed);
                    *was = n;
                }
            }
        } else if line == "READY" {
            let _ = tx.send((k, Event::Ready));
        } else if let Some(json) = line.strip_prefix("REPORT ") {
            if let Ok(r) = serde_json::from_str(json) {
                let _ = tx.send((k, Event::Report(Box::new(r))));
            }
        }
    }
    // A child that is gone holds no connection, whatever it said last.
    progress.up.fetch_sub(last[0], Ordering::Relaxed);
    let _ = tx.send((k, Event::Gone));
}

/// Runs the scenario over `--procs` children: starts them, waits for all to be connected,
/// starts them together, times the run and samples the broker over it, and merges their reports.
pub fn run_children(
    target: &TargetArgs,
    scenario: &Scenario,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    let before = target.broker_pid.and_then(crate::broker::sample);
    let mut kids = Children::spawn(target, scenario, progress)?;
    kids.wait_ready()?;
    eprintln!("all {} processes ready", target.procs);
    kids.say("GO");
    match scenario {
        Scenario::Conn(a) => {
            let held = conn::hold(target, a, progress);
            kids.say("RELEASE");
            let mut r = kids.reports()?;
            r.broker = held.usage(before);
            Ok(r)
        }
        Scenario::Pubsub(a) => {
            let broker = pubsub::measured_window(target, a);
            let mut r = kids.reports()?;
            r.broker = broker;
            Ok(r)
        }
    }
}
