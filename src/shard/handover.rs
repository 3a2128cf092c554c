//! Persistent sessions that move between the nodes of a cluster. A CONNECT resuming a session
//! this node does not hold waits at its client id's home shard until the cluster's session
//! registry has taken its claim: the session then comes from the live node that held it (over
//! that node's forwarding connection, with its window and queue, and is resumed here with
//! session present), or starts here when no live node held it (counted as started anew when a
//! dead node did). The node that lost the id closes the old connection (0x8E) and hands the
//! session over on its forwarding connection, which sends it again after a broken link until
//! the receiver answers, and the receiver answers once the session is in its own store; only
//! then do its records leave this node's store (a crash before that, or a receiver that could
//! not store it, brings it back here at the next start, never loses it). A node with nothing
//! to hand over (a clean session, one already gone) says so, so the CONNECT waits no longer. A
//! session that comes when no CONNECT waits for it (its holder was down or cut off, and is
//! back; or it came too late) is merged: what it still owed the client joins the session the
//! client started here meanwhile.

use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytestring::ByteString;

use super::Shard;
use crate::cluster::state::MERGE;
use crate::cluster::{wire, Resume};
use crate::codec::ReasonCode;
use crate::ring::{Confirm, Grant, XMsg};
use crate::session::Session;
use crate::store::record::{self, wall_now, MovedSession};

/// How long a resuming CONNECT waits for the registry and the session before it starts anew
/// (no leader, or the holder went silent during the hand-over).
const WAIT: Duration = Duration::from_secs(5);
/// Marks the confirmation token of a hand-over (a publish's has this bit clear: shard ids
/// are far below 2^15).
pub(super) const HANDED: u64 = 1 << 63;
/// Room in a frame for what wraps the session.
const FRAME_SLACK: usize = 4096;

/// A resuming CONNECT's claim, waiting.
struct Parked {
    epoch: u64,
    shard: usize,
    token: u64,
    until: Instant,
}

/// This home shard's resuming claims, and this shard's sessions on their way to other nodes.
#[derive(Default)]
pub(super) struct Handovers {
    waiting: AHashMap<ByteString, Parked>,
    /// Sessions sent to another node and not yet answered, by confirmation token: the client
    /// id and its life in this node's store (whose records go once answered).
    handing: AHashMap<u64, (ByteString, Option<u64>)>,
}

impl Handovers {
    /// The claim waiting on `client_id` with `epoch`, taken.
    fn take(&mut self, client_id: &str, epoch: u64) -> Option<Parked> {
        if self.waiting.get(client_id).is_none_or(|p| p.epoch != epoch) {
            return None;
        }
        self.waiting.remove(client_id)
    }
}

impl Shard {
    /// At the home shard: a CONNECT resuming `client_id`'s session, which this node does not
    /// hold, waits for the registry (and the session from the node that held it). A newer
    /// claim replaces an older one: that CONNECT already lost the id here and passes on
    /// whatever it is granted.
    pub(super) fn park_resume(
        &mut self,
        client_id: ByteString,
        epoch: u64,
        shard: usize,
        token: u64,
    ) {
        let parked = Parked {
            epoch,
            shard,
            token,
            until: Instant::now() + WAIT,
        };
        self.handovers.waiting.insert(client_id, parked);
    }

    /// The registry took the claim (or cannot): without a session to wait for, the CONNECT
    /// goes ahead, or is refused.
    pub(super) fn resume_claimed(&mut self, client_id: &str, epoch: u64, resume: Resume) {
        if resume == Resume::Handed {
            return;
        }
        let Some(p) = self.handovers.take(client_id, epoch) else {
            return;
        };
        let refused = match resume {
            Resume::Anew => {
                self.stats.cluster_sessions_anew.inc();
                tracing::info!(client = %client_id, "its session is on a node that is down: it starts anew");
                None
            }
            Resume::Refused => {
                tracing::info!(client = %client_id, "no majority to take the session's claim: the connection is refused");
                self.homes.release(client_id, p.token);
                Some(ReasonCode::ServerUnavailable)
            }
            Resume::Handed | Resume::Here => None,
        };
        let g = Grant {
            client_id: client_id.into(),
            token: p.token,
            session: None,
            refused,
            confirm: None,
        };
        self.send(p.shard, XMsg::Grant(g));
    }

    /// At the home shard: what the node that held `client_id` handed over for the claim with
    /// `epoch`: the session, or nothing (it had none to hand). A session no CONNECT waits for
    /// (epoch [`MERGE`], or one that came too late) goes to the shard of the client's session
    /// here, to be merged.
    pub(super) fn session_arrived(
        &mut self,
        client_id: ByteString,
        epoch: u64,
        s: Option<Box<Session>>,
        confirm: Option<Confirm>,
    ) {
        if s.is_some() {
            self.stats.cluster_sessions_in.inc();
        }
        match (self.handovers.take(&client_id, epoch), s) {
            (Some(p), s) => self.grant_resumed(client_id, &p, s, confirm),
            (None, Some(s)) => match self.homes.holder(&client_id) {
                Some((shard, token)) => {
                    let merge = XMsg::Merge {
                        client_id,
                        token,
                        session: s,
                        confirm,
                    };
                    self.send(shard, merge);
                }
                None => {
                    self.moved_messages_dropped(&client_id, s.into_owed().len());
                    self.confirm_now(confirm, true);
                }
            },
            (None, None) => self.confirm_now(confirm, true),
        }
    }

