//! Password checks off the shards. Verifying a PBKDF2 hash takes about a millisecond: on a
//! shard's event loop, a flood of wrong passwords would stall every other client of that
//! shard. A shard hands each check it cannot answer from memory to a small pool of side threads
//! and carries on; the CONNECT waits (not read further, bounded by the connect timeout) until
//! the verdict comes back in the shard's verdict list, its doorbell rung.
//!
//! A check costs a millisecond, so the pool's queue is a plain channel and each shard's verdict
//! list a mutex-guarded vector: their few dozen nanoseconds are lost in the hash. The rings
//! and doorbells of the message path stay as they are.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::Auth;
use crate::ring::Doorbell;

/// One password to verify for a waiting CONNECT.
pub struct Check {
    /// The waiting connection's token on its shard.
    pub token: u64,
    /// The credentials in force when the CONNECT came (a reload does not change its answer).
    pub auth: Arc<Auth>,
    pub username: String,
    pub password: Vec<u8>,
}

/// The answer to a [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub token: u64,
    pub ok: bool,
}

struct Job {
    check: Check,
    shard: usize,
}

/// A shard's end of the pool.
pub struct ShardChecks {
    shard: usize,
    jobs: SyncSender<Job>,
    verdicts: Arc<[Mutex<Vec<Verdict>>]>,
}

impl ShardChecks {
    /// Queues a check; hands it back when the pool's queue is full.
    pub fn submit(&self, check: Check) -> Result<(), Check> {
        let job = Job {
            check,
            shard: self.shard,
        };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(j) | TrySendError::Disconnected(j) => j.check,
        })
    }

    /// Takes the verdicts that have come back.
    pub fn take(&self) -> Vec<Verdict> {
        self.verdicts[self.shard]
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    /// Whether verdicts are waiting (for the shard's sleep check).
    pub fn ready(&self) -> bool {
        self.verdicts[self.shard]
            .lock()
            .is_ok_and(|v| !v.is_empty())
    }
}

/// Starts `threads` checker threads for `shards` shards whose doorbells are `bells`; `queue`
/// bounds the checks waiting for a thread. The threads end when every shard's end is dropped.
pub fn spawn(
    shards: usize,
    threads: usize,
    queue: usize,
    bells: Arc<[Doorbell]>,
) -> std::io::Result<Vec<ShardChecks>> {
    let (jobs, rx) = sync_channel::<Job>(queue.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let verdicts: Arc<[Mutex<Vec<Verdict>>]> = (0..shards).map(|_| Mutex::default()).collect();
    for i in 0..threads.max(1) {
        let (rx, verdicts, bells) = (rx.clone(), verdicts.clone(), bells.clone());
        std::thread::Builder::new()
            .name(format!("ringmq-passwd-{i}"))
            .spawn(move || work(&rx, &verdicts, &bells))?;
    }
    Ok((0..shards)
        .map(|shard| ShardChecks {
            shard,
            jobs: jobs.clone(),
            verdicts: verdicts.clone(),
        })
        .collect())
}

fn work(rx: &Mutex<Receiver<Job>>, verdicts: &[Mutex<Vec<Verdict>>], bells: &[Doorbell]) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Job { check, shard }) = job else {
            return;
        };
        let ok = check.auth.verify_password(&check.username, &check.password);
        let verdict = Verdict {
            token: check.token,
            ok,
        };
        if let (Some(list), Some(bell)) = (verdicts.get(shard), bells.get(shard)) {
            if let Ok(mut v) = list.lock() {
                v.push(verdict);
            }
            bell.ring();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_come_back_to_their_shard() {
        let hash = super::super::hash_password("pw", 10).expect("hash");
        let db = super::super::PasswordDb::parse(&format!("u:{hash}\n"), "p").expect("db");
        let auth = Arc::new(Auth::with_passwords(db));
        let bells: Arc<[Doorbell]> = (0..2).map(|_| Doorbell::default()).collect();
        let ends = spawn(2, 2, 8, bells).expect("threads");
        for (token, pw) in [(1, "pw"), (2, "nope")] {
            let check = Check {
                token,
                auth: auth.clone(),
                username: "u".into(),
                password: pw.as_bytes().to_vec(),
            };
            assert!(ends[1].submit(check).is_ok());
        }
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(ends[1].take());
            std::thread::yield_now();
        }
        got.sort_by_key(|v| v.token);
        assert_eq!(
            got,
            [
                Verdict { token: 1, ok: true },
                Verdict {
                    token: 2,
                    ok: false
                }
            ]
        );
        assert!(ends[0].take().is_empty(), "nothing for the other shard");
    }
}
