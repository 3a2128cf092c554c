//! ringmq-loadgen: connections, pub/sub and offline-queue load against any MQTT broker, with
//! honest latency, loss counting and side-by-side comparison. One pinned monoio runtime per
//! worker thread; `--procs` spreads clients over processes whose results the parent merges.

mod broker;
mod client;
mod compare;
mod conn;
mod procs;
mod pubsub;
mod queue;
mod report;
mod session;
mod target;
mod workers;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use report::{Outcome, Report};
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
    /// Fill persistent sessions' offline queues with QoS 1 messages; drain and count them.
    Queue(queue::QueueArgs),
    /// Run a scenario against several brokers, interleaved, and print ratios of medians.
    Compare {
        #[command(flatten)]
        compare: compare::CompareArgs,
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// A child process of `--procs`: runs the share of a run its parent gives it on stdin.
    #[command(hide = true)]
    Child,
}

#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum Scenario {
    Conn(conn::ConnArgs),
    Pubsub(pubsub::PubSubArgs),
}

impl Scenario {
    /// The scenario with what every process of a run must share fixed: pubsub's client prefix.
    fn for_this_run(&self) -> Scenario {
        match self {
            Scenario::Conn(a) => Scenario::Conn(a.clone()),
            Scenario::Pubsub(a) => Scenario::Pubsub(a.for_this_run()),
        }
    }
}

/// Runs a scenario: in this process, or spread over `--procs` child processes.
pub fn run_scenario(
    target: &TargetArgs,
    scenario: &Scenario,
    progress: &Arc<Progress>,
) -> anyhow::Result<Report> {
    if let Scenario::Conn(a) = scenario {
        a.check()?;
    }
    // Children get what their parent fixed for the run.
    let fixed;
    let scenario = if target.child.is_none() {
        fixed = scenario.for_this_run();
        &fixed
    } else {
        scenario
    };
    if target.procs > 1 && target.child.is_none() {
        return procs::run_children(target, scenario, progress);
    }
    match scenario {
        Scenario::Conn(a) => conn::run(target, a, progress),
        Scenario::Pubsub(a) => pubsub::run(target, a, progress),
    }
}

fn main() -> std::process::ExitCode {
    let mut cli = Cli::parse();
    // Resolved once, here: a worker pinned to one core would see one CPU and slice the
    // clients as if it were alone (every client would then be driven twice).
    cli.target.threads = Some(cli.target.threads());
    let progress = Arc::new(Progress::default());
    if !matches!(cli.command, Command::Child) {
        progress.spawn_printer();
    }
    // Ok(Some(why)): the run fell short of what was asked.
    let result = match &cli.command {
        Command::Conn(a) => run_scenario(&cli.target, &Scenario::Conn(a.clone()), &progress)
            .map(|r| output(&cli.target, &r)),
        Command::Pubsub(a) => run_scenario(&cli.target, &Scenario::Pubsub(a.clone()), &progress)
            .map(|r| output(&cli.target, &r)),
        Command::Queue(a) => queue::run(&cli.target, a, &progress).map(|r| output(&cli.target, &r)),
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
                compare::shortfall(&rows)
            })
        }
        Command::Child => procs::child(&progress).map(|()| None),
    };
    progress.done.store(true, Ordering::Relaxed);
    match result {
        Ok(None) => std::process::ExitCode::SUCCESS,
        Ok(Some(why)) => {
            eprintln!("ringmq-loadgen: {why}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringmq-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints the report; returns why the run fell short, if it did.
fn output(target: &TargetArgs, r: &impl Outcome) -> Option<String> {
    if target.json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    } else {
        r.print();
    }
    r.shortfall()
}
