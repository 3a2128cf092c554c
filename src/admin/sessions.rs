//! The dashboard's login sessions: a bounded table (the oldest-used one makes room for a new
//! login) of random cookie values, each with its CSRF token, the user, and the credentials'
//! fingerprint at login; a session ends when idle too long, when too old, on logout, or when
//! the credentials change. Failed logins are counted in a sliding window: past the bound the
//! login form is refused for a while (the bearer and basic-auth API stays open to `ctl`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::auth::constant_time_eq;

/// Sessions held at once.
const MAX_SESSIONS: usize = 32;
/// A session unused for this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its login, however used.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed logins allowed in `FAILURE_WINDOW` before the form is refused.
const MAX_FAILURES: usize = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

pub struct Session {
    id: String,
    csrf: String,
    user: String,
    creds: [u8; 32],
    created: Instant,
    seen: Instant,
}

impl Session {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.seen) < IDLE && now.duration_since(self.created) < LIFETIME
    }
}

#[derive(Default)]
pub struct Sessions {
    live: Vec<Session>,
    failures: VecDeque<Instant>,
}

/// 32 random bytes, hex.
fn random_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no random source for a session: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl Sessions {
    /// Opens a session for `user`, logged in with the credentials whose fingerprint is `creds`.
    pub fn create(&mut self, user: &str, creds: [u8; 32]) -> Result<&Session, String> {
        let now = Instant::now();
        self.live.retain(|s| s.live(now));
        if self.live.len() >= MAX_SESSIONS {
            if let Some(oldest) = (0..self.live.len()).min_by_key(|&i| self.live[i].seen) {
                self.live.swap_remove(oldest);
            }
        }
        self.live.push(Session {
            id: random_token()?,
            csrf: random_token()?,
            user: user.to_string(),
            creds,
            created: now,
            seen: now,
        });
        Ok(&self.live[self.live.len() - 1])
    }

    /// The live session whose cookie value is `id`, opened with the credentials `creds`
    /// (every entry is compared, in constant time, so the lookup says nothing of near misses).
    pub fn find(&mut self, id: &str, creds: &[u8; 32]) -> Option<&Session> {
        let now = Instant::now();
        self.live
            .retain(|s| s.live(now) && constant_time_eq(&s.creds, creds));
        let mut found = None;
        for (i, s) in self.live.iter().enumerate() {
            if constant_time_eq(s.id.as_bytes(), id.as_bytes()) {
                found = Some(i);
            }
        }
        let s = &mut self.live[found?];
        s.seen = now;
        Some(s)
    }

    /// Ends the session whose cookie value is `id`.
    pub fn remove(&mut self, id: &str) {
        self.live
            .retain(|s| !constant_time_eq(s.id.as_bytes(), id.as_bytes()));
    }

    /// Whether the login form may be tried now (not too many failures lately).
    pub fn login_allowed(&mut self) -> bool {
        let now = Instant::now();
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            self.failures.pop_front();
        }
        self.failures.len() < MAX_FAILURES
    }

    /// Counts a failed login.
    pub fn failed(&mut self) {
        if self.failures.len() >= MAX_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_and_credentials_only() {
        let mut s = Sessions::default();
        let (id, csrf) = {
            let new = s.create("admin", [1; 32]).expect("session");
            (new.id().to_string(), new.csrf().to_string())
        };
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert_eq!(s.find(&id, &[1; 32]).map(Session::user), Some("admin"));
        assert!(s.find("nope", &[1; 32]).is_none());
        assert!(s.find(&id, &[2; 32]).is_none(), "credentials changed");
        assert!(s.find(&id, &[1; 32]).is_none(), "and the session is gone");
    }

    #[test]
    fn the_table_is_bounded_and_logout_ends_a_session() {
        let mut s = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS + 5)
            .map(|_| s.create("u", [0; 32]).expect("session").id().to_string())
            .collect();
        assert_eq!(s.live.len(), MAX_SESSIONS);
        let last = ids.last().expect("ids");
        assert!(s.find(last, &[0; 32]).is_some());
        s.remove(last);
        assert!(s.find(last, &[0; 32]).is_none());
    }

    #[test]
    fn failed_logins_are_bounded() {
        let mut s = Sessions::default();
        for _ in 0..MAX_FAILURES {
            assert!(s.login_allowed());
            s.failed();
        }
        assert!(!s.login_allowed());
    }
}
