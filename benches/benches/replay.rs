//! Time to ready: `Engine::open` (sled recovery, replay, writer start) on a log with
//! 1M live entries in the default per-group layout. Goal ≤ 2 s. The page cache is
//! warm: the log was just written.
//!
//! The per-event layout takes about ten times as long to open, so ten criterion
//! samples of it would not fit the bench run: `log-figures` times it (and reports
//! both layouts' sizes on disk, which criterion cannot).

use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use rollcall_benches::{Workload, build_log, log_config, mib};
use rollcall_engine::{Durability, Engine, Layout, Ttl};

const LIVE: u64 = 1_000_000;
/// Upserts after the fill (a quarter of the entries heartbeat again), so the log has
/// superseded records as a running server's has.
const CHURN: u64 = LIVE / 4;
/// Entries must still be live when the timed opens run, a minute or more later.
const TTL: Ttl = Ttl(3_600_000);
/// Untimed pause between iterations (see the setup below).
const LOCK_RELEASE: Duration = Duration::from_millis(500);

fn replay(c: &mut Criterion) {
    let workload = Workload::new(LIVE).ttl(TTL);
    let dir = tempfile::tempdir().expect("temporary directory");
    let started = Instant::now();
    let stats = build_log(dir.path(), Layout::PerGroup, &workload, CHURN, |c| c);
    eprintln!(
        "open/1M-live/per-group: built in {:.1} s: {} records, {:.1} MiB of records",
        started.elapsed().as_secs_f64(),
        stats.records,
        mib(stats.total_bytes),
    );

    let mut group = c.benchmark_group("open");
    group.bench_function(BenchmarkId::new("1M-live", "per-group"), |b| {
        b.iter_batched(
            || {
                // The previous iteration's engine was dropped just now; sled lets go
                // of the directory lock from a background thread a little later, and
                // an open that found it held would retry inside the timed section.
                std::thread::sleep(LOCK_RELEASE);
                log_config(dir.path(), Durability::Flush, Layout::PerGroup)
            },
            |config| {
                let (engine, report) = Engine::open(config).expect("reopen log");
                assert_eq!(report.live_entries as u64, LIVE);
                // Returned so that closing it happens outside the timed section.
                engine
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    targets = replay
}
criterion_main!(benches);
