//! Banned clients (EMQX's banned table): bans by client id, username or peer address (an IP
//! or a CIDR), each with a reason and an expiry (or none: permanent). Every shard holds a
//! replica, checked at CONNECT; a ban is made on one shard (the admin API's on shard 0, a
//! flapping ban on the client id's home), which journals it and tells the others through the
//! mesh. Expiry is wall-clock, so it means the same after a restart; expired bans are ignored
//! at once, dropped from the replicas by the sweep and from the store at the next start.

use std::net::IpAddr;

use ahash::AHashMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Bans held at most (the API refuses more; a flapping ban past it is not listed, though the
/// home shard still refuses the flapping client).
pub const MAX_BANS: usize = 100_000;

/// What a ban matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BanKind {
    ClientId,
    Username,
    /// An IP address or a CIDR block.
    Peer,
}

impl BanKind {
    /// As the API and `ctl` spell it (EMQX's names).
    pub fn name(self) -> &'static str {
        match self {
            BanKind::ClientId => "clientid",
            BanKind::Username => "username",
            BanKind::Peer => "peerhost",
        }
    }

    pub fn parse(s: &str) -> Option<BanKind> {
        [BanKind::ClientId, BanKind::Username, BanKind::Peer]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub kind: BanKind,
    /// The client id, username, or address as given (`10.0.0.0/8`, `::1`).
    pub value: String,
    pub reason: String,
    /// Wall-clock milliseconds when it was made.
    pub at: u64,
    /// Wall-clock milliseconds when it ends; None: never.
    pub until: Option<u64>,
}

impl Ban {
    /// A ban, checked: a peer ban's value must be an address or a CIDR block.
    pub fn new(
        kind: BanKind,
        value: &str,
        reason: &str,
        at: u64,
        until: Option<u64>,
    ) -> Result<Ban, String> {
        if value.is_empty() {
            return Err("an empty value bans nothing".into());
        }
        if kind == BanKind::Peer && net(value).is_none() {
            return Err(format!("{value:?} is not an IP address or CIDR block"));
        }
        Ok(Ban {
            kind,
            value: value.to_string(),
            reason: reason.to_string(),
            at,
            until,
        })
    }

    /// The store's key: kind and value.
    pub fn key(kind: BanKind, value: &str) -> String {
        format!("{}/{value}", kind.name())
    }

    /// Whether it names `who` (in force or not).
    pub fn matches(&self, who: &Who) -> bool {
        match self.kind {
            BanKind::ClientId => self.value == who.client_id,
            BanKind::Username => who.username == Some(self.value.as_str()),
            BanKind::Peer => net(&self.value).is_some_and(|n| n.contains(&who.ip)),
        }
    }

    pub fn expired(&self, wall: u64) -> bool {
        self.until.is_some_and(|t| t <= wall)
    }

    pub fn json(&self) -> Value {
        json!({
            "as": self.kind.name(),
            "who": self.value,
            "reason": self.reason,
            "at_ms": self.at,
            "until_ms": self.until,
        })
    }
}

