//! Apply throughput: upserting heartbeats into a steady live set of 100k and 1M
//! entries (rooms of 50), through the bare materializer and through an in-memory
//! engine. Goals: ≥ 1M heartbeats/s at 100k live entries, ≥ 500k/s at 1M.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rollcall_benches::{T0, Workload};
use rollcall_engine::{Engine, Materializer};

/// Heartbeats per timed iteration: large enough that timer overhead vanishes, small
/// enough that generating them (untimed) stays cheap.
const BATCH: usize = 10_000;

fn label(live: u64) -> String {
    if live >= 1_000_000 {
        format!("{}M-live", live / 1_000_000)
    } else {
        format!("{}k-live", live / 1_000)
    }
}

fn apply<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group(common::group_name("apply"));
    group.throughput(Throughput::Elements(BATCH as u64));

    for live in [100_000, 1_000_000] {
        let workload = Workload::new(live);
        // Heartbeats are built in untimed setup; the timed part is the fold and the
        // drop of the change it returns, as a server would fan it out and drop it.
        let mut upserts = workload.random_upserts(live);

        let mut materializer = Materializer::new();
        for hb in workload.fill(T0) {
            materializer.heartbeat(&hb);
        }
        group.bench_function(BenchmarkId::new("materializer", label(live)), |b| {
            b.iter_batched_ref(
                || upserts.batch(BATCH),
                |batch| {
                    for hb in batch.iter() {
                        black_box(materializer.heartbeat(hb));
                    }
                },
                BatchSize::PerIteration,
            );
        });
        drop(materializer);

        let mut engine = Engine::memory();
        for hb in workload.fill(T0) {
            engine.heartbeat(hb);
        }
        group.bench_function(BenchmarkId::new("engine-memory", label(live)), |b| {
            b.iter_batched_ref(
                || upserts.batch(BATCH),
                |batch| {
                    for hb in batch.drain(..) {
                        black_box(engine.heartbeat(hb));
                    }
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn main() {
    let config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    common::main(config, apply, apply);
}
