//! `ringmq doctor`: reads this machine's kernel settings and limits, compares each with what a
//! target number of connections needs (the arithmetic is tuning/README.md's), and says OK or
//! LOW for each, whether io_uring is usable and how many connections the machine allows now.
//! Everything is read under a root directory so tests can use a fake /proc and /sys.

use std::path::{Path, PathBuf};

/// User-space memory per idle connection, measured (see the README's figures), plus the
/// kernel's per-socket cost with no buffers held.
pub const BROKER_BYTES_PER_CONN: u64 = 1300;
pub const KERNEL_BYTES_PER_CONN: u64 = 3700;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Low,
    /// Not present on this machine (or not readable): reported, not judged.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub knob: &'static str,
    pub current: String,
    pub recommended: String,
    pub verdict: Verdict,
}

pub struct Machine {
    root: PathBuf,
}

fn judge(current: Option<u64>, want: u64) -> Verdict {
    match current {
        Some(v) if v >= want => Verdict::Ok,
        Some(_) => Verdict::Low,
        None => Verdict::Unknown,
    }
}

impl Machine {
    pub fn new(root: impl Into<PathBuf>) -> Machine {
        Machine { root: root.into() }
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel.trim_start_matches('/'))).ok()
    }

    /// The numbers in a /proc/sys file (several for tcp_mem, port ranges).
    fn numbers(&self, rel: &str) -> Option<Vec<u64>> {
        let text = self.read(rel)?;
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (!v.is_empty()).then_some(v)
    }

    fn first(&self, rel: &str) -> Option<u64> {
        self.numbers(rel).and_then(|v| v.first().copied())
    }

    /// (soft, hard) of a limit in /proc/self/limits; `unlimited` is u64::MAX.
    fn limit(&self, name: &str) -> Option<(u64, u64)> {
        let text = self.read("proc/self/limits")?;
        let line = text.lines().find(|l| l.starts_with(name))?;
        let fields: Vec<&str> = line[name.len()..].split_whitespace().collect();
        let parse = |s: &str| {
            if s == "unlimited" {
                Some(u64::MAX)
            } else {
                s.parse().ok()
            }
        };
        Some((parse(fields.first()?)?, parse(fields.get(1)?)?))
    }

    fn mem_available(&self) -> Option<u64> {
        let text = self.read("proc/meminfo")?;
        crate::config::meminfo_bytes(&text, "MemAvailable:")
    }

    /// The bracketed choice in a /sys setting such as `always [madvise] never`.
    fn selected(&self, rel: &str) -> Option<String> {
        let text = self.read(rel)?;
        let start = text.find('[')?;
        let end = text[start..].find(']')?;
        Some(text[start + 1..start + end].to_string())
    }

    /// Every check for `connections` connections.
    pub fn checks(&self, connections: u64, uring_usable: bool) -> Vec<Check> {
        let n = connections;
        let fds = n + 10_000;
        let backlog = (n / 100).clamp(4096, 65535);
        let mut out = Vec::new();
        let mut num = |knob, current: Option<u64>, want: u64| {
            out.push(Check {
                knob,
                current: current.map_or("absent".into(), |v| v.to_string()),
                recommended: format!(">= {want}"),
                verdict: judge(current, want),
            })
        };
        num(
            "fs.file-max",
            self.first("proc/sys/fs/file-max"),
            fds + fds / 10,
        );
        num("fs.nr_open", self.first("proc/sys/fs/nr_open"), fds);
        num(
            "RLIMIT_NOFILE (soft)",
            self.limit("Max open files").map(|l| l.0),
            fds,
        );
        num(
            "net.core.somaxconn",
            self.first("proc/sys/net/core/somaxconn"),
            backlog,
        );
        num(
            "net.ipv4.tcp_max_syn_backlog",
            self.first("proc/sys/net/ipv4/tcp_max_syn_backlog"),
            backlog,
        );
        num(
            "net.core.netdev_max_backlog",
            self.first("proc/sys/net/core/netdev_max_backlog"),
            16384,
        );
        // tcp_mem is in pages; budget 10% of connections busy with 16 KiB queued each.
        let tcp_pages = n.div_ceil(10) * 4;
        num(
            "net.ipv4.tcp_mem (max, pages)",
            self.numbers("proc/sys/net/ipv4/tcp_mem")
                .and_then(|v| v.get(2).copied()),
            tcp_pages,
        );
        let conntrack = self.first("proc/sys/net/netfilter/nf_conntrack_max");
        if conntrack.is_some() {
            num("net.netfilter.nf_conntrack_max", conntrack, n + n / 5);
        }
        let memlock = self.limit("Max locked memory").map(|l| l.0);
        out.push(Check {
            knob: "RLIMIT_MEMLOCK (io_uring rings)",
            current: memlock.map_or("absent".into(), |v| {
                if v == u64::MAX {
                    "unlimited".into()
                } else {
                    v.to_string()
                }
            }),
            recommended: ">= 67108864".into(),
            verdict: judge(memlock, 64 << 20),
        });
        let thp = self.selected("sys/kernel/mm/transparent_hugepage/enabled");
        out.push(Check {
            knob: "transparent huge pages",
            verdict: match thp.as_deref() {
                Some("madvise" | "never") => Verdict::Ok,
                Some(_) => Verdict::Low,
                None => Verdict::Unknown,
            },
            current: thp.unwrap_or_else(|| "absent".into()),
            recommended: "madvise".into(),
        });
        let gov = self
            .read("sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
            .map(|s| s.trim().to_string());
        out.push(Check {
            knob: "CPU frequency governor",
            verdict: match gov.as_deref() {
                Some("performance") => Verdict::Ok,
                Some(_) => Verdict::Low,
                None => Verdict::Unknown,
            },
            current: gov.unwrap_or_else(|| "absent".into()),
            recommended: "performance".into(),
        });
        let disabled = self.first("proc/sys/kernel/io_uring_disabled").unwrap_or(0);
        out.push(Check {
            knob: "io_uring",
            current: match (uring_usable, disabled) {
                (true, _) => "usable".into(),
                (false, 0) => "blocked (seccomp or kernel)".into(),
                (false, d) => format!("disabled (kernel.io_uring_disabled = {d})"),
            },
            recommended: "usable".into(),
            verdict: if uring_usable {
                Verdict::Ok
            } else {
                Verdict::Low
            },
        });
        out
    }

    /// How many connections the current limits and free memory allow.
    pub fn capacity(&self) -> u64 {
        let mut cap = u64::MAX;
        if let Some((soft, _)) = self.limit("Max open files") {
            cap = cap.min(soft.saturating_sub(100));
        }
        if let Some(v) = self.first("proc/sys/fs/file-max") {
            cap = cap.min(v.saturating_sub(100));
        }
        if let Some(v) = self.first("proc/sys/net/netfilter/nf_conntrack_max") {
            cap = cap.min(v);
        }
        if let Some(mem) = self.mem_available() {
            cap = cap.min(mem / (BROKER_BYTES_PER_CONN + KERNEL_BYTES_PER_CONN));
        }
        cap
    }
}