fn net(value: &str) -> Option<IpNet> {
    value
        .parse::<IpNet>()
        .ok()
        .or_else(|| value.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Who connects, as the bans see it.
pub struct Who<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub ip: IpAddr,
}

/// A shard's replica of the bans.
#[derive(Default)]
pub struct BanList {
    by_key: AHashMap<(BanKind, String), Ban>,
    /// The peer bans' networks, for the per-CONNECT scan (few, as a rule).
    nets: Vec<(IpNet, String)>,
}

impl BanList {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Adds or replaces a ban; false when full (and it is new).
    pub fn insert(&mut self, ban: Ban) -> bool {
        let key = (ban.kind, ban.value.clone());
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_BANS {
            return false;
        }
        if ban.kind == BanKind::Peer && !self.by_key.contains_key(&key) {
            if let Some(n) = net(&ban.value) {
                self.nets.push((n, ban.value.clone()));
            }
        }
        self.by_key.insert(key, ban);
        true
    }

    /// Removes a ban; whether there was one.
    pub fn remove(&mut self, kind: BanKind, value: &str) -> bool {
        let gone = self.by_key.remove(&(kind, value.to_string())).is_some();
        if gone && kind == BanKind::Peer {
            self.nets.retain(|(_, v)| v != value);
        }
        gone
    }

    /// The ban in force against `who` at `wall`, if any.
    pub fn find(&self, who: &Who, wall: u64) -> Option<&Ban> {
        let live = |kind: BanKind, value: &str| {
            self.by_key
                .get(&(kind, value.to_string()))
                .filter(|b| !b.expired(wall))
        };
        if self.by_key.is_empty() {
            return None;
        }
        live(BanKind::ClientId, who.client_id)
            .or_else(|| who.username.and_then(|u| live(BanKind::Username, u)))
            .or_else(|| {
                let (_, value) = self.nets.iter().find(|(n, _)| n.contains(&who.ip))?;
                live(BanKind::Peer, value)
            })
    }

    /// Whether a ban on `client_id` is in force (at its home shard, which may hear of a ban
    /// before the shard that took the CONNECT does).
    pub fn banned_id(&self, client_id: &str, wall: u64) -> bool {
        self.by_key
            .get(&(BanKind::ClientId, client_id.to_string()))
            .is_some_and(|b| !b.expired(wall))
    }

    /// Drops the expired bans.
    pub fn purge(&mut self, wall: u64) {
        let before = self.by_key.len();
        self.by_key.retain(|_, b| !b.expired(wall));
        if self.by_key.len() != before {
            let by_key = &self.by_key;
            self.nets
                .retain(|(_, v)| by_key.contains_key(&(BanKind::Peer, v.clone())));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.by_key.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(kind: BanKind, value: &str, until: Option<u64>) -> Ban {
        Ban::new(kind, value, "test", 0, until).expect("valid")
    }

    fn who<'a>(client_id: &'a str, username: Option<&'a str>, ip: &str) -> Who<'a> {
        Who {
            client_id,
            username,
            ip: ip.parse().expect("ip"),
        }
    }

    #[test]
    fn each_kind_matches_and_expired_bans_do_not() {
        let mut l = BanList::default();
        assert!(l.insert(ban(BanKind::ClientId, "bad-id", None)));
        assert!(l.insert(ban(BanKind::Username, "mallory", Some(100))));
        assert!(l.insert(ban(BanKind::Peer, "10.1.0.0/16", None)));
        assert!(l.insert(ban(BanKind::Peer, "::1", None)));
        let find = |l: &BanList, w: Who, wall| l.find(&w, wall).map(|b| b.value.clone());
        assert_eq!(
            find(&l, who("bad-id", None, "1.2.3.4"), 0).as_deref(),
            Some("bad-id")
        );
        assert_eq!(
            find(&l, who("ok", Some("mallory"), "1.2.3.4"), 50).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            find(&l, who("ok", Some("mallory"), "1.2.3.4"), 100),
            None,
            "expired"
        );
        assert_eq!(
            find(&l, who("ok", None, "10.1.2.3"), 0).as_deref(),
            Some("10.1.0.0/16")
        );
        assert_eq!(find(&l, who("ok", None, "::1"), 0).as_deref(), Some("::1"));
        assert_eq!(find(&l, who("ok", None, "10.2.0.1"), 0), None);
        let net = ban(BanKind::Peer, "10.1.0.0/16", None);
        assert!(net.matches(&who("x", None, "10.1.9.9")));
        assert!(!net.matches(&who("x", None, "10.3.9.9")));
        assert!(ban(BanKind::Username, "u", None).matches(&who("x", Some("u"), "::1")));
        l.purge(100);
        assert_eq!(l.len(), 3);
        assert!(l.remove(BanKind::Peer, "10.1.0.0/16"));
        assert!(!l.remove(BanKind::Peer, "10.1.0.0/16"));
        assert_eq!(find(&l, who("ok", None, "10.1.2.3"), 0), None);
    }

    #[test]
    fn a_peer_ban_needs_an_address_and_kinds_read_back() {
        assert!(Ban::new(BanKind::Peer, "not-an-ip", "", 0, None).is_err());
        assert!(Ban::new(BanKind::ClientId, "", "", 0, None).is_err());
        for k in [BanKind::ClientId, BanKind::Username, BanKind::Peer] {
            assert_eq!(BanKind::parse(k.name()), Some(k));
        }
        assert_eq!(BanKind::parse("nope"), None);
    }
}
