//! CONNECTs that wait on this shard: for a checker thread's password verdict, or for the home
//! shard's grant of their client id (and those superseded by a newer CONNECT before it came).
//! Each waits under a token; a connection that closes meanwhile is forgotten by its token.

use std::rc::Rc;

use ahash::AHashMap;

use super::link::{ConnLink, LinkState};
use crate::auth::checker::{Check, ShardChecks, Verdict};

/// A claim superseded before its grant arrived: where the grant goes instead.
#[derive(Debug, Clone, Copy)]
pub(super) struct Successor {
    pub shard: usize,
    pub token: u64,
    pub clean_start: bool,
}

pub(super) struct Waiting {
    /// Connections waiting for a grant, by claim token.
    claims: AHashMap<u64, Rc<ConnLink>>,
    /// Claims superseded before their grant arrived, by the superseded claim's token.
    superseded: AHashMap<u64, Successor>,
    /// Connections whose password a checker thread is verifying, by token.
    passwords: AHashMap<u64, Rc<ConnLink>>,
    checks: ShardChecks,
}

impl Waiting {
    pub fn new(checks: ShardChecks) -> Waiting {
        Waiting {
            claims: AHashMap::new(),
            superseded: AHashMap::new(),
            passwords: AHashMap::new(),
            checks,
        }
    }

    /// `link` waits for the grant of its claim `token`.
    pub fn claim(&mut self, token: u64, link: Rc<ConnLink>) {
        link.state.set(LinkState::Claiming(token));
        self.claims.insert(token, link);
    }

    /// The connection a grant is for, if it still waits.
    pub fn granted(&mut self, token: u64) -> Option<Rc<ConnLink>> {
        self.claims.remove(&token)
    }

    /// The claim token of a connection waiting for `client_id`, other than `token` itself
    /// and than claims already superseded (each is superseded once, by the next claim).
    pub fn claiming(&self, client_id: &str, token: u64) -> Option<u64> {
        self.claims.iter().find_map(|(t, l)| {
            let same = l
                .connect
                .borrow()
                .as_ref()
                .is_some_and(|c| c.client_id == client_id);
            (same && *t != token && !self.superseded.contains_key(t)).then_some(*t)
        })
    }

    pub fn supersede(&mut self, token: u64, by: Successor) {
        self.superseded.insert(token, by);
    }

    /// Where the grant for `token` goes instead, when its claim was superseded.
    pub fn successor(&mut self, token: u64) -> Option<Successor> {
        self.superseded.remove(&token)
    }

    /// Hands `check` to a checker thread and makes `link` wait for it; false (and nothing
    /// changed) when `max` already wait or the checkers' queue is full.
    pub fn check_password(&mut self, link: &Rc<ConnLink>, check: Check, max: usize) -> bool {
        let token = check.token;
        if self.passwords.len() >= max || self.checks.submit(check).is_err() {
            return false;
        }
        link.state.set(LinkState::Authenticating(token));
        self.passwords.insert(token, link.clone());
        true
    }

    /// The verdicts that came back, each with its connection if it still waits. With no check
    /// outstanding the checkers' list is not even locked (the pump asks at every wake); a
    /// verdict for a connection that closed meanwhile is taken with the next one's.
    pub fn verdicts(&mut self) -> Vec<(Verdict, Rc<ConnLink>)> {
        if self.passwords.is_empty() {
            return Vec::new();
        }
        self.checks
            .take()
            .into_iter()
            .filter_map(|v| Some((v, self.passwords.remove(&v.token)?)))
            .collect()
    }

    /// Verdicts wait to be taken (for the pump's sleep check).
    pub fn verdicts_ready(&self) -> bool {
        !self.passwords.is_empty() && self.checks.ready()
    }

    /// A connection in `state` closed: it waits no more.
    pub fn forget(&mut self, state: LinkState) {
        match state {
            LinkState::Claiming(token) => {
                self.claims.remove(&token);
            }
            LinkState::Authenticating(token) => {
                self.passwords.remove(&token);
            }
            _ => {}
        }
    }
}
