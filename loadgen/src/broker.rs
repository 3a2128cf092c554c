//! Broker-side figures from /proc, when the broker's PID is given: CPU seconds used and RSS.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Sample {
    pub cpu_secs: f64,
    pub rss_bytes: u64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Sample {
        cpu_secs: (utime + stime) / USER_HZ,
        rss_bytes: rss_kb * 1024,
    })
}

/// /proc reports CPU time in USER_HZ ticks, fixed at 100 by the Linux ABI.
const USER_HZ: f64 = 100.0;

/// What the broker used between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_start: u64,
    pub rss_end: u64,
}

pub fn usage(start: Sample, end: Sample) -> Usage {
    Usage {
        cpu_secs: end.cpu_secs - start.cpu_secs,
        rss_start: start.rss_bytes,
        rss_end: end.rss_bytes,
    }
}
