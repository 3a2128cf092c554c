//! The io driver under each shard's monoio runtime, chosen by `broker.driver`: io_uring, or epoll
//! (monoio's legacy driver). `auto` takes io_uring where this machine allows it and epoll where
//! it does not (a seccomp profile that blocks io_uring, `kernel.io_uring_disabled`, a kernel
//! without an operation monoio needs). The rest of the broker does not care which: monoio's
//! sockets, timers and `spawn` dispatch on the driver of the runtime they run in.
//!
//! The io_uring is set up `SINGLE_ISSUER | COOP_TASKRUN` (kernel 6.0; without them on an older
//! kernel): a completion no longer interrupts the running shard with an IPI to run its task
//! work; the work runs at the shard's next system call, and a busy shard makes several per loop
//! tick. Measured on this kernel (20 QoS 1 pairs, one shard): the reschedule IPIs and their
//! signal handling were 15 % of the broker's CPU, and messages per CPU-second rose by a third.
//! `DEFER_TASKRUN` measured the same, but runs task work only inside `io_uring_enter` with
//! GETEVENTS, which monoio 0.2.4 skips when another thread's wake is waiting (a doorbell): two
//! shards ringing each other could then starve each other's sockets.

use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::Driver;

/// A runtime with timers, on either driver.
pub type Runtime = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// io_uring can be set up here with every operation monoio uses (probed once per process).
pub fn uring_available() -> bool {
    monoio::utils::detect_uring()
}

/// The driver `asked` comes to on this machine, `io_uring` or `epoll`: `auto` picks, and
/// `io_uring` where it is unavailable is an error that says why.
pub fn resolve(asked: Driver) -> Result<Driver, String> {
    match asked {
        Driver::Epoll => Ok(Driver::Epoll),
        Driver::Auto | Driver::IoUring if uring_available() => Ok(Driver::IoUring),
        Driver::Auto => Ok(Driver::Epoll),
        Driver::IoUring => Err(
            "broker.driver is \"io_uring\", but io_uring is not available here \
             (blocked by a seccomp profile, disabled by kernel.io_uring_disabled, or a kernel \
             without the operations monoio needs); use \"auto\" or \"epoll\""
                .into(),
        ),
    }
}

/// Builds a runtime with timers on `driver` (`auto` picks as [`resolve`] does), sized for
/// `entries` submissions (io_uring) or events per wait (epoll).
pub fn runtime(driver: Driver, entries: u32) -> io::Result<Runtime> {
    if driver == Driver::Epoll || (driver == Driver::Auto && !uring_available()) {
        let rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .with_entries(entries)
            .build()?;
        Ok(rt.into())
    } else {
        let uring = |urb| {
            RuntimeBuilder::<IoUringDriver>::new()
                .enable_timer()
                .with_entries(entries)
                .uring_builder(urb)
                .build()
        };
        let mut cooperative = io_uring::IoUring::builder();
        cooperative.setup_single_issuer().setup_coop_taskrun();
        let rt = match uring(cooperative) {
            Ok(rt) => rt,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    "io_uring without SINGLE_ISSUER | COOP_TASKRUN (a kernel before 6.0)"
                );
                uring(io_uring::IoUring::builder())?
            }
            Err(e) => return Err(e),
        };
        Ok(rt.into())
    }
}

/// The driver under the runtime the calling task runs in (call it from inside a runtime).
pub fn current() -> Driver {
    if monoio::utils::is_legacy() {
        Driver::Epoll
    } else {
        Driver::IoUring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_driver_runs_a_timer_and_says_which_it_is() {
        let mut drivers = vec![Driver::Epoll, Driver::Auto];
        if uring_available() {
            drivers.push(Driver::IoUring);
        }
        for asked in drivers {
            let mut rt = runtime(asked, 256).expect("runtime");
            let ran = rt.block_on(async {
                monoio::spawn(monoio::time::sleep(std::time::Duration::from_millis(1))).await;
                current()
            });
            assert_eq!(Some(ran), resolve(asked).ok(), "{asked:?}");
        }
    }

    #[test]
    fn io_uring_is_refused_only_where_unavailable() {
        assert_eq!(resolve(Driver::Epoll), Ok(Driver::Epoll));
        let uring = resolve(Driver::IoUring);
        assert_eq!(uring.is_ok(), uring_available(), "{uring:?}");
        assert_ne!(resolve(Driver::Auto), Ok(Driver::Auto));
    }
}
