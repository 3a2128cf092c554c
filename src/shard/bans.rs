//! The shard's side of banned clients ([`crate::banned`]): its replica checked at CONNECT (v5
//! CONNACK 0x8A, v3 0x05, a log line and `ringmq_banned_refused_total`), bans made here
//! (journaled and broadcast to every other shard through the mesh) or heard from another
//! shard, and the kick of connected clients a new ban matches. The flapping ban is one of
//! these: the home shard, which counts every CONNECT of a client id, makes it.

use std::sync::Arc;

use super::link::{Close, ConnLink, LinkState};
use super::Shard;
use crate::banned::{Ban, BanKind, Who};
use crate::codec::ReasonCode;
use crate::ring::XMsg;
use crate::store::record::wall_now;
use crate::store::Op;

/// The username a connected link gave.
fn username(link: &ConnLink) -> Option<String> {
    let extras = link.extras.borrow();
    extras.as_ref()?.auth.as_ref()?.username.clone()
}

impl Shard {
    /// A refusal for a CONNECT that a ban in force matches (checked before the password).
    pub(super) fn refuse_banned(
        &self,
        link: &ConnLink,
        client_id: &str,
        username: Option<&str>,
    ) -> Option<Close> {
        let who = Who {
            client_id,
            username,
            ip: link.peer.ip(),
        };
        let ban = self.bans.find(&who, wall_now())?;
        self.stats.banned_refused.inc();
        tracing::info!(client = client_id, peer = %link.peer, username, by = ban.kind.name(), reason = %ban.reason, "connection refused: banned");
        Some(Close::new(ReasonCode::Banned, "banned"))
    }

    /// Makes a ban: this replica, the store, every other shard; matching clients are kicked.
    /// False when [`crate::banned::MAX_BANS`] are held.
    pub(super) fn ban(&mut self, ban: Ban) -> bool {
        if !self.bans.insert(ban.clone()) {
            return false;
        }
        tracing::info!(by = ban.kind.name(), who = %ban.value, reason = %ban.reason, until_ms = ?ban.until, "ban added");
        let ban = Arc::new(ban);
        if self.durable.journaled() {
            self.durable.push(Op::Ban(ban.clone()));
            self.mesh.wake_pump();
        }
        self.mesh.broadcast(|| XMsg::Ban(ban.clone()));
        self.kick_banned(&ban);
        true
    }

    /// Another shard made a ban.
    pub(super) fn on_ban(&mut self, ban: Arc<Ban>) {
        self.bans.insert((*ban).clone());
        self.kick_banned(&ban);
    }

    /// Lifts a ban here, in the store and on every other shard; whether there was one.
    pub(super) fn unban(&mut self, kind: BanKind, value: &str) -> bool {
        if !self.bans.remove(kind, value) {
            return false;
        }
        if self.durable.journaled() {
            self.durable.push(Op::Unban(Ban::key(kind, value)));
            self.mesh.wake_pump();
        }
        self.mesh.broadcast(|| XMsg::Unban(kind, value.to_string()));
        true
    }

    /// Another shard lifted a ban.
    pub(super) fn on_unban(&mut self, kind: BanKind, value: &str) {
        self.bans.remove(kind, value);
    }

    /// Closes this shard's connected clients that `ban` matches.
    fn kick_banned(&self, ban: &Ban) {
        for (_, conn) in &self.conns {
            let link = &conn.link;
            let LinkState::Active(key) = link.state.get() else {
                continue;
            };
            let Some(slot) = self.sessions.get(key) else {
                continue;
            };
            let user = username(link);
            let who = Who {
                client_id: &slot.session.client_id,
                username: user.as_deref(),
                ip: link.peer.ip(),
            };
            if ban.matches(&who) {
                tracing::info!(client = %slot.session.client_id, peer = %link.peer, "kicked: banned");
                link.close(Close::new(ReasonCode::AdministrativeAction, "banned"));
            }
        }
    }
}
