//! The cluster's route table at scale (toward 10 M routes on a cluster): how fast a node
//! applies route changes as the cluster commits them (batches of one node's 0 <-> 1
//! transitions), and what one route costs in memory, in the replicated state every node keeps
//! and in the interest replica every shard matches publishes against. Memory is counted by
//! this binary's allocator (live bytes before and after 1 M routes), printed once before the
//! timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytestring::ByteString;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringmq::cluster::state::Machine;
use ringmq::cluster::types::Command;
use ringmq::shard::interest::Interest;

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUTES: usize = 1_000_000;
/// Route changes per committed entry (a busy node's batch).
const BATCH: usize = 1_000;

/// Device filters, one in ten with a wildcard.
fn filter(i: usize) -> String {
    match i % 10 {
        0 => format!("site/{}/dev-{i}/#", i % 1000),
        _ => format!("site/{}/dev-{i}/temperature", i % 1000),
    }
}

fn routes(node: u64, add: Vec<String>, remove: Vec<String>) -> Command {
    Command::Routes { node, add, remove }
}

/// A node's replicated state with `n` routes of node 2, applied in batches.
fn table(n: usize) -> Machine {
    let mut m = Machine::default();
    let mut effects = Vec::new();
    for start in (0..n).step_by(BATCH) {
        let add = (start..(start + BATCH).min(n)).map(filter).collect();
        m.apply(routes(2, add, Vec::new()), &mut effects);
        effects.clear();
    }
    m
}

fn report() {
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let m = table(ROUTES);
    let took = t.elapsed();
    let state = LIVE.load(Ordering::Relaxed) - before;
    let before = LIVE.load(Ordering::Relaxed);
    let mut interest = Interest::default();
    for i in 0..ROUTES {
        interest.apply(&ByteString::from(filter(i)), 5, true);
    }
    let replica = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "routes: {ROUTES} applied in batches of {BATCH} in {:.2} s ({:.0} routes/s); \
         replicated state {:.0} B/route, a shard's interest replica {:.0} B/route",
        took.as_secs_f64(),
        ROUTES as f64 / took.as_secs_f64(),
        state as f64 / ROUTES as f64,
        replica as f64 / ROUTES as f64,
    );
    drop((m, interest));
}

fn apply(c: &mut Criterion) {
    report();
    let mut m = table(ROUTES);
    let mut g = c.benchmark_group("route_apply");
    g.throughput(Throughput::Elements(2 * BATCH as u64));
    g.sample_size(20);
    let fresh: Vec<String> = (ROUTES..ROUTES + BATCH).map(filter).collect();
    // One batch of new routes and the batch that takes them away again, onto 1 M routes.
    g.bench_function("add_and_remove_1000_at_1M", |b| {
        b.iter_batched(
            || (fresh.clone(), fresh.clone(), Vec::with_capacity(2 * BATCH)),
            |(add, remove, mut effects)| {
                m.apply(routes(3, add, Vec::new()), &mut effects);
                m.apply(routes(3, Vec::new(), remove), &mut effects);
                effects.len()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
