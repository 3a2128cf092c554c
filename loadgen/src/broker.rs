//! Broker-side figures from /proc, when the broker's PID is given: CPU seconds used, RSS, and
//! the TCP connections it holds established on the port the load generator targets.

use std::collections::HashSet;

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

/// The broker's established TCP connections with local port `port` (its clients on that
/// listener): its socket inodes from /proc/PID/fd, looked up in /proc/PID/net/tcp and tcp6
/// (which list every socket of its network namespace, the load generator's ends too).
pub fn established(pid: u32, port: u16) -> Option<u64> {
    let inodes: HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| {
            let link = std::fs::read_link(entry.ok()?.path()).ok()?;
            link.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    // /proc/net/tcp is no snapshot: read while other sockets of the namespace come and go,
    // it can skip a line or show one twice. The sockets counted are the broker's, held all
    // the while, so three reads are joined by inode.
    let mut found: HashSet<u64> = HashSet::new();
    for _ in 0..3 {
        for table in ["tcp", "tcp6"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                found.extend(
                    text.lines()
                        .skip(1)
                        .filter_map(|line| established_on(line, port, &inodes)),
                );
            }
        }
    }
    Some(found.len() as u64)
}

/// The inode of a /proc/net/tcp line (`sl local rem st queues timer retr uid timeout inode
/// ...`, addresses as hex `ADDR:PORT`) when it is an established socket on local `port` among
/// `inodes`.
fn established_on(line: &str, port: u16, inodes: &HashSet<u64>) -> Option<u64> {
    const ESTABLISHED: &str = "01";
    let f: Vec<&str> = line.split_whitespace().collect();
    let local_port = f
        .get(1)
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    let inode: u64 = f.get(9)?.parse().ok()?;
    (local_port == Some(port) && f.get(3) == Some(&ESTABLISHED) && inodes.contains(&inode))
        .then_some(inode)
}

/// What the broker used between two samples; for `conn`, `rss_end` is sampled while every
/// connection is held (after the settle) and `sockets` at the end of the hold.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_secs: f64,
    pub rss_start: u64,
    pub rss_end: u64,
    /// `conn`: the broker's established connections on the target port at the end of the hold.
    #[serde(default)]
    pub sockets: Option<u64>,
}

pub fn usage(start: Sample, end: Sample) -> Usage {
    Usage {
        cpu_secs: end.cpu_secs - start.cpu_secs,
        rss_start: start.rss_bytes,
        rss_end: end.rss_bytes,
        sockets: None,
    }
}

/// Runs `work`, and returns what it gave and what broker `pid` used over it (none without a
/// PID, or when /proc could not tell).
pub fn over<R>(pid: Option<u32>, work: impl FnOnce() -> R) -> (R, Option<Usage>) {
    let before = pid.and_then(sample);
    let r = work();
    let after = pid.and_then(sample);
    (r, before.zip(after).map(|(b, a)| usage(b, a)))
}

impl Usage {
    /// `n` (messages, say) per CPU-second the broker used; none when it used none.
    pub fn per_cpu_sec(&self, n: u64) -> Option<f64> {
        (self.cpu_secs > 0.0 && n > 0).then(|| n as f64 / self.cpu_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_second_needs_cpu_used_and_something_done() {
        let used = |cpu_secs| Usage {
            cpu_secs,
            ..Usage::default()
        };
        assert_eq!(used(2.0).per_cpu_sec(10), Some(5.0));
        assert_eq!(used(0.0).per_cpu_sec(10), None);
        assert_eq!(used(2.0).per_cpu_sec(0), None);
    }

    #[test]
    fn only_established_sockets_of_the_broker_on_its_port_count() {
        let inodes: HashSet<u64> = [1001, 1002].into();
        let line = |local: &str, st: &str, inode: u64| {
            format!("  7: {local} 0100007F:D431 {st} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0")
        };
        // Port 1883 is 0x075B.
        assert_eq!(
            established_on(&line("0100007F:075B", "01", 1001), 1883, &inodes),
            Some(1001)
        );
        assert_eq!(
            established_on(&line("0100007F:075B", "0A", 1002), 1883, &inodes),
            None,
            "listening"
        );
        assert_eq!(
            established_on(&line("0100007F:075C", "01", 1001), 1883, &inodes),
            None,
            "other port"
        );
        assert_eq!(
            established_on(&line("0100007F:075B", "01", 7), 1883, &inodes),
            None,
            "not the broker's"
        );
        assert_eq!(established_on("garbage", 1883, &inodes), None);
    }
}
