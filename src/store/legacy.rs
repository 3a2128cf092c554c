//! The files an older version wrote at a graceful shutdown (`sessions.json`, `retained.json`):
//! read once at the first start with the store, written into it, then removed, so they can
//! never bring back stale state after a later crash.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::session::{Message, Session};

const SESSIONS: &str = "sessions.json";
const RETAINED: &str = "retained.json";

/// What the old files held.
#[derive(Default)]
pub struct Legacy {
    pub sessions: Vec<Session>,
    pub retained: Vec<Arc<Message>>,
}

impl Legacy {
    /// Reads the old files in `dir`, if any; one that cannot be read is moved aside (and said
    /// so) rather than keep the broker from starting.
    pub fn read(dir: &Path) -> Option<Legacy> {
        fn read<T: for<'de> Deserialize<'de> + Default>(dir: &Path, name: &str) -> Option<T> {
            let path = dir.join(name);
            let text = std::fs::read(&path).ok()?;
            match serde_json::from_slice(&text) {
                Ok(v) => Some(v),
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    tracing::error!(file = %path.display(), error = %e, moved_to = %aside.display(), "cannot read saved state; starting without it");
                    let _ = std::fs::rename(&path, &aside);
                    None
                }
            }
        }
        let sessions: Option<Vec<Session>> = read(dir, SESSIONS);
        let retained: Option<Vec<Arc<Message>>> = read(dir, RETAINED);
        if sessions.is_none() && retained.is_none() {
            return None;
        }
        Some(Legacy {
            sessions: sessions.unwrap_or_default(),
            retained: retained.unwrap_or_default(),
        })
    }

    /// Removes the old files once their content is in the store.
    pub fn remove(dir: &Path) {
        for name in [SESSIONS, RETAINED] {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}
