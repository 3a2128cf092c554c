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
    /// A claim that `resumes` a persistent session this node does not hold waits for the
    /// registry ([`crate::cluster::ToShard::Claimed`]).
    pub(super) fn cluster_claim(&mut self, client_id: &str, resumes: bool) -> u64 {
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
            resumes,
        });
        epoch
    }

    /// A session read back from the store at start is registered with epoch 0: it takes the
    /// id only where no node claims it (a client that moved elsewhere while this node was down
    /// keeps its newer claim), so a takeover on another node finds it here.
    pub(super) fn cluster_restored(&self, client_id: &str) {
        if let Some(remote) = &self.remote {
            remote.report(Event::Claim {
                client_id: client_id.to_string(),
                epoch: 0,
                resumes: false,
            });
        }
    }

    /// The session of `client_id` claimed with `epoch` ended.
    pub(super) fn cluster_release(&self, client_id: &str, epoch: u64) {
        if let Some(remote) = &self.remote {
            remote.report(Event::Release {
                client_id: client_id.to_string(),
                epoch,
            });
        }
    }

    /// A newer connection on another node took `client_id`: the connection here that holds
    /// it with claim `token` is closed with 0x8E. With `hand_to`, that connection resumes the
    /// persistent session, which goes there with its queue; otherwise a clean session ends
    /// and a persistent one stays here, offline, its queue kept.
    pub(super) fn evicted(&mut self, client_id: &str, token: u64, hand_to: Option<(usize, u64)>) {
        let Some(key) = self.sessions.held(client_id, token) else {
            if let Some((node, epoch)) = hand_to {
                self.hand_nothing(client_id, node, epoch);
            }
            return;
        };
        if self.sessions[key].link.is_some() {
            self.stats.cluster_evictions.inc();
        }
        if let Some((node, epoch)) = hand_to {
            if self.hand_over(key, node, epoch) {
                return;
            }
            self.hand_nothing(client_id, node, epoch);
        }
        let slot = &self.sessions[key];
        if let Some(link) = &slot.link {
            tracing::info!(client = %client_id, peer = %link.peer, "connected again on another node: closing this connection");
            link.close(Close::new(
                ReasonCode::SessionTakenOver,
                "session taken over on another node",
            ));
        }
    }

    /// At `client_id`'s home: the connection claimed with `epoch` (or an older one) lost the id
    /// to another node; the shard holding it closes it.
    pub(super) fn evict_claim(
        &mut self,
        client_id: &str,
        epoch: u64,
        hand_to: Option<(usize, u64)>,
    ) {
        match self.homes.claimed_by(client_id, epoch) {
            Some((shard, token)) => {
                let client_id = ByteString::from(client_id);
                let evict = XMsg::Evict {
                    client_id,
                    token,
                    hand_to,
                };
                self.send(shard, evict);
            }
            None => {
                if let Some((node, epoch)) = hand_to {
                    self.hand_nothing(client_id, node, epoch);
                }
            }
        }
    }
}
