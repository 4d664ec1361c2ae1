//! Heartbeats into distinct rooms from 1 and 2 threads, in-process (no sockets): how
//! far rooms scale with cores. Goal: 2 threads reach at least 1.7 times the rate of
//! one. Each room has 10 subscribers (woken, not drained).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rollcall_server::bench::RoomLoad;

fn rooms(c: &mut Criterion) {
    let mut group = c.benchmark_group("rooms");
    for threads in [1, 2] {
        let rooms = RoomLoad::new(threads);
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(
            BenchmarkId::new("heartbeats", format!("{threads}-threads")),
            &threads,
            |b, _| b.iter_custom(|iters| rooms.drive(iters)),
        );
    }
    group.finish();
}

criterion_group!(benches, rooms);
criterion_main!(benches);
