//! Hosts of a test network, made with Linux network namespaces (`ip netns`, as root): each host
//! is a namespace with its own loopback and a veth link to a bridge in this process's namespace,
//! so a test can cut one host off the others (its link down) while its clients, which reach it
//! on its own loopback from a thread that entered its namespace, keep their connections.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;

/// A bridge and `n` hosts on it, removed on drop.
pub struct Lan {
    tag: String,
    hosts: Vec<Host>,
}

pub struct Host {
    /// The namespace's name (under `/run/netns`).
    pub ns: String,
    /// The host's address on the bridge.
    pub ip: Ipv4Addr,
    /// The veth end inside the namespace.
    link: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    /// Makes the bridge and `n` hosts, 10.X.Y.1 to .n, X.Y taken from this process's id.
    pub fn new(n: u8) -> Lan {
        let pid = std::process::id();
        // Interface names are at most 15 bytes: "rq" + 5 digits + a role letter + a digit.
        let tag = format!("rq{:05}", pid % 100_000);
        let bridge = format!("{tag}b");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut lan = Lan {
            tag,
            hosts: Vec::new(),
        };
        ip(&["link", "set", &bridge, "up"]);
        for i in 1..=n {
            let ns = format!("{}n{i}", lan.tag);
            let (outer, link) = (format!("{}h{i}", lan.tag), format!("{}c{i}", lan.tag));
            let addr = Ipv4Addr::new(10, (pid >> 8) as u8, pid as u8, i);
            ip(&["netns", "add", &ns]);
            lan.hosts.push(Host {
                ns: ns.clone(),
                ip: addr,
                link: link.clone(),
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &link, "netns", &ns,
            ]);
            ip(&["link", "set", &outer, "master", &bridge, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &link,
            ]);
            ip(&["-n", &ns, "link", "set", &link, "up"]);
        }
        lan
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cuts host `i` off the bridge: the others' packets to it and its own are dropped.
    pub fn cut(&self, i: usize) {
        let h = &self.hosts[i];
        ip(&["-n", &h.ns, "link", "set", &h.link, "down"]);
    }

    /// Puts host `i` back on the bridge.
    pub fn heal(&self, i: usize) {
        let h = &self.hosts[i];
        ip(&["-n", &h.ns, "link", "set", &h.link, "up"]);
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth pair with it.
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}b", self.tag)])
            .status();
    }
}

/// The namespace each broker port was opened in (a port absent here is in this process's own).
static NAMESPACE_OF: Mutex<Vec<(u16, String)>> = Mutex::new(Vec::new());

/// Records that `ports` are opened in namespace `ns`.
pub fn place(ns: &str, ports: &[u16]) {
    let mut all = NAMESPACE_OF.lock().unwrap_or_else(|e| e.into_inner());
    all.extend(ports.iter().map(|p| (*p, ns.to_string())));
}

/// Runs `f` in the namespace of `port`: sockets it opens and processes it starts are there.
pub fn within<T: Send>(port: u16, f: impl FnOnce() -> T + Send) -> T {
    let ns = NAMESPACE_OF
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, ns)| ns.clone());
    let Some(ns) = ns else {
        return f();
    };
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace file");
            // SAFETY: setns on a valid, open namespace descriptor only changes this thread's
            // network namespace; the thread is ours and ends with the scope.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        });
        t.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}
