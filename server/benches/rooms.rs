//! Heartbeats into distinct rooms from 1 and 2 threads, in-process (no sockets): how
//! far rooms scale with cores. Goal: 2 threads reach at least 1.7 times the rate of
//! one. Each thread has rooms of its own (20), each room 10 subscribers (woken, not
//! drained).
//!
//! `cargo bench -p rollcall-server --bench rooms` runs criterion's measurement and
//! then prints a summary: the 1- and 2-thread rates (medians of alternating rounds, so
//! that load from elsewhere on the machine hits both alike) and their ratio.
//! `ROLLCALL_BENCH_THREADS=1` (or `2`) limits both to one thread count, e.g. to run
//! one under `taskset -c 0` and the other under `taskset -c 0,1`;
//! `ROLLCALL_BENCH_SHARDS=N` sets the number of room shards.

use criterion::{BenchmarkId, Criterion, Throughput};
use rollcall_server::bench::{RoomLoad, Run};

/// Rounds of the summary, per thread count.
const ROUNDS: usize = 7;
/// Heartbeats per thread in a summary round.
const PER_ROUND: u64 = 400_000;

/// `ROLLCALL_BENCH_SHARDS=N` sets the hub's room shards (default: what a server on
/// this machine uses); 1 puts every room behind one lock.
fn load(threads: usize) -> RoomLoad {
    match std::env::var("ROLLCALL_BENCH_SHARDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(shards) => RoomLoad::with_shards(threads, shards),
        None => RoomLoad::new(threads),
    }
}

fn thread_counts() -> Vec<usize> {
    match std::env::var("ROLLCALL_BENCH_THREADS").as_deref() {
        Ok("1") => vec![1],
        Ok("2") => vec![2],
        _ => vec![1, 2],
    }
}

fn rooms(c: &mut Criterion) {
    let mut group = c.benchmark_group("rooms");
    for threads in thread_counts() {
        let rooms = load(threads);
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_with_input(
            BenchmarkId::new("heartbeats", format!("{threads}-threads")),
            &threads,
            |b, _| b.iter_custom(|iters| rooms.drive(iters)),
        );
    }
    group.finish();
}

/// Heartbeats per second of each thread count: the median of [`ROUNDS`] rounds, the
/// thread counts taking turns.
fn summary() {
    let counts = thread_counts();
    let loads: Vec<RoomLoad> = counts.iter().map(|&t| load(t)).collect();
    let mut runs: Vec<Vec<Run>> = counts.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, load) in loads.iter().enumerate() {
            runs[i].push(load.run(PER_ROUND));
        }
    }
    println!(
        "\nrooms summary (medians of {ROUNDS} alternating rounds, {PER_ROUND} heartbeats per \
         thread each):"
    );
    let mut medians = Vec::new();
    let mut busy_machine = false;
    for (i, runs) in runs.iter().enumerate() {
        let rate = median(runs.iter().map(Run::rate));
        let waited = median(runs.iter().map(Run::runnable_wait_share));
        busy_machine |= waited > 0.1;
        medians.push(rate);
        println!(
            "  {} thread(s): {:.2}M heartbeats/s (the threads waited for a CPU {:.0}% of the \
             time)",
            counts[i],
            rate / 1e6,
            waited * 100.0
        );
    }
    if let [one, two] = medians[..] {
        println!(
            "  ratio 2 threads / 1 thread: {:.2}x (goal: at least 1.7x)",
            two / one
        );
    }
    if busy_machine {
        println!(
            "  (other processes kept these threads from a CPU: the rates measure the \
             machine's load as much as the hub)"
        );
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    rooms(&mut criterion);
    criterion.final_summary();
    // Only when benchmarking (`cargo bench` passes `--bench`), not in test mode.
    if std::env::args().any(|arg| arg == "--bench") {
        summary();
    }
}
