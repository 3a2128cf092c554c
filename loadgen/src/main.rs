//! ringmq-loadgen: connections and pub/sub load against any MQTT broker, with honest latency,
//! loss counting and side-by-side comparison. One pinned monoio runtime per worker thread;
//! `--procs` spreads clients over processes whose results the parent merges.

mod broker;
mod client;
mod compare;
mod conn;
mod pubsub;
mod report;
mod target;
mod workers;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use report::Report;
use target::{Progress, TargetArgs};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ringmq-loadgen",
    version,
    about = "Load generator for MQTT brokers"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open N connections at a target rate, hold them, verify they stay open.
    Conn(conn::ConnArgs),
    /// Publishers and subscribers: pairs, fan-out, fan-in, shared groups.
    Pubsub(pubsub::PubSubArgs),
    /// Run a scenario against several brokers, interleaved, and print ratios of medians.
    Compare {
        #[command(flatten)]
        compare: compare::CompareArgs,
        #[command(subcommand)]
        scenario: Scenario,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    Conn(conn::ConnArgs),
    Pubsub(pubsub::PubSubArgs),
}

/// Runs a scenario: in this process, or spread over `--procs` child processes.
pub fn run_scenario(
    target: &TargetArgs,
    scenario: &Scenario,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    if target.procs > 1 && target.child.is_none() {
        return run_children(target);
    }
    match scenario {
        Scenario::Conn(a) => conn::run(target, a, progress),
        Scenario::Pubsub(a) => pubsub::run(target, a, progress),
    }
}

/// Starts the children (this binary with the same arguments and `--child K --json`), waits for
/// all to be connected, starts them together, and merges their reports.
fn run_children(target: &TargetArgs) -> anyhow::Result<Report> {
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let before = target.broker_pid.and_then(broker::sample);
    let mut children = Vec::new();
    for k in 0..target.procs {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("--child")
            .arg(k.to_string())
            .arg("--json")
            .args(child_args(&args));
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        children.push(child);
    }
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().expect("piped")))
        .collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "READY",
            "a child process failed to get ready"
        );
    }
    eprintln!("all {} processes ready", target.procs);
    let held = target.broker_pid.and_then(broker::sample);
    for c in &mut children {
        writeln!(c.stdin.as_mut().expect("piped"), "GO")?;
    }
    let mut merged: Option<Report> = None;
    for (mut r, mut c) in readers.into_iter().zip(children) {
        let mut json = String::new();
        std::io::Read::read_to_string(&mut r, &mut json)?;
        c.wait()?;
        let report: Report = serde_json::from_str(json.trim())?;
        match &mut merged {
            None => merged = Some(report),
            Some(m) => m.merge(&report),
        }
    }
    let mut m = merged.ok_or_else(|| anyhow::anyhow!("no child reported"))?;
    let end = if m.published > 0 {
        target.broker_pid.and_then(broker::sample)
    } else {
        held
    };
    if let (Some(b), Some(e)) = (before, end) {
        m.broker = Some(broker::usage(b, e));
    }
    Ok(m)
}

/// The parent's arguments for a child: everything but --json and --broker-pid (the parent
/// samples the broker itself).
fn child_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--broker-pid" {
            skip_value = true;
            continue;
        }
        if a == "--json" || a.starts_with("--broker-pid=") {
            continue;
        }
        out.push(a.clone());
    }
    out
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    // Resolved once, here: a worker pinned to one core would see one CPU and slice the
    // clients as if it were alone (every client would then be driven twice).
    cli.target.threads = Some(cli.target.threads());
    let progress = Arc::new(Progress::default());
    if cli.target.child.is_none() {
        progress.spawn_printer();
    }
    let result = match &cli.command {
        Command::Conn(a) => run_scenario(&cli.target, &Scenario::Conn(a.clone()), &progress)
            .map(|r| output(&cli.target, &r)),
        Command::Pubsub(a) => run_scenario(&cli.target, &Scenario::Pubsub(a.clone()), &progress)
            .map(|r| output(&cli.target, &r)),
        Command::Compare { compare, scenario } => {
            compare::run(&cli.target, compare, scenario, &progress).map(|rows| {
                if cli.target.json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).unwrap_or_default()
                    );
                } else {
                    compare::print(&rows, matches!(scenario, Scenario::Conn(_)));
                }
            })
        }
    };
    progress.done.store(true, Ordering::Relaxed);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmq-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn output(target: &TargetArgs, r: &Report) {
    if target.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        r.print();
    }
}
