//! This shard's side of the cluster's session registry: a client id homed here that connects
//! is claimed cluster-wide behind its CONNECT (a clean CONNECT never waits on consensus), its
//! session's end is released, and a connection that lost its id to a newer one on another node
//! is closed with 0x8E.

use bytestring::ByteString;

use super::link::Close;
use super::Shard;
use crate::cluster::Event;
use crate::codec::ReasonCode;
use crate::ring::XMsg;

impl Shard {
    /// `client_id` connected through this home shard: its claim goes to the cluster's session
    /// registry behind the CONNECT. The claim's epoch (0 outside a cluster): the wall clock in
    /// microseconds with the shard's id below, so a later connection has a larger one.
    pub(super) fn cluster_claim(&mut self, client_id: &str) -> u64 {
        let id = self.id as u64 & 0xff;
        let Some(remote) = &mut self.remote else {
            return 0;
        };
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let epoch = (micros << 8 | id).max(remote.last_epoch + 1);
        remote.last_epoch = epoch;
        remote.report(Event::Claim {
            client_id: client_id.to_string(),
            epoch,
        });
        epoch
    }

    /// The session of `client_id` claimed with `epoch` ended.
    pub(super) fn cluster_release(&self, client_id: &str, epoch: u64) {
        if let (Some(remote), true) = (&self.remote, epoch != 0) {
            remote.report(Event::Release {
                client_id: client_id.to_string(),
                epoch,
            });
        }
    }

    /// A newer connection on another node took `client_id`: the connection here that holds
    /// it with claim `token` is closed with 0x8E (a clean session ends with it; a persistent
    /// one stays here, offline, its queue kept).
    pub(super) fn evicted(&mut self, client_id: &str, token: u64) {
        let Some(key) = self.sessions.find(client_id) else {
            return;
        };
        let slot = &self.sessions[key];
        if slot.token != token {
            return;
        }
        if let Some(link) = &slot.link {
            self.stats.cluster_evictions.inc();
            tracing::info!(client = %client_id, peer = %link.peer, "connected again on another node: closing this connection");
            link.close(Close::new(
                ReasonCode::SessionTakenOver,
                "session taken over on another node",
            ));
        }
    }

    /// At `client_id`'s home: the connection claimed with `epoch` (or an older one) lost the id
    /// to another node; the shard holding it closes it.
    pub(super) fn evict_claim(&mut self, client_id: &str, epoch: u64) {
        if let Some((shard, token)) = self.homes.claimed_by(client_id, epoch) {
            let client_id = ByteString::from(client_id);
            self.send(shard, XMsg::Evict { client_id, token });
        }
    }
}
