//! Codec throughput: decode and encode of PUBLISH at 16 B to 64 KiB payloads, and of CONNECT and
//! SUBSCRIBE, for v3.1.1 and v5.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ringmq::codec::*;

fn publish(size: usize) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-1/floor-3/temperature".into(),
        packet_id: Some(42),
        properties: None,
        payload: Bytes::from(vec![0xab; size]),
    })
}

fn connect(protocol: Protocol) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "device-000123456".into(),
        will: Some(Will {
            topic: "devices/device-000123456/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: None,
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret-password")),
        properties: None,
    }))
}

fn subscribe() -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters: vec![
            (
                "sensors/+/floor-3/#".into(),
                SubOptions::qos(QoS::AtLeastOnce),
            ),
            (
                "commands/device-000123456".into(),
                SubOptions::qos(QoS::ExactlyOnce),
            ),
        ],
        properties: None,
    })
}

fn bench_packet(c: &mut Criterion, group: &str, name: String, packet: &Packet) {
    let mut g = c.benchmark_group(group);
    for proto in [Protocol::V311, Protocol::V5] {
        let mut wire = BytesMut::new();
        encode(packet, proto, &mut wire);
        let wire = wire.freeze();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("decode/{name}"), format!("{proto:?}")),
            &wire,
            |b, wire| {
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| decode(&mut buf, proto, usize::MAX),
                    BatchSize::SmallInput,
                )
            },
        );
        let mut out = BytesMut::with_capacity(wire.len() * 2);
        g.bench_with_input(
            BenchmarkId::new(format!("encode/{name}"), format!("{proto:?}")),
            packet,
            |b, p| {
                b.iter(|| {
                    out.clear();
                    encode(p, proto, &mut out);
                })
            },
        );
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    for size in [16, 256, 4096, 65536] {
        bench_packet(c, "publish", format!("{size}B"), &publish(size));
    }
    bench_packet(c, "control", "connect".into(), &connect(Protocol::V311));
    bench_packet(c, "control", "subscribe".into(), &subscribe());
}

criterion_group!(benches, codec);
criterion_main!(benches);
