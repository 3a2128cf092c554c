//! Topic matching cost against the number of filters and the wildcard mix; the name is split
//! and hashed inside the measured loop, as a publish does once for all its walks.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmq::topic::{Levels, Trie};

/// `n` filters over a device tree: `exact` share are literal, the rest use `+` or `#`.
fn build(n: usize, wildcard_every: usize) -> Trie<Vec<usize>> {
    let mut t: Trie<Vec<usize>> = Trie::default();
    for i in 0..n {
        let filter = match (i % wildcard_every == 0, i % 2) {
            (true, 0) => format!("site/{}/+/temperature", i % 100),
            (true, _) => format!("site/{}/dev-{}/#", i % 100, i),
            _ => format!("site/{}/dev-{}/temperature", i % 100, i),
        };
        t.entry(&filter).push(i);
    }
    t
}

fn trie(c: &mut Criterion) {
    let mut g = c.benchmark_group("trie_match");
    g.throughput(Throughput::Elements(1));
    for n in [1_000, 100_000, 1_000_000] {
        for (label, every) in [("exact", usize::MAX), ("10pct_wild", 10)] {
            let t = build(n, every);
            let name = format!("site/{}/dev-{}/temperature", 7, 7 + 100 * 3);
            g.bench_with_input(BenchmarkId::new(label, n), &name, |b, name| {
                b.iter(|| {
                    let mut hits = 0;
                    Levels::with(name, |l| t.for_each_match(l, |v| hits += v.len()));
                    hits
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, trie);
criterion_main!(benches);
