//! Time to durable under a steady open-loop load.
//!
//! A producer appends heartbeats to a real engine on a temporary directory at a fixed
//! rate, on schedule whatever the disk does, and the engine's `on_durable` hook
//! timestamps each advance of the durable watermark. Each event's latency runs from
//! its scheduled append time to the first watermark advance that covers it, so a
//! producer that falls behind counts against the engine rather than hiding it.
//!
//! ```text
//! append-latency [--rate N] [--secs S] [--live N] [flush|buffered] [per-group|per-event]
//! ```
//!
//! Without a mode or layout it runs every combination. Goal (`flush`): 100k
//! heartbeats/s sustained with p99 ≤ 25 ms.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rollcall_benches::{Mode, Workload, durabilities, layouts, log_config, parse_count};
use rollcall_engine::{Durability, Engine, Layout, Ticket};

/// Time to durable under a steady open-loop load.
#[derive(Debug, Parser)]
#[command(name = "append-latency")]
struct Options {
    /// Heartbeats appended per second.
    #[arg(long, default_value = "100000", value_parser = parse_count)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value = "10", value_parser = parse_count)]
    secs: u64,
    /// Live entries the heartbeats cycle over.
    #[arg(long, default_value = "100000", value_parser = parse_count)]
    live: u64,
    /// Durability modes and layouts to run (every combination when none is named).
    #[arg(value_enum)]
    modes: Vec<Mode>,
}

/// Watermark advances as the writer thread reported them.
type Advances = Arc<Mutex<Vec<(Ticket, Instant)>>>;

fn run(options: &Options, durability: Durability, layout: Layout) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let advances: Advances = Arc::default();
    let hook = advances.clone();
    let config = log_config(dir.path(), durability, layout).on_durable(move |ticket| {
        let now = Instant::now();
        hook.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((ticket, now));
    });
    let (mut engine, _) = Engine::open(config).expect("open log");

    let workload = Workload::new(options.live);
    let mut upserts = workload.cycling_upserts();
    for hb in upserts.by_ref().take(options.live as usize) {
        engine.heartbeat(hb);
    }
    assert!(
        engine.sync().expect("sync"),
        "initial fill reached the disk"
    );
    let first = Ticket(engine.last_ticket().0 + 1);
    let stats_before = engine.log_stats();

    let total = options.rate * options.secs;
    let mut scheduled = Vec::with_capacity(total as usize);
    let started = Instant::now();
    for (i, hb) in upserts.by_ref().take(total as usize).enumerate() {
        let due = started
            + Duration::from_nanos((i as u128 * 1_000_000_000 / u128::from(options.rate)) as u64);
        let now = Instant::now();
        if due > now {
            // Sleeping overshoots by tens of µs; the events due meanwhile go out in a
            // burst, still stamped with their scheduled time.
            std::thread::sleep(due - now);
        }
        engine.heartbeat(hb);
        scheduled.push(due);
    }
    let produced = started.elapsed();
    assert!(engine.sync().expect("sync"), "sync within 30 s");
    let stats = engine.log_stats();
    engine.close().expect("close");

    let advances = std::mem::take(&mut *advances.lock().unwrap_or_else(PoisonError::into_inner));
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut advance = advances
        .iter()
        .skip_while(|(ticket, _)| *ticket < first)
        .peekable();
    let mut last_durable = started;
    for (i, due) in scheduled.iter().enumerate() {
        let ticket = Ticket(first.0 + i as u64);
        while advance.peek().is_some_and(|(covered, _)| *covered < ticket) {
            advance.next();
        }
        let &&(_, at) = advance.peek().expect("sync made every ticket durable");
        last_durable = last_durable.max(at);
        histogram.saturating_record(at.saturating_duration_since(*due).as_micros() as u64);
    }

    // How long the writer takes per cycle (write + flush): the floor of the latency.
    let mut cycles = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let measured: Vec<Instant> = advances
        .iter()
        .filter(|(ticket, _)| *ticket >= first)
        .map(|&(_, at)| at)
        .collect();
    for pair in measured.windows(2) {
        cycles.saturating_record(pair[1].duration_since(pair[0]).as_micros() as u64);
    }

    let groups = stats.groups - stats_before.groups;
    let events = stats.events - stats_before.events;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
    format!(
        "achieved {:.0}/s appended, {:.0}/s durable; time to durable p50 {:.2} ms, \
         p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; watermark advanced every {:.2} ms \
         (p50), {:.2} ms (p99), {:.2} ms (max); {} groups of {:.0} events, {} coalesced, \
         {} copied by compaction",
        total as f64 / produced.as_secs_f64(),
        total as f64 / last_durable.duration_since(started).as_secs_f64(),
        ms(0.50),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1_000.0,
        cycles.value_at_quantile(0.50) as f64 / 1_000.0,
        cycles.value_at_quantile(0.99) as f64 / 1_000.0,
        cycles.max() as f64 / 1_000.0,
        groups,
        events as f64 / groups.max(1) as f64,
        stats.coalesced - stats_before.coalesced,
        stats.copied - stats_before.copied,
    )
}

fn main() {
    let mut options = Options::parse();
    options.rate = options.rate.max(1);
    options.secs = options.secs.max(1);
    options.live = options.live.max(1);
    println!(
        "append-latency: {} heartbeats/s for {} s over {} live entries",
        options.rate, options.secs, options.live
    );
    for (durability_name, durability) in durabilities(&options.modes) {
        for (layout_name, layout) in layouts(&options.modes) {
            let line = run(&options, durability, layout);
            println!("{durability_name}/{layout_name}: {line}");
        }
    }
}
