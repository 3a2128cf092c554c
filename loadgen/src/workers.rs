//! Worker threads: one pinned monoio runtime per thread, as in the broker, each driving its
//! share of the clients; and which clients are whose across threads and processes.

use std::future::Future;

/// This process's place among `procs` processes of `threads` threads each.
#[derive(Debug, Clone, Copy)]
pub struct Slice {
    pub proc_index: usize,
    pub procs: usize,
    pub threads: usize,
}

impl Slice {
    /// The client indices in `0..total` that worker thread `thread` of this process drives.
    pub fn clients(&self, thread: usize, total: usize) -> impl Iterator<Item = usize> {
        let stride = self.procs * self.threads;
        let first = self.proc_index * self.threads + thread;
        (first..total).step_by(stride)
    }

    /// The client indices in `0..total` that this whole process drives, over all its threads.
    pub fn local_clients(&self, total: usize) -> Vec<usize> {
        (0..self.threads)
            .flat_map(|t| self.clients(t, total))
            .collect()
    }
}

/// Runs `work(thread)` on `threads` pinned runtimes and returns their results in thread order.
pub fn run<R, Fut, F>(threads: usize, work: F) -> Vec<R>
where
    R: Send + 'static,
    Fut: Future<Output = R> + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
{
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let work = work.clone();
            let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    // The broker's own io_uring setup (its cooperative task work): a load
                    // generator that takes an IPI per completion would cost every broker's
                    // sends more, and measure that instead of the broker.
                    let mut rt = ringmq::driver::runtime(ringmq::config::Driver::Auto, 4096)
                        .expect("monoio runtime");
                    rt.block_on(work(t))
                })
                .expect("spawn worker")
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect()
}
