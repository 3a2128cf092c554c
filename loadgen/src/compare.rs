//! `compare`: one scenario against several brokers, interleaved (A B A B ...) over repetitions,
//! reported as medians and as ratios to a baseline broker, so a noisy shared machine still
//! gives a fair comparison.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use crate::report::{Outcome, Report};
use crate::target::{Progress, TargetArgs};
use crate::Scenario;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// A broker as NAME=ADDR or NAME=ADDR@PID (the PID adds CPU and memory figures); repeat.
    #[arg(long = "broker", required = true)]
    pub brokers: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The broker the ratios are against (default: the last one given).
    #[arg(long)]
    pub baseline: Option<String>,
}

#[derive(Debug, Clone)]
struct Broker {
    name: String,
    addr: SocketAddr,
    pid: Option<u32>,
}

fn parse(spec: &str) -> anyhow::Result<Broker> {
    let (name, rest) = spec
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--broker {spec}: use NAME=ADDR[@PID]"))?;
    let (addr, pid) = match rest.split_once('@') {
        Some((a, p)) => (a, Some(p.parse()?)),
        None => (rest, None),
    };
    Ok(Broker {
        name: name.into(),
        addr: addr.parse()?,
        pid,
    })
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub broker: String,
    /// Median delivered messages per second (conn: connects per second).
    pub rate: f64,
    /// Median deliveries per broker CPU-second (conn: broker RSS bytes per held connection, on
    /// the first, fresh run).
    pub efficiency: Option<f64>,
    /// Median p99 latency: of deliveries, or (conn) of CONNACKs.
    pub p99_us: u64,
    /// conn: median connections made per broker CPU-second while connecting, and its ratio.
    pub connects_per_cpu_sec: Option<f64>,
    pub connects_per_cpu_sec_ratio: Option<f64>,
    pub lost: u64,
    pub duplicated: u64,
    pub rate_ratio: f64,
    pub efficiency_ratio: Option<f64>,
    pub runs: Vec<Report>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn run(
    target: &TargetArgs,
    args: &CompareArgs,
    scenario: &Scenario,
    progress: &Arc<Progress>,
) -> anyhow::Result<Vec<Row>> {
    let brokers: Vec<Broker> = args
        .brokers
        .iter()
        .map(|b| parse(b))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(args.reps > 0, "--reps must be at least 1");
    let mut runs: Vec<Vec<Report>> = brokers.iter().map(|_| Vec::new()).collect();
    for rep in 0..args.reps {
        for (k, b) in brokers.iter().enumerate() {
            eprintln!("== rep {}/{}: {}", rep + 1, args.reps, b.name);
            let t = TargetArgs {
                addr: b.addr,
                broker_pid: b.pid,
                ..target.clone()
            };
            let r = crate::run_scenario(&t, scenario, progress)?;
            if let Some(w) = r.sockets_mismatch() {
                eprintln!("WARNING {}: {w}", b.name);
            }
            runs[k].push(r);
        }
    }
    let conn = matches!(scenario, Scenario::Conn(_));
    let summarize = |reports: &[Report]| {
        let rate = median(
            reports
                .iter()
                .map(|r| {
                    if conn {
                        r.connects_per_sec()
                    } else {
                        r.msgs_per_sec()
                    }
                })
                .collect(),
        );
        let eff: Vec<f64> = reports
            .iter()
            .filter_map(|r| {
                if conn {
                    r.rss_per_conn()
                } else {
                    r.per_cpu_sec()
                }
            })
            .collect();
        // Memory per connection is only meaningful on a fresh broker (later runs reuse what the
        // first one freed), so for `conn` the largest figure - the first run's - is kept.
        let eff = if conn {
            eff.into_iter().reduce(f64::max)
        } else {
            (!eff.is_empty()).then(|| median(eff))
        };
        (rate, eff)
    };
    let base_name = args
        .baseline
        .clone()
        .unwrap_or_else(|| brokers.last().map(|b| b.name.clone()).unwrap_or_default());
    let base_idx = brokers
        .iter()
        .position(|b| b.name == base_name)
        .ok_or_else(|| anyhow::anyhow!("no broker named {base_name}"))?;
    let connect_eff = |reports: &[Report]| {
        let v: Vec<f64> = reports
            .iter()
            .filter_map(Report::connects_per_cpu_sec)
            .collect();
        (conn && !v.is_empty()).then(|| median(v))
    };
    let (base_rate, base_eff) = summarize(&runs[base_idx]);
    let base_connect_eff = connect_eff(&runs[base_idx]);
    let rows = brokers
        .iter()
        .zip(runs)
        .map(|(b, reports)| {
            let (rate, eff) = summarize(&reports);
            let p99 = median(
                reports
                    .iter()
                    .map(|r| {
                        let l = if conn { &r.connect_latency } else { &r.latency };
                        l.percentiles().p99 as f64
                    })
                    .collect(),
            ) as u64;
            let connects_per_cpu_sec = connect_eff(&reports);
            Row {
                broker: b.name.clone(),
                rate,
                efficiency: eff,
                p99_us: p99,
                connects_per_cpu_sec,
                connects_per_cpu_sec_ratio: connects_per_cpu_sec
                    .zip(base_connect_eff)
                    .map(|(e, be)| e / be),
                lost: reports.iter().map(Report::lost).sum(),
                duplicated: reports.iter().map(|r| r.duplicated).sum(),
                rate_ratio: if base_rate > 0.0 {
                    rate / base_rate
                } else {
                    0.0
                },
                efficiency_ratio: eff.zip(base_eff).map(|(e, be)| {
                    if conn {
                        be / e.max(1.0)
                    } else {
                        e / be
                    }
                }),
                runs: reports,
            }
        })
        .collect();
    Ok(rows)
}

/// Why a run of the comparison fell short of what was asked (the first such run), if one did.
pub fn shortfall(rows: &[Row]) -> Option<String> {
    rows.iter().find_map(|row| {
        row.runs
            .iter()
            .enumerate()
            .find_map(|(k, r)| Some(format!("{} run {}: {}", row.broker, k + 1, r.shortfall()?)))
    })
}

pub fn print(rows: &[Row], conn: bool) {
    let (rate, eff, p99) = if conn {
        ("conn/s", "RSS B/conn", "CONNACK p99 us")
    } else {
        ("msg/s", "msg/CPU-s", "p99 us")
    };
    let num = |v: Option<f64>| v.map_or("-".into(), |e| format!("{e:.0}"));
    let ratio = |v: Option<f64>| v.map_or("-".into(), |e| format!("{e:.2}x"));
    print!(
        "{:<14} {:>12} {:>8} {:>14} {:>8}",
        "broker", rate, "ratio", eff, "ratio"
    );
    if conn {
        print!(" {:>12} {:>8}", "conn/CPU-s", "ratio");
    }
    println!(" {:>14} {:>8} {:>6}", p99, "lost", "dup");
    for r in rows {
        print!(
            "{:<14} {:>12.0} {:>7.2}x {:>14} {:>8}",
            r.broker,
            r.rate,
            r.rate_ratio,
            num(r.efficiency),
            ratio(r.efficiency_ratio)
        );
        if conn {
            print!(
                " {:>12} {:>8}",
                num(r.connects_per_cpu_sec),
                ratio(r.connects_per_cpu_sec_ratio)
            );
        }
        println!(" {:>14} {:>8} {:>6}", r.p99_us, r.lost, r.duplicated);
    }
}
