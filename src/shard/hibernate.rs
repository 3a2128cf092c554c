//! Hibernation: a plain-TCP connection idle for `broker.hibernate_after` seconds gives up its
//! task (the largest part of an idle connection's memory) and its socket waits in an epoll set
//! of the shard's instead. It gets a task again when its client sends something (or closes) or
//! when the shard has something for it: a message, a close. The shard waits on the epoll set
//! like on any socket, through the runtime, so nothing leaves the shard's thread.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Wake, Waker};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use monoio::net::TcpStream;
use rustix::buffer::spare_capacity;
use rustix::event::epoll;
use rustix::event::Timespec;

use super::{Accepted, Shard};
use crate::sock;

/// Wakes of hibernating connections (output for them, a close), by connection key, and the
/// waker of the task that resumes them.
#[derive(Default)]
struct Wakes {
    keys: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

/// What a hibernating connection's link holds as its waker.
struct HibernateWaker {
    key: usize,
    wakes: Arc<Wakes>,
}

impl Wake for HibernateWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.key);
        self.wakes.task.wake();
    }
}

pub struct Hibernation {
    epoll: OwnedFd,
    wakes: Arc<Wakes>,
    events: Vec<epoll::Event>,
}

impl Hibernation {
    pub fn new() -> io::Result<Hibernation> {
        Ok(Hibernation {
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            wakes: Arc::default(),
            events: Vec::with_capacity(256),
        })
    }

    /// The epoll set as something the runtime can wait on: readable while a hibernating socket
    /// is. (A datagram socket is only the wrapper monoio offers for a descriptor it polls.)
    pub fn waitable(&self) -> io::Result<monoio::net::UnixDatagram> {
        let fd = self.epoll.try_clone()?;
        monoio::net::UnixDatagram::from_std(StdUnixDatagram::from(fd))
    }

    /// Adds the socket of connection `key` to the set; the waker its link is to hold.
    pub fn add(&self, key: usize, socket: &OwnedFd) -> io::Result<Waker> {
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        epoll::add(
            &self.epoll,
            socket,
            epoll::EventData::new_u64(key as u64),
            flags,
        )?;
        Ok(Waker::from(Arc::new(HibernateWaker {
            key,
            wakes: self.wakes.clone(),
        })))
    }

    /// Takes a socket out of the set before it gets a task again.
    pub fn remove(&self, socket: impl AsFd) {
        // It may already be gone from the set (closed by the peer); nothing else can fail here.
        let _ = epoll::delete(&self.epoll, socket);
    }

    /// The task that resumes connections is woken by `waker` when one is woken.
    pub fn register(&self, waker: &Waker) {
        self.wakes.task.register(waker);
    }

    /// Whether a hibernating connection was woken since the last `take_due`.
    pub fn has_wakes(&self) -> bool {
        !self
            .wakes
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Keys of the hibernating connections that have something to do, appended to `due`: those
    /// whose socket is readable (or closed) and those woken. A key may come twice, or belong to
    /// a connection already resumed: the caller checks.
    pub fn take_due(&mut self, due: &mut Vec<usize>) {
        loop {
            self.events.clear();
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match epoll::wait(&self.epoll, spare_capacity(&mut self.events), Some(&zero)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waiting on hibernating connections failed");
                    break;
                }
            }
            let full = self.events.len() == self.events.capacity();
            due.extend(self.events.iter().map(|e| e.data.u64() as usize));
            if !full {
                break;
            }
        }
        due.append(
            &mut self
                .wakes
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

/// Hands an idle connection's socket to the shard's epoll set; false if it cannot be (the
/// connection then stays as it is, and is not asked again until it has been idle again).
pub(super) fn hibernate(
    shard: &Rc<RefCell<Shard>>,
    stream: &impl std::os::fd::AsRawFd,
    conn: &Accepted,
) -> bool {
    let mut sh = shard.borrow_mut();
    let sh = &mut *sh;
    let (Some(h), Some(entry)) = (sh.hibernation.as_ref(), sh.conns.get_mut(conn.idx)) else {
        return false;
    };
    let added = sock::duplicate(stream).and_then(|socket| Ok((h.add(conn.idx, &socket)?, socket)));
    match added {
        Ok((waker, socket)) => {
            if let Some(slot) = conn.link.session().and_then(|k| sh.sessions.get_mut(k)) {
                slot.session.trim();
            }
            conn.link.register(&waker);
            entry.hibernating = Some(socket);
            sh.stats.hibernating.inc();
            true
        }
        Err(e) => {
            // Once per shard at warn (near the open-file limit every idle connection would
            // say it again every hibernate_after seconds); counted, and retried that late.
            if sh.stats.hibernate_failures.get() == 0 {
                tracing::warn!(peer = %conn.link.peer, error = %e, "cannot hibernate a connection (ringmq_hibernate_failures_total counts the next ones)");
            } else {
                tracing::debug!(peer = %conn.link.peer, error = %e, "cannot hibernate a connection");
            }
            sh.stats.hibernate_failures.inc();
            conn.link.touch(Instant::now());
            false
        }
    }
}

/// Gives the hibernating connections that have something to do their task back (`serve`,
/// the connection task, is passed in: the connection loop leans on hibernation, not back).
pub async fn resumer<Task: Future<Output = ()> + 'static>(
    shard: Rc<RefCell<Shard>>,
    serve: impl Fn(Rc<RefCell<Shard>>, TcpStream, Accepted) -> Task,
) {
    let waitable = match shard.borrow().hibernation.as_ref().map(|h| h.waitable()) {
        Some(Ok(w)) => w,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "hibernation is off: cannot wait on its epoll set");
            shard.borrow_mut().hibernation = None;
            return;
        }
        None => return,
    };
    let mut due = Vec::new();
    let mut warned = false;
    loop {
        let mut readable = pin!(waitable.readable(false));
        let waited = poll_fn(|cx| {
            if let Some(h) = shard.borrow().hibernation.as_ref() {
                h.register(cx.waker());
                if h.has_wakes() {
                    return Poll::Ready(Ok(()));
                }
            }
            readable.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = waited {
            // Not expected; the set is then looked at every 10 ms instead of on readiness.
            if !warned {
                tracing::warn!(error = %e, "waiting on hibernating connections failed: polling them");
                warned = true;
            }
            monoio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut sh = shard.borrow_mut();
        if let Some(h) = sh.hibernation.as_mut() {
            h.take_due(&mut due);
        }
        for key in due.drain(..) {
            let Some(entry) = sh.conns.get_mut(key) else {
                continue;
            };
            let Some(socket) = entry.hibernating.take() else {
                continue;
            };
            let link = entry.link.clone();
            // Not idle now: the task reads and writes before it may hibernate again.
            link.touch(Instant::now());
            sh.stats.hibernating.dec();
            if let Some(h) = sh.hibernation.as_ref() {
                h.remove(&socket);
            }
            match TcpStream::from_std(std::net::TcpStream::from(socket)) {
                Ok(stream) => {
                    let conn = Accepted {
                        link,
                        transport: None,
                        idx: key,
                    };
                    monoio::spawn(serve(shard.clone(), stream, conn));
                }
                Err(e) => {
                    tracing::warn!(peer = %link.peer, error = %e, "cannot resume a hibernating connection");
                    sh.connection_ended(key, &link);
                }
            }
        }
    }
}
