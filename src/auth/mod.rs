//! Authentication and authorization: the password file, the ACL file and the anonymous policy,
//! loaded together into one immutable `Auth` that every shard shares by `Arc`. A reload builds
//! a new one (or fails, naming file, line and reason, and the old one stays).

mod acl;
pub mod checker;
mod passwd;

use std::net::IpAddr;

pub use acl::{Acl, Action, Client};
pub use passwd::{constant_time_eq, edit_file, hash_password, PasswordDb, DEFAULT_ITERATIONS};

use crate::codec::ReasonCode;
use crate::config::{Config, NoMatch};

pub struct Auth {
    passwords: Option<PasswordDb>,
    acl: Option<Acl>,
    allow_anonymous: bool,
    nomatch: NoMatch,
    /// Bumped by every load, so per-client ACL caches know when they are stale.
    pub generation: u64,
}

impl Auth {
    /// Reads the files `cfg` names.
    pub fn load(cfg: &Config) -> Result<Auth, String> {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let passwords = cfg
            .auth
            .password_file
            .as_deref()
            .map(PasswordDb::load)
            .transpose()?;
        let acl = cfg.auth.acl_file.as_deref().map(Acl::load).transpose()?;
        Ok(Auth {
            passwords,
            acl,
            allow_anonymous: cfg.allow_anonymous(),
            nomatch: cfg.auth.acl_nomatch,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Only this password database, anonymous clients refused (for tests).
    #[cfg(test)]
    pub fn with_passwords(db: PasswordDb) -> Auth {
        Auth {
            passwords: Some(db),
            allow_anonymous: false,
            ..Auth::open()
        }
    }

    /// Everything allowed: no files, anonymous clients welcome.
    pub fn open() -> Auth {
        Auth {
            passwords: None,
            acl: None,
            allow_anonymous: true,
            nomatch: NoMatch::Allow,
            generation: 0,
        }
    }

    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// One line for the log: what is loaded.
    pub fn describe(&self) -> String {
        format!(
            "users={} acl_rules={} allow_anonymous={}",
            self.passwords.as_ref().map_or(0, PasswordDb::len),
            self.acl.as_ref().map_or(0, Acl::len),
            self.allow_anonymous
        )
    }

    /// Checks CONNECT's credentials as far as it can without hashing. `cert_user` is a username
    /// a verified client certificate vouches for (it needs no password). `None`: the password
    /// must be verified against its hash ([`Auth::verify_password`], on a side thread).
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert_user: bool,
    ) -> Option<Result<(), ReasonCode>> {
        let verdict = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ReasonCode::BadUserNameOrPassword)
            }
        };
        match (username, password) {
            (None, Some(_)) => Some(Err(ReasonCode::BadUserNameOrPassword)),
            (None, None) if self.allow_anonymous => Some(Ok(())),
            (None, None) => Some(Err(ReasonCode::NotAuthorized)),
            (Some(_), _) if cert_user => Some(Ok(())),
            (Some(u), pw) => match &self.passwords {
                None => Some(Ok(())),
                Some(db) => db.remembered(u, pw.unwrap_or_default()).map(verdict),
            },
        }
    }

    /// The slow half of [`Auth::authenticate`]: the password against its hash.
    pub fn verify_password(&self, username: &str, password: &[u8]) -> bool {
        self.passwords
            .as_ref()
            .is_some_and(|db| db.verify_slow(username, password))
    }

    /// May `client` publish to (or subscribe to) `topic`?
    pub fn authorize(&self, client: &Client<'_>, action: Action, topic: &str) -> bool {
        match &self.acl {
            None => true,
            Some(acl) => acl
                .check(client, action, topic)
                .unwrap_or(self.nomatch == NoMatch::Allow),
        }
    }
}

/// The identity a connection's ACL checks use, and its cache of recent decisions.
pub struct ClientAuth {
    pub username: Option<String>,
    pub ip: IpAddr,
    cache: Vec<(Action, Box<str>, bool)>,
    generation: u64,
}

impl ClientAuth {
    pub fn new(username: Option<String>, ip: IpAddr) -> ClientAuth {
        ClientAuth {
            username,
            ip,
            cache: Vec::new(),
            generation: 0,
        }
    }

    /// Asks `auth`, remembering up to `cache_size` answers until the next reload.
    pub fn authorize(
        &mut self,
        auth: &Auth,
        client_id: &str,
        action: Action,
        topic: &str,
        cache_size: usize,
    ) -> bool {
        if !auth.has_acl() {
            return true;
        }
        if self.generation != auth.generation {
            self.cache.clear();
            self.generation = auth.generation;
        }
        if let Some(hit) = self
            .cache
            .iter()
            .find(|(a, t, _)| *a == action && &**t == topic)
        {
            return hit.2;
        }
        let client = Client {
            username: self.username.as_deref(),
            client_id,
            ip: self.ip,
        };
        let ok = auth.authorize(&client, action, topic);
        if cache_size > 0 {
            if self.cache.len() >= cache_size {
                self.cache.remove(0);
            }
            self.cache.push((action, topic.into(), ok));
        }
        ok
    }
}