    /// The waiting CONNECT `p` goes ahead, with `session` when one came.
    fn grant_resumed(
        &mut self,
        client_id: ByteString,
        p: &Parked,
        session: Option<Box<Session>>,
        confirm: Option<Confirm>,
    ) {
        let g = Grant {
            client_id,
            token: p.token,
            session,
            refused: None,
            confirm,
        };
        self.send(p.shard, XMsg::Grant(g));
    }

    /// Answers the shard waiting on `confirm` now: nothing is left to store (`stored`), or the
    /// session was not kept here.
    fn confirm_now(&mut self, confirm: Option<Confirm>, stored: bool) {
        if let Some((shard, token)) = confirm {
            self.send(shard, XMsg::Stored { token, stored });
        }
    }

    /// A session of `client_id` from another node that no claim waits for (it came late, or
    /// from a node that lost the id while it was down or cut off): what it still owes the
    /// client goes into the client's session here (claim `token`), so that nothing it
    /// acknowledged to a publisher is lost.
    pub(super) fn merge_session(
        &mut self,
        client_id: &str,
        token: u64,
        s: Session,
        confirm: Option<Confirm>,
        now: Instant,
    ) {
        let Some(key) = self.sessions.held(client_id, token) else {
            // The claim changed hands on the way (a takeover here meanwhile): the old node
            // keeps the session and hands it over again at its next start.
            tracing::info!(client = %client_id, "a session from another node found the client's session here gone: the other node keeps it");
            return self.confirm_now(confirm, false);
        };
        let owed = s.into_owed();
        let n = owed.len();
        for d in owed {
            self.deliver_to(key, d, now);
        }
        if let Some((shard, token)) = confirm {
            self.durable.reply_with_batch(shard, token);
        }
        self.stats.cluster_messages_merged.add(n as i64);
        tracing::info!(client = %client_id, messages = n, "a session of this client came from another node: its messages join the client's session here");
    }

    fn moved_messages_dropped(&self, client_id: &str, n: usize) {
        self.stats.cluster_messages_dropped.add(n as i64);
        tracing::warn!(client = %client_id, messages = n, "a session of this client came from another node, and no session here takes its messages: dropped");
    }

    /// Once a second: resuming CONNECTs that waited too long start anew.
    pub(super) fn sweep_handovers(&mut self, now: Instant) {
        let late: Vec<ByteString> = self
            .handovers
            .waiting
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(c, _)| c.clone())
            .collect();
        for client_id in late {
            if let Some(p) = self.handovers.waiting.remove(&client_id) {
                self.stats.cluster_sessions_anew.inc();
                tracing::warn!(client = %client_id, "the cluster did not hand the session over in time: it starts anew");
                self.grant_resumed(client_id, &p, None, None);
            }
        }
    }

    /// On the node that lost `client_id` to a claim on the node in `slot` (a resuming one with
    /// `epoch`, or [`MERGE`]: a claim made while this node was away): a persistent session held
    /// under claim `token` (session `key`) is taken, its connection closed with 0x8E, and sent
    /// there; its home forgets the claim. False when it stays here: a clean session, the node
    /// unreachable, or a session too large for a frame.
    pub(super) fn hand_over(&mut self, key: usize, slot: usize, epoch: u64) -> bool {
        let reachable = self.remote.as_ref().is_some_and(|r| r.reaches(slot));
        let held = &self.sessions[key];
        if !reachable || held.session.expiry_interval == 0 {
            return false;
        }
        let (now, wall) = (Instant::now(), wall_now());
        let moved = MovedSession::of(&held.session, now, wall);
        if record::encode(&moved).len() + FRAME_SLACK > wire::MAX_FRAME {
            tracing::warn!(client = %held.session.client_id, "a session too large to hand over to another node: it stays here");
            return false;
        }
        let token = held.token;
        let Some(session) = self.take_session(key, false, now) else {
            return false;
        };
        self.release_exclusives(&session);
        let client_id = session.client_id;
        let confirm = self.token() | HANDED;
        let life = session.stored.as_ref().map(|l| l.epoch);
        self.handovers
            .handing
            .insert(confirm, (client_id.clone(), life));
        if let Some(r) = &self.remote {
            r.hand_over(
                slot,
                client_id.to_string(),
                epoch,
                Some(moved),
                Some(confirm),
            );
        }
        tracing::info!(client = %client_id, "handing the session over to the node it connected to");
        let home = self.home_of(&client_id);
        self.send(home, XMsg::Release { client_id, token });
        true
    }

    /// Tells the node in `slot` that there is no session of `client_id` to hand to its claim
    /// `epoch`: its CONNECT goes ahead at once (a merge has no CONNECT waiting: nothing to say).
    pub(super) fn hand_nothing(&self, client_id: &str, slot: usize, epoch: u64) {
        if epoch == MERGE {
            return;
        }
        if let Some(r) = &self.remote {
            r.hand_over(slot, client_id.to_string(), epoch, None, None);
        }
    }

    /// The node a session was handed to answered (`taken`), or is gone: once taken, the
    /// session's records leave this node's store; otherwise they stay, and the session comes
    /// back here at the next start.
    pub(super) fn handed_over(&mut self, confirm: u64, taken: bool) {
        let Some((client_id, life)) = self.handovers.handing.remove(&confirm) else {
            return;
        };
        if !taken {
            self.stats.cluster_sessions_lost.inc();
            tracing::warn!(client = %client_id, "the node a session was handed to went away before it answered, or could not keep it: the session stays in this node's store until its next start");
            return;
        }
        self.stats.cluster_sessions_out.inc();
        if let Some(epoch) = life {
            self.journal_end_of(client_id, epoch);
        }
    }
}
