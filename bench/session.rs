//! A session's outbound QoS 1 window: a window's worth of deliveries admitted (each given a
//! packet id and kept in flight), then acknowledged in order, as a subscriber at full speed
//! does; per message.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringmq::codec::{Protocol, QoS};
use ringmq::session::{
    Admit, Delivery, Message, OutState, Outgoing, Session, SessionLimits, SubIds,
};

const LIMITS: SessionLimits = SessionLimits {
    max_queued: 1000,
    max_queued_bytes: 0,
    queue_qos0: false,
};

fn window(c: &mut Criterion) {
    let msg = Arc::new(Message::new(
        "sensors/building-1/floor-3/temperature".into(),
        Bytes::from_static(&[0xab; 64]),
        QoS::AtLeastOnce,
        false,
        None,
        "publisher".into(),
        Instant::now(),
    ));
    let mut g = c.benchmark_group("session_window");
    for size in [16u16, 64] {
        g.throughput(Throughput::Elements(u64::from(size)));
        let mut s = Session::new("subscriber".into(), Protocol::V311);
        s.attach(Protocol::V311, size, u32::MAX, 0);
        let mut pids = Vec::with_capacity(usize::from(size));
        g.bench_function(BenchmarkId::new("admit_then_ack", size), |b| {
            b.iter(|| {
                for _ in 0..size {
                    let d = Delivery {
                        msg: msg.clone(),
                        qos: QoS::AtLeastOnce,
                        retain: false,
                        sub_ids: SubIds::new(),
                        group: None,
                        seq: 0,
                        owed: None,
                    };
                    if let Admit::Send(Outgoing::Flow(pid)) = s.admit(d, true, &LIMITS) {
                        pids.push(pid);
                    }
                }
                for pid in pids.drain(..) {
                    s.complete(pid, OutState::Published, QoS::AtLeastOnce);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
