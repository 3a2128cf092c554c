//! The client ids homed on this shard (their hash picks it): which shard owns each one's
//! session under which claim token, so that a CONNECT anywhere is granted at once or takes the
//! session over, and the connect counts behind the flapping ban, since home sees every CONNECT
//! of an id whatever shard its connection landed on (the ban itself is a client-id ban in
//! [`crate::banned`], made by this shard).

use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytestring::ByteString;

use crate::config::LimitsConfig;

/// Connects of one client id within the current window.
struct Flap {
    window_start: Instant,
    count: u32,
}

#[derive(Default)]
pub(super) struct Homes {
    /// Client id -> (owning shard, claim token, the claim's cluster epoch: 0 outside a
    /// cluster and for sessions restored from the store).
    owners: AHashMap<ByteString, (usize, u64, u64)>,
    flapping: AHashMap<ByteString, Flap>,
}

impl Homes {
    /// Records `shard`'s claim `token` (cluster `epoch`) on `client_id`; the previous owner,
    /// if any.
    pub fn claim(
        &mut self,
        client_id: ByteString,
        shard: usize,
        token: u64,
        epoch: u64,
    ) -> Option<usize> {
        self.owners
            .insert(client_id, (shard, token, epoch))
            .map(|(owner, ..)| owner)
    }

    /// Whether a session of `client_id` is claimed on this node.
    pub fn holds(&self, client_id: &str) -> bool {
        self.owners.contains_key(client_id)
    }

    /// The session claimed with `token` ended: the id is free, unless claimed again since.
    /// The ended claim's epoch, when it was freed.
    pub fn release(&mut self, client_id: &str, token: u64) -> Option<u64> {
        let (_, t, epoch) = *self.owners.get(client_id)?;
        if t != token {
            return None;
        }
        self.owners.remove(client_id);
        Some(epoch)
    }

    /// The shard and claim token holding `client_id`, when its claim's epoch is `epoch` or
    /// older (a cluster eviction of that connection, or of one before it).
    pub fn claimed_by(&self, client_id: &str, epoch: u64) -> Option<(usize, u64)> {
        let (shard, token, e) = *self.owners.get(client_id)?;
        (e <= epoch).then_some((shard, token))
    }

    /// The shard and claim token holding `client_id`, whatever its claim.
    pub fn holder(&self, client_id: &str) -> Option<(usize, u64)> {
        self.owners
            .get(client_id)
            .map(|(shard, token, _)| (*shard, *token))
    }

    /// Counts a CONNECT for `client_id`; true when it is the one too many (the id is to be
    /// banned).
    pub fn flapping(&mut self, client_id: &ByteString, l: &LimitsConfig, now: Instant) -> bool {
        if l.flapping_max_connects == 0 {
            return false;
        }
        let window = Duration::from_secs(l.flapping_window);
        let f = self.flapping.entry(client_id.clone()).or_insert(Flap {
            window_start: now,
            count: 0,
        });
        if now.duration_since(f.window_start) > window {
            f.window_start = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count == l.flapping_max_connects + 1 {
            tracing::warn!(client = %client_id, connects = f.count, ban_secs = l.flapping_ban, "client id banned for flapping");
            return true;
        }
        false
    }

    /// Forgets connect counts whose window is over.
    pub fn prune_flapping(&mut self, l: &LimitsConfig, now: Instant) {
        let window = Duration::from_secs(l.flapping_window);
        self.flapping
            .retain(|_, f| now.duration_since(f.window_start) <= window);
    }
}
