//! The password file: one `username:hash` per line. Hashes are PBKDF2-SHA512 in Mosquitto 2's
//! format (`$7$<iterations>$<salt b64>$<hash b64>`), so `mosquitto_passwd` files are read as is
//! and files written by `ringmq passwd` work in Mosquitto too; Mosquitto 1.x's salted SHA-512
//! (`$6$<salt>$<hash>`) is read as well. Plain-text passwords are refused.
//!
//! Cost: PBKDF2 runs on the shard at CONNECT. `ringmq passwd` uses 1,000 iterations by default
//! (well above Mosquitto's 101); a verified password is remembered as a salted SHA-512 so that
//! reconnects of the same user cost one hash, not the whole KDF again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use ahash::AHashMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};

/// Iterations `ringmq passwd` writes.
pub const DEFAULT_ITERATIONS: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// Written back as it is read: what `edit_file` keeps of the users it does not touch.
impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                B64.encode(salt),
                B64.encode(hash)
            ),
            Hash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", B64.encode(salt), B64.encode(hash))
            }
        }
    }
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = s.split('$').collect();
        let b64 = |p: &str, what: &str| B64.decode(p).map_err(|e| format!("bad {what}: {e}"));
        match parts.as_slice() {
            ["", "7", iter, salt, hash] => Ok(Hash::Pbkdf2 {
                iterations: iter
                    .parse()
                    .ok()
                    .filter(|i| *i > 0)
                    .ok_or("bad iteration count")?,
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            }),
            ["", "6", salt, hash] => Ok(Hash::Sha512 {
                salt: b64(salt, "salt")?,
                hash: b64(hash, "hash")?,
            }),
            _ => Err(
                "not a hashed password ($7$ PBKDF2-SHA512 or $6$ SHA-512); plain text is refused"
                    .into(),
            ),
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                constant_time_eq(&out, hash)
            }
            Hash::Sha512 { salt, hash } => constant_time_eq(&quick(salt, password), hash),
        }
    }
}

/// SHA-512 of password then salt (Mosquitto 1.x's `$6$`, and the verified-password memo).
fn quick(salt: &[u8], password: &[u8]) -> Vec<u8> {
    let mut h = Sha512::new();
    h.update(password);
    h.update(salt);
    h.finalize().to_vec()
}

/// Compares two secrets in time that depends on their length only, not on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn salt() -> Result<Vec<u8>, String> {
    let mut s = vec![0u8; 12];
    getrandom::fill(&mut s).map_err(|e| format!("no random source for a salt: {e}"))?;
    Ok(s)
}

/// Hashes `password` as `$7$iterations$salt$hash`.
pub fn hash_password(password: &str, iterations: u32) -> Result<String, String> {
    let salt = salt()?;
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, iterations, &mut out);
    Ok(format!(
        "$7${iterations}${}${}",
        B64.encode(&salt),
        B64.encode(out)
    ))
}

/// The `user:hash` lines of a password file, hashes checked; errors name the line.
fn entries<'a>(text: &'a str, origin: &str) -> Result<Vec<(&'a str, Hash)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |why: &str| format!("{origin}:{}: {why}", i + 1);
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| err("expected username:hash"))?;
        if user.is_empty() {
            return Err(err("empty username"));
        }
        out.push((user, Hash::parse(hash).map_err(|e| err(&e))?));
    }
    Ok(out)
}

/// The users of a password file.
pub struct PasswordDb {
    users: AHashMap<String, Hash>,
    /// Passwords already verified: username -> SHA-512(salt, password) with a per-process salt.
    verified: Mutex<AHashMap<String, Vec<u8>>>,
    /// The last wrong password tried per user, the same way: a client retrying it costs a
    /// SHA-512, not a PBKDF2. One per user of the file (unknown users cost nothing).
    failed: Mutex<AHashMap<String, Vec<u8>>>,
    memo_salt: Vec<u8>,
}

