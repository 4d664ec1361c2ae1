//! Sustained append throughput through a real engine on a temporary directory: 100k
//! live entries (rooms of 50) heartbeating in turn, group commit on the writer
//! thread, for each durability mode and record layout. Goals: ≥ 100k heartbeats/s
//! with `flush`, ≥ 300k/s with `buffered(100ms)`. Time-to-durable percentiles come
//! from the `append-latency` binary, which paces its producer.

use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use rollcall_benches::{
    DURABILITIES, LAYOUTS, Workload, append_paced, log_config, mib, sync_fully,
};
use rollcall_engine::Engine;

const LIVE: u64 = 100_000;

/// Appends the writer may lag behind the producer: below `LIVE`, so that no group
/// coalesces (see `append_paced`); well above one flush's worth at the goal rates, so
/// it does not limit throughput either.
const MAX_UNWRITTEN: u64 = LIVE / 2;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    // A sample ends with a flush it must wait for: linear sampling fits a slope
    // through samples of growing size, which cancels that fixed cost.
    group.sampling_mode(SamplingMode::Linear);

    for (durability_name, durability) in DURABILITIES {
        for (layout_name, layout) in LAYOUTS {
            let dir = tempfile::tempdir().expect("temporary directory");
            let (mut engine, _) =
                Engine::open(log_config(dir.path(), durability, layout)).expect("open log");
            let workload = Workload::new(LIVE);
            let mut upserts = workload.cycling_upserts();
            append_paced(
                &mut engine,
                upserts.by_ref().take(LIVE as usize),
                MAX_UNWRITTEN,
            );
            sync_fully(&engine);

            let id = BenchmarkId::new(durability_name, layout_name);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    append_paced(
                        &mut engine,
                        upserts.by_ref().take(iters as usize),
                        MAX_UNWRITTEN,
                    );
                    // Sustained means on disk: the sample ends when all of it is.
                    sync_fully(&engine);
                    started.elapsed()
                });
            });

            let stats = engine.log_stats();
            eprintln!(
                "append/{durability_name}/{layout_name}: {} groups, {:.0} events/group, \
                 {} coalesced, {} copied by compaction, log {:.1} MiB ({:.1} MiB live)",
                stats.groups,
                stats.events as f64 / stats.groups.max(1) as f64,
                stats.coalesced,
                stats.copied,
                mib(stats.total_bytes),
                mib(stats.live_bytes),
            );
            engine.close().expect("close");
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    targets = append
}
criterion_main!(benches);
