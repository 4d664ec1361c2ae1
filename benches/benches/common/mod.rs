//! Running single-threaded benches on a shared machine.
//!
//! Wall time counts whatever the scheduler gives other processes. With
//! `ROLLCALL_BENCH_CLOCK=thread-cpu`, these benches measure the benchmarking thread's
//! own CPU time instead (from `/proc/thread-self/schedstat`): the cost on one core,
//! less what other work steals, though not its cache pollution. Results then go to
//! groups suffixed `@thread-cpu` so that criterion never compares the two clocks.

use std::time::Duration;

use criterion::Criterion;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// Formats like wall time: both are durations.
static WALL_TIME: WallTime = WallTime;

/// CPU time of the calling thread.
pub struct ThreadCpuTime;

fn thread_cpu_time() -> Duration {
    // First field: nanoseconds this thread has run on a CPU.
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat starts with the run time in ns");
    Duration::from_nanos(ns)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_time().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        WALL_TIME.formatter()
    }
}

fn thread_cpu_requested() -> bool {
    std::env::var("ROLLCALL_BENCH_CLOCK").is_ok_and(|clock| clock == "thread-cpu")
}

/// The benchmark group name for the clock in use.
pub fn group_name(name: &str) -> String {
    if thread_cpu_requested() {
        format!("{name}@thread-cpu")
    } else {
        name.to_owned()
    }
}

/// `criterion_main!` for a bench that can run on either clock.
pub fn main(
    config: Criterion,
    wall: fn(&mut Criterion),
    thread_cpu: fn(&mut Criterion<ThreadCpuTime>),
) {
    if thread_cpu_requested() {
        let mut criterion = config.with_measurement(ThreadCpuTime).configure_from_args();
        thread_cpu(&mut criterion);
        criterion.final_summary();
    } else {
        let mut criterion = config.configure_from_args();
        wall(&mut criterion);
        criterion.final_summary();
    }
}
