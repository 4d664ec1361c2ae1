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

use rollcall_benches::{DiskUsage, LAYOUTS, Workload, build_log, disk_usage, log_config, mib};
use rollcall_engine::{Durability, Engine, Layout, Ttl};

#[derive(Debug)]
struct Options {
    live: u64,
    churn: Option<u64>,
    opens: u32,
    max_record_bytes: Option<usize>,
    layouts: Vec<(&'static str, Layout)>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        live: 1_000_000,
        churn: None,
        opens: 3,
        max_record_bytes: None,
        layouts: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            let value = args.next().ok_or(format!("{name} needs a value"))?;
            value
                .replace('_', "")
                .parse()
                .map_err(|_| format!("{name}: not a number: {value}"))
        };
        match arg.as_str() {
            "--live" => options.live = number("--live")?.max(1),
            "--churn" => options.churn = Some(number("--churn")?),
            "--opens" => options.opens = number("--opens")? as u32,
            "--max-record-bytes" => {
                options.max_record_bytes = Some(number("--max-record-bytes")? as usize);
            }
            "per-group" => options.layouts.push(LAYOUTS[0]),
            "per-event" => options.layouts.push(LAYOUTS[1]),
            "-h" | "--help" => {
                return Err("usage: log-figures [--live N] [--churn N] [--opens N] \
                            [--max-record-bytes N] [per-group|per-event]..."
                    .into());
            }
            other => return Err(format!("unknown argument {other}; try --help")),
        }
    }
    if options.layouts.is_empty() {
        options.layouts = LAYOUTS.to_vec();
    }
    Ok(options)
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
        Some(bytes) => config.max_record(4_096, bytes),
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
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    for &(layout_name, layout) in &options.layouts {
        figures(&options, layout_name, layout);
    }
}