impl PasswordDb {
    /// Parses a file's text; errors name the line.
    pub fn parse(text: &str, origin: &str) -> Result<PasswordDb, String> {
        let users = entries(text, origin)?
            .into_iter()
            .map(|(user, hash)| (user.to_string(), hash))
            .collect();
        Ok(PasswordDb {
            users,
            verified: Mutex::new(AHashMap::new()),
            failed: Mutex::new(AHashMap::new()),
            memo_salt: salt()?,
        })
    }

    pub fn load(path: &Path) -> Result<PasswordDb, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        PasswordDb::parse(&text, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Both steps at once, for the tests (the broker asks `remembered` on the shard and
    /// `verify_slow` on a checker thread).
    #[cfg(test)]
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.remembered(username, password)
            .unwrap_or_else(|| self.verify_slow(username, password))
    }

    /// The answer without hashing, where there is one: an unknown user, or a password already
    /// verified or already refused for this user. `None`: only the slow hash can tell.
    pub fn remembered(&self, username: &str, password: &[u8]) -> Option<bool> {
        if !self.users.contains_key(username) {
            return Some(false);
        }
        let memo = quick(&self.memo_salt, password);
        let known = |memos: &Mutex<AHashMap<String, Vec<u8>>>| {
            memos
                .lock()
                .is_ok_and(|m| m.get(username).is_some_and(|m| constant_time_eq(m, &memo)))
        };
        if known(&self.verified) {
            return Some(true);
        }
        if known(&self.failed) {
            return Some(false);
        }
        None
    }

    /// Verifies against the file's hash (PBKDF2: about a millisecond, never on a shard) and
    /// remembers the outcome.
    pub fn verify_slow(&self, username: &str, password: &[u8]) -> bool {
        let Some(hash) = self.users.get(username) else {
            return false;
        };
        let ok = hash.verify(password);
        let memos = if ok { &self.verified } else { &self.failed };
        if let Ok(mut m) = memos.lock() {
            m.insert(username.to_string(), quick(&self.memo_salt, password));
        }
        ok
    }
}

/// `ringmq passwd`: adds or changes `user` (or deletes it) in the file, keeping other lines.
pub fn edit_file(
    path: &Path,
    create: bool,
    user: &str,
    password: Option<&str>,
) -> Result<(), String> {
    if user.is_empty() || user.contains(':') || user.contains('\0') {
        return Err("a username must be non-empty, without ':' or NUL".into());
    }
    let text = if create {
        String::new()
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    let mut lines: BTreeMap<String, String> = entries(&text, &path.display().to_string())?
        .into_iter()
        .map(|(u, h)| (u.to_string(), h.to_string()))
        .collect();
    match password {
        Some(pw) => {
            lines.insert(user.to_string(), hash_password(pw, DEFAULT_ITERATIONS)?);
        }
        None => {
            if lines.remove(user).is_none() {
                return Err(format!("no user {user:?} in {}", path.display()));
            }
        }
    }
    let out: String = lines.iter().map(|(u, h)| format!("{u}:{h}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_plain_text_is_refused() {
        let h = hash_password("s3cret", 10).expect("hash");
        let db = PasswordDb::parse(&format!("# users\nalice:{h}\n"), "p").expect("parses");
        assert!(db.verify("alice", b"s3cret"));
        assert!(db.verify("alice", b"s3cret"), "memo path");
        assert!(!db.verify("alice", b"wrong"));
        assert!(!db.verify("alice", b"wrong"), "failure memo path");
        assert!(
            db.verify("alice", b"s3cret"),
            "a remembered failure never refuses the right password"
        );
        assert!(!db.verify("bob", b"s3cret"));
        let e = PasswordDb::parse("bob:hunter2\n", "p")
            .err()
            .expect("refused");
        assert!(e.starts_with("p:1:"), "{e}");
    }

    #[test]
    fn reads_mosquitto_sha512_format() {
        let salt = b"saltsalt";
        let line = format!(
            "u:$6${}${}",
            B64.encode(salt),
            B64.encode(quick(salt, b"pw"))
        );
        let db = PasswordDb::parse(&line, "p").expect("parses");
        assert!(db.verify("u", b"pw"));
        assert!(!db.verify("u", b"px"));
    }
}