/// Prints the table; returns true when every judged knob is OK for the target.
pub fn report(root: &Path, connections: u64, uring_usable: bool) -> bool {
    let m = Machine::new(root);
    let checks = m.checks(connections, uring_usable);
    println!("ringmq doctor: target {connections} connections\n");
    println!(
        "{:<34} {:<28} {:<22} verdict",
        "knob", "current", "recommended"
    );
    for c in &checks {
        let v = match c.verdict {
            Verdict::Ok => "OK",
            Verdict::Low => "LOW",
            Verdict::Unknown => "-",
        };
        println!("{:<34} {:<28} {:<22} {v}", c.knob, c.current, c.recommended);
    }
    let cap = m.capacity();
    println!("\nconnections the current limits and free memory allow: {cap}");
    let ready = checks.iter().all(|c| c.verdict != Verdict::Low) && cap >= connections;
    println!(
        "{}",
        if ready {
            "ready for the target"
        } else {
            "NOT ready for the target: see tuning/README.md"
        }
    );
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("ringmq-doctor-{}-{n}", std::process::id()));
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        root
    }

    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units\n\
        Max open files            1048576              1048576              files\n\
        Max locked memory         unlimited            unlimited            bytes\n";

    fn tuned() -> Vec<(&'static str, &'static str)> {
        vec![
            ("proc/sys/fs/file-max", "2097152\n"),
            ("proc/sys/fs/nr_open", "2097152\n"),
            ("proc/self/limits", LIMITS),
            ("proc/sys/net/core/somaxconn", "65535\n"),
            ("proc/sys/net/ipv4/tcp_max_syn_backlog", "65535\n"),
            ("proc/sys/net/core/netdev_max_backlog", "16384\n"),
            ("proc/sys/net/ipv4/tcp_mem", "786432 1048576 1572864\n"),
            ("proc/sys/net/netfilter/nf_conntrack_max", "1310720\n"),
            (
                "sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            ),
            (
                "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
                "performance\n",
            ),
            (
                "proc/meminfo",
                "MemTotal: 67108864 kB\nMemAvailable: 62914560 kB\n",
            ),
        ]
    }

    #[test]
    fn a_tuned_machine_is_ready_for_a_million() {
        let root = fake(&tuned());
        let m = Machine::new(&root);
        let checks = m.checks(1_000_000, true);
        assert!(
            checks.iter().all(|c| c.verdict == Verdict::Ok),
            "{checks:#?}"
        );
        assert_eq!(
            m.capacity(),
            1_048_476,
            "the file limit binds before memory (11.9 M)"
        );
        assert!(report(&root, 1_000_000, true));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn defaults_are_low_and_limits_cap_the_count() {
        let mut files = tuned();
        files.retain(|(p, _)| !p.contains("nf_conntrack") && !p.contains("cpufreq"));
        files.push(("proc/sys/net/core/somaxconn", "4096\n"));
        files.retain(|(p, t)| !(p.ends_with("somaxconn") && *t == "65535\n"));
        files.retain(|(p, _)| *p != "proc/self/limits");
        files.push((
            "proc/self/limits",
            "Max open files            20000                20000                files\n",
        ));
        let root = fake(&files);
        let m = Machine::new(&root);
        let checks = m.checks(1_000_000, false);
        let low: Vec<&str> = checks
            .iter()
            .filter(|c| c.verdict == Verdict::Low)
            .map(|c| c.knob)
            .collect();
        assert_eq!(
            low,
            ["RLIMIT_NOFILE (soft)", "net.core.somaxconn", "io_uring"]
        );
        assert!(checks
            .iter()
            .any(|c| c.knob == "CPU frequency governor" && c.verdict == Verdict::Unknown));
        assert!(
            !checks.iter().any(|c| c.knob.contains("conntrack")),
            "absent conntrack is not judged"
        );
        assert_eq!(m.capacity(), 19_900);
        assert!(!report(&root, 1_000_000, false));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn recommendations_scale_with_the_target() {
        let root = fake(&[("proc/sys/net/core/somaxconn", "4096\n")]);
        let m = Machine::new(&root);
        let small = m.checks(10_000, true);
        let big = m.checks(2_000_000, true);
        let rec = |cs: &[Check], k: &str| {
            cs.iter()
                .find(|c| c.knob == k)
                .map(|c| c.recommended.clone())
                .unwrap_or_default()
        };
        assert_eq!(rec(&small, "fs.nr_open"), ">= 20000");
        assert_eq!(rec(&big, "fs.nr_open"), ">= 2010000");
        assert_eq!(rec(&small, "net.core.somaxconn"), ">= 4096");
        assert_eq!(rec(&big, "net.core.somaxconn"), ">= 20000");
        assert_eq!(rec(&big, "net.ipv4.tcp_mem (max, pages)"), ">= 800000");
        let _ = std::fs::remove_dir_all(root);
    }
}
