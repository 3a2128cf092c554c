//! What outlives the process, in the data dir: persistent sessions (subscriptions, queued and
//! in-flight messages) and retained messages, written as JSON at a graceful shutdown and read
//! back at start. On start every shard loads every retained message into its replica and takes
//! the sessions whose client id is homed on it, so the shard count may change between runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{SessionSlot, Shard};
use crate::session::{Message, Session};

#[derive(Default, Serialize, Deserialize)]
pub struct Saved {
    pub sessions: Vec<Session>,
    pub retained: Vec<Arc<Message>>,
}

/// One shard's part of what was saved.
pub struct Restore {
    pub sessions: Vec<Session>,
    pub retained: Arc<[Arc<Message>]>,
}

const SESSIONS: &str = "sessions.json";
const RETAINED: &str = "retained.json";

impl Saved {
    /// Reads the data dir; a file that cannot be read back is moved aside (and said so) rather
    /// than keep the broker from starting.
    pub fn load(dir: &Path) -> Saved {
        fn read<T: for<'de> Deserialize<'de> + Default>(dir: &Path, name: &str) -> T {
            let path = dir.join(name);
            let Ok(text) = std::fs::read(&path) else {
                return T::default();
            };
            match serde_json::from_slice(&text) {
                Ok(v) => v,
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(), "cannot read saved state; starting without it");
                    let _ = std::fs::rename(&path, &aside);
                    T::default()
                }
            }
        }
        Saved {
            sessions: read(dir, SESSIONS),
            retained: read(dir, RETAINED),
        }
    }

    /// Splits the saved state between `shards` shards: sessions go to their client id's home.
    pub fn split(self, shards: usize) -> Vec<Restore> {
        let retained: Arc<[Arc<Message>]> = self.retained.into();
        let mut parts: Vec<Restore> = (0..shards)
            .map(|_| Restore {
                sessions: Vec::new(),
                retained: retained.clone(),
            })
            .collect();
        for s in self.sessions {
            parts[super::home_of(&s.client_id, shards)].sessions.push(s);
        }
        parts
    }

    /// Writes both files (through a temporary file each, so a crash never leaves half a file).
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (name, json) in [
            (SESSIONS, serde_json::to_vec(&self.sessions)),
            (RETAINED, serde_json::to_vec(&self.retained)),
        ] {
            let json = json.map_err(std::io::Error::other)?;
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }
}

impl Shard {
    /// Loads the saved retained messages and this shard's share of the saved sessions.
    pub(super) fn restore(&mut self, saved: Restore, now: Instant) {
        for m in saved.retained.iter() {
            self.retained.set(m.clone());
        }
        self.stats.retained.set(self.retained.len() as i64);
        let restored = saved.sessions.len();
        for session in saved.sessions {
            let token = self.token();
            let client_id = session.client_id.clone();
            let key = self.insert_session(SessionSlot::new(session, None, token));
            self.homes.claim(client_id, self.id, token);
            self.resubscribe(key);
            self.schedule_expiry(key, now);
        }
        if restored > 0 {
            tracing::info!(shard = self.id, sessions = restored, "restored sessions");
        }
    }

    /// This shard's persistent sessions (and, from shard 0, the retained messages) as JSON.
    pub(super) fn persist(&self) -> serde_json::Value {
        let sessions: Vec<&Session> = self
            .sessions
            .iter()
            .map(|(_, s)| &s.session)
            .filter(|s| s.expiry_interval > 0)
            .collect();
        let mut retained = Vec::new();
        if self.id == 0 {
            self.retained
                .for_each_match("#", |m| retained.push(m.clone()));
        }
        serde_json::json!({ "sessions": sessions, "retained": retained })
    }
}
