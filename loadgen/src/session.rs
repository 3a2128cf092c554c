//! Persistent sessions: the client ids a run's sessions go by, the topics they use and how long
//! they outlive their connections. A session the broker keeps is found again by its client id,
//! so ids carry a prefix: a new random one per run (a run never resumes another's sessions),
//! or the user's, so that a rerun resumes the sessions the last one left. Topic patterns take
//! the prefix too (`{p}`), so that a run's messages match no other run's offline sessions.

use std::hash::{BuildHasher, Hasher};

use clap::Args;
use ringmq::codec::{Connect, Properties, Protocol};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct SessionArgs {
    /// Session expiry v5 clients with persistent sessions ask for, in seconds (v3 clients
    /// get the broker's own).
    #[arg(long, default_value_t = 3600)]
    pub session_expiry: u32,
    /// Client ids are PREFIX-s-N (subscribers), PREFIX-p-N (publishers). Default with
    /// persistent sessions: lg-RANDOM, new each run, whose sessions stay behind on the broker
    /// until they expire; pass one to resume the same sessions on a rerun instead.
    #[arg(long)]
    pub client_prefix: Option<String>,
}

impl SessionArgs {
    /// The prefix of this run's client ids: the user's or the one `for_this_run` fixed, else
    /// `lg` (clean sessions, which nothing resumes).
    pub fn prefix(&self) -> &str {
        self.client_prefix.as_deref().unwrap_or("lg")
    }

    /// The session a persistent client keeps.
    pub fn kept(&self) -> Session {
        Session::Kept {
            expiry_secs: self.session_expiry,
        }
    }

    /// The client id of subscriber `j`.
    pub fn subscriber_id(&self, j: usize) -> String {
        format!("{}-s-{j}", self.prefix())
    }

    /// The client id of publisher `i`.
    pub fn publisher_id(&self, i: usize) -> String {
        format!("{}-p-{i}", self.prefix())
    }

    /// Fixes a new random prefix for this run, unless the user gave one. Called once per run
    /// before its clients are spread over processes, which must all use the same.
    pub fn for_this_run(&self) -> SessionArgs {
        SessionArgs {
            client_prefix: Some(
                self.client_prefix
                    .clone()
                    .unwrap_or_else(|| format!("lg-{:08x}", random_u32())),
            ),
            ..self.clone()
        }
    }
}

/// Topic (or filter) `pattern` for client `i`: `{p}` becomes `prefix`, `{i}` becomes `i`; the
/// rest, and whatever `prefix` holds, is kept as it is.
pub fn topic(pattern: &str, prefix: &str, i: usize) -> String {
    let mut out = String::with_capacity(pattern.len() + prefix.len());
    let mut rest = pattern;
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("{p}") {
            out.push_str(prefix);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("{i}") {
            out.push_str(&i.to_string());
            rest = after;
        } else {
            out.push('{');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// 32 random bits from the standard library's per-process random hash keys.
fn random_u32() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::report::unix_ns());
    h.finish() as u32
}

/// Whether a client's session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// Clean session (v3) / clean start (v5): a new session that ends with the connection.
    Clean,
    /// Resumes the session of its client id if the broker has one; v5 clients ask for
    /// `expiry_secs` (none when 0: the session then ends with the connection).
    Kept { expiry_secs: u32 },
}

impl Session {
    /// The CONNECT a client opening this session sends.
    pub fn connect(self, protocol: Protocol, client_id: &str, keep_alive: u16) -> Connect {
        let mut c = Connect::new(protocol, client_id, self == Session::Clean, keep_alive);
        if let (Session::Kept { expiry_secs }, Protocol::V5) = (self, protocol) {
            if expiry_secs > 0 {
                c.properties = Some(Box::new(Properties {
                    session_expiry_interval: Some(expiry_secs),
                    ..Properties::default()
                }));
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_a_prefix_gets_its_own_and_a_given_one_is_kept() {
        let none = SessionArgs {
            session_expiry: 60,
            client_prefix: None,
        };
        assert_eq!(none.prefix(), "lg");
        let (a, b) = (none.for_this_run(), none.for_this_run());
        assert!(a.prefix().starts_with("lg-") && a.prefix().len() == 11);
        assert_ne!(a.prefix(), b.prefix(), "each run its own sessions");
        assert_eq!(a.for_this_run().prefix(), a.prefix(), "fixed once per run");
        let given = SessionArgs {
            client_prefix: Some("dur".into()),
            ..none
        };
        assert_eq!(given.for_this_run().prefix(), "dur");
    }

    #[test]
    fn topics_fill_in_the_prefix_and_the_index_once_each() {
        assert_eq!(topic("queue/{p}/{i}", "lg-1", 7), "queue/lg-1/7");
        assert_eq!(topic("bench/{i}/{i}", "x", 3), "bench/3/3");
        assert_eq!(topic("fan/out", "x", 3), "fan/out", "nothing to fill");
        assert_eq!(topic("{p}", "a{i}", 5), "a{i}", "a prefix is not a pattern");
        assert_eq!(topic("{x}/{p", "x", 1), "{x}/{p", "not placeholders");
        assert_eq!(topic("$share/g/{p}/+", "dur", 0), "$share/g/dur/+");
    }

    #[test]
    fn kept_sessions_clear_clean_start_and_v5_asks_for_the_expiry() {
        let kept = Session::Kept { expiry_secs: 3600 };
        let v5 = kept.connect(Protocol::V5, "c", 60);
        assert!(!v5.clean_start);
        assert_eq!(
            v5.properties.and_then(|p| p.session_expiry_interval),
            Some(3600)
        );
        let v3 = kept.connect(Protocol::V311, "c", 60);
        assert!(!v3.clean_start && v3.properties.is_none());
        let clean = Session::Clean.connect(Protocol::V5, "c", 60);
        assert!(clean.clean_start && clean.properties.is_none());
        let no_expiry = Session::Kept { expiry_secs: 0 }.connect(Protocol::V5, "c", 60);
        assert!(!no_expiry.clean_start && no_expiry.properties.is_none());
    }
}
