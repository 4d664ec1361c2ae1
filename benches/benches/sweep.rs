//! Sweep latency on a materializer holding 1M entries (20k rooms of 50): expiring
//! 1,000 entries scattered over the rooms (goal ≤ 1 ms), and a sweep with nothing due
//! (goal ≤ 1 µs).

mod common;

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::Measurement;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rollcall_benches::{Rng, T0, Workload};
use rollcall_engine::{Materializer, Ttl, UnixMs};

const LIVE: u64 = 1_000_000;
const DUE: usize = 1_000;
/// Sweeps run at this instant: every entry of the live set (TTL 30 s from `T0`) is
/// still live then.
const NOW: UnixMs = UnixMs(T0.0 + 1_000);
/// Re-heartbeating an entry at `T0` with this TTL makes it due at `NOW`.
const SHORT: Ttl = Ttl(500);

/// `n` distinct keys below `live`, scattered: each lands in its own room or nearly so.
fn scattered_keys(n: usize, live: u64) -> Vec<u64> {
    let mut rng = Rng::new(7);
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let key = rng.below(live);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

fn sweep<M: Measurement>(c: &mut Criterion<M>) {
    let workload = Workload::new(LIVE);
    // Built once: filling 1M entries takes far longer than the sweeps measured.
    let mut materializer = Materializer::new();
    for hb in workload.fill(T0) {
        materializer.heartbeat(&hb);
    }
    let mut group = c.benchmark_group(common::group_name("sweep"));

    assert!(materializer.next_expiry() >= Some(NOW), "nothing is due");
    let mut out = Vec::new();
    group.bench_function(BenchmarkId::new("nothing-due", "1M-live"), |b| {
        b.iter(|| black_box(materializer.sweep_due(black_box(NOW), &mut out)));
    });
    assert!(out.is_empty());

    let due: Vec<_> = scattered_keys(DUE, LIVE)
        .into_iter()
        .map(|key| workload.heartbeat_ttl(key, T0, SHORT))
        .collect();
    // Setup and routine both need the materializer; criterion runs them one at a time.
    let materializer = RefCell::new(materializer);
    group.throughput(Throughput::Elements(DUE as u64));
    group.bench_function(BenchmarkId::new("expire-1000", "1M-live"), |b| {
        b.iter_batched_ref(
            // Untimed: make the same 1,000 entries due again (the last sweep removed
            // them) and hand the sweep an output buffer it need not grow.
            || {
                let mut m = materializer.borrow_mut();
                for hb in &due {
                    m.heartbeat(hb);
                }
                Vec::with_capacity(DUE)
            },
            |out| {
                let expired = materializer.borrow_mut().sweep_due(NOW, out);
                assert_eq!(expired, DUE);
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn main() {
    let config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    common::main(config, sweep, sweep);
}
