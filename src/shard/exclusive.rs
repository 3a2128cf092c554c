//! EMQX's `$exclusive/filter`: only one client at a time may hold an exclusive subscription to a
//! filter, broker-wide. Shards share nothing, so each filter has one arbiter: its home shard
//! (the filter's hash, as a client id's), which records the holder's client id. A SUBSCRIBE
//! asks it over the rings and its SUBACK waits for the answer (0x97 when another client holds
//! it); an UNSUBSCRIBE (whose UNSUBACK waits for the arbiter) or the end of the session tells it
//! the filter is free again. A session
//! that moves between shards keeps its hold: the holder is the client id, not the shard; a kept
//! session's holds come back with it after a restart (`Restore::exclusive`).

use bytestring::ByteString;

use super::{home_of, token_shard, Shard};
use crate::ring::XMsg;
use crate::session::Session;
use crate::topic::parse_exclusive;

impl Shard {
    /// Asks the filter's arbiter for `client_id`'s hold on it; the answer carries `token`.
    pub(super) fn claim_exclusive(
        &mut self,
        filter: &ByteString,
        client_id: &ByteString,
        token: u64,
    ) {
        let home = home_of(filter, self.shards);
        let shard = self.id;
        self.send(
            home,
            XMsg::ExclusiveClaim {
                filter: filter.clone(),
                client_id: client_id.clone(),
                shard,
                token,
            },
        );
    }

    /// At the arbiter: granted when the filter is free or already `client_id`'s.
    pub(super) fn on_exclusive_claim(
        &mut self,
        filter: ByteString,
        client_id: ByteString,
        shard: usize,
        token: u64,
    ) {
        let holder = self
            .exclusive
            .entry(filter.clone())
            .or_insert(client_id.clone());
        let granted = *holder == client_id;
        if !granted {
            tracing::debug!(client = %client_id, %filter, holder = %holder, "exclusive subscription held by another client");
        }
        self.send(
            shard,
            XMsg::ExclusiveAnswer {
                filter,
                token,
                granted,
            },
        );
    }

    /// At the arbiter: `client_id` let go of `filter`; `ack` is answered with an
    /// `ExclusiveReleased` (an UNSUBACK waits for it).
    pub(super) fn on_exclusive_release(
        &mut self,
        filter: ByteString,
        client_id: ByteString,
        ack: Option<u64>,
    ) {
        if self.exclusive.get(&filter) == Some(&client_id) {
            self.exclusive.remove(&filter);
        }
        if let Some(token) = ack {
            self.send(token_shard(token), XMsg::ExclusiveReleased(token));
        }
    }

    /// Tells the arbiter of `filter`, if it is exclusive, that `client_id` let go of it; with
    /// `ack` (a token of this shard's), the arbiter answers once it has.
    pub(super) fn release_exclusive(
        &mut self,
        filter: &ByteString,
        client_id: &ByteString,
        ack: Option<u64>,
    ) {
        if parse_exclusive(filter).is_none() {
            return;
        }
        let home = home_of(filter, self.shards);
        self.send(
            home,
            XMsg::ExclusiveRelease {
                filter: filter.clone(),
                client_id: client_id.clone(),
                ack,
            },
        );
    }

    /// A session that ends lets go of all its exclusive subscriptions.
    pub(super) fn release_exclusives(&mut self, session: &Session) {
        for filter in session.subscriptions.keys() {
            self.release_exclusive(filter, &session.client_id, None);
        }
    }
}
