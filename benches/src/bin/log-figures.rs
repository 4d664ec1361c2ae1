//! Figures about a log with 1M live entries that criterion cannot report: the data
//! directory's size on disk against the live data's logical size (goal ≤ 2×), and
//! single-shot open-and-ready times (goal ≤ 2 s), for each record layout.
//!
//! ```text
//! log-figures [--live N] [--churn N] [--opens N] [--max-record-bytes N] [per-group|per-event]
//! ```
//!
//! The log is written like `benches/replay.rs` writes it: one heartbeat per entry, then
//! `churn` upserts (default: a quarter of the entries), paced to the writer, with
//! `buffered(100ms)` durability; then synced and closed.

use std::time::Instant;

use clap::{CommandFactory, Parser};
use rollcall_benches::{
    DiskUsage, Mode, Workload, build_log, disk_usage, layouts, log_config, mib, parse_count,
};
use rollcall_engine::{Durability, Engine, Layout, Ttl};

/// Disk size and open times of a log with many live entries.
#[derive(Debug, Parser)]
#[command(name = "log-figures")]
struct Options {
    /// Live entries in the log.
    #[arg(long, default_value = "1000000", value_parser = parse_count)]
    live: u64,
    /// Upserts written after the entries (default: a quarter of them).
    #[arg(long, value_parser = parse_count)]
    churn: Option<u64>,
    /// Opens to time.
    #[arg(long, default_value = "3", value_parser = parse_count)]
    opens: u64,
    /// Largest record, in bytes (the engine's default when not given).
    #[arg(long, value_parser = parse_count)]
    max_record_bytes: Option<u64>,
    /// Layouts to measure (both when none is named).
    #[arg(value_enum)]
    layouts: Vec<Mode>,
}

fn describe(usage: DiskUsage, logical: u64) -> String {
    format!(
        "{:.1} MiB allocated in {} files ({:.1} MiB apparent) = {:.2}× the live data",
        mib(usage.allocated),
        usage.files,
        mib(usage.apparent),
        usage.allocated as f64 / logical as f64,
    )
}

fn figures(options: &Options, layout_name: &str, layout: Layout) {
    // Long enough that every entry is still live at the last open.
    let workload = Workload::new(options.live).ttl(Ttl(3_600_000));
    let churn = options.churn.unwrap_or(options.live / 4);
    let logical = workload.logical_bytes();
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path();
    let adjust = |config: rollcall_engine::Config| match options.max_record_bytes {
        Some(bytes) => config.max_record(4_096, bytes as usize),
        None => config,
    };

    let started = Instant::now();
    let stats = build_log(path, layout, &workload, churn, adjust);
    let built = started.elapsed();
    let total = options.live + churn;
    println!(
        "{layout_name}: wrote {total} heartbeats in {:.1} s ({:.0}/s) in {} groups; \
         {} records hold {:.1} MiB ({:.1} MiB live events); live data {:.1} MiB logical",
        built.as_secs_f64(),
        total as f64 / built.as_secs_f64(),
        stats.groups,
        stats.records,
        mib(stats.total_bytes),
        mib(stats.live_bytes),
        mib(logical),
    );
    let usage = disk_usage(path).expect("walk data directory");
    println!(
        "{layout_name}: data directory after close: {}",
        describe(usage, logical)
    );

    let mut times = Vec::new();
    for _ in 0..options.opens {
        let started = Instant::now();
        let (engine, report) =
            Engine::open(adjust(log_config(path, Durability::Flush, layout))).expect("reopen");
        let ready = started.elapsed();
        assert_eq!(report.live_entries as u64, options.live);
        times.push(ready);
        println!(
            "{layout_name}: open and ready in {:.2} s (replay {:.2} s of it: {} records, {} events)",
            ready.as_secs_f64(),
            report.elapsed.as_secs_f64(),
            report.records,
            report.events,
        );
        engine.close().expect("close");
    }
    if let Some(best) = times.iter().min() {
        println!("{layout_name}: best open {:.2} s", best.as_secs_f64());
    }
    let usage = disk_usage(path).expect("walk data directory");
    println!(
        "{layout_name}: data directory after reopening: {}",
        describe(usage, logical)
    );
}

fn main() {
    let mut options = Options::parse();
    if options
        .layouts
        .iter()
        .any(|mode| matches!(mode, Mode::Flush | Mode::Buffered))
    {
        Options::command()
            .error(
                clap::error::ErrorKind::InvalidValue,
                "log-figures takes layouts only: per-group, per-event",
            )
            .exit();
    }
    options.live = options.live.max(1);
    for (layout_name, layout) in layouts(&options.layouts) {
        figures(&options, layout_name, layout);
    }
}
