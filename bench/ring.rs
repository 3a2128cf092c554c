//! The cross-shard ring: nanoseconds per message pushed by one thread and drained in batches by
//! another, as shards do; the doorbell rung after every push, or once per 64 pushes (a shard
//! rings once per pump pass).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringmq::codec::QoS;
use ringmq::ring::{mesh, XMsg};
use ringmq::session::Message;

fn ring(c: &mut Criterion) {
    let msg = Arc::new(Message::new(
        "bench/topic".into(),
        Bytes::from_static(b"payload"),
        QoS::AtMostOnce,
        false,
        None,
        "bench".into(),
        Instant::now(),
    ));
    let mut g = c.benchmark_group("ring");
    const BATCH: u64 = 10_000;
    g.throughput(Throughput::Elements(BATCH));
    for (name, per_ring) in [
        ("spsc_cross_thread_batched", 1),
        ("spsc_cross_thread_rung_per_64", 64),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut ends = mesh(2, 16384);
                let (_, mut inbox) = ends.pop().expect("two");
                let (mut outbox, _) = ends.pop().expect("two");
                let total = iters * BATCH;
                let consumer = std::thread::spawn(move || {
                    let mut got = 0u64;
                    let mut batch = Vec::with_capacity(512);
                    while got < total {
                        got += inbox.drain(256, &mut batch) as u64;
                        batch.clear();
                    }
                });
                let start = Instant::now();
                for i in 0..total {
                    let mut m = XMsg::Publish {
                        msg: msg.clone(),
                        confirm: None,
                    };
                    while let Err(back) = outbox.push(1, m) {
                        m = back;
                        outbox.ring(1);
                        std::hint::spin_loop();
                    }
                    if (i + 1) % per_ring == 0 {
                        outbox.ring(1);
                    }
                }
                outbox.ring(1);
                consumer.join().expect("consumer");
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
